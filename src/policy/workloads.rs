//! What a workload may do towards a session: the standing of the service
//! account it calls the control plane with, from the Grants naming it. A
//! workload no Grant names has none and may send nothing: unlike a person,
//! whose RBAC right to a session makes them its operator, a workload
//! arrives as what its Grant says, through the session's access list.

use k8s_openapi::jiff::Timestamp;

use super::standing::{Standing, standing_from};
use crate::api::{Grant, SecurityPolicy};

/// The standing of the service account `account` (`namespace`, `name`)
/// towards `session` in `namespace`, or `None` when no active grant in
/// scope names it.
pub fn resolve_workload<'a>(
    account: (&str, &str),
    session: &str,
    namespace: &str,
    policy: Option<&SecurityPolicy>,
    grants: impl IntoIterator<Item = &'a Grant>,
    now: Timestamp,
) -> Option<Standing> {
    let (account_namespace, account_name) = account;
    let names = |grant: &Grant| {
        grant
            .spec
            .subject
            .service_account
            .as_ref()
            .is_some_and(|named| named.namespace == account_namespace && named.name == account_name)
    };
    let policy = policy.map(|policy| &policy.spec);
    standing_from(grants, session, namespace, policy, now, names).map(|(standing, _)| standing)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{Capability, GrantSpec, GrantSubject, TrustLevel};
    use crate::policy::CapabilitySet;

    fn now() -> Timestamp {
        "2026-11-24T12:00:00Z".parse().unwrap()
    }

    fn grant(name: &str, subject: GrantSubject, edit: impl FnOnce(&mut GrantSpec)) -> Grant {
        let mut spec = GrantSpec {
            subject,
            profile: None,
            capabilities: vec![Capability::Inject],
            sessions: Vec::new(),
            not_before: None,
            expires_at: None,
            previous_keys: Vec::new(),
        };
        edit(&mut spec);
        let mut grant = Grant::new(name, spec);
        grant.metadata.namespace = Some("agents".into());
        grant
    }

    #[test]
    fn a_workload_stands_as_its_grants_say_and_no_further() {
        let bot = || GrantSubject::service_account("ci", "bot");
        let grants = [
            grant("bot-gateway", bot(), |spec| {
                spec.capabilities.clear();
                spec.profile = Some(TrustLevel::SemiTrusted);
                spec.sessions = vec!["gateway".into()];
            }),
            grant("bot-inject", bot(), |_| {}),
            grant("bot-expired", bot(), |spec| {
                spec.capabilities = vec![Capability::InjectExec];
                spec.expires_at = Some(Time(now()));
            }),
            grant(
                "other-bot",
                GrantSubject::service_account("ci", "other"),
                |spec| {
                    spec.capabilities = vec![Capability::ConfigWrite];
                },
            ),
            grant(
                "same-name-elsewhere",
                GrantSubject::service_account("prod", "bot"),
                |_| {},
            ),
            grant("a-session", GrantSubject::session("bot"), |_| {}),
        ];
        let at_gateway =
            resolve_workload(("ci", "bot"), "gateway", "agents", None, &grants, now()).unwrap();
        assert_eq!(at_gateway.trust_level, TrustLevel::SemiTrusted);
        assert_eq!(at_gateway.grants, ["bot-gateway", "bot-inject"]);
        assert!(
            !at_gateway.capabilities.has(Capability::InjectExec),
            "expired"
        );
        assert!(
            !at_gateway.capabilities.has(Capability::ConfigWrite),
            "another's"
        );

        let elsewhere =
            resolve_workload(("ci", "bot"), "research", "agents", None, &grants, now()).unwrap();
        assert_eq!(elsewhere.trust_level, TrustLevel::Untrusted);
        assert_eq!(
            elsewhere.capabilities,
            [Capability::Inject].into_iter().collect::<CapabilitySet>()
        );

        assert_eq!(
            resolve_workload(("ci", "nobody"), "gateway", "agents", None, &grants, now()),
            None
        );
        assert_eq!(
            resolve_workload(
                ("ci", "bot"),
                "gateway",
                "other-namespace",
                None,
                &grants,
                now()
            ),
            None
        );
    }
}
