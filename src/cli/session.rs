//! `session create | list | set-provider | inject`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::args::{SessionCommand, SessionCreateArgs, SetProviderArgs};
use super::objects::{list, update_spec};
use super::output::{Shown, Table, age, or_none};
use super::{CliError, Context};
use crate::api::{Provider, ProviderFallback, Session, SessionSpec, TrustLevel, name_of};
use crate::proto::v1alpha1::InjectRequest;

/// Runs a session command.
pub async fn run(context: &Context, command: SessionCommand) -> Result<Shown, CliError> {
    match command {
        SessionCommand::Create(args) => create(context, args).await,
        SessionCommand::List { .. } => sessions(context).await,
        SessionCommand::SetProvider(args) => set_provider(context, args).await,
        SessionCommand::Inject { name, message, .. } => inject(context, &name, &message).await,
        SessionCommand::Usage { name, .. } => super::usage::usage(context, name.as_deref()).await,
    }
}

/// `session create`. Without `--trust-level` the session is untrusted: the
/// SecurityPolicy has no field naming a level for new sessions
/// (`p2p.discoveryTrust` is for peers without a Grant), and a default is
/// never higher than the lowest level unless a policy says so.
async fn create(context: &Context, args: SessionCreateArgs) -> Result<Shown, CliError> {
    let (trust_level, chosen) = match args.trust_level {
        Some(level) => (level, ""),
        None => (
            TrustLevel::Untrusted,
            ", the default: pass --trust-level to choose",
        ),
    };
    let mut spec = SessionSpec::for_trust_level(trust_level);
    spec.prompt = Some(args.prompt);
    spec.provider = args.provider.map(|name| Provider {
        name,
        model: args.model,
        fallback: Vec::new(),
    });
    let session = Session {
        metadata: ObjectMeta {
            name: Some(args.name.clone()),
            namespace: Some(context.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    };
    let created = Api::<Session>::namespaced(context.client.clone(), &context.namespace)
        .create(&context.create_params(), &session)
        .await
        .map_err(|e| CliError::from_kube(&format!("session {:?}", args.name), e))?;
    Ok(Shown::new(
        format!(
            "session.wopr.dev/{} created ({trust_level}{chosen})\n",
            args.name
        ),
        &created,
    ))
}

async fn sessions(context: &Context) -> Result<Shown, CliError> {
    let sessions = list::<Session>(context).await?;
    let mut table = Table::new(&[
        "NAME", "TRUST", "PHASE", "SANDBOX", "PROVIDER", "POD", "AGE",
    ]);
    for session in &sessions {
        let status = session.status.clone().unwrap_or_default();
        table.row(vec![
            session.name_any(),
            session.spec.trust_level.to_string(),
            or_none(status.phase.as_ref().map(name_of)),
            or_none(
                status
                    .effective
                    .map(|e| if e.sandbox { "on" } else { "off" }),
            ),
            provider_text(session.spec.provider.as_ref()),
            or_none(status.pod_name),
            age(session.metadata.creation_timestamp.as_ref(), context.now),
        ]);
    }
    let empty = format!("No sessions found in namespace {}.", context.namespace);
    Ok(Shown::list(table.render_or(&empty), &sessions))
}

/// A session's provider as tables show it: `name/model`, or `<none>`.
pub fn provider_text(provider: Option<&Provider>) -> String {
    or_none(provider.map(|provider| match &provider.model {
        Some(model) => format!("{}/{model}", provider.name),
        None => provider.name.clone(),
    }))
}

/// `PROVIDER[:MODEL]`.
fn fallback(value: &str) -> Result<ProviderFallback, CliError> {
    let (name, model) = match value.split_once(':') {
        Some((name, model)) => (name, Some(model.to_owned())),
        None => (value, None),
    };
    if name.is_empty() || model.as_deref() == Some("") {
        return Err(CliError::Usage(format!(
            "--fallback {value:?}: expected PROVIDER or PROVIDER:MODEL"
        )));
    }
    Ok(ProviderFallback {
        name: name.to_owned(),
        model,
    })
}

async fn set_provider(context: &Context, args: SetProviderArgs) -> Result<Shown, CliError> {
    let provider = Provider {
        name: args.provider,
        model: args.model,
        fallback: args
            .fallback
            .iter()
            .map(|value| fallback(value))
            .collect::<Result<_, _>>()?,
    };
    let spec = json!({"provider": provider});
    let applied: Session = update_spec(context, &args.name, spec, args.force_conflicts).await?;
    Ok(Shown::new(
        format!(
            "session.wopr.dev/{} provider set to {}\n",
            args.name, provider.name
        ),
        &applied,
    ))
}

/// Sends `message` to the session's agent through the control plane, as
/// you: it asks the API server whether you may `create sessions/inject`
/// and, for a person, `use` on `trustlevels.wopr.dev` named the session's
/// trust level.
async fn inject(context: &Context, name: &str, message: &str) -> Result<Shown, CliError> {
    let (mut broker, caller) = context.control_plane.broker().await?;
    let request = caller.request(InjectRequest {
        namespace: context.namespace.clone(),
        session: name.to_owned(),
        payload_json: json!({"text": message}).to_string(),
    })?;
    let sent = caller.answer(broker.inject(request)).await?;
    Ok(Shown::new(
        format!(
            "message {} queued for session {name} (audit event {})\n",
            sent.message_id, sent.audit_id
        ),
        &json!({"messageId": sent.message_id, "auditId": sent.audit_id}),
    ))
}
