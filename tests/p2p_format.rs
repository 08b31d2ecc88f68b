//! WOPR's P2P format against peers whose signing code nobody here wrote:
//! `tests/peers/wopr_peer.mjs` (Node's built-in crypto, signing exactly as
//! WOPR's plugin does) and `tests/peers/wopr_peer.py` (Python's
//! `cryptography`, and Python's JSON, which escapes non-ASCII where Node
//! writes UTF-8). What they sign must open here, what is changed on the
//! way must not, and what we sign must verify there.
//!
//! These need `node` (20 or later) and `python3` with `cryptography`
//! (`pip install -r tests/peers/requirements.txt`): a missing one fails
//! the test, saying what to install, rather than skipping it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use wopr_operator::p2p::{
    Action, Body, IngressKey, Members, PeerKey, RotationReason, Unverified, invite, open, rotation,
};

/// A peer program and what to install when it cannot run.
struct Peer {
    name: &'static str,
    program: &'static str,
    script: &'static str,
    /// A command that succeeds when the program and its libraries are there.
    probe: &'static [&'static str],
    install: &'static str,
}

const NODE: Peer = Peer {
    name: "Node",
    program: "node",
    script: "wopr_peer.mjs",
    probe: &[
        "-e",
        "require('node:crypto').generateKeyPairSync('ed25519')",
    ],
    install: "install Node.js 20 or later (`node` on the PATH)",
};

const PYTHON: Peer = Peer {
    name: "Python",
    program: "python3",
    script: "wopr_peer.py",
    probe: &["-c", "import cryptography"],
    install: "install Python 3 and `pip install -r tests/peers/requirements.txt` (the cryptography package)",
};

const PEERS: [Peer; 2] = [NODE, PYTHON];

impl Peer {
    /// Fails, saying what to install, unless the peer can run.
    fn ready(&self) {
        let probe = Command::new(self.program)
            .args(self.probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            probe.is_ok_and(|status| status.success()),
            "the {} peer cannot run: {}",
            self.name,
            self.install
        );
    }

    /// The peer's answer to `command` given `input`, a JSON object's text.
    fn run(&self, command: &str, input: &str) -> Value {
        let output = self.run_raw(command, input);
        serde_json::from_slice(&output).unwrap_or_else(|error| {
            panic!(
                "{} {command} printed no JSON ({error}): {}",
                self.name,
                String::from_utf8_lossy(&output)
            )
        })
    }

    /// [`Peer::run`]'s answer as the peer wrote it.
    fn run_raw(&self, command: &str, input: &str) -> Vec<u8> {
        self.ready();
        let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "peers", self.script]
            .iter()
            .collect();
        let mut child = Command::new(self.program)
            .arg(&script)
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "{} {}: {error}: {}",
                    self.program,
                    script.display(),
                    self.install
                )
            });
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{} {command} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// A new key pair: (public, private), both base64.
    fn keygen(&self) -> (String, String) {
        let keys = self.run("keygen", "{}");
        (text(&keys["publicKey"]), text(&keys["privateKey"]))
    }

    /// The exact text the peer sends for `message` (an object's text, its
    /// members in the order the peer is to write them).
    fn sign(&self, private_key: &str, message: &str) -> String {
        let input = format!(
            r#"{{"privateKey":{},"message":{message}}}"#,
            json!(private_key)
        );
        text(&self.run("sign", &input)["signed"])
    }

    /// Whether the peer, verifying as WOPR does, accepts `input`.
    fn verifies(&self, input: &Value) -> Value {
        self.run("verify", &input.to_string())
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value}"))
        .to_owned()
}

/// An object's text with its members in the order given.
fn ordered(members: &[(&str, Value)]) -> String {
    let members: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{}:{value}", json!(name)))
        .collect();
    format!("{{{}}}", members.join(","))
}

const NONCE: &str = "8f14e45fceea167a5a36dedd4bea2543";
const TS: i64 = 1_760_000_000_000;
/// Non-ASCII, outside the BMP too: Node writes it as UTF-8, Python as
/// `\uXXXX` escapes (surrogate pairs for the emoji). Both must verify as
/// received.
const PAYLOAD: &str = "héllo — 日本語 ✓ 🚀 \"quoted\" \\ back";

/// An inject from `from`, in the order WOPR writes one.
fn inject(from: &str) -> String {
    ordered(&[
        ("v", json!(2)),
        ("type", json!("inject")),
        ("from", json!(from)),
        ("session", json!("team-a/researcher")),
        ("payload", json!(PAYLOAD)),
        ("requestId", json!("req-1")),
        ("nonce", json!(NONCE)),
        ("ts", json!(TS)),
    ])
}

fn unverified(raw: &str) -> Unverified {
    open(raw.as_bytes()).expect_err(raw)
}

#[test]
fn messages_signed_by_the_peers_open() {
    for peer in PEERS {
        let (public, private) = peer.keygen();
        let raw = peer.sign(&private, &inject(&public));
        if peer.name == "Python" {
            assert!(raw.contains(r"h\u00e9llo"), "Python escapes: {raw}");
        } else {
            assert!(raw.contains("héllo"), "Node writes UTF-8: {raw}");
        }
        let verified =
            open(raw.as_bytes()).unwrap_or_else(|error| panic!("{}: {error}", peer.name));
        assert_eq!(verified.from, PeerKey::parse(&public).unwrap());
        assert_eq!(verified.ts_ms, Some(TS));
        assert_eq!(verified.nonce.as_deref(), Some(NONCE));
        let fields = verified.fields.unwrap();
        assert_eq!((fields.version, fields.action), (2, Action::Inject));
        let Body::Inject {
            namespace,
            session,
            payload,
            request_id,
            ..
        } = fields.body
        else {
            panic!("{:?}", fields.body)
        };
        assert_eq!(
            (namespace.as_str(), session.as_str()),
            ("team-a", "researcher")
        );
        assert_eq!(payload, json!(PAYLOAD), "{}", peer.name);
        assert_eq!(request_id.as_deref(), Some("req-1"));

        let outbox = ordered(&[
            ("v", json!(1)),
            ("type", json!("outbox")),
            ("from", json!(public)),
            ("session", json!("team-a/p2p-gateway")),
            ("messageId", json!("01kc")),
            ("nonce", json!(NONCE)),
            ("ts", json!(TS)),
        ]);
        let fields = open(peer.sign(&private, &outbox).as_bytes())
            .unwrap()
            .fields
            .unwrap();
        assert_eq!(
            fields.body,
            Body::Outbox {
                namespace: "team-a".into(),
                session: "p2p-gateway".into(),
                message_id: "01kc".into(),
            }
        );
    }
}

#[test]
fn what_is_changed_on_the_way_or_not_by_its_sender_is_refused() {
    for peer in PEERS {
        let (public, private) = peer.keygen();
        let raw = peer.sign(&private, &inject(&public));

        let tampered = raw.replace("researcher", "researcheR");
        assert_ne!(tampered, raw);
        assert!(
            matches!(unverified(&tampered), Unverified::BadSignature(_)),
            "{}: a tampered payload",
            peer.name
        );

        // The same object, its members re-ordered (serde_json's map sorts
        // them): equivalent, and not what was signed.
        let value: Value = serde_json::from_str(&raw).unwrap();
        let reordered = value.to_string();
        assert_eq!(serde_json::from_str::<Value>(&reordered).unwrap(), value);
        assert_ne!(reordered, raw);
        assert!(
            matches!(unverified(&reordered), Unverified::BadSignature(_)),
            "{}: a re-ordered object",
            peer.name
        );

        let (_, other_private) = peer.keygen();
        let by_another = peer.sign(&other_private, &inject(&public));
        assert!(
            matches!(unverified(&by_another), Unverified::BadSignature(_)),
            "{}: signed by a key other than from",
            peer.name
        );

        let not_a_key = peer.sign(&private, &inject("not-a-key"));
        let Unverified::NoSender(why) = unverified(&not_a_key) else {
            panic!("{}: from not a key", peer.name)
        };
        assert!(why.starts_with("from is not base64"), "{why}");

        let encrypt_only = x25519_public(&peer);
        let Unverified::NoSender(why) = unverified(&peer.sign(&private, &inject(&encrypt_only)))
        else {
            panic!("{}: from an X25519 key", peer.name)
        };
        assert!(why.contains("X25519"), "{why}");
    }
}

/// An X25519 public key (WOPR's `encryptPub`), from a rotation the peer
/// writes: the key a peer might give as `from` by mistake.
fn x25519_public(peer: &Peer) -> String {
    let (_, old) = peer.keygen();
    let (new, _) = peer.keygen();
    let input = json!({"oldPrivateKey": old, "newPublicKey": new, "reason": "scheduled", "gracePeriodMs": 1, "effectiveAt": 1});
    text(&peer.run("rotate", &input.to_string())["keyRotation"]["newEncryptPub"])
}

#[test]
fn invites_issued_by_the_peers_parse() {
    for peer in PEERS {
        let (issuer, private) = peer.keygen();
        let (subject, _) = peer.keygen();
        let input = json!({
            "privateKey": private,
            "sub": subject,
            "ses": ["team-a/researcher", "team-a/writer"],
            "cap": ["inject"],
            "exp": TS + 3_600_000,
            "nonce": NONCE,
        });
        let token = text(&peer.run("invite", &input.to_string())["token"]);
        let parsed = invite::parse(&token).unwrap_or_else(|error| panic!("{}: {error}", peer.name));
        assert_eq!(parsed.version, 1);
        assert_eq!(parsed.issuer.as_str(), issuer);
        assert_eq!(parsed.subject.as_str(), subject);
        assert_eq!(parsed.sessions, ["team-a/researcher", "team-a/writer"]);
        assert_eq!(parsed.capabilities, ["inject"]);
        assert_eq!(parsed.expires_ms, TS + 3_600_000);
        assert_eq!(parsed.nonce, NONCE);
    }
}

#[test]
fn a_claim_signed_by_its_subject_carries_the_invite() {
    for peer in PEERS {
        let (_, issuer) = peer.keygen();
        let (subject, subject_private) = peer.keygen();
        let input = json!({"privateKey": issuer, "sub": subject, "ses": ["a/b"], "cap": ["inject"], "exp": TS, "nonce": NONCE});
        let token = text(&peer.run("invite", &input.to_string())["token"]);
        let claim = ordered(&[
            ("v", json!(2)),
            ("type", json!("claim")),
            ("from", json!(subject)),
            ("token", json!(token)),
            ("nonce", json!(NONCE)),
            ("ts", json!(TS)),
        ]);
        let fields = open(peer.sign(&subject_private, &claim).as_bytes())
            .unwrap()
            .fields
            .unwrap();
        assert_eq!(fields.body, Body::Claim { token });
    }
}

#[test]
fn rotations_written_by_the_peers_verify() {
    for peer in PEERS {
        let (old, old_private) = peer.keygen();
        let (new, _) = peer.keygen();
        let input = json!({"oldPrivateKey": old_private, "newPublicKey": new, "reason": "compromise", "gracePeriodMs": 86_400_000, "effectiveAt": TS});
        // The inner object as the peer wrote it (its signature covers
        // that text), embedded in the message the peer signs.
        let output = peer.run_raw("rotate", &input.to_string());
        let answer = Members::parse(&output).unwrap();
        let inner = std::str::from_utf8(answer.raw("keyRotation").unwrap()).unwrap();
        let message = format!(
            r#"{{"v":2,"type":"key-rotation","from":{},"keyRotation":{inner},"nonce":"{NONCE}","ts":{TS}}}"#,
            json!(old),
        );
        let raw = peer.sign(&old_private, &message);
        let fields = open(raw.as_bytes())
            .unwrap_or_else(|error| panic!("{}: {error}", peer.name))
            .fields
            .unwrap_or_else(|error| panic!("{}: {error}", peer.name));
        let Body::KeyRotation(rotation) = fields.body else {
            panic!("{:?}", fields.body)
        };
        assert_eq!(rotation.old.as_str(), old);
        assert_eq!(rotation.new.as_str(), new);
        assert_eq!(rotation.reason, RotationReason::Compromise);
        assert_eq!(
            (rotation.effective_at_ms, rotation.grace_period_ms),
            (TS, 86_400_000)
        );

        // The member's raw text as received, read on its own.
        let members = Members::parse(raw.as_bytes()).unwrap();
        let member = members.raw("keyRotation").unwrap();
        let from = PeerKey::parse(&old).unwrap();
        assert_eq!(rotation::parse(member, &from), Ok(*rotation));
        let someone = PeerKey::parse(&new).unwrap();
        assert!(
            rotation::parse(member, &someone).is_err(),
            "not by its sender"
        );
    }
}

#[test]
fn what_we_sign_verifies_in_the_peers() {
    let ours = IngressKey::generate();
    let public = ours.public_key();
    let (peer_public, _) = NODE.keygen();
    let subject = PeerKey::parse(&peer_public).unwrap();
    let token = invite::issue(
        &ours,
        &subject,
        &["team-a/researcher".to_owned()],
        &["inject".to_owned()],
        TS,
        NONCE,
    );
    let signed = ours.sign_json(&inject(public.as_str()));
    for peer in PEERS {
        let answer = peer.verifies(&json!({"publicKey": public.as_str(), "signed": signed}));
        assert_eq!(answer["ok"], json!(true), "{}: our message", peer.name);
        let tampered = signed.replace("researcher", "researcheR");
        let answer = peer.verifies(&json!({"publicKey": public.as_str(), "signed": tampered}));
        assert_eq!(
            answer["ok"],
            json!(false),
            "{}: the check is not vacuous",
            peer.name
        );

        let answer = peer.verifies(&json!({"token": token}));
        assert_eq!(answer["ok"], json!(true), "{}: our invite", peer.name);
        assert_eq!(answer["invite"]["iss"], json!(public.as_str()));
        assert_eq!(answer["invite"]["sub"], json!(peer_public));
        assert_eq!(answer["invite"]["ses"], json!(["team-a/researcher"]));
        assert_eq!(answer["invite"]["exp"], json!(TS));

        // Our PKCS#8 is one the peer signs with.
        let private = base64_of(&ours.to_pkcs8_der());
        let raw = peer.sign(&private, &inject(public.as_str()));
        assert_eq!(open(raw.as_bytes()).unwrap().from, public, "{}", peer.name);
    }
}

#[test]
fn keys_the_peers_write_are_read() {
    for peer in PEERS {
        let (public, private) = peer.keygen();
        let key = PeerKey::parse(&public).unwrap();
        let der = decode(&private);
        let ours = IngressKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(ours.public_key(), key, "{}", peer.name);
        assert_eq!(
            ours.to_pkcs8_der(),
            der,
            "{}: v1, as the peer wrote it",
            peer.name
        );
        assert_eq!(key.short_id().len(), 8);
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
