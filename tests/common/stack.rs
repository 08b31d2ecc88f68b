//! The whole model path with fake providers only: the real control plane,
//! a real egress service over TLS learning each session's policy from it,
//! and the session's real sidecar relaying to it (tests/models_stack.rs,
//! benches/egress.rs); and the same for `http_fetch` ([`FetchingAgent`]:
//! tests/fetch_ssrf.rs, benches/fetch.rs).

use std::time::Duration;

use serde_json::json;
use wopr_operator::api::{ArgumentRules, HostRules, Provider, ToolRules, TrustLevel};
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::egress::service::Settings;
use wopr_operator::egress::sessions;

use super::egress::{Egress, FakeProvider, Speaks, StaticKeys};
use super::sidecar::{ControlPlane, Sidecar, SidecarOptions, token_for};
use super::{NAMESPACE, security_policy, session, tls};

pub const OPENAI_KEY: &str = "sk-proj-stack-openai-key";
pub const ANTHROPIC_KEY: &str = "sk-ant-stack-anthropic-key";

/// A control plane serving `session` (trusted, its provider `provider`
/// with `model`) in a namespace configuring both fake providers; the
/// egress service; the session's sidecar relaying to it.
pub struct Stack {
    pub control_plane: ControlPlane,
    pub egress: Egress,
    pub openai: FakeProvider,
    pub anthropic: FakeProvider,
    pub sidecar: Sidecar,
}

impl Stack {
    pub async fn start(session_name: &str, provider: &str, model: &str) -> Stack {
        let openai = FakeProvider::start(Speaks::OpenAi, OPENAI_KEY).await;
        let anthropic = FakeProvider::start(Speaks::Anthropic, ANTHROPIC_KEY).await;
        let mut control_plane = ControlPlane::start(&[session_name]).await;
        control_plane.put_policy(policy(&openai, &anthropic, None));
        let mut session = session(session_name, TrustLevel::Trusted);
        session.spec.provider = Some(Provider {
            name: provider.into(),
            model: Some(model.into()),
            fallback: Vec::new(),
        });
        control_plane.put_session(session);
        let keys = StaticKeys::default()
            .with(NAMESPACE, "openai", OPENAI_KEY)
            .with(NAMESPACE, "anthropic", ANTHROPIC_KEY);
        let egress = Egress::start_for(
            sessions::ControlPlane {
                address: control_plane.address.to_string(),
                tls: tls::client_tls(),
            },
            keys,
            Settings::default(),
        )
        .await;
        let options = SidecarOptions {
            egress: Some(egress.address.to_string()),
            ..SidecarOptions::in_memory()
        };
        let sidecar = Sidecar::start_with(
            &control_plane.address.to_string(),
            session_name,
            &token_for(session_name),
            options,
        )
        .await;
        sidecar.wait_for_policy(|policy| policy.is_some()).await;
        Stack {
            control_plane,
            egress,
            openai,
            anthropic,
            sidecar,
        }
    }

    /// Waits (up to 5 s) for `count` model_call events of the sidecar.
    pub async fn model_calls(&self, count: usize) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        for _ in 0..500 {
            events.extend(
                self.sidecar
                    .audit
                    .take()
                    .into_iter()
                    .filter(|event| event.event_type == EventType::ModelCall),
            );
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} model_call events, not {count}: {events:#?}",
            events.len()
        );
    }
}

/// The namespace's policy: both fake providers, and, when given, the
/// trusted level's `providers` (models and budgets; else the built-in).
pub fn policy(
    openai: &FakeProvider,
    anthropic: &FakeProvider,
    trusted: Option<serde_json::Value>,
) -> wopr_operator::api::SecurityPolicy {
    let mut spec = json!({"providers": [
        {"name": "openai", "type": "openai-compatible", "baseURL": openai.base_url(),
         "secretRef": {"name": "openai-key", "key": "apiKey"}},
        {"name": "anthropic", "type": "anthropic", "baseURL": anthropic.base_url(),
         "secretRef": {"name": "anthropic-key", "key": "apiKey"}},
    ]});
    if let Some(providers) = trusted {
        spec["trustLevels"] = json!({"trusted": {"providers": providers}});
    }
    security_policy(spec)
}

/// An owner session allowed to fetch from `allow_hosts`, served by the real
/// control plane; the egress service learning its policy from it; and the
/// session's sidecar relaying `http_fetch` to it.
pub struct FetchingAgent {
    pub control_plane: ControlPlane,
    pub egress: Egress,
    pub sidecar: Sidecar,
}

impl FetchingAgent {
    pub async fn start(session_name: &str, allow_hosts: &[&str]) -> FetchingAgent {
        let mut control_plane = ControlPlane::start(&[session_name]).await;
        let mut session = session(session_name, TrustLevel::Owner);
        session.spec.tools = Some(ToolRules {
            rules: Some(ArgumentRules {
                http_fetch: Some(HostRules {
                    allow_hosts: Some(allow_hosts.iter().map(|host| host.to_string()).collect()),
                    deny_hosts: Vec::new(),
                }),
                ..ArgumentRules::default()
            }),
            ..ToolRules::default()
        });
        control_plane.put_session(session);
        let egress = Egress::start_for(
            sessions::ControlPlane {
                address: control_plane.address.to_string(),
                tls: tls::client_tls(),
            },
            StaticKeys::default(),
            Settings::default(),
        )
        .await;
        let options = SidecarOptions {
            egress: Some(egress.address.to_string()),
            ..SidecarOptions::in_memory()
        };
        let address = control_plane.address.to_string();
        let sidecar =
            Sidecar::start_with(&address, session_name, &token_for(session_name), options).await;
        sidecar.wait_for_policy(|policy| policy.is_some()).await;
        FetchingAgent {
            control_plane,
            egress,
            sidecar,
        }
    }
}
