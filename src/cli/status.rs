//! `security status` (a session's effective policy, or the namespace's) and
//! `security whoami` (who the API server says you are, and what applies to
//! you).

use futures::future::join_all;
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, UserInfo};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};

use super::connect::Path;
use super::grants::list_grants;
use super::objects::{get, get_opt, list};
use super::output::{Shown, Table, fields, joined, or_none};
use super::session::provider_text;
use super::{CliError, Context};
use crate::api::{
    ApprovalRequest, ApprovalState, ArgumentRules, DEFAULT_POLICY_NAME, Enforcement, Gateway,
    Grant, SecurityPolicy, SecurityPolicySpec, Session, TrustLevel, name_of,
};
use crate::cluster::access::{Access, service_account_of};
use crate::contract::child_name;
use crate::policy::tools::argument_rules::ArgumentRulesInForce;

/// `security status SESSION` as data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionReport {
    pub session: Session,
    /// The namespace's enforcement mode.
    pub enforcement: Enforcement,
    /// The Grants naming the session as their subject.
    pub grants: Vec<Grant>,
}

/// `security status` without a session, as data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceReport {
    pub namespace: String,
    /// The namespace's `default` SecurityPolicy, if it has one.
    pub security_policy: Option<SecurityPolicy>,
    pub enforcement: Enforcement,
    pub sessions: Vec<Session>,
    pub gateways: Vec<Gateway>,
    pub pending_approvals: Vec<ApprovalRequest>,
}

/// `security status [SESSION]`.
pub async fn status(context: &Context, session: Option<String>) -> Result<Shown, CliError> {
    match session {
        Some(name) => session_status(context, &name).await,
        None => namespace_status(context).await,
    }
}

async fn session_status(context: &Context, name: &str) -> Result<Shown, CliError> {
    let session = get::<Session>(context, name).await?;
    let policy = get_opt::<SecurityPolicy>(context, DEFAULT_POLICY_NAME).await?;
    let enforcement = enforcement_of(policy.as_ref().map(|policy| &policy.spec));
    let grants: Vec<Grant> = list_grants(context)
        .await?
        .into_iter()
        .filter(|grant| grant.spec.subject.session.as_deref() == Some(name))
        .collect();
    let status = session.status.clone().unwrap_or_default();
    let mut lines = vec![
        ("Session", name.to_owned()),
        ("Namespace", context.namespace.clone()),
        ("Trust level", session.spec.trust_level.to_string()),
        ("Phase", or_none(status.phase.as_ref().map(name_of))),
    ];
    match &status.effective {
        Some(effective) => lines.extend([
            ("Capabilities", joined(&effective.capabilities)),
            ("Tools", joined(&effective.tools)),
            ("Argument rules", rules_text(effective.rules.as_ref())),
            ("Sandbox", on_off(effective.sandbox)),
            ("Network", effective.network.to_string()),
        ]),
        None => lines.push((
            "Effective",
            "not resolved yet (see the Session's conditions)".into(),
        )),
    }
    let grant_names: Vec<String> = grants.iter().map(ResourceExt::name_any).collect();
    lines.extend([
        ("Enforcement", name_of(&enforcement)),
        ("Grants", joined(&grant_names)),
        ("Provider", provider_text(session.spec.provider.as_ref())),
        ("Pod", or_none(status.pod_name)),
    ]);
    let report = SessionReport {
        session,
        enforcement,
        grants,
    };
    Ok(Shown::new(fields(&lines), &report))
}

async fn namespace_status(context: &Context) -> Result<Shown, CliError> {
    let security_policy = get_opt::<SecurityPolicy>(context, DEFAULT_POLICY_NAME).await?;
    let enforcement = enforcement_of(security_policy.as_ref().map(|policy| &policy.spec));
    let sessions = list::<Session>(context).await?;
    let gateways = list::<Gateway>(context).await?;
    let pending_approvals: Vec<ApprovalRequest> = list::<ApprovalRequest>(context)
        .await?
        .into_iter()
        .filter(is_pending)
        .collect();
    let mut lines: Vec<(String, String)> = vec![
        ("Namespace".into(), context.namespace.clone()),
        (
            "SecurityPolicy".into(),
            if security_policy.is_some() {
                DEFAULT_POLICY_NAME.into()
            } else {
                "<none> (built-in defaults)".into()
            },
        ),
        ("Enforcement".into(), name_of(&enforcement)),
    ];
    for level in TrustLevel::ALL.iter().rev() {
        let names: Vec<String> = sessions
            .iter()
            .filter(|session| session.spec.trust_level == *level)
            .map(ResourceExt::name_any)
            .collect();
        lines.push((
            format!("Sessions {level}"),
            format!("{} {}", names.len(), bracketed(&names)),
        ));
    }
    let gateway_text: Vec<String> = gateways
        .iter()
        .map(|gateway| format!("{} (session {})", gateway.name_any(), gateway.spec.session))
        .collect();
    lines.push(("Gateways".into(), joined(&gateway_text)));
    lines.push((
        "Pending approvals".into(),
        pending_approvals.len().to_string(),
    ));
    let report = NamespaceReport {
        namespace: context.namespace.clone(),
        security_policy,
        enforcement,
        sessions,
        gateways,
        pending_approvals,
    };
    Ok(Shown::new(fields(&lines), &report))
}

fn bracketed(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("({})", names.join(", "))
    }
}

/// The argument rules in force, `tool.field=entries` each; `<none>`.
fn rules_text(rules: Option<&ArgumentRules>) -> String {
    let in_force = ArgumentRulesInForce::of(&[rules]);
    let listed: Vec<String> = in_force
        .listed()
        .into_iter()
        .map(|(rule, entries)| format!("{rule}={}", joined(entries)))
        .collect();
    if listed.is_empty() {
        "<none>".into()
    } else {
        listed.join(" ")
    }
}

fn on_off(on: bool) -> String {
    if on { "enabled" } else { "disabled" }.into()
}

/// Whether an ApprovalRequest still waits for a person.
pub fn is_pending(request: &ApprovalRequest) -> bool {
    request
        .status
        .as_ref()
        .and_then(|status| status.state)
        .is_none_or(|state| state == ApprovalState::Pending)
}

/// `security whoami` as data.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WhoamiReport {
    /// As the API server authenticated you (SelfSubjectReview).
    pub user: UserInfo,
    /// The session whose service account you are, if any.
    pub session: Option<String>,
    pub trust_level: Option<TrustLevel>,
    /// The Grants naming that session.
    pub grants: Vec<Grant>,
    /// What your RBAC lets you do with WOPR, in this namespace.
    pub rights: Vec<Right>,
    /// The trust levels you may `use` here: write Sessions and Grants at,
    /// and operate sessions at (the escalation admission policies).
    pub usable_trust_levels: Vec<TrustLevel>,
    /// How `security audit`, `migrate` and `session inject` reach the
    /// control plane: `--control-plane`, or the port-forward to a pod.
    pub control_plane: Path,
}

/// One WOPR right and whether RBAC gives it to you.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Right {
    pub what: String,
    pub allowed: bool,
}

/// The rights whoami checks: what they let you do, verb, resource (with a
/// subresource as `sessions/inject`).
const RIGHTS: [(&str, &str, &str); 7] = [
    ("create sessions", "create", "sessions"),
    ("send sessions messages", "create", "sessions/inject"),
    ("write grants", "create", "grants"),
    (
        "approve and deny requests",
        "patch",
        "approvalrequests/status",
    ),
    ("change the SecurityPolicy", "patch", "securitypolicies"),
    ("read the audit trail", "list", "auditevents"),
    (
        "loosen a sandbox below trusted",
        "use",
        crate::api::SANDBOX_OVERRIDES_RESOURCE,
    ),
];

/// `security whoami`.
pub async fn whoami(context: &Context) -> Result<Shown, CliError> {
    let user = current_user(context).await?;
    let username = user.username.clone().unwrap_or_default();
    let account = service_account_of(&username);
    let session = match account {
        Some((namespace, name)) if namespace == context.namespace => {
            session_of_account(name, context).await?
        }
        _ => None,
    };
    // A session's grants name the session; a workload's its service account.
    let named = |grant: &Grant| match (&session, account) {
        (Some(session), _) => grant.spec.subject.session == Some(session.name_any()),
        (None, Some((namespace, name))) => grant
            .spec
            .subject
            .service_account
            .as_ref()
            .is_some_and(|named| named.namespace == namespace && named.name == name),
        (None, None) => false,
    };
    let grants: Vec<Grant> = list_grants(context)
        .await?
        .into_iter()
        .filter(|grant| named(grant))
        .collect();
    let trust_level = match &session {
        Some(session) => Some(session.spec.trust_level),
        // A workload arrives at the highest profile its grants give.
        None => grants
            .iter()
            .map(|grant| grant.spec.profile.unwrap_or(TrustLevel::Untrusted))
            .max(),
    };
    let rights = join_all(RIGHTS.iter().map(|(what, verb, resource)| async move {
        Ok::<_, CliError>(Right {
            what: (*what).to_owned(),
            allowed: may(context, verb, resource, None).await?,
        })
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let usable = join_all(TrustLevel::ALL.map(|level| async move {
        let name = Some(level.as_str());
        Ok::<_, CliError>(
            may(context, "use", crate::api::TRUST_LEVELS_RESOURCE, name)
                .await?
                .then_some(level),
        )
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let usable: Vec<TrustLevel> = usable.into_iter().flatten().collect();
    let usable_text = if usable.is_empty() {
        "none: you may write no Session or Grant here".to_owned()
    } else {
        let names: Vec<&str> = usable.iter().map(|level| level.as_str()).collect();
        format!(
            "{} (Sessions and Grants you may write, sessions you may operate)",
            names.join(", ")
        )
    };
    let mut lines = vec![
        ("User", username.clone()),
        ("Groups", joined(user.groups.as_deref().unwrap_or_default())),
    ];
    let names: Vec<String> = grants.iter().map(ResourceExt::name_any).collect();
    match (&session, account, trust_level) {
        (Some(session), _, _) => lines.extend([
            ("Session", session.name_any()),
            ("Trust level", session.spec.trust_level.to_string()),
            ("Grants", joined(&names)),
        ]),
        (None, Some((namespace, name)), Some(level)) => lines.extend([
            ("Workload", format!("serviceaccount:{namespace}/{name}")),
            ("Trust level", format!("up to {level}, as its grants say per session")),
            ("Grants", joined(&names)),
        ]),
        (None, Some((namespace, name)), None) => lines.extend([
            ("Workload", format!("serviceaccount:{namespace}/{name}")),
            (
                "Trust level",
                "none: no Grant names this service account, so sessions take no messages from it"
                    .into(),
            ),
        ]),
        (None, None, _) => lines.push((
            "Trust level",
            "none: you are a person; RBAC decides what you may change, and a session takes you as its operator if you may inject into it and use its trust level".into(),
        )),
    }
    lines.push(("May use", usable_text));
    let mut text = fields(&lines);
    let mut table = Table::new(&["IN NAMESPACE", "ALLOWED"]);
    for right in &rights {
        table.row(vec![right.what.clone(), yes_no(right.allowed)]);
    }
    text.push('\n');
    text.push_str(&table.render_or(""));
    let control_plane = context.control_plane.path().await;
    text.push_str(&format!("\nControl plane: {control_plane}\n"));
    let report = WhoamiReport {
        user,
        session: session.map(|s| s.name_any()),
        trust_level,
        grants,
        rights,
        usable_trust_levels: usable,
        control_plane,
    };
    Ok(Shown::new(text, &report))
}

/// You, as the API server authenticates you (SelfSubjectReview).
pub async fn current_user(context: &Context) -> Result<UserInfo, CliError> {
    let review = Api::<SelfSubjectReview>::all(context.client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| CliError::from_kube("selfsubjectreview", e))?;
    Ok(review.status.and_then(|s| s.user_info).unwrap_or_default())
}

fn yes_no(yes: bool) -> String {
    if yes { "yes" } else { "no" }.into()
}

/// The Session of this namespace whose service account is `account`.
async fn session_of_account(account: &str, context: &Context) -> Result<Option<Session>, CliError> {
    let sessions = list::<Session>(context).await?;
    Ok(sessions
        .into_iter()
        .find(|session| child_name(&session.name_any()) == account))
}

/// Whether RBAC lets you `verb` the `wopr.dev` `resource` here.
async fn may(
    context: &Context,
    verb: &str,
    resource: &str,
    name: Option<&str>,
) -> Result<bool, CliError> {
    let access = Access {
        namespace: Some(&context.namespace),
        group: crate::api::GROUP,
        resource,
        verb,
        name,
    };
    access
        .allowed(&context.client)
        .await
        .map_err(|e| CliError::from_kube("selfsubjectaccessreview", e))
}

/// The enforcement mode a namespace's SecurityPolicy sets (enforce
/// without one).
pub fn enforcement_of(policy: Option<&SecurityPolicySpec>) -> Enforcement {
    policy.map_or_else(Enforcement::default, |spec| spec.enforcement)
}
