//! `decide_forward`: may a gateway session forward a request to a target,
//! and under which of its Gateways' rules? Pure, as `decide` is: the rate
//! limit a rule sets is counted by the store, which sees every replica's
//! forwards.

use std::fmt;
use std::time::Duration;

use super::decide::{Outcome, Reason, Request, Source, decide};
use super::resolve::EffectiveContext;
use crate::api::{Enforcement, ForwardRule};

/// The rule a forward goes under.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchedRule<'a> {
    /// The Gateway whose rule it is.
    pub gateway: &'a str,
    /// The rule's position in the Gateway's `forwardRules`.
    pub index: usize,
    pub rule: &'a ForwardRule,
    /// How long the forward waits for approval, if the rule asks for one.
    pub approval_timeout: Duration,
}

/// Why a forward was decided as it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardReason {
    /// A rule allows it and the target admits the gateway.
    Permitted,
    /// The caller serves no Gateway.
    NotAGateway,
    /// No rule lists the target in `allowForwardTo`.
    TargetNotAllowed,
    /// Rules list the target, but none of them the action.
    ActionNotAllowed,
    /// The target's access list does not admit the gateway session.
    TargetRefuses(Reason),
}

impl fmt::Display for ForwardReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardReason::Permitted => f.write_str("permitted by a forward rule"),
            ForwardReason::NotAGateway => f.write_str("only gateway sessions may forward"),
            ForwardReason::TargetNotAllowed => {
                f.write_str("no forward rule lists the target in allowForwardTo")
            }
            ForwardReason::ActionNotAllowed => {
                f.write_str("no forward rule for the target lists the action in allowActions")
            }
            ForwardReason::TargetRefuses(reason) => write!(f, "the target refuses: {reason}"),
        }
    }
}

/// A forward decision: its outcome, the rule it goes under (when one
/// matched) and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ForwardDecision<'a> {
    pub outcome: Outcome,
    pub rule: Option<MatchedRule<'a>>,
    pub reason: ForwardReason,
}

/// Decides whether `gateway` (the caller's context) may forward `action`
/// to `target` (the target's context).
///
/// The first rule, in Gateway name order then rule order, that lists the
/// target and the action is the one the forward goes under (its rate limit
/// and approval apply). The target's access list must then admit the
/// gateway session, as for any message it sends. Breaking a rule is
/// `WouldDeny` in warn mode; what `decide` denies in every mode (an
/// untrusted gateway session reaching a session that is not a gateway)
/// stays denied.
pub fn decide_forward<'a>(
    gateway: &'a EffectiveContext,
    target: &EffectiveContext,
    action: &str,
) -> ForwardDecision<'a> {
    let violation = |reason| ForwardDecision {
        outcome: match gateway.enforcement {
            Enforcement::Enforce => Outcome::Denied,
            Enforcement::Warn => Outcome::WouldDeny,
        },
        rule: None,
        reason,
    };
    if gateway.gateways.is_empty() {
        return violation(ForwardReason::NotAGateway);
    }
    let mut target_listed = false;
    let mut matched = None;
    'search: for rules in &gateway.gateways {
        for (index, rule) in rules.forward_rules.iter().enumerate() {
            if !lists(&rule.allow_forward_to, &target.session) {
                continue;
            }
            target_listed = true;
            if rule.allow_actions.is_empty() || lists(&rule.allow_actions, action) {
                matched = Some(MatchedRule {
                    gateway: &rules.gateway,
                    index,
                    rule,
                    approval_timeout: rules.approval_timeout.into(),
                });
                break 'search;
            }
        }
    }
    let Some(rule) = matched else {
        return violation(if target_listed {
            ForwardReason::ActionNotAllowed
        } else {
            ForwardReason::TargetNotAllowed
        });
    };
    let admitted = decide(target, Request::Inject(&Source::session(gateway)));
    ForwardDecision {
        outcome: admitted.outcome,
        rule: Some(rule),
        reason: match admitted.outcome {
            Outcome::Allowed => ForwardReason::Permitted,
            _ => ForwardReason::TargetRefuses(admitted.reason),
        },
    }
}

/// Whether a rule's list names `value` (or is `*`).
fn lists(entries: &[String], value: &str) -> bool {
    entries.iter().any(|entry| entry == "*" || entry == value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AccessPattern, Gateway, GatewaySpec, RateLimit, SecurityPolicy, SecurityPolicySpec,
        Session, SessionSpec, TrustLevel,
    };
    use crate::policy::resolve;

    fn now() -> k8s_openapi::jiff::Timestamp {
        "2026-11-29T12:00:00Z".parse().unwrap()
    }

    fn rule(to: &[&str], actions: &[&str], approval: bool) -> ForwardRule {
        ForwardRule {
            allow_forward_to: to.iter().map(|s| s.to_string()).collect(),
            allow_actions: actions.iter().map(|s| s.to_string()).collect(),
            require_approval: approval,
            rate_limit: Some(RateLimit { per_minute: 20 }),
        }
    }

    fn gateway_object(rules: Vec<ForwardRule>) -> Gateway {
        let mut gateway = Gateway::new(
            "p2p-gateway",
            GatewaySpec {
                session: "gate".into(),
                forward_rules: rules,
                approval_timeout: std::time::Duration::from_secs(300).into(),
            },
        );
        gateway.metadata.namespace = Some("team".into());
        gateway
    }

    fn context(
        name: &str,
        level: TrustLevel,
        access: &[AccessPattern],
        gateways: &[Gateway],
        enforcement: Enforcement,
    ) -> EffectiveContext {
        let mut session = Session::new(name, SessionSpec::for_trust_level(level));
        session.metadata.namespace = Some("team".into());
        session.spec.access = access.to_vec();
        let mut policy = SecurityPolicy::new("default", SecurityPolicySpec::default());
        policy.spec.enforcement = enforcement;
        resolve(&session, Some(&policy), &[], gateways, now()).unwrap()
    }

    fn setup(enforcement: Enforcement) -> (EffectiveContext, EffectiveContext, EffectiveContext) {
        let gateways = [gateway_object(vec![
            rule(&["research"], &["query", "summarize"], false),
            rule(&["executor"], &["execute"], true),
        ])];
        let admits_gate = [AccessPattern::Session("gate".into())];
        (
            context(
                "gate",
                TrustLevel::SemiTrusted,
                &[AccessPattern::Anyone],
                &gateways,
                enforcement,
            ),
            context(
                "research",
                TrustLevel::SemiTrusted,
                &admits_gate,
                &[],
                enforcement,
            ),
            context("executor", TrustLevel::Trusted, &[], &[], enforcement),
        )
    }

    #[test]
    fn the_first_rule_listing_target_and_action_applies() {
        let (gate, research, _) = setup(Enforcement::Enforce);
        let decision = decide_forward(&gate, &research, "summarize");
        assert_eq!(decision.outcome, Outcome::Allowed);
        assert_eq!(decision.reason, ForwardReason::Permitted);
        let rule = decision.rule.unwrap();
        assert_eq!((rule.gateway, rule.index), ("p2p-gateway", 0));
        assert!(!rule.rule.require_approval);
        assert_eq!(rule.approval_timeout, Duration::from_secs(300));
    }

    #[test]
    fn a_target_or_action_outside_the_rules_is_denied_precisely() {
        let (gate, research, _) = setup(Enforcement::Enforce);
        let other = context("other", TrustLevel::Owner, &[], &[], Enforcement::Enforce);
        let outside = decide_forward(&gate, &other, "query");
        assert_eq!(outside.outcome, Outcome::Denied);
        assert_eq!(outside.reason, ForwardReason::TargetNotAllowed);
        let wrong_action = decide_forward(&gate, &research, "execute");
        assert_eq!(wrong_action.outcome, Outcome::Denied);
        assert_eq!(wrong_action.reason, ForwardReason::ActionNotAllowed);
        assert!(wrong_action.rule.is_none());
    }

    #[test]
    fn the_target_must_admit_the_gateway_session() {
        // executor's default access (trust:trusted) does not admit a
        // semi-trusted gateway.
        let (gate, _, executor) = setup(Enforcement::Enforce);
        let decision = decide_forward(&gate, &executor, "execute");
        assert_eq!(decision.outcome, Outcome::Denied);
        assert_eq!(
            decision.reason,
            ForwardReason::TargetRefuses(Reason::AccessNotGranted)
        );
    }

    #[test]
    fn warn_mode_lets_rule_violations_through_as_would_deny() {
        let (gate, research, executor) = setup(Enforcement::Warn);
        let wrong_action = decide_forward(&gate, &research, "execute");
        assert_eq!(wrong_action.outcome, Outcome::WouldDeny);
        assert_eq!(wrong_action.reason, ForwardReason::ActionNotAllowed);
        let refused = decide_forward(&gate, &executor, "execute");
        assert_eq!(refused.outcome, Outcome::WouldDeny);
        assert!(refused.rule.unwrap().rule.require_approval);
    }

    #[test]
    fn wildcards_and_empty_action_lists_match_everything() {
        let gateways = [gateway_object(vec![rule(&["*"], &[], false)])];
        let gate = context(
            "gate",
            TrustLevel::SemiTrusted,
            &[],
            &gateways,
            Enforcement::Enforce,
        );
        let anyone = context(
            "x",
            TrustLevel::Trusted,
            &[AccessPattern::Anyone],
            &[],
            Enforcement::Enforce,
        );
        assert_eq!(
            decide_forward(&gate, &anyone, "anything").outcome,
            Outcome::Allowed
        );
    }

    #[test]
    fn a_session_that_serves_no_gateway_cannot_forward() {
        let (_, research, executor) = setup(Enforcement::Enforce);
        let decision = decide_forward(&research, &executor, "query");
        assert_eq!(decision.outcome, Outcome::Denied);
        assert_eq!(decision.reason, ForwardReason::NotAGateway);
    }

    #[test]
    fn an_untrusted_gateway_reaches_no_session_that_is_not_a_gateway_even_in_warn_mode() {
        let gateways = [gateway_object(vec![rule(&["*"], &[], false)])];
        let gate = context(
            "gate",
            TrustLevel::Untrusted,
            &[],
            &gateways,
            Enforcement::Warn,
        );
        let open = context(
            "open",
            TrustLevel::Trusted,
            &[AccessPattern::Anyone],
            &[],
            Enforcement::Warn,
        );
        let decision = decide_forward(&gate, &open, "query");
        assert_eq!(decision.outcome, Outcome::Denied);
        assert_eq!(
            decision.reason,
            ForwardReason::TargetRefuses(Reason::UntrustedNeedsGateway)
        );
    }
}
