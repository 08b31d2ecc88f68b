//! Peers for tests of the peer ingress: a key that signs messages as WOPR
//! does (the JSON text as written, `sig` appended last), the scripts of
//! peers in other languages (`tests/peers/`), and an ingress served next
//! to a test control plane.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wopr_operator::api::{P2pPolicy, SecurityPolicy, SecurityPolicySpec};
use wopr_operator::clock::Clock;
use wopr_operator::controlplane::grant_use::GrantUses;
use wopr_operator::controlplane::index::ContextIndex;
use wopr_operator::controlplane::peers::{self, Ingress, IngressSettings, MemoryIngressKeys};
use wopr_operator::controlplane::refusals::{RefusalMetrics, Refusals};
use wopr_operator::controlplane::writes::{ClusterWriter, KubeWriter};
use wopr_operator::p2p::IngressKey;

use super::sidecar::ControlPlane;

/// A peer: an Ed25519 key signing as WOPR's `signMessage` does.
pub struct TestPeer {
    pub key: IngressKey,
}

impl TestPeer {
    pub fn new() -> TestPeer {
        TestPeer {
            key: IngressKey::generate(),
        }
    }

    /// Its public key (SPKI DER, base64).
    pub fn public_key(&self) -> String {
        self.key.public_key().as_str().to_owned()
    }

    /// The text of a message of `kind` sent at `ts_ms` with `nonce`, the
    /// `fields` after WOPR's own, signed: `{v,type,from,ts,nonce,...,sig}`.
    pub fn sign_at(
        &self,
        kind: &str,
        fields: &[(&str, Value)],
        ts_ms: i64,
        nonce: &str,
    ) -> Vec<u8> {
        let mut text = format!(
            "{{\"v\":2,\"type\":{},\"from\":{},\"ts\":{ts_ms},\"nonce\":{}",
            json!(kind),
            json!(self.public_key()),
            json!(nonce)
        );
        for (name, value) in fields {
            text.push_str(&format!(",{}:{}", json!(name), value));
        }
        text.push('}');
        self.key.sign_json(&text).into_bytes()
    }

    /// A message of `kind` now with a fresh nonce, `raw` (member text,
    /// each starting with a comma) after WOPR's own fields, as written.
    pub fn sign_raw(&self, kind: &str, raw: &str) -> Vec<u8> {
        let text = format!(
            "{{\"v\":2,\"type\":{},\"from\":{},\"ts\":{},\"nonce\":{}{raw}}}",
            json!(kind),
            json!(self.public_key()),
            Timestamp::now().as_millisecond(),
            json!(ulid::Ulid::new().to_string().to_lowercase()),
        );
        self.key.sign_json(&text).into_bytes()
    }

    /// Its `key-rotation` to `new` for `reason`, signed as WOPR's
    /// `rotateIdentity` signs (the inner object by this, the old key).
    pub fn rotate_to(&self, new: &TestPeer, reason: &str) -> Vec<u8> {
        let inner = format!(
            "{{\"v\":1,\"type\":\"key-rotation\",\"oldSignPub\":{},\"newSignPub\":{},\"newEncryptPub\":\"\",\"reason\":{},\"effectiveAt\":{},\"gracePeriodMs\":86400000}}",
            json!(self.public_key()),
            json!(new.public_key()),
            json!(reason),
            Timestamp::now().as_millisecond()
        );
        let inner = self.key.sign_json(&inner);
        self.sign_raw("key-rotation", &format!(",\"keyRotation\":{inner}"))
    }

    /// [`TestPeer::sign_at`] now, with a fresh nonce.
    pub fn sign(&self, kind: &str, fields: &[(&str, Value)]) -> Vec<u8> {
        let nonce = ulid::Ulid::new().to_string().to_lowercase();
        self.sign_at(kind, fields, Timestamp::now().as_millisecond(), &nonce)
    }

    /// An `inject` of `payload` into `namespace/session`.
    pub fn inject(&self, namespace: &str, session: &str, payload: Value) -> Vec<u8> {
        self.sign(
            "inject",
            &[
                ("session", json!(format!("{namespace}/{session}"))),
                ("payload", payload),
            ],
        )
    }
}

impl Default for TestPeer {
    fn default() -> Self {
        TestPeer::new()
    }
}

/// The SecurityPolicy `default` of `namespace` accepting peers without a
/// Grant (`p2p.autoAccept`) at the discovery trust, untrusted: they reach
/// its gateway sessions only.
pub fn auto_accepting_policy(namespace: &str) -> SecurityPolicy {
    let mut policy = SecurityPolicy::new(
        "default",
        SecurityPolicySpec {
            p2p: Some(P2pPolicy {
                auto_accept: true,
                ..P2pPolicy::default()
            }),
            ..SecurityPolicySpec::default()
        },
    );
    policy.metadata.namespace = Some(namespace.into());
    policy
}

/// An ingress over `control_plane`'s index, store and API server.
pub struct TestIngress {
    pub ingress: Arc<Ingress<ContextIndex>>,
    pub keys: Arc<MemoryIngressKeys>,
    pub settings: IngressSettings,
    /// Where it serves HTTPS and gRPC (the test CA's leaf).
    pub address: SocketAddr,
}

impl TestIngress {
    /// Starts one that waits `answer_wait` for a gateway's answer.
    pub async fn start(control_plane: &ControlPlane, answer_wait: Duration) -> TestIngress {
        let settings = IngressSettings {
            answer_wait,
            ..IngressSettings::default()
        };
        TestIngress::start_on(control_plane, control_plane.store.clone(), settings).await
    }

    /// One set up with `settings`, its counts and inboxes in `store`.
    pub async fn start_on(
        control_plane: &ControlPlane,
        store: wopr_operator::store::Store,
        settings: IngressSettings,
    ) -> TestIngress {
        let writer: Arc<dyn ClusterWriter> = Arc::new(KubeWriter(control_plane.client.clone()));
        let keys = Arc::new(MemoryIngressKeys::default());
        let ingress = Arc::new(Ingress::new(
            control_plane.index.clone(),
            store.clone(),
            writer.clone(),
            keys.clone(),
            Arc::new(GrantUses::new(
                control_plane.index.clone(),
                writer,
                Clock::System,
            )),
            Arc::new(Refusals::new(
                store,
                "wopr-system".into(),
                RefusalMetrics::default(),
            )),
            Clock::System,
            settings.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let serving = peers::serve(
            listener,
            super::tls::transport(),
            ingress.clone(),
            wopr_operator::shutdown::on(std::future::pending()),
        );
        tokio::spawn(serving);
        TestIngress {
            ingress,
            keys,
            settings,
            address,
        }
    }

    /// The URL of its messages endpoint.
    pub fn messages_url(&self) -> String {
        format!(
            "https://127.0.0.1:{}/v1alpha1/messages",
            self.address.port()
        )
    }
}

/// Runs `tests/peers/wopr_peer.{mjs,py}` (`language`: node or python)
/// with `command`, `input` on stdin; its JSON answer. Without blocking the
/// runtime: the ingress it talks to is served by the same test process.
pub async fn script(language: &str, command: &str, input: Value) -> Value {
    use tokio::io::AsyncWriteExt;
    let (program, path) = match language {
        "node" => ("node", "tests/peers/wopr_peer.mjs"),
        "python" => ("python3", "tests/peers/wopr_peer.py"),
        other => panic!("no peer in {other}"),
    };
    let mut child = tokio::process::Command::new(program)
        .arg(path)
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {program} (install it: nodejs 20, python3 with `cryptography`): {error}"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the peer script answers within a minute")
        .unwrap();
    assert!(
        output.status.success(),
        "{program} {path} {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
