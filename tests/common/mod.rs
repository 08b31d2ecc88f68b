//! Builders for test objects, shared by the integration tests.
#![allow(dead_code)] // each test crate uses a different subset

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use wopr_operator::api::{
    Capability, Gateway, GatewaySpec, Grant, GrantSpec, GrantSubject, PreviousKey, SandboxSpec,
    SecurityPolicy, Session, SessionSpec, TrustLevel,
};
use wopr_operator::controller::session::config::{ControlPlane, SandboxConfig};

pub mod admission;
pub mod approvals;
pub mod broker;
pub mod cluster;
pub mod e2e;
pub mod egress;
pub mod escalations;
pub mod fake_api;
pub mod fake_models;
pub mod harness;
pub mod kubelet;
pub mod logs;
pub mod mcp;
pub mod peers;
pub mod pod_security;
pub mod process;
pub mod sdk;
pub mod sidecar;
pub mod stack;
pub mod startup;
pub mod store;
pub mod tls;

pub const NAMESPACE: &str = "team-a";

/// Builder settings for tests: test images, the in-cluster control plane.
pub fn sandbox_config() -> SandboxConfig {
    SandboxConfig {
        sidecar_image: "ghcr.io/wopr-network/wopr-operator:test".into(),
        default_agent_image: "ghcr.io/wopr-network/wopr-operator:test".into(),
        default_agent_args: vec!["demo-agent".into()],
        control_plane: ControlPlane::parse(
            "https://wopr-operator.wopr-system.svc:9443",
            "wopr-system",
        )
        .unwrap(),
        egress: None,
        default_memory: Quantity("512Mi".into()),
        default_cpu: Quantity("500m".into()),
        isolation_probes: vec![("apiserver".into(), "10.96.0.1:443".parse().unwrap())],
        default_seccomp_profile: None,
        insecure_plaintext: false,
    }
}

/// The pod of `session` under the built-in profiles, with [`sandbox_config`].
pub fn pod_of(session: &Session) -> Pod {
    let context = wopr_operator::policy::resolve(session, None, &[], &[], now()).unwrap();
    wopr_operator::controller::session::build::build_pod(session, &context, &sandbox_config())
}

/// A fixed "now" for tests.
/// The decision on a call of the tool called `name`, as the edge where an
/// agent's call arrives makes it (an unknown name included).
pub fn decide_named(
    context: &wopr_operator::policy::EffectiveContext,
    name: &str,
) -> wopr_operator::policy::Decision {
    wopr_operator::policy::decide_tool_call(context, name)
        .map_or_else(|unknown| unknown, |(_, known)| known)
}

pub fn now() -> Timestamp {
    "2026-11-24T12:00:00Z".parse().unwrap()
}

pub fn at(offset_seconds: i64) -> Time {
    Time(now() + SignedDuration::from_secs(offset_seconds))
}

pub fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        uid: Some(format!("uid-{name}")),
        ..Default::default()
    }
}

pub fn session(name: &str, trust_level: TrustLevel) -> Session {
    Session {
        metadata: meta(name),
        spec: SessionSpec::for_trust_level(trust_level),
        status: None,
    }
}

pub fn sandboxed(mut session: Session) -> Session {
    session.spec.sandbox = Some(SandboxSpec {
        enabled: Some(true),
        ..Default::default()
    });
    session
}

fn grant(name: &str, subject: GrantSubject) -> Grant {
    Grant {
        metadata: meta(name),
        spec: GrantSpec {
            subject,
            profile: None,
            capabilities: Vec::new(),
            sessions: Vec::new(),
            not_before: None,
            expires_at: None,
            previous_keys: Vec::new(),
        },
        status: None,
    }
}

/// A grant of `capabilities` to the session `session`.
pub fn session_grant(name: &str, session: &str, capabilities: &[Capability]) -> Grant {
    let mut grant = grant(name, GrantSubject::session(session));
    grant.spec.capabilities = capabilities.to_vec();
    grant
}

/// A grant of `profile` to the peer with `public_key`.
pub fn peer_grant(name: &str, public_key: &str, profile: TrustLevel) -> Grant {
    let mut grant = grant(name, GrantSubject::peer(public_key));
    grant.spec.profile = Some(profile);
    grant
}

/// A grant of `profile` to the workload `namespace/account` (a service
/// account), for `sessions` (every session when empty).
pub fn workload_grant(
    name: &str,
    (namespace, account): (&str, &str),
    profile: TrustLevel,
    sessions: &[&str],
) -> Grant {
    let mut grant = grant(name, GrantSubject::service_account(namespace, account));
    grant.spec.profile = Some(profile);
    grant.spec.sessions = sessions.iter().map(|s| (*s).to_owned()).collect();
    grant
}

pub fn rotated_from(mut grant: Grant, old_key: &str, rotated_at: Time) -> Grant {
    grant.spec.previous_keys.push(PreviousKey {
        public_key: old_key.into(),
        rotated_at,
        reason: None,
    });
    grant
}

pub fn gateway(name: &str, session: &str) -> Gateway {
    Gateway {
        metadata: meta(name),
        spec: GatewaySpec {
            session: session.into(),
            trust_level: TrustLevel::SemiTrusted,
            forward_rules: Vec::new(),
            approval_timeout: std::time::Duration::from_secs(300).into(),
        },
        status: None,
    }
}

/// The namespace's `default` SecurityPolicy with this spec (JSON, as written in YAML).
pub fn security_policy(spec: serde_json::Value) -> SecurityPolicy {
    SecurityPolicy {
        metadata: meta("default"),
        spec: serde_json::from_value(spec).expect("a valid SecurityPolicy spec"),
        status: None,
    }
}

/// The OpenAPI schema of a CRD's only version, as JSON.
pub fn crd_schema(crd: &CustomResourceDefinition) -> serde_json::Value {
    let schema = crd.spec.versions[0].schema.as_ref().expect("a schema");
    serde_json::to_value(
        schema
            .open_api_v3_schema
            .as_ref()
            .expect("an openAPIV3Schema"),
    )
    .unwrap()
}

/// The namespace `manifests/install.yaml` installs into.
pub const INSTALL_NAMESPACE: &str = "wopr-system";

/// The rendered object of `kind` named `name`.
pub fn rendered(kind: &str, name: &str) -> serde_json::Value {
    static INSTALL: std::sync::LazyLock<Vec<serde_json::Value>> =
        std::sync::LazyLock::new(install_yaml);
    INSTALL
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{kind} {name} in manifests/install.yaml"))
}

/// The ClusterRoles of `manifests/install.yaml` for people: those the
/// chart binds to nobody, sorted by name.
pub fn people_roles() -> Vec<String> {
    let objects = install_yaml();
    let mut roles: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        // The egress service's, which the controller binds per namespace.
        .filter(|name| name != wopr_operator::contract::PROVIDER_KEYS_ROLE)
        .filter(|name| {
            !objects
                .iter()
                .any(|o| o["roleRef"]["name"] == name.as_str())
        })
        .collect();
    roles.sort();
    roles
}

/// The reference Sessions and Gateway as examples/ ship them
/// (`examples/sessions.yaml`, then `examples/gateway.yaml`).
pub fn reference_objects() -> Vec<wopr_operator::api::WoprObject> {
    let mut objects = Vec::new();
    for path in ["examples/sessions.yaml", "examples/gateway.yaml"] {
        let text =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
        let parsed =
            wopr_operator::api::parse_manifests(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        objects.extend(parsed);
    }
    objects
}

/// Every object of `manifests/install.yaml` (the chart rendered with default values).
pub fn install_yaml() -> Vec<serde_json::Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/install.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/install.yaml");
    serde_saphyr::from_multiple(&text).expect("install.yaml parses")
}
