//! End to end against a real cluster (`KUBECONFIG`): `exec_command` in a
//! real Session pod, called as its sidecar calls it (the control plane's
//! `Broker.Exec` with a token bound to the pod, as the kubelet projects
//! it): the exit code, the output cap, the timeout killing the command and
//! what it started (a second command finds nothing of them in /proc), a
//! write to `/` failing on the read-only root, and a Session without
//! `inject.exec` refused (nothing ran in its pod). It also measures
//! `exec_command` of a trivial command against `kubectl exec` of the same
//! and prints both (docs/performance.md).
//!
//! The pods' sidecars must reach this test's control plane (so the agent
//! container starts): `WOPR_E2E_CONTROL_PLANE=IP:PORT` as for
//! `e2e_sidecar`, `WOPR_E2E_SIDECAR_IMAGE` an image built from this tree;
//! the agent image (`WOPR_E2E_EXEC_IMAGE`, default `busybox:1.36`) needs
//! `/bin/sh` and `setsid`.
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_exec -- --ignored --nocapture`

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::AttachParams;
use kube::{Api, Client};
use tonic::transport::Channel;
use wopr_operator::api::{
    Capability, Grant, GrantSpec, GrantSubject, SandboxSpec, Session, SessionSpec, ToolRules,
    TrustLevel,
};
use wopr_operator::operator::args::ControllerArgs;
use wopr_operator::proto::v1alpha1::broker_client::BrokerClient;
use wopr_operator::proto::v1alpha1::{ExecRequest, ExecResponse};

mod common;

use common::e2e::*;

/// The cap on each of stdout and stderr this test's control plane keeps.
const CAP: usize = 4096;

/// A trusted Session running `image` (`sleep` as its agent); `tools` its
/// tool rules.
fn session(name: &str, image: &str, tools: Option<ToolRules>) -> Session {
    let mut session = Session::new(name, SessionSpec::for_trust_level(TrustLevel::Trusted));
    session.spec.sandbox = Some(SandboxSpec {
        image: Some(image.into()),
        args: ["sleep", "86400"].map(String::from).into(),
        ..SandboxSpec::default()
    });
    session.spec.tools = tools;
    session
}

/// The pod of `session` once its agent container is ready: its name, uid.
async fn ready_pod(pods: &Api<Pod>, session: &str) -> (String, String) {
    let name = format!("wopr-{session}");
    eventually(
        &format!("pod {name} with its agent container ready"),
        || async {
            let pod = pods.get_opt(&name).await.unwrap()?;
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let ready = statuses.iter().any(|s| s.name == "agent" && s.ready);
            ready.then(|| pod.metadata.uid.clone()).flatten()
        },
    )
    .await;
    let uid = pods.get(&name).await.unwrap().metadata.uid.unwrap();
    (name, uid)
}

/// `command args` in the session's agent container, as its sidecar asks.
async fn exec(
    broker: &mut BrokerClient<Channel>,
    (namespace, session, token): (&str, &str, &str),
    argv: &[&str],
    timeout: u32,
) -> Result<ExecResponse, tonic::Status> {
    let request = ExecRequest {
        namespace: namespace.into(),
        session: session.into(),
        command: argv[0].into(),
        args: argv[1..].iter().map(|arg| (*arg).to_owned()).collect(),
        cwd: "/tmp".into(),
        timeout_seconds: timeout,
        stdin: None,
    };
    let request = common::sidecar::with_token(token, request);
    let mut ended = broker.exec(request).await?.into_inner();
    Ok(ended.message().await?.expect("the command's end"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG, WOPR_E2E_CONTROL_PLANE and WOPR_E2E_SIDECAR_IMAGE"]
async fn exec_command_runs_in_the_sessions_own_sandbox_and_nowhere_else() {
    let kubectl = required_tool("e2e_exec", "kubectl", Some("KUBECTL"));
    let image = std::env::var("WOPR_E2E_EXEC_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
    let (control_plane, port) = pod_reachable_control_plane();
    with_namespace(|client: Client, namespace| async move {
        let controller = Controller::start(ControllerArgs {
            control_plane_address: control_plane.clone(),
            exec_max_output_bytes: CAP,
            ..controller_args(&namespace, &format!("0.0.0.0:{port}"))
        });
        apply(&client, &namespace, &session("e2e-exec", &image, None)).await;
        let grant = Grant::new(
            "e2e-exec",
            GrantSpec {
                subject: GrantSubject::session("e2e-exec"),
                profile: None,
                capabilities: vec![Capability::InjectExec],
                sessions: Vec::new(),
                not_before: None,
                expires_at: None,
                previous_keys: Vec::new(),
            },
        );
        apply(&client, &namespace, &grant).await;
        let denied = ToolRules {
            allow: Vec::new(),
            deny: vec!["exec_command".into()],
            rules: None,
        };
        apply(&client, &namespace, &session("e2e-noexec", &image, Some(denied))).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let (pod, uid) = ready_pod(&pods, "e2e-exec").await;
        let (other_pod, other_uid) = ready_pod(&pods, "e2e-noexec").await;
        let token = pod_token_of(&client, &namespace, &pod, (&pod, &uid)).await;
        let caller = (namespace.as_str(), "e2e-exec", token.as_str());
        let mut broker = BrokerClient::new(common::tls::channel(&control_plane).await);

        // The exit code and both streams.
        let script = "echo out; echo err >&2; exit 7";
        let ended = exec(&mut broker, caller, &["sh", "-c", script], 30).await.unwrap();
        assert_eq!(ended.exit_code, 7);
        assert_eq!(text(&ended.stdout), "out\n");
        assert_eq!(text(&ended.stderr), "err\n");

        // The output cap.
        let flood = "head -c 100000 /dev/zero";
        let ended = exec(&mut broker, caller, &["sh", "-c", flood], 30).await.unwrap();
        assert_eq!((ended.stdout.len(), ended.stdout_truncated), (CAP, true));
        assert_eq!(ended.exit_code, 0);

        // The timeout kills the command and the child it started.
        let started = Instant::now();
        let stuck = "sleep 301 & sleep 302";
        let ended = exec(&mut broker, caller, &["sh", "-c", stuck], 2).await.unwrap();
        assert!(ended.timed_out, "{ended:?}");
        assert_eq!(ended.exit_code, 137);
        assert!(started.elapsed() < Duration::from_secs(30));
        let list = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done";
        let listed = exec(&mut broker, caller, &["sh", "-c", list], 30).await.unwrap();
        let processes = text(&listed.stdout);
        for gone in ["sleep 301", "sleep 302", "wopr-watch"] {
            assert!(!processes.contains(gone), "{gone} outlived its call:\n{processes}");
        }
        assert!(processes.contains("sleep 86400"), "the agent is listed:\n{processes}");

        // The agent container's root is read-only.
        let ended = exec(&mut broker, caller, &["touch", "/wopr-e2e"], 30).await.unwrap();
        assert_ne!(ended.exit_code, 0);
        assert!(text(&ended.stderr).contains("Read-only file system"), "{}", text(&ended.stderr));

        // Without exec_command: refused, and nothing ran in its pod.
        let other_token = pod_token_of(&client, &namespace, &other_pod, (&other_pod, &other_uid)).await;
        let other = (namespace.as_str(), "e2e-noexec", other_token.as_str());
        let refused = exec(&mut broker, other, &["touch", "/tmp/ran"], 30).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(refused.message(), "tool not available: exec_command");
        let check = AttachParams::default().container("agent").stderr(false);
        let mut probe = pods
            .exec(&other_pod, ["test", "-e", "/tmp/ran"], &check)
            .await
            .unwrap();
        let status = probe.take_status().unwrap().await.unwrap();
        assert_eq!(status.status.as_deref(), Some("Failure"), "/tmp/ran exists: {status:?}");

        // The overhead over kubectl exec, of `true`, median of 10 each.
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let ended = exec(&mut broker, caller, &["true"], 30).await.unwrap();
            ours.push(started.elapsed());
            assert_eq!(ended.exit_code, 0);
            let started = Instant::now();
            let status = tokio::process::Command::new(&kubectl)
                .args(["-n", &namespace, "exec", &pod, "-c", "agent", "--", "true"])
                .status()
                .await
                .unwrap();
            theirs.push(started.elapsed());
            assert!(status.success());
        }
        let (ours, theirs) = (median(ours), median(theirs));
        println!(
            "exec_command true: {ours:?} median; kubectl exec true: {theirs:?} median; overhead {:?}",
            ours.saturating_sub(theirs)
        );
        controller.stop().await;
    })
    .await;
}
