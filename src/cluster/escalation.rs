//! Whether the cluster guards trust levels at admission: the chart's
//! ValidatingAdmissionPolicies [`ESCALATION_POLICIES`] and their bindings
//! refuse objects that raise a trust level their author may not grant.
//! Nothing in the controller can stand in for them (an object is admitted
//! before it is reconciled), so every SecurityPolicy's status and
//! `kubectl wopr security verify` say whether they are in place:
//! [`read_escalation_guard`] fetches them, [`escalation_guard`] judges them.

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::{Api, Client};

use super::describe;
use crate::api::ESCALATION_POLICIES;

/// How to put the guard in place, for the messages.
const INSTALL: &str = "install or upgrade the chart (`helm upgrade --install wopr-operator charts/wopr-operator -n wopr-system`) or `kubectl apply --server-side -f manifests/install.yaml`";

/// What the `EscalationGuarded` condition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    /// Whether trust-level escalation is refused at admission.
    pub guarded: bool,
    /// `Guarded`, or why not: `PolicyMissing`, `BindingMissing`,
    /// `NotEnforced`, `FailsOpen`, `CannotVerify`.
    pub reason: &'static str,
    /// What was found and what to do.
    pub message: String,
}

/// The reason of a [`Guard`] its reader was not allowed to see.
pub const CANNOT_VERIFY: &str = "CannotVerify";

/// One of the escalation policies as the cluster has it (`None`: not
/// installed).
#[derive(Clone, Debug)]
pub struct Installed {
    /// The policy's name, which its binding shares.
    pub name: &'static str,
    /// The ValidatingAdmissionPolicy.
    pub policy: Option<ValidatingAdmissionPolicy>,
    /// Its ValidatingAdmissionPolicyBinding.
    pub binding: Option<ValidatingAdmissionPolicyBinding>,
}

/// Judges the guard from its policies and bindings: guarded when every one
/// is; otherwise the first problem's reason, and every problem in the
/// message.
pub fn escalation_guard(installed: &[Installed]) -> Guard {
    let problems: Vec<(&'static str, String)> = installed.iter().filter_map(problem).collect();
    let Some(&(reason, _)) = problems.first() else {
        let names: Vec<&str> = installed.iter().map(|i| i.name).collect();
        return Guard {
            guarded: true,
            reason: "Guarded",
            message: format!(
                "ValidatingAdmissionPolicies {} and their bindings deny trust-level escalation",
                names.join(", ")
            ),
        };
    };
    let found: Vec<String> = problems.into_iter().map(|(_, found)| found).collect();
    Guard {
        guarded: false,
        reason,
        message: format!(
            "{}; until that is fixed, trust levels are not guarded at admission and anyone who may write the objects they guard can escalate, for example create owner Sessions: {INSTALL}",
            found.join("; ")
        ),
    }
}

/// What keeps one policy from guarding, following how the API server
/// admits: no policy or no binding checks nothing; a binding to another
/// policy or without `Deny` only warns or audits; `failurePolicy: Ignore`
/// admits whatever the policy cannot evaluate (absent means `Fail`, the
/// API's default).
fn problem(installed: &Installed) -> Option<(&'static str, String)> {
    let name = installed.name;
    let Some(policy) = &installed.policy else {
        return Some((
            "PolicyMissing",
            format!("ValidatingAdmissionPolicy {name} is not installed"),
        ));
    };
    let Some(binding) = &installed.binding else {
        return Some((
            "BindingMissing",
            format!("ValidatingAdmissionPolicyBinding {name} is not installed"),
        ));
    };
    let spec = binding.spec.as_ref();
    let bound = spec.and_then(|s| s.policy_name.as_deref()).unwrap_or("");
    let actions = spec
        .and_then(|s| s.validation_actions.as_deref())
        .unwrap_or_default();
    if bound != name || !actions.iter().any(|action| action == "Deny") {
        return Some((
            "NotEnforced",
            format!(
                "ValidatingAdmissionPolicyBinding {name} binds policy {bound:?} with validationActions [{}] instead of {name} with Deny",
                actions.join(", ")
            ),
        ));
    }
    let failure_policy = policy
        .spec
        .as_ref()
        .and_then(|s| s.failure_policy.as_deref())
        .unwrap_or("Fail");
    (failure_policy != "Fail").then(|| {
        (
            "FailsOpen",
            format!(
                "ValidatingAdmissionPolicy {name} has failurePolicy {failure_policy} instead of Fail, so it admits what it cannot evaluate"
            ),
        )
    })
}

/// Reads every escalation policy and its binding and judges them, as
/// `client`'s user. A 403 is an answer too (`CannotVerify`: that user may
/// not look); any other failure is an error, so that nobody reports a
/// guard it does not know about.
pub async fn read_escalation_guard(client: &Client) -> Result<Guard, kube::Error> {
    let read =
        futures::future::try_join_all(ESCALATION_POLICIES.map(|name| read_installed(client, name)))
            .await;
    match read {
        Ok(installed) => Ok(escalation_guard(&installed)),
        Err(error) if is_forbidden(&error) => Ok(cannot_verify(&error)),
        Err(error) => Err(error),
    }
}

/// The policy `name` and its binding, `None` where the API server has none.
async fn read_installed(client: &Client, name: &'static str) -> Result<Installed, kube::Error> {
    let policies = Api::<ValidatingAdmissionPolicy>::all(client.clone());
    let bindings = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone());
    let (policy, binding) = futures::try_join!(policies.get_opt(name), bindings.get_opt(name))?;
    Ok(Installed {
        name,
        policy,
        binding,
    })
}

fn is_forbidden(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403)
}

/// The guard when its reader may not read it: not known to be in
/// place, so not guarded as far as anyone reading the status can tell.
fn cannot_verify(error: &kube::Error) -> Guard {
    Guard {
        guarded: false,
        reason: CANNOT_VERIFY,
        message: format!(
            "cannot tell whether trust-level escalation is refused at admission: the API server refused to show the escalation policies ({}); checking needs get on validatingadmissionpolicies and validatingadmissionpolicybindings (admissionregistration.k8s.io) named {}, which the chart gives the controller",
            describe(error),
            ESCALATION_POLICIES.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn policy(name: &str, spec: Value) -> ValidatingAdmissionPolicy {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    fn binding(
        name: &str,
        policy_name: &str,
        actions: &[&str],
    ) -> ValidatingAdmissionPolicyBinding {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"policyName": policy_name, "validationActions": actions}}))
        .unwrap()
    }

    /// Every escalation policy installed as the chart installs it.
    fn as_installed() -> Vec<Installed> {
        ESCALATION_POLICIES
            .map(|name| Installed {
                name,
                policy: Some(policy(name, json!({"failurePolicy": "Fail"}))),
                binding: Some(binding(name, name, &["Deny"])),
            })
            .to_vec()
    }

    /// The guard when `change` is made to the policies as installed.
    fn judged(change: impl FnOnce(&mut [Installed])) -> Guard {
        let mut installed = as_installed();
        change(&mut installed);
        escalation_guard(&installed)
    }

    fn assert_says(guard: &Guard, reason: &str, parts: &[&str]) {
        assert_eq!(
            (guard.guarded, guard.reason),
            (false, reason),
            "{}",
            guard.message
        );
        for part in parts {
            assert!(
                guard.message.contains(part),
                "{part:?} not in {}",
                guard.message
            );
        }
    }

    #[test]
    fn denying_bindings_to_policies_that_fail_closed_guard() {
        let guard = judged(|_| {});
        assert_eq!((guard.guarded, guard.reason), (true, "Guarded"));
        assert_eq!(
            guard.message,
            "ValidatingAdmissionPolicies wopr-escalation-sessions, wopr-escalation-grants, wopr-escalation-gateways, wopr-escalation-securitypolicies and their bindings deny trust-level escalation"
        );
        let unset = judged(|installed| {
            installed[0].policy = Some(policy(installed[0].name, json!({})));
        });
        assert!(
            unset.guarded,
            "an absent failurePolicy is Fail: {}",
            unset.message
        );
    }

    #[test]
    fn missing_policies_say_who_can_escalate_and_how_to_install_them() {
        let guard = judged(|installed| installed.iter_mut().for_each(|i| i.policy = None));
        assert_says(
            &guard,
            "PolicyMissing",
            &[
                "ValidatingAdmissionPolicy wopr-escalation-sessions is not installed; ValidatingAdmissionPolicy wopr-escalation-grants is not installed",
                "anyone who may write the objects they guard can escalate, for example create owner Sessions",
                "helm upgrade --install wopr-operator charts/wopr-operator",
                "kubectl apply --server-side -f manifests/install.yaml",
            ],
        );
    }

    #[test]
    fn a_missing_binding_is_reported() {
        let guard = judged(|installed| installed[1].binding = None);
        assert_says(
            &guard,
            "BindingMissing",
            &["ValidatingAdmissionPolicyBinding wopr-escalation-grants is not installed"],
        );
    }

    #[test]
    fn a_binding_that_does_not_deny_with_its_policy_is_not_enforced() {
        let warning = judged(|installed| {
            installed[0].binding = Some(binding(
                installed[0].name,
                installed[0].name,
                &["Warn", "Audit"],
            ));
        });
        assert_says(
            &warning,
            "NotEnforced",
            &[
                "binds policy \"wopr-escalation-sessions\" with validationActions [Warn, Audit] instead of wopr-escalation-sessions with Deny",
            ],
        );
        let elsewhere = judged(|installed| {
            installed[2].binding = Some(binding(installed[2].name, "other", &["Deny"]));
        });
        assert_says(
            &elsewhere,
            "NotEnforced",
            &["binds policy \"other\" with validationActions [Deny]"],
        );
    }

    #[test]
    fn a_policy_that_ignores_its_failures_fails_open() {
        let guard = judged(|installed| {
            installed[3].policy = Some(policy(
                installed[3].name,
                json!({"failurePolicy": "Ignore"}),
            ));
        });
        assert_says(
            &guard,
            "FailsOpen",
            &[
                "ValidatingAdmissionPolicy wopr-escalation-securitypolicies has failurePolicy Ignore",
            ],
        );
    }

    #[test]
    fn the_first_problem_gives_the_reason_and_every_problem_is_listed() {
        let guard = judged(|installed| {
            installed[0].binding = None;
            installed[3].policy = None;
        });
        assert_says(
            &guard,
            "BindingMissing",
            &[
                "ValidatingAdmissionPolicyBinding wopr-escalation-sessions is not installed; ValidatingAdmissionPolicy wopr-escalation-securitypolicies is not installed",
            ],
        );
    }
}
