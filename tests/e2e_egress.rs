//! End to end against a real cluster (`KUBECONFIG`): a model call from a
//! real Session pod. The agent container (curl) posts an OpenAI chat
//! completion to the sidecar's loopback proxy with the placeholder key the
//! pod builder gave it; the sidecar relays it over TLS to the egress
//! service, which reads the provider's key from the Secret the namespace's
//! SecurityPolicy names and calls a fake provider this test runs. The fake
//! provider sees the real key; the pod never held it. Then the egress
//! service refuses a projected token of another Session for this one.
//!
//! The controller and the egress service run on this machine; the pod must
//! reach them: set `WOPR_E2E_CONTROL_PLANE=IP:PORT` to an address of this
//! machine the cluster's pods can reach (the controller listens on
//! `0.0.0.0:PORT`, the egress service on `0.0.0.0:PORT+1`),
//! `WOPR_E2E_SIDECAR_IMAGE` to an image built from this tree that the nodes
//! can pull, and optionally `WOPR_E2E_CURL_IMAGE` (default
//! `curlimages/curl:8.11.1`).
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_egress -- --ignored --nocapture`

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, PostParams};
use serde_json::json;
use wopr_operator::api::{Provider, SandboxSpec, SecurityPolicy, Session, SessionSpec, TrustLevel};
use wopr_operator::operator::args::ControllerArgs;
use wopr_operator::proto::v1alpha1 as pb;
use wopr_operator::proto::v1alpha1::models_client::ModelsClient;
use wopr_operator::tls::client::{Bundle, ClientTls, endpoint};

mod common;

use common::e2e::*;
use common::egress::{FakeProvider, Speaks, call, request};

const AGENT: &str = "e2e-egress";
const OTHER: &str = "e2e-egress-other";
const KEY: &str = "sk-e2e-the-real-key-never-in-the-pod";
/// How long the pod may take to be scheduled, pull its images and start.
const TIMEOUT: Duration = Duration::from_secs(180);

/// The agent: ask the proxy until it answers (the sidecar may still be
/// starting), print the answer, then idle.
const AGENT_SCRIPT: &str = r#"until curl -sS --fail-with-body -X POST "$OPENAI_BASE_URL/chat/completions" \
  -H "authorization: Bearer $OPENAI_API_KEY" -H 'content-type: application/json' \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'; do sleep 2; done
echo; echo AGENT-DONE; sleep 3600"#;

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG, WOPR_E2E_CONTROL_PLANE and WOPR_E2E_SIDECAR_IMAGE"]
async fn a_real_session_pod_calls_a_model_through_the_egress_service_without_its_key() {
    let (control_plane, port) = pod_reachable_control_plane();
    let host = control_plane.rsplit_once(':').unwrap().0.to_owned();
    let egress_port = port.parse::<u16>().unwrap() + 1;
    let egress_address = format!("{host}:{egress_port}");
    let provider = FakeProvider::start(Speaks::OpenAi, KEY).await;
    with_namespace(|client, namespace| async move {
        let controller = Controller::start(ControllerArgs {
            control_plane_address: control_plane.clone(),
            egress_address: Some(egress_address.clone()),
            ..controller_args(&namespace, &format!("0.0.0.0:{port}"))
        });
        let egress = tokio::spawn(wopr_operator::egress::run::run(
            egress_args(&control_plane, egress_port),
            std::future::pending(),
        ));

        // The key, in the Secret the namespace's policy names.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "model-keys"},
            "stringData": {"fake": KEY},
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let policy: SecurityPolicy = serde_json::from_value(json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "default"},
            "spec": {"providers": [{
                "name": "fake", "type": "openai-compatible",
                "baseURL": provider.base_url(),
                "secretRef": {"name": "model-keys", "key": "fake"},
            }]},
        }))
        .unwrap();
        apply(&client, &namespace, &policy).await;

        let mut spec = SessionSpec::for_trust_level(TrustLevel::Trusted);
        spec.provider = Some(Provider {
            name: "fake".into(),
            model: Some("gpt-4o-mini".into()),
            fallback: Vec::new(),
        });
        spec.sandbox = Some(SandboxSpec {
            image: Some(
                std::env::var("WOPR_E2E_CURL_IMAGE")
                    .unwrap_or_else(|_| "curlimages/curl:8.11.1".into()),
            ),
            command: vec!["sh".into(), "-c".into(), AGENT_SCRIPT.into()],
            ..SandboxSpec::default()
        });
        apply(&client, &namespace, &Session::new(AGENT, spec)).await;
        apply(
            &client,
            &namespace,
            &Session::new(OTHER, SessionSpec::for_trust_level(TrustLevel::Trusted)),
        )
        .await;

        // The agent got the fake provider's answer through its loopback proxy.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let logs = logs_until(
            &pods,
            (&format!("wopr-{AGENT}"), "agent"),
            TIMEOUT,
            "the agent got no model answer",
            |logs| logs.contains("AGENT-DONE"),
        )
        .await;
        assert!(logs.contains("hello"), "{logs}");
        assert!(!logs.contains(KEY), "{logs}");
        let seen = provider.seen();
        assert!(!seen.is_empty(), "the fake provider was called");
        assert_eq!(
            seen[0].headers.get("authorization"),
            Some(&format!("Bearer {KEY}")),
            "the egress service added the real key"
        );

        // Nothing of the pod as the API server holds it carries the key.
        let pod = pods.get(&format!("wopr-{AGENT}")).await.unwrap();
        let pod_text = serde_json::to_string(&pod).unwrap();
        assert!(!pod_text.contains(KEY), "the pod holds no key");
        assert!(!pod_text.contains("model-keys"), "nor names its Secret");

        // Another Session's projected token is refused for this one.
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(client.clone(), &namespace);
        eventually("the other Session's service account", || async {
            accounts.get_opt(&format!("wopr-{OTHER}")).await.unwrap()
        })
        .await;
        let token = token_of(&client, &namespace, &format!("wopr-{OTHER}")).await;
        let tls = ClientTls::Verify {
            bundle: Bundle::File(common::tls::pki().ca_file.clone()),
            server_name: None,
        };
        let channel = endpoint(&format!("https://{egress_address}"), &tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let refused = call(
            &mut ModelsClient::new(channel),
            request(
                Some(&token),
                &namespace,
                AGENT,
                pb::Dialect::OpenaiChat,
                br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
                &[],
            ),
        )
        .await
        .expect_err("another Session's token is refused");
        assert!(
            matches!(
                refused.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "{refused:?}"
        );
        assert_eq!(
            provider.seen().len(),
            seen.len(),
            "and no provider was called"
        );

        egress.abort();
        controller.stop().await;
    })
    .await;
}

/// The egress service's flags: TLS with the test PKI's leaf (it names
/// `WOPR_E2E_CONTROL_PLANE`'s host), the control plane verified against
/// the same CA, Secrets read with the test's kubeconfig.
fn egress_args(control_plane: &str, port: u16) -> wopr_operator::egress::run::EgressArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        egress: wopr_operator::egress::run::EgressArgs,
    }
    let pki = common::tls::pki();
    Flags::parse_from([
        "egress".to_owned(),
        format!("--listen=0.0.0.0:{port}"),
        "--admin-address=127.0.0.1:0".to_owned(),
        format!("--control-plane-address={control_plane}"),
        format!("--control-plane-ca={}", pki.ca_file.display()),
        format!("--tls-cert-file={}", pki.cert_file.display()),
        format!("--tls-key-file={}", pki.key_file.display()),
    ])
    .egress
}
