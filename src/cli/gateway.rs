//! `security gateway list | add | rules | queue | approve | deny`.
//! Approving and denying patch the ApprovalRequest's status as you: the
//! chart's admission policy requires `decidedBy` to be the user who
//! patches, so the record names who decided.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Patch;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::args::{DecideArgs, GatewayCommand};
use super::objects::{get, list};
use super::output::{Shown, Table, age, joined, or_none, until};
use super::status::{current_user, is_pending};
use super::{CliError, Context};
use crate::api::{
    ApprovalRequest, ApprovalState, ApprovalType, Gateway, GatewaySpec, Session, name_of,
};

/// Runs a gateway command.
pub async fn run(context: &Context, command: GatewayCommand) -> Result<Shown, CliError> {
    match command {
        GatewayCommand::List { .. } => gateways(context).await,
        GatewayCommand::Add { session, .. } => add(context, &session).await,
        GatewayCommand::Rules { session, .. } => rules(context, session.as_deref()).await,
        GatewayCommand::Queue { .. } => queue(context).await,
        GatewayCommand::Approve(args) => decide(context, args, ApprovalState::Approved).await,
        GatewayCommand::Deny(args) => decide(context, args, ApprovalState::Denied).await,
    }
}

async fn gateways(context: &Context) -> Result<Shown, CliError> {
    let gateways = list::<Gateway>(context).await?;
    let mut table = Table::new(&[
        "NAME",
        "SESSION",
        "RULES",
        "PENDING",
        "APPROVAL TIMEOUT",
        "LAST DECISION",
        "AGE",
    ]);
    for gateway in &gateways {
        let status = gateway.status.clone().unwrap_or_default();
        table.row(vec![
            gateway.name_any(),
            gateway.spec.session.clone(),
            gateway.spec.forward_rules.len().to_string(),
            status.pending.unwrap_or(0).to_string(),
            gateway.spec.approval_timeout.to_string(),
            status.last_decision.map_or_else(
                || "<none>".into(),
                |last| {
                    format!(
                        "{} {} ({} ago)",
                        last.request_id,
                        last.decision,
                        age(Some(&last.at), context.now)
                    )
                },
            ),
            age(gateway.metadata.creation_timestamp.as_ref(), context.now),
        ]);
    }
    let empty = format!("No gateways found in namespace {}.", context.namespace);
    Ok(Shown::list(table.render_or(&empty), &gateways))
}

/// Makes `session` a gateway: a Gateway of the same name with no forward
/// rules, so it forwards nothing until someone adds rules, at the session's
/// trust level (the least that serves it; admission asks for `use` on it).
async fn add(context: &Context, session: &str) -> Result<Shown, CliError> {
    let served = get::<Session>(context, session).await?;
    let gateway = Gateway {
        metadata: ObjectMeta {
            name: Some(session.to_owned()),
            namespace: Some(context.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: GatewaySpec {
            session: session.to_owned(),
            trust_level: served.spec.trust_level,
            forward_rules: Vec::new(),
            approval_timeout: std::time::Duration::from_secs(300).into(),
        },
        status: None,
    };
    let created = Api::<Gateway>::namespaced(context.client.clone(), &context.namespace)
        .create(&context.create_params(), &gateway)
        .await
        .map_err(|e| CliError::from_kube(&format!("gateway {session:?}"), e))?;
    Ok(Shown::new(
        format!(
            "gateway.wopr.dev/{session} created: it forwards nothing until it has rules (kubectl wopr config set security.gateway.forwardRules.{session}.allowForwardTo ...)\n"
        ),
        &created,
    ))
}

/// The forward rules of the gateways of `session` (its name or its
/// session), or of every gateway.
async fn rules(context: &Context, session: Option<&str>) -> Result<Shown, CliError> {
    let gateways: Vec<Gateway> = list::<Gateway>(context)
        .await?
        .into_iter()
        .filter(|gateway| {
            session
                .is_none_or(|wanted| gateway.spec.session == wanted || gateway.name_any() == wanted)
        })
        .collect();
    if let (Some(session), true) = (session, gateways.is_empty()) {
        return Err(CliError::NotFound(format!(
            "no gateway for session {session:?} in namespace {}",
            context.namespace
        )));
    }
    let mut table = Table::new(&[
        "GATEWAY",
        "RULE",
        "FORWARD TO",
        "ACTIONS",
        "APPROVAL",
        "RATE LIMIT",
        "FORWARDED",
    ]);
    for gateway in &gateways {
        let status = gateway.status.clone().unwrap_or_default();
        for (index, rule) in gateway.spec.forward_rules.iter().enumerate() {
            let forwarded = status
                .forwards
                .iter()
                .find(|count| count.rule as usize == index)
                .map_or(0, |count| count.forwarded);
            table.row(vec![
                gateway.name_any(),
                index.to_string(),
                joined(&rule.allow_forward_to),
                joined(&rule.allow_actions),
                if rule.require_approval {
                    "required"
                } else {
                    "no"
                }
                .into(),
                or_none(
                    rule.rate_limit
                        .as_ref()
                        .map(|limit| format!("{}/min", limit.per_minute)),
                ),
                forwarded.to_string(),
            ]);
        }
    }
    let empty = format!("No forward rules in namespace {}.", context.namespace);
    Ok(Shown::list(table.render_or(&empty), &gateways))
}

/// Requests waiting for a decision, oldest first.
async fn queue(context: &Context) -> Result<Shown, CliError> {
    let mut pending: Vec<ApprovalRequest> = list::<ApprovalRequest>(context)
        .await?
        .into_iter()
        .filter(is_pending)
        .collect();
    pending.sort_by_key(|request| request.metadata.creation_timestamp.clone());
    let mut table = Table::new(&["ID", "TYPE", "GATEWAY", "SOURCE", "WANTS", "EXPIRES", "AGE"]);
    for request in &pending {
        let spec = &request.spec;
        let wants = match spec.request_type {
            ApprovalType::Forward => format!(
                "{} to {}",
                spec.action.as_deref().unwrap_or("<any>"),
                spec.target.as_deref().unwrap_or("<none>")
            ),
            ApprovalType::Elevation => joined(&spec.requested_capabilities),
            ApprovalType::Peer => {
                format!("inject to {}", spec.target.as_deref().unwrap_or("<none>"))
            }
        };
        table.row(vec![
            request.name_any(),
            name_of(&spec.request_type),
            or_none(spec.gateway.clone()),
            format!("{}:{}", spec.source.source_type, spec.source.identity),
            wants,
            until(&spec.expires_at, context.now),
            age(request.metadata.creation_timestamp.as_ref(), context.now),
        ]);
    }
    let empty = format!("No requests waiting in namespace {}.", context.namespace);
    Ok(Shown::list(table.render_or(&empty), &pending))
}

/// Records your decision on a waiting request.
async fn decide(
    context: &Context,
    args: DecideArgs,
    decision: ApprovalState,
) -> Result<Shown, CliError> {
    let request = get::<ApprovalRequest>(context, &args.id).await?;
    if let Some(status) = request.status.as_ref().filter(|_| !is_pending(&request)) {
        return Err(CliError::Refused(format!(
            "approvalrequest {:?} is already {}{}",
            args.id,
            or_none(status.state.as_ref().map(name_of)),
            status
                .decided_by
                .as_ref()
                .map(|by| format!(" (decided by {by})"))
                .unwrap_or_default()
        )));
    }
    let user = current_user(context).await?;
    let username = user.username.unwrap_or_default();
    // The resourceVersion makes the patch fail if someone decided meanwhile.
    let patch = json!({
        "metadata": {"resourceVersion": request.resource_version()},
        "status": {
            "state": decision,
            "decidedBy": username,
            "decidedAt": Time(context.now),
            "decisionReason": args.reason,
        }
    });
    let decided = Api::<ApprovalRequest>::namespaced(context.client.clone(), &context.namespace)
        .patch_status(&args.id, &context.merge_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| CliError::from_kube(&format!("approvalrequest {:?}", args.id), e))?;
    Ok(Shown::new(
        format!(
            "approvalrequest.wopr.dev/{} {} by {username}\n",
            args.id,
            name_of(&decision).to_lowercase()
        ),
        &decided,
    ))
}
