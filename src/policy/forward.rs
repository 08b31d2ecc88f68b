//! `decide_forward`: may a gateway session forward a request to a target,
//! and under which of its Gateways' rules? Pure, as `decide` is: the rate
//! limit a rule sets is counted by the store, which sees every replica's
//! forwards.

use std::fmt;
use std::time::Duration;

use super::decide::{Outcome, Reason, Request, Source, decide};
use super::gateway_level::within_level;
use super::resolve::EffectiveContext;
use crate::api::{Enforcement, ForwardRule, TrustLevel};

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
pub enum ForwardReason<'a> {
    /// A rule allows it and the target admits the gateway.
    Permitted,
    /// The caller serves no Gateway.
    NotAGateway,
    /// No rule lists the target in `allowForwardTo`.
    TargetNotAllowed,
    /// Rules list the target, but none of them the action.
    ActionNotAllowed,
    /// The only rules listing target and action are of Gateways declaring
    /// a trust level below the target's: whoever wrote them could not
    /// write a Session at the target's level. Denied in every mode.
    TargetAboveLevel {
        /// The first such rule's Gateway.
        gateway: &'a str,
        /// The rule's position in its `forwardRules`.
        rule: usize,
        /// The level that Gateway declares.
        declared: TrustLevel,
        /// The target's level.
        target: TrustLevel,
    },
    /// The target's access list does not admit the gateway session.
    TargetRefuses(Reason),
}

impl fmt::Display for ForwardReason<'_> {
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
            ForwardReason::TargetAboveLevel {
                gateway,
                rule,
                declared,
                target,
            } => write!(
                f,
                "Gateway {gateway} rule {rule} lists the target, but the target is {target}, above the Gateway's trustLevel {declared}: only a Gateway at trustLevel {target} (which needs use on trustlevels.wopr.dev named {target}) routes to it"
            ),
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
    pub reason: ForwardReason<'a>,
}

/// Decides whether `gateway` (the caller's context) may forward `action`
/// to `target` (the target's context).
///
/// The first rule, in Gateway name order then rule order, that lists the
/// target and the action, of a Gateway whose trust level is at or above
/// the target's, is the one the forward goes under (its rate limit and
/// approval apply). The target's access list must then admit the gateway
/// session, as for any message it sends. Breaking a rule is `WouldDeny` in
/// warn mode; a target above the level of every Gateway whose rule lists
/// it is denied in every mode (the level is who may route there, not a
/// policy to relax), as is what `decide` denies in every mode (an
/// untrusted gateway session reaching a session that is not a gateway).
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
    let mut above_level = None;
    let mut matched = None;
    'search: for rules in &gateway.gateways {
        for (index, rule) in rules.forward_rules.iter().enumerate() {
            if !rule.lists_target(&target.session) {
                continue;
            }
            target_listed = true;
            if !(rule.allow_actions.is_empty() || lists(&rule.allow_actions, action)) {
                continue;
            }
            if !within_level(rules.trust_level, target.trust_level) {
                above_level.get_or_insert(ForwardReason::TargetAboveLevel {
                    gateway: &rules.gateway,
                    rule: index,
                    declared: rules.trust_level,
                    target: target.trust_level,
                });
                continue;
            }
            matched = Some(MatchedRule {
                gateway: &rules.gateway,
                index,
                rule,
                approval_timeout: rules.approval_timeout.into(),
            });
            break 'search;
        }
    }
    let Some(rule) = matched else {
        if let Some(reason) = above_level {
            return ForwardDecision {
                outcome: Outcome::Denied,
                rule: None,
                reason,
            };
        }
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

/// Whether a rule's action list names `value` (or is `*`).
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

    /// A Gateway of `gate` declaring `level`.
    fn gateway_object(name: &str, level: TrustLevel, rules: Vec<ForwardRule>) -> Gateway {
        let mut gateway = Gateway::new(
            name,
            GatewaySpec {
                session: "gate".into(),
                trust_level: level,
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
        let gateways = [gateway_object(
            "p2p-gateway",
            TrustLevel::Trusted,
            vec![
                rule(&["research"], &["query", "summarize"], false),
                rule(&["executor"], &["execute"], true),
            ],
        )];
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
        let gateways = [gateway_object(
            "p2p-gateway",
            TrustLevel::Trusted,
            vec![rule(&["*"], &[], false)],
        )];
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
        let gateways = [gateway_object(
            "p2p-gateway",
            TrustLevel::Trusted,
            vec![rule(&["*"], &[], false)],
        )];
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

    /// A trusted and an owner target that admit `gate`, and a semi-trusted one.
    fn open_targets(enforcement: Enforcement) -> [EffectiveContext; 3] {
        let admits_gate = [AccessPattern::Session("gate".into())];
        [
            TrustLevel::SemiTrusted,
            TrustLevel::Trusted,
            TrustLevel::Owner,
        ]
        .map(|level| context(level.as_str(), level, &admits_gate, &[], enforcement))
    }

    #[test]
    fn a_forward_to_a_target_above_the_gateways_level_is_denied_in_every_mode() {
        for enforcement in [Enforcement::Enforce, Enforcement::Warn] {
            let gateways = [gateway_object(
                "p2p-gateway",
                TrustLevel::SemiTrusted,
                vec![rule(&["*"], &[], false)],
            )];
            let gate = context("gate", TrustLevel::SemiTrusted, &[], &gateways, enforcement);
            let [semi, trusted, owner] = open_targets(enforcement);
            let at_level = decide_forward(&gate, &semi, "query");
            assert_eq!(at_level.outcome, Outcome::Allowed);
            assert_eq!(at_level.reason, ForwardReason::Permitted);
            for target in [&trusted, &owner] {
                let decision = decide_forward(&gate, target, "query");
                assert_eq!(decision.outcome, Outcome::Denied, "{enforcement:?}");
                assert_eq!(
                    decision.reason,
                    ForwardReason::TargetAboveLevel {
                        gateway: "p2p-gateway",
                        rule: 0,
                        declared: TrustLevel::SemiTrusted,
                        target: target.trust_level,
                    }
                );
                assert!(decision.rule.is_none());
                assert!(
                    decision
                        .reason
                        .to_string()
                        .contains("above the Gateway's trustLevel semi-trusted"),
                    "{}",
                    decision.reason
                );
            }
        }
    }

    #[test]
    fn a_gateway_at_the_targets_level_routes_to_it_and_owner_reaches_owner() {
        // The same session serves a semi-trusted Gateway forwarding to `*`
        // and an owner one naming the owner target: the forward to it goes
        // under the owner Gateway's rule, the one to trusted under neither.
        let gateways = [
            gateway_object(
                "a-semi",
                TrustLevel::SemiTrusted,
                vec![rule(&["*"], &[], false)],
            ),
            gateway_object(
                "b-owner",
                TrustLevel::Owner,
                vec![rule(&["owner"], &[], true)],
            ),
        ];
        let gate = context(
            "gate",
            TrustLevel::SemiTrusted,
            &[],
            &gateways,
            Enforcement::Enforce,
        );
        let [_, trusted, owner] = open_targets(Enforcement::Enforce);
        let to_owner = decide_forward(&gate, &owner, "query");
        assert_eq!(to_owner.outcome, Outcome::Allowed);
        let rule = to_owner.rule.unwrap();
        assert_eq!((rule.gateway, rule.index), ("b-owner", 0));
        let to_trusted = decide_forward(&gate, &trusted, "query");
        assert!(matches!(
            to_trusted.reason,
            ForwardReason::TargetAboveLevel {
                gateway: "a-semi",
                ..
            }
        ));
    }

    #[test]
    fn a_session_above_its_gateways_level_is_no_gateway() {
        // Someone who may write semi-trusted Gateways names an owner
        // Session: it neither forwards nor takes untrusted input.
        for (level, serves) in [
            (TrustLevel::SemiTrusted, true),
            (TrustLevel::Trusted, true),
            (TrustLevel::Owner, false),
        ] {
            let gateways = [gateway_object(
                "p2p-gateway",
                TrustLevel::Trusted,
                vec![rule(&["*"], &[], false)],
            )];
            let gate = context(
                "gate",
                level,
                &[AccessPattern::Anyone],
                &gateways,
                Enforcement::Enforce,
            );
            assert_eq!(!gate.gateways.is_empty(), serves, "{level}");
            let [semi, ..] = open_targets(Enforcement::Enforce);
            let forward = decide_forward(&gate, &semi, "query");
            let untrusted = context("u", TrustLevel::Untrusted, &[], &[], Enforcement::Enforce);
            let injected = decide(&gate, Request::Inject(&Source::session(&untrusted)));
            if serves {
                assert_eq!(forward.reason, ForwardReason::Permitted, "{level}");
                assert_eq!(injected.outcome, Outcome::Allowed, "{level}");
            } else {
                assert_eq!(forward.reason, ForwardReason::NotAGateway);
                assert_eq!(injected.reason, Reason::UntrustedNeedsGateway);
            }
        }
    }
}
