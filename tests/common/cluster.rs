//! A fake cluster on loopback for tests of the real `wopr-operator`
//! processes: the fake API server over HTTP, a kubeconfig for it, and the
//! controller and sidecar command lines a cluster would run.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::json;
use wopr_operator::api::TrustLevel;

use super::fake_api::FakeApi;
use super::harness::{pod_path, session_path};
use super::process::Process;
use super::{NAMESPACE, session};

/// A fake cluster on loopback: the API server, a kubeconfig for it, and
/// a directory for the sidecars' tokens, sockets and workspaces.
pub struct Cluster {
    pub api: FakeApi,
    pub address: std::net::SocketAddr,
    pub kubeconfig: PathBuf,
    pub dir: tempfile::TempDir,
    /// The store the controllers use (`--store`): SQLite in `dir` unless
    /// a test sets another.
    pub store: String,
}

impl Cluster {
    /// A cluster with the CRDs installed, every RBAC right granted, and
    /// these Sessions, whose sidecars' tokens it accepts.
    pub async fn start(sessions: &[(&str, TrustLevel)]) -> Cluster {
        let api = FakeApi::default();
        api.install_crds();
        api.respond_to(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            |review| json!({"spec": review["spec"], "status": {"allowed": true}}),
        );
        let mut tokens = HashMap::new();
        for (name, trust_level) in sessions {
            api.insert(
                &session_path(name),
                serde_json::to_value(session(name, *trust_level)).unwrap(),
            );
            tokens.insert(
                format!("token-{name}"),
                (
                    format!("system:serviceaccount:{NAMESPACE}:wopr-{name}"),
                    Some(format!("wopr-{name}")),
                ),
            );
        }
        api.review_tokens(tokens);
        let address = api.serve_http().await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = FakeApi::kubeconfig(dir.path(), address);
        let store = format!("sqlite://{}/wopr.db", dir.path().display());
        Cluster {
            api,
            address,
            kubeconfig,
            dir,
            store,
        }
    }

    /// `wopr-operator controller` serving the control plane on `port` (0:
    /// any free port, see [`control_plane_port`]), with `extra` flags.
    pub fn controller(&self, port: u16, extra: &[&str]) -> Process {
        self.controller_with_tls(port, super::tls::controller_flags(), extra)
    }

    /// [`Cluster::controller`], its TLS set by `tls` (none: it issues
    /// itself a certificate from its CA Secret, as a default install does).
    pub fn controller_with_tls(&self, port: u16, tls: Vec<String>, extra: &[&str]) -> Process {
        let mut args: Vec<String> = [
            "controller",
            "--log-format=plain",
            "--admin-address=127.0.0.1:0",
            "--operator-namespace=wopr-system",
            "--identity=replica-1",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--control-plane-listen=127.0.0.1:{port}"));
        args.push(format!("--store={}", self.store));
        // Only written into the pods it builds, which nothing runs here.
        args.push("--control-plane-address=127.0.0.1:9443".to_owned());
        args.extend(tls);
        args.extend(extra.iter().map(|flag| flag.to_string()));
        Process::start(
            "controller",
            &args,
            &[("KUBECONFIG", self.kubeconfig.display().to_string())],
        )
    }

    /// `wopr-operator sidecar` for `session`, watching the control plane
    /// on `port`, failing closed after `max_policy_age` seconds of silence.
    /// Returns it and its MCP address.
    pub async fn sidecar(
        &self,
        session: &str,
        port: u16,
        max_policy_age: u64,
    ) -> (Process, String) {
        let sidecar = self.sidecar_with(session, port, max_policy_age, "127.0.0.1:0");
        let mcp_address = sidecar.logged("sidecar serving", "mcp").await;
        (sidecar, mcp_address)
    }

    /// A sidecar serving gRPC health on `health_address`, with `extra` flags.
    pub fn sidecar_with_flags(
        &self,
        session: &str,
        port: u16,
        health_address: &str,
        extra: &[String],
    ) -> Process {
        self.sidecar_process(session, port, 30, health_address, extra)
    }

    /// A sidecar serving gRPC health on `health_address`.
    pub fn sidecar_with(
        &self,
        session: &str,
        port: u16,
        max_policy_age: u64,
        health_address: &str,
    ) -> Process {
        self.sidecar_process(session, port, max_policy_age, health_address, &[])
    }

    pub fn sidecar_process(
        &self,
        session: &str,
        port: u16,
        max_policy_age: u64,
        health_address: &str,
        extra: &[String],
    ) -> Process {
        let path = |name: &str| self.dir.path().join(format!("{session}-{name}"));
        std::fs::write(path("token"), format!("token-{session}")).unwrap();
        std::fs::create_dir_all(path("workspace")).unwrap();
        let mut args = vec![
            "sidecar".to_owned(),
            "--log-format=plain".to_owned(),
            format!("--session={session}"),
            format!("--namespace={NAMESPACE}"),
            format!("--control-plane-address=127.0.0.1:{port}"),
            format!("--token-path={}", path("token").display()),
            format!("--socket-path={}", path("a2a.sock").display()),
            "--mcp-address=127.0.0.1:0".to_owned(),
            "--models-address=127.0.0.1:0".to_owned(),
            format!("--health-address={health_address}"),
            format!("--workspace={}", path("workspace").display()),
            format!("--spool-dir={}", path("spool").display()),
            format!("--max-policy-age-seconds={max_policy_age}"),
        ];
        // The test CA, unless `extra` names another bundle.
        if !extra
            .iter()
            .any(|flag| flag.starts_with("--control-plane-ca="))
        {
            args.push(super::tls::ca_flag("control-plane-ca"));
        }
        args.extend(extra.iter().cloned());
        Process::start(&format!("sidecar {session}"), &args, &[])
    }
}

impl Cluster {
    /// Waits (up to 30 s) for the controller to create `session`'s pod,
    /// then gives it `ip`, as a kubelet does when the pod starts: every
    /// process here runs on loopback, so a sidecar's pod is at 127.0.0.1.
    pub async fn pod_started_at(&self, session: &str, ip: &str) {
        let path = pod_path(session);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.api.get(&path).is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no pod for {session}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.api.modify(&path, |pod| {
            pod["status"]["podIP"] = json!(ip);
            pod["status"]["podIPs"] = json!([{"ip": ip}]);
        });
    }
}

/// A controller and the sidecar of one session, `agent`, as a cluster
/// runs them, the sidecar's policy received.
pub struct OneAgent {
    pub cluster: Cluster,
    pub controller: Process,
    pub sidecar: Process,
    /// The agent's MCP address.
    pub agent: String,
}

/// [`OneAgent`] at `trust_level`.
pub async fn one_agent(trust_level: TrustLevel) -> OneAgent {
    let cluster = Cluster::start(&[("agent", trust_level)]).await;
    let controller = cluster.controller(0, &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    let (sidecar, agent) = cluster.sidecar("agent", port, 30).await;
    sidecar
        .wait_for("policy received", 1, std::time::Duration::from_secs(30))
        .await;
    OneAgent {
        cluster,
        controller,
        sidecar,
        agent,
    }
}

/// The port a controller's control plane listens on.
pub async fn control_plane_port(controller: &Process) -> u16 {
    let address = controller
        .logged("controller starting", "control_plane")
        .await;
    address.rsplit_once(':').unwrap().1.parse().unwrap()
}
