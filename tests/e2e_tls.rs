//! End to end against a real cluster (`KUBECONFIG`): the control plane's
//! TLS as a default install has it, with the controller running on this
//! machine. It keeps its own CA in a Secret of its namespace (here the
//! test's own namespace, deleted with it), issues itself a certificate
//! naming the address the pods dial, publishes the CA bundle as the
//! ConfigMap `wopr-ca-bundle` where the Session is, and the sidecar in the
//! Session's real pod, which mounts that bundle, verifies the control plane
//! and gets its policy over TLS.
//!
//! The pod must reach this machine: set `WOPR_E2E_CONTROL_PLANE=IP:PORT` to
//! an address of it the cluster's pods can reach (the controller listens on
//! `0.0.0.0:PORT`), and `WOPR_E2E_SIDECAR_IMAGE` to an image built from
//! this tree that the nodes can pull.
//!
//! Run: `WOPR_E2E_CONTROL_PLANE=192.168.1.10:9443 KUBECONFIG=~/.kube/config cargo test --test e2e_tls -- --ignored --nocapture`

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use wopr_operator::api::{Session, SessionSpec, TrustLevel};
use wopr_operator::operator::args::{ControllerArgs, TlsArgs};

mod common;

use common::e2e::*;

const AGENT: &str = "e2e-tls";
const CA_SECRET: &str = "wopr-operator-ca";
/// How long the pod may take to be scheduled, pull its image and start.
const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG, WOPR_E2E_CONTROL_PLANE and WOPR_E2E_SIDECAR_IMAGE"]
async fn a_sidecar_in_a_real_pod_gets_its_policy_over_tls_from_the_operators_own_ca() {
    let (control_plane, port) = pod_reachable_control_plane();
    with_namespace(|client, namespace| async move {
        let controller = Controller::start(ControllerArgs {
            // A bare address: TLS, the certificate naming its host.
            control_plane_address: control_plane.clone(),
            // The CA Secret goes where the test cleans up.
            operator_namespace: namespace.clone(),
            tls: TlsArgs {
                insecure_plaintext: false,
                tls_cert_file: None,
                tls_key_file: None,
                tls_ca_file: None,
                tls_ca_secret: CA_SECRET.into(),
                tls_service_name: "wopr-operator".into(),
                tls_server_name: Vec::new(),
            },
            ..controller_args(&namespace, &format!("0.0.0.0:{port}"))
        });
        let session = Session::new(AGENT, SessionSpec::for_trust_level(TrustLevel::Trusted));
        apply(&client, &namespace, &session).await;

        // The operator made its CA and published its bundle where the Session is.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret = eventually("the CA Secret", || async {
            secrets.get_opt(CA_SECRET).await.unwrap()
        })
        .await;
        let kept = secret.data.expect("the CA Secret has data");
        let bundle_in_secret = String::from_utf8(kept["ca.crt"].0.clone()).unwrap();
        assert!(kept.contains_key("tls.key"));
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let published = eventually("the wopr-ca-bundle ConfigMap", || async {
            config_maps.get_opt("wopr-ca-bundle").await.unwrap()
        })
        .await;
        assert_eq!(
            published.data.unwrap()["ca.crt"],
            bundle_in_secret,
            "the published bundle is the CA's"
        );

        // The sidecar, verifying the control plane against the mounted
        // bundle, receives its policy.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        let logs = logs_until(
            &pods,
            (&format!("wopr-{AGENT}"), "a2a"),
            TIMEOUT,
            "the sidecar got no policy over TLS",
            |logs| logs.contains("policy received"),
        )
        .await;
        assert!(!logs.contains("invalid peer certificate"), "{logs}");
        println!("{logs}");
        controller.stop().await;
    })
    .await;
}
