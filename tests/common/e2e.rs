//! Helpers for the end-to-end tests against a real cluster (`KUBECONFIG`).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use kube::api::DeleteParams;
use tokio::sync::oneshot;
use wopr_operator::operator::{RunError, run};

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use wopr_operator::api;
use wopr_operator::operator::args::{ControllerArgs, TlsArgs};

use super::install_yaml;

pub const TIMEOUT: Duration = Duration::from_secs(90);
pub const MANAGER: &str = "wopr-e2e";

pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in api::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {name}: {e}"));
        tokio::time::timeout(
            TIMEOUT,
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("{name} not established in time"))
        .unwrap();
    }
}

pub async fn create_namespace(client: &Client) -> String {
    let name = format!("wopr-e2e-{}", std::process::id());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating the test namespace");
    name
}

pub async fn apply<K>(client: &Client, namespace: &str, object: &K)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {}: {e}", object.name_any()));
}

/// Polls `check` until it returns `Some`, or fails after [`TIMEOUT`] with `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Controller flags for a test: one namespace, no leader election, loopback
/// ports; the sidecar image from `WOPR_E2E_SIDECAR_IMAGE` (an image built
/// from this tree that the nodes can pull), else `…/wopr-operator:e2e`.
pub fn controller_args(namespace: &str, control_plane_listen: &str) -> ControllerArgs {
    ControllerArgs {
        sidecar_image: std::env::var("WOPR_E2E_SIDECAR_IMAGE")
            .unwrap_or_else(|_| "ghcr.io/wopr-network/wopr-operator:e2e".into()),
        default_agent_image: "registry.k8s.io/pause:3.10".into(),
        default_agent_args: Vec::new(),
        control_plane_address: "127.0.0.1:9443".into(),
        egress_address: None,
        control_plane_listen: control_plane_listen.parse().unwrap(),
        control_plane_reflection: false,
        p2p_listen: None,
        p2p_answer_wait_seconds: wopr_operator::controlplane::peers::DEFAULT_ANSWER_WAIT.as_secs(),
        p2p_max_in_flight: wopr_operator::controlplane::peers::DEFAULT_MAX_IN_FLIGHT,
        max_open_elevations: 3,
        exec_max_output_bytes: wopr_operator::controlplane::exec::DEFAULT_MAX_OUTPUT_BYTES,
        operator_namespace: "wopr-system".into(),
        watch_namespace: Some(namespace.into()),
        admin_address: "127.0.0.1:0".parse().unwrap(),
        leader_election: false,
        lease_name: "wopr-operator-e2e".into(),
        identity: Some("e2e".into()),
        default_memory: "512Mi".into(),
        default_cpu: "500m".into(),
        shutdown_drain_seconds: 5,
        // A file of this test's namespace: kept across controller restarts.
        store: format!(
            "sqlite://{}/wopr-{namespace}.db",
            std::env::temp_dir().display()
        ),
        audit_retention_hours: 720,
        audit_max_events_per_namespace: 1_000_000,
        audit_min_age_hours: 24,
        update_policy: wopr_operator::api::UpdateType::Rolling,
        update_max_unavailable: 1,
        isolation_probe: Vec::new(),
        sandbox_seccomp_profile: None,
        // TLS with the test PKI's leaf (it names WOPR_E2E_CONTROL_PLANE's
        // host too), as from cert-manager's files; the bundle is published
        // to the test namespace for the pods.
        tls: TlsArgs {
            tls_cert_file: Some(super::tls::pki().cert_file.clone()),
            tls_key_file: Some(super::tls::pki().key_file.clone()),
            tls_ca_file: Some(super::tls::pki().ca_file.clone()),
            ..TlsArgs::default()
        },
        audit_export_otlp_endpoint: None,
        audit_export_otlp_ca: None,
        audit_export_ocsf: None,
        egress_service: None,
    }
}

/// A controller running in-process until [`Controller::stop`].
pub struct Controller {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RunError>>,
}

impl Controller {
    /// Starts the controller with `args`.
    pub fn start(args: ControllerArgs) -> Controller {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(args, async {
            let _ = stopped.await;
        }));
        Controller { stop, task }
    }

    /// Stops it as SIGTERM would, and waits (up to 10 s) for it to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// Installs the CRDs, creates a temporary namespace enforcing Pod Security
/// "restricted", runs `scenario` in it, then deletes the namespace, whether
/// the scenario passed or not.
pub async fn with_namespace<F, Fut>(scenario: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    install_crds(&client).await;
    let namespace = create_namespace(&client).await;
    let outcome = AssertUnwindSafe(scenario(client.clone(), namespace.clone()))
        .catch_unwind()
        .await;
    Api::<Namespace>::all(client)
        .delete(&namespace, &DeleteParams::default())
        .await
        .expect("deleting the test namespace");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// [`with_namespace`], with the controller running in-process for that
/// namespace (control plane on `control_plane_listen`) during `scenario`.
pub async fn with_controller<F, Fut>(control_plane_listen: &str, scenario: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    with_namespace(|client, namespace| async move {
        let controller = Controller::start(controller_args(&namespace, control_plane_listen));
        let outcome = AssertUnwindSafe(scenario(client, namespace))
            .catch_unwind()
            .await;
        controller.stop().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    })
    .await;
}

/// A token for `account` from the TokenRequest API, audience wopr.dev: what
/// the kubelet projects into a session pod.
pub async fn token_of(client: &Client, namespace: &str, account: &str) -> String {
    token_for_audiences(client, namespace, account, &["wopr.dev"], None).await
}

/// [`token_of`], bound to the pod `name` (uid `uid`) as the kubelet's
/// projected token is: its TokenReview names the pod.
pub async fn pod_token_of(
    client: &Client,
    namespace: &str,
    account: &str,
    (name, uid): (&str, &str),
) -> String {
    use k8s_openapi::api::authentication::v1::BoundObjectReference;
    let pod = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
    };
    token_for_audiences(client, namespace, account, &["wopr.dev"], Some(pod)).await
}

/// A token for `account` for the API server's own audience: the credential
/// a person or a workload uses with kubectl.
pub async fn api_token_of(client: &Client, namespace: &str, account: &str) -> String {
    token_for_audiences(client, namespace, account, &[], None).await
}

async fn token_for_audiences(
    client: &Client,
    namespace: &str,
    account: &str,
    audiences: &[&str],
    bound_object_ref: Option<k8s_openapi::api::authentication::v1::BoundObjectReference>,
) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: Some(600),
            bound_object_ref,
        },
        ..TokenRequest::default()
    };
    let issued = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {account}: {e}"));
    issued.status.expect("an issued token").token
}

/// Trusted Sessions named `names`, once the controller has made their
/// service accounts (`wopr-NAME`).
pub async fn trusted_sessions_with_accounts(client: &Client, namespace: &str, names: &[&str]) {
    use k8s_openapi::api::core::v1::ServiceAccount;
    use wopr_operator::api::{Session, SessionSpec, TrustLevel};
    for name in names {
        let session = Session::new(name, SessionSpec::for_trust_level(TrustLevel::Trusted));
        apply(client, namespace, &session).await;
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    for name in names {
        let account = format!("wopr-{name}");
        eventually(&format!("service account {account}"), || async {
            accounts.get_opt(&account).await.unwrap()
        })
        .await;
    }
}

/// [`with_controller`] with its control plane on a free loopback port,
/// whose address `test` gets.
pub async fn with_controller_on_a_free_port<F, Fut>(test: F)
where
    F: FnOnce(Client, String, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let address = listen.clone();
    with_controller(&listen, |client, namespace| {
        test(client, namespace, address)
    })
    .await;
}

/// The kinds [`install_admission`] sends, with their resource names.
const ADMISSION_KINDS: [(&str, &str); 3] = [
    ("ValidatingAdmissionPolicy", "validatingadmissionpolicies"),
    (
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    ),
    ("ClusterRole", "clusterroles"),
];

/// What [`install_admission`] sends: the admission policies, their bindings
/// and the ClusterRoles `roles` from `manifests/install.yaml`, unchanged but
/// for one thing: the `byOperator` variable names `operator` (whoever runs
/// the test) instead of the operator's service account. Pure, so that a
/// test without a cluster can compare it with the shipped objects.
pub fn admission_objects(operator: &str, roles: &[&str]) -> Vec<serde_json::Value> {
    let mut objects = Vec::new();
    for (kind, _) in ADMISSION_KINDS {
        for mut object in install_yaml().into_iter().filter(|o| o["kind"] == kind) {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            if kind == "ClusterRole" && !roles.contains(&name) {
                continue;
            }
            // `get_mut`, never indexing: indexing a missing key of a
            // `serde_json::Value` inserts `null`, which the API server
            // refuses as a field not declared in the schema.
            let variables = object
                .get_mut("spec")
                .and_then(|spec| spec.get_mut("variables"))
                .and_then(|variables| variables.as_array_mut());
            for variable in variables.into_iter().flatten() {
                if variable.get("name") == Some(&json!("byOperator")) {
                    variable["expression"] =
                        json!(format!("request.userInfo.username == '{operator}'"));
                }
            }
            objects.push(object);
        }
    }
    objects
}

/// Installs [`admission_objects`] for `roles`; the policies' operator
/// identity is whoever runs the test (the in-process controller's
/// credentials).
pub async fn install_admission(client: &Client, roles: &[&str]) {
    let review: SelfSubjectReview = Api::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    let me = review
        .status
        .and_then(|status| status.user_info)
        .and_then(|user| user.username)
        .expect("who runs the test");
    for object in admission_objects(&me, roles) {
        let kind = object["kind"].as_str().unwrap().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let api_version = object["apiVersion"].as_str().unwrap().to_owned();
        let (group, version) = api_version.split_once('/').unwrap();
        let plural = ADMISSION_KINDS
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, plural)| *plural)
            .unwrap();
        let resource = ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.clone(),
            kind: kind.clone(),
            plural: plural.into(),
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap_or_else(|e| panic!("installing {kind} {name}: {e}"));
    }
}

/// A client acting as `user` (impersonated, as `kubectl --as` does) or with
/// `token`, else as the kubeconfig's own user.
pub async fn client_as(user: Option<&str>, token: Option<String>) -> Client {
    let mut config = Config::infer().await.unwrap();
    if let Some(user) = user {
        config.auth_info.impersonate = Some(user.into());
    }
    if let Some(token) = token {
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..kube::config::AuthInfo::default()
        };
    }
    Client::try_from(config).unwrap()
}

/// Binds the ClusterRole `role` to the person `user` in `namespace`.
pub async fn bind_user(client: &Client, namespace: &str, user: &str, role: &str) {
    let mut binding = RoleBinding::default();
    binding.metadata.name = Some(format!("{role}-{}", user.replace(['@', '.'], "-")));
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: role.into(),
    };
    binding.subjects = Some(vec![Subject {
        kind: "User".into(),
        name: user.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Subject::default()
    }]);
    apply(client, namespace, &binding).await;
}

/// The path of `name`, a tool an e2e test runs: `$override_var` when set,
/// else on the `PATH`, else the one `hack/install-tools.sh` installs into
/// `.tools/bin`. Without it the test fails before it starts anything,
/// naming the tool and how to get it.
pub fn required_tool(test: &str, name: &str, override_var: Option<&str>) -> String {
    if let Some(path) = override_var.and_then(|var| std::env::var(var).ok()) {
        return path;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".tools/bin")
        .join(name);
    match on_path.or_else(|| local.is_file().then_some(local)) {
        Some(path) => path.display().to_string(),
        None => panic!(
            "{test} needs {name}, which is neither on the PATH nor in .tools/bin: install it, or run bash hack/install-tools.sh (helm and kubectl){}",
            override_var.map_or(String::new(), |var| format!(", or set {var}"))
        ),
    }
}

/// `WOPR_E2E_CONTROL_PLANE` (an `IP:PORT` of this machine that the
/// cluster's pods can reach) and its port, for a test whose sidecars run in
/// real pods.
pub fn pod_reachable_control_plane() -> (String, String) {
    let control_plane = std::env::var("WOPR_E2E_CONTROL_PLANE").expect(
        "WOPR_E2E_CONTROL_PLANE=IP:PORT: an address of this machine the cluster's pods can reach",
    );
    let port = control_plane
        .rsplit_once(':')
        .expect("IP:PORT")
        .1
        .to_owned();
    (control_plane, port)
}

/// What one run of `kubectl-wopr` gave.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kubectl-wopr` with `kubeconfig` in `namespace` (and with
/// `--operator-namespace`, where the CLI looks for the controller's pods),
/// the environment's control plane, token and operator namespace removed
/// so only the flags decide. The command is built now and the future owns
/// it: awaited, it never blocks the runtime, which may be serving the
/// control plane the binary talks to (a blocking wait once starved it, and
/// both hung).
pub fn kubectl_wopr(
    kubeconfig: &Path,
    namespace: &str,
    operator_namespace: Option<&str>,
    args: &[&str],
) -> impl Future<Output = Run> + use<> {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-wopr"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", namespace])
        .args(
            operator_namespace
                .map(|ns| ["--operator-namespace", ns])
                .into_iter()
                .flatten(),
        )
        .args(args)
        .env_remove("WOPR_CONTROL_PLANE")
        .env_remove("WOPR_TOKEN")
        .env_remove("WOPR_OPERATOR_NAMESPACE")
        .kill_on_drop(true);
    let shown = args.join(" ");
    async move {
        let output = command.output().await.unwrap();
        let run = Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        eprintln!(
            "kubectl wopr {shown}: exit {}\n{}{}",
            run.code, run.stdout, run.stderr
        );
        run
    }
}

/// The logs of `container` in pod `pod` once `done` holds of them, polled
/// every second; after `timeout`, a failure saying `what` was awaited and
/// the logs as they were.
pub async fn logs_until(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    (pod, container): (&str, &str),
    timeout: Duration,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    let params = kube::api::LogParams {
        container: Some(container.to_owned()),
        ..kube::api::LogParams::default()
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let logs = pods.logs(pod, &params).await.unwrap_or_default();
        if done(&logs) {
            return logs;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}:\n{logs}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
