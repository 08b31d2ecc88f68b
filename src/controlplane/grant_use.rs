//! A Grant's `status.lastUsedAt`: when it last allowed something, so
//! `kubectl wopr security audit --stale-grants` reports real use.
//!
//! A Grant is used when an allowed decision relied on it (decisions.md,
//! "Grant use"): a workload's message delivered on the standing its Grants
//! give; a call of a session allowed on a capability that only its Grants
//! give it (not its trust level), whether the broker decided it or the
//! sidecar did and shipped the audit event. Every replica sees such calls;
//! each writes at most once a [`USE_INTERVAL`] per Grant, in the
//! background (a decision never waits for it, and a failed write is only
//! logged: the next use after the interval writes again).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::discover::DiscoverPolicy;
use super::writes::ClusterWriter;
use crate::audit::{AuditEvent, EventType};
use crate::clock::Clock;
use crate::policy::{CapabilitySet, Decision, EffectiveContext, Outcome};

/// A Grant's `lastUsedAt` is written at most this often by one replica.
pub const USE_INTERVAL: SignedDuration = SignedDuration::from_secs(60);

/// When each Grant's use was last written, so a busy Grant costs one write
/// a minute: in memory, per replica.
#[derive(Default)]
struct Limiter(Mutex<HashMap<(String, String), Timestamp>>);

impl Limiter {
    /// Those of the Grants `names` of `namespace` whose use is due to be
    /// written at `now` (none written in the last [`USE_INTERVAL`]), now
    /// counted as written.
    fn due(&self, namespace: &str, names: &[String], now: Timestamp) -> Vec<String> {
        let mut written = self.0.lock().expect("the limiter lock is never poisoned");
        written.retain(|_, at| now.duration_since(*at) < USE_INTERVAL);
        names
            .iter()
            .filter(|name| {
                let key = (namespace.to_owned(), (*name).clone());
                match written.get(&key) {
                    Some(_) => false,
                    None => {
                        written.insert(key, now);
                        true
                    }
                }
            })
            .cloned()
            .collect()
    }
}

/// Records the use of Grants as their `lastUsedAt`.
pub struct GrantUses {
    discover: Arc<dyn DiscoverPolicy>,
    writer: Arc<dyn ClusterWriter>,
    clock: Clock,
    limiter: Limiter,
}

impl GrantUses {
    /// Finds sessions' grants with `discover`, writes with `writer`, reads
    /// the time from `clock`.
    pub fn new(
        discover: Arc<dyn DiscoverPolicy>,
        writer: Arc<dyn ClusterWriter>,
        clock: Clock,
    ) -> GrantUses {
        GrantUses {
            discover,
            writer,
            clock,
            limiter: Limiter::default(),
        }
    }

    /// The Grants `names` of `namespace` allowed something now.
    pub fn used(&self, namespace: &str, names: &[String]) {
        let now = self.clock.now();
        for name in self.limiter.due(namespace, names, now) {
            let (writer, namespace) = (self.writer.clone(), namespace.to_owned());
            tokio::spawn(async move {
                if let Err(error) = writer.record_grant_use(&namespace, &name, now).await {
                    tracing::warn!(%namespace, grant = %name, %error, "cannot record a grant's use");
                }
            });
        }
    }

    /// `decision` about a call of the session `context` is for: when it
    /// allowed the call on a capability, the grants behind that capability
    /// were used.
    pub fn decided(&self, context: &EffectiveContext, decision: &Decision) {
        if let (Outcome::Allowed, Some(capability)) = (decision.outcome, decision.capability) {
            self.used(&context.namespace, &context.grants_behind(capability));
        }
    }

    /// What a sidecar decided, as the audit events it shipped (one
    /// session's): the grants behind each allowed tool call's capability
    /// were used, under the session's context now.
    pub fn observe(&self, events: &[AuditEvent]) {
        let Some(first) = events.first() else { return };
        // Each capability once, however many calls of the batch used it.
        let allowed: CapabilitySet = events
            .iter()
            .filter(|event| {
                event.event_type == EventType::ToolCall && event.decision == Outcome::Allowed
            })
            .filter_map(|event| event.capability)
            .collect();
        if allowed.iter().next().is_none() {
            return;
        }
        let Ok(context) = self.discover.context(&first.namespace, &first.session) else {
            return;
        };
        let mut names: Vec<String> = allowed
            .iter()
            .flat_map(|capability| context.grants_behind(capability))
            .collect();
        names.sort_unstable();
        names.dedup();
        self.used(&context.namespace, &names);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use tokio::sync::mpsc;

    use super::*;
    use crate::api::{
        ApprovalRequest, Capability, Enforcement, Grant, GrantSpec, GrantSubject, Session,
        SessionSpec, SourceRef, SourceType, TrustLevel,
    };
    use crate::controlplane::discover::KnownContexts;
    use crate::controlplane::writes::WriteError;
    use crate::policy::{Reason, resolve};

    fn start() -> Timestamp {
        "2026-12-06T12:00:00Z".parse().unwrap()
    }

    /// Sends every use it is asked to record.
    struct Uses(mpsc::UnboundedSender<(String, String, Timestamp)>);

    #[tonic::async_trait]
    impl ClusterWriter for Uses {
        async fn file(&self, _: &ApprovalRequest) -> Result<(), WriteError> {
            unreachable!("grant uses file nothing")
        }

        async fn create_session(&self, _: &Session) -> Result<(), WriteError> {
            unreachable!("grant uses create nothing")
        }

        async fn record_grant_use(
            &self,
            namespace: &str,
            grant: &str,
            at: Timestamp,
        ) -> Result<(), WriteError> {
            self.0
                .send((namespace.to_owned(), grant.to_owned(), at))
                .unwrap();
            Ok(())
        }
    }

    fn recorder(knows: Option<EffectiveContext>) -> (GrantUses, Written) {
        let (sender, written) = mpsc::unbounded_channel();
        let uses = GrantUses::new(
            Arc::new(KnownContexts::of(knows)),
            Arc::new(Uses(sender)),
            Clock::starting_at(start()),
        );
        (uses, written)
    }

    type Written = mpsc::UnboundedReceiver<(String, String, Timestamp)>;

    /// Every use written so far, sorted.
    async fn drain(written: &mut Written) -> Vec<(String, String, Timestamp)> {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let mut all = Vec::new();
        while let Ok(one) = written.try_recv() {
            all.push(one);
        }
        all.sort();
        all
    }

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_in_use_is_written_at_most_once_a_minute() {
        let (uses, mut written) = recorder(None);
        uses.used("ns", &names(&["a", "b"]));
        let mut first = vec![written.recv().await.unwrap(), written.recv().await.unwrap()];
        first.sort();
        assert_eq!(
            first,
            [
                ("ns".into(), "a".into(), start()),
                ("ns".into(), "b".into(), start())
            ]
        );

        tokio::time::advance(Duration::from_secs(59)).await;
        uses.used("ns", &names(&["a"]));
        uses.used("other", &names(&["a"]));
        let later = start() + SignedDuration::from_secs(59);
        assert_eq!(
            written.recv().await.unwrap(),
            ("other".into(), "a".into(), later),
            "another namespace's grant of that name is another grant"
        );
        assert_eq!(drain(&mut written).await, [], "ns/a: within the minute");

        tokio::time::advance(Duration::from_secs(1)).await;
        uses.used("ns", &names(&["a"]));
        assert_eq!(
            written.recv().await.unwrap(),
            ("ns".into(), "a".into(), start() + USE_INTERVAL),
            "a minute after the last write, the next use is written"
        );
    }

    /// A semi-trusted session `s` with a grant `net` (inject.network, which
    /// its level lacks) and a grant `tools` (inject.tools, which it has).
    fn context() -> EffectiveContext {
        let mut session = Session::new("s", SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
        session.metadata.namespace = Some("ns".into());
        let grant = |name: &str, capability| {
            let mut grant = Grant::new(
                name,
                GrantSpec {
                    subject: GrantSubject::session("s"),
                    profile: None,
                    capabilities: vec![capability],
                    sessions: Vec::new(),
                    not_before: None,
                    expires_at: None::<Time>,
                    previous_keys: Vec::new(),
                },
            );
            grant.metadata.namespace = Some("ns".into());
            grant
        };
        let grants = [
            grant("net", Capability::InjectNetwork),
            grant("tools", Capability::InjectTools),
        ];
        resolve(&session, None, &grants, &[], start()).unwrap()
    }

    fn tool_call(capability: Option<Capability>, decision: Outcome) -> AuditEvent {
        let mut event = AuditEvent::new(
            start(),
            EventType::ToolCall,
            "ns",
            "s",
            SourceRef {
                source_type: SourceType::Session.into(),
                identity: "s".into(),
                trust_level: TrustLevel::SemiTrusted,
            },
            decision,
            Enforcement::Enforce,
            String::new(),
        );
        event.capability = capability;
        event
    }

    #[tokio::test(start_paused = true)]
    async fn only_allowed_calls_on_a_capability_the_level_lacks_use_a_grant() {
        let (uses, mut written) = recorder(Some(context()));
        uses.observe(&[
            tool_call(Some(Capability::InjectTools), Outcome::Allowed),
            tool_call(Some(Capability::InjectNetwork), Outcome::Denied),
            tool_call(Some(Capability::InjectNetwork), Outcome::WouldDeny),
            tool_call(None, Outcome::Allowed),
        ]);
        assert_eq!(drain(&mut written).await, [], "nothing relied on a grant");
        uses.observe(&[tool_call(Some(Capability::InjectNetwork), Outcome::Allowed)]);
        assert_eq!(
            drain(&mut written).await,
            [("ns".into(), "net".into(), start())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_brokers_allowed_decisions_use_the_grants_behind_them() {
        let (uses, mut written) = recorder(None);
        let decision = |outcome, capability| Decision {
            outcome,
            capability: Some(capability),
            reason: Reason::Permitted,
        };
        uses.decided(
            &context(),
            &decision(Outcome::Denied, Capability::InjectNetwork),
        );
        uses.decided(
            &context(),
            &decision(Outcome::Allowed, Capability::InjectTools),
        );
        assert_eq!(drain(&mut written).await, []);
        uses.decided(
            &context(),
            &decision(Outcome::Allowed, Capability::InjectNetwork),
        );
        assert_eq!(
            drain(&mut written).await,
            [("ns".into(), "net".into(), start())]
        );
    }
}
