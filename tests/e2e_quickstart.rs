//! End to end against a real cluster (`KUBECONFIG`): `hack/quickstart.sh
//! --use-current-context --image-archive PATH --load-command CMD` installs
//! the operator from an image archive, applies examples/quickstart/ and
//! waits for every Session to be Ready; the demo agents' logs then show the
//! untrusted one refused `config_get` and the others allowed it; `--down`
//! removes what it made. Its own release and namespaces, named for this
//! process, and the operator watches only its demo namespace.
//!
//! - `WOPR_E2E_IMAGE_ARCHIVE`: the image archive (default: one packed from
//!   this build's binary by hack/build-image.sh, for a node of this
//!   machine's architecture);
//! - `WOPR_E2E_LOAD_COMMAND`: how the archive reaches the nodes (default
//!   `ctr -n k8s.io images import`, for a single-node cluster this test
//!   runs on).
//!
//! Run: `KUBECONFIG=~/.kube/config cargo test --test e2e_quickstart -- --ignored --nocapture`

mod common;

use std::panic::AssertUnwindSafe;
use std::time::Duration;
use tokio::process::Command;

use common::e2e::TIMEOUT;
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::LogParams;
use kube::{Api, Client};
use wopr_operator::api::Session;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What each demo agent must have said.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "demo-untrusted",
        &[
            "trust level untrusted",
            "call config_get: DENIED: tool not available: config_get",
        ],
    ),
    (
        "demo-semi-trusted",
        &[
            "trust level semi-trusted",
            "call security_check session.spawn: ALLOWED: {\"allowed\":false",
            "call config_get: ALLOWED",
        ],
    ),
    (
        "demo-trusted",
        &[
            "trust level trusted",
            "call security_check session.spawn: ALLOWED: {\"allowed\":true",
            "call config_get: ALLOWED",
        ],
    ),
    (
        "demo-owner",
        &["trust level owner", "call config_get: ALLOWED"],
    ),
];

/// The quickstart's arguments for this test's release and namespaces.
struct Names {
    demo: String,
    operator: String,
    release: String,
}

impl Names {
    fn args(&self) -> Vec<String> {
        [
            "--use-current-context",
            "--namespace",
            &self.demo,
            "--operator-namespace",
            &self.operator,
            "--release",
            &self.release,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    }
}

async fn quickstart(args: &[String]) {
    let status = Command::new("bash")
        .arg(format!("{ROOT}/hack/quickstart.sh"))
        .args(args)
        .status()
        .await
        .expect("bash runs");
    assert!(status.success(), "hack/quickstart.sh {args:?}: {status}");
}

/// The image archive to install: the one given, else one packed here.
async fn image_archive(work: &std::path::Path) -> String {
    if let Ok(archive) = std::env::var("WOPR_E2E_IMAGE_ARCHIVE") {
        return archive;
    }
    let archive = work.join("image.tar").display().to_string();
    let status = Command::new("bash")
        .arg(format!("{ROOT}/hack/build-image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_wopr-operator")])
        .args([
            "--name",
            "ghcr.io/wopr-network/wopr-operator:e2e-quickstart",
        ])
        .args(["--output", &archive])
        .status()
        .await
        .expect("bash runs");
    assert!(status.success(), "hack/build-image.sh: {status}");
    archive
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG (and WOPR_E2E_LOAD_COMMAND)"]
async fn the_quickstart_shows_the_untrusted_agent_refused_and_the_trusted_one_allowed() {
    let client = Client::try_default().await.expect("KUBECONFIG");
    let id = std::process::id();
    let names = Names {
        demo: format!("wopr-e2e-qs-{id}"),
        operator: format!("wopr-e2e-qs-op-{id}"),
        release: format!("wopr-qs-{id}"),
    };
    let work = tempfile::tempdir().unwrap();
    let load_command = std::env::var("WOPR_E2E_LOAD_COMMAND")
        .unwrap_or_else(|_| "ctr -n k8s.io images import".to_owned());
    // What it needs, named before anything is created: kubectl and helm
    // (hack/quickstart.sh's own check), and the program that loads the
    // image onto the nodes.
    let loader = load_command.split_whitespace().next().unwrap_or_default();
    for tool in ["kubectl", "helm", loader] {
        common::e2e::required_tool("e2e_quickstart", tool, None);
    }
    let mut up = names.args();
    up.extend([
        "--image-archive".to_owned(),
        image_archive(work.path()).await,
        "--load-command".to_owned(),
        load_command,
        "--helm-set".to_owned(),
        format!("watchNamespace={}", names.demo),
    ]);

    let result = AssertUnwindSafe(async {
        quickstart(&up).await;
        // Running it again changes nothing and succeeds.
        quickstart(&up).await;
        let sessions: Api<Session> = Api::namespaced(client.clone(), &names.demo);
        for session in sessions.list(&Default::default()).await.unwrap() {
            let ready = session
                .status
                .as_ref()
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone());
            assert_eq!(
                ready.as_deref(),
                Some("True"),
                "{:?}",
                session.metadata.name
            );
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &names.demo);
        for (session, expected) in EXPECTED {
            let pod = format!("wopr-{session}");
            let params = LogParams {
                container: Some("agent".to_owned()),
                ..LogParams::default()
            };
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let logs = pods.logs(&pod, &params).await.unwrap_or_default();
                if expected.iter().all(|line| logs.contains(line)) {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{pod} has not said all of {expected:?}:\n{logs}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    })
    .catch_unwind()
    .await;

    let mut down = names.args();
    down.push("--down".to_owned());
    quickstart(&down).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for namespace in [&names.demo, &names.operator] {
        let gone = namespaces
            .get_opt(namespace)
            .await
            .unwrap()
            .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        assert!(gone, "--down left the namespace {namespace}");
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
