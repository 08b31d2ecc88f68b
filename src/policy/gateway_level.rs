//! A Gateway's declared trust level (`spec.trustLevel`): the highest level
//! of Session it may route untrusted input to. Admission cannot look up the
//! levels of the Sessions a Gateway names, so writing a Gateway takes `use`
//! on the level it declares (charts/wopr-operator/templates/escalation.yaml)
//! and these checks hold the Gateway to it: its session is served only at
//! or below it ([`super::resolve`]), and a forward reaches only targets at
//! or below it ([`super::decide_forward`]).

use crate::api::{GatewaySpec, TrustLevel};

/// Whether a Gateway declaring `declared` may route to a Session at
/// `level`, as its gateway session or as a forward's target.
pub fn within_level(declared: TrustLevel, level: TrustLevel) -> bool {
    level <= declared
}

/// A Session a Gateway's rule lists (by name or `*`) above the Gateway's level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetAboveLevel {
    /// The rule's position in `forwardRules`.
    pub rule: usize,
    /// The Session.
    pub session: String,
    /// Its trust level.
    pub level: TrustLevel,
}

/// The Sessions of `sessions` (name and level, in the Gateway's namespace)
/// that `gateway`'s rules list above its level, by rule then session order:
/// what the Gateway's status reports, since forwards to them are refused.
pub fn targets_above_level(
    gateway: &GatewaySpec,
    sessions: &[(String, TrustLevel)],
) -> Vec<TargetAboveLevel> {
    gateway
        .forward_rules
        .iter()
        .enumerate()
        .flat_map(|(rule, forward)| {
            sessions
                .iter()
                .filter(move |(name, level)| {
                    forward.lists_target(name) && !within_level(gateway.trust_level, *level)
                })
                .map(move |(name, level)| TargetAboveLevel {
                    rule,
                    session: name.clone(),
                    level: *level,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ForwardRule;

    fn rule(to: &[&str]) -> ForwardRule {
        ForwardRule {
            allow_forward_to: to.iter().map(|s| s.to_string()).collect(),
            allow_actions: Vec::new(),
            require_approval: false,
            rate_limit: None,
        }
    }

    #[test]
    fn a_level_reaches_itself_and_below_only() {
        for declared in TrustLevel::ALL {
            for level in TrustLevel::ALL {
                assert_eq!(within_level(declared, level), level <= declared);
            }
        }
        assert!(within_level(TrustLevel::Owner, TrustLevel::Owner));
        assert!(!within_level(TrustLevel::SemiTrusted, TrustLevel::Trusted));
    }

    #[test]
    fn the_targets_above_the_level_are_named_by_rule_and_wildcards_count() {
        let spec = GatewaySpec {
            session: "gate".into(),
            trust_level: TrustLevel::SemiTrusted,
            forward_rules: vec![rule(&["research", "executor"]), rule(&["*"])],
            approval_timeout: std::time::Duration::from_secs(300).into(),
        };
        let sessions = [
            ("executor".to_owned(), TrustLevel::Trusted),
            ("lead".to_owned(), TrustLevel::Owner),
            ("research".to_owned(), TrustLevel::SemiTrusted),
        ];
        let named: Vec<(usize, String, TrustLevel)> = targets_above_level(&spec, &sessions)
            .into_iter()
            .map(|t| (t.rule, t.session, t.level))
            .collect();
        assert_eq!(
            named,
            [
                (0, "executor".to_owned(), TrustLevel::Trusted),
                (1, "executor".to_owned(), TrustLevel::Trusted),
                (1, "lead".to_owned(), TrustLevel::Owner)
            ]
        );
        let owner = GatewaySpec {
            trust_level: TrustLevel::Owner,
            ..spec
        };
        assert!(targets_above_level(&owner, &sessions).is_empty());
    }
}
