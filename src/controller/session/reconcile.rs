//! The Session reconcile: fetch (caches) → resolve (pure) → build (pure) →
//! apply what changed → status. Writes nothing when nothing changed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, PodCondition, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, Preconditions};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::build::{build_network_policy, build_pod, build_service_account};
use super::context::Context;
use super::decisions;
use super::rollout::{self, PodPlan, Replacement};
use super::status::{Observation, PodOutcome, PodState, failed_checks, session_status};
use crate::api::{Session, SessionStatus};
use crate::cache::Unresolvable;
use crate::cluster::apply_params;
use crate::contract::{POD_CONDITION_PREFIX, child_name};
use crate::controller::apply::{apply_if_changed, patch_status_if_changed};
use crate::controller::error::Error;
use crate::policy::EffectiveContext;

/// How long to wait before looking again at a pod being replaced.
const REPLACE_POLL: Duration = Duration::from_secs(2);
/// The longest a Session goes without a reconcile (a resync: reads only).
const RESYNC: Duration = Duration::from_secs(3600);

/// Reconciles one Session (on the leader: `leader_only`).
pub async fn reconcile(
    object: Arc<DeserializeGuard<Session>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let result = reconcile_session(&object, &ctx).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.succeeded(object.as_ref());
    }
    result
}

/// After a failed reconcile: count it, report it as a Warning event on the
/// Session, and retry after this Session's backoff ([`retry`](crate::controller::retry)).
pub fn error_policy(
    object: Arc<DeserializeGuard<Session>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    tracing::warn!(session = %object.name_any(), %error, "reconcile failed");
    ctx.metrics.error(error.reason());
    let event = Event {
        type_: EventType::Warning,
        reason: "ReconcileFailed".into(),
        note: Some(error.to_string()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let reference = object.object_ref(&());
    let retry_in = ctx.backoff.failed(object.as_ref());
    tokio::spawn(async move {
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "could not publish an event");
        }
    });
    Action::requeue(retry_in)
}

async fn reconcile_session(
    object: &DeserializeGuard<Session>,
    ctx: &Context,
) -> Result<Action, Error> {
    let name = object.name_any();
    let namespace = object.namespace().ok_or_else(|| Error::NoNamespace {
        kind: "Session",
        name: name.clone(),
    })?;
    let now = (ctx.clock)();
    let session = match &object.0 {
        Ok(session) => session,
        Err(invalid) => {
            let message = format!("the Session cannot be read: {}", invalid.error);
            return stop_invalid(ctx, object, "InvalidObject", message, now).await;
        }
    };
    if session.meta().deletion_timestamp.is_some() {
        ctx.rollouts.release(&namespace, &name);
        write_status(
            ctx,
            object,
            session.status.as_ref(),
            &Observation::Terminating,
            now,
        )
        .await?;
        return Ok(Action::await_change());
    }

    let context = match ctx.stores.resolve(session, now) {
        Ok(context) => context,
        Err(Unresolvable::Policy(message)) => {
            return stop_invalid(ctx, object, "InvalidPolicy", message, now).await;
        }
        Err(Unresolvable::Spec(error)) => {
            return stop_invalid(ctx, object, "InvalidSpec", error.to_string(), now).await;
        }
    };

    let client = &ctx.client;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    let account = build_service_account(session);
    let live = accounts.get_opt(&child_name(&name)).await?;
    apply_if_changed(&accounts, live.as_ref(), &account).await?;

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let network_policy = build_network_policy(
        session,
        &context,
        &ctx.config.control_plane,
        ctx.config.egress.as_ref(),
    );
    let live = policies.get_opt(&child_name(&name)).await?;
    apply_if_changed(&policies, live.as_ref(), &network_policy).await?;

    let pod = build_pod(session, &context, &ctx.config);
    let PodOutcome {
        state,
        pending,
        checks,
    } = ensure_pod(ctx, session, &namespace, &pod).await?;
    let waiting_for_rollout = pending
        .as_ref()
        .is_some_and(|pending| pending.reason == rollout::WAITING_FOR_ROLLOUT);
    let observation = Observation::Resolved {
        context: &context,
        pod: state.clone(),
        pod_name: pod.name_any(),
        pending_update: pending,
        checks: &checks,
    };
    let desired = session_status(
        session.status.as_ref(),
        object.meta().generation,
        &observation,
        &Time(now),
    );
    for (reason, message) in failed_checks(session.status.as_ref(), &desired) {
        publish(ctx, &warning(reason, message), session).await;
    }
    if let Some(event) = decisions::policy_changed(session.status.as_ref(), &context, now) {
        ctx.store.insert_events(&[event]).await?;
    }
    patch_status_if_changed(&ctx.client, object, session.status.as_ref(), &desired).await?;

    Ok(match state {
        PodState::Replacing => Action::requeue(REPLACE_POLL),
        // Woken when a slot is given back (`Rollouts::release`); the timer
        // only covers a slot given back by its deadline.
        _ if waiting_for_rollout => Action::requeue(
            ctx.rollouts
                .until_a_slot_expires(&namespace, Instant::now()),
        ),
        _ => Action::requeue(until_next_expiry(&context, now)),
    })
}

/// Creates the pod, replaces it when it failed or its sandbox changed, and
/// applies operator-level changes as the namespace's update policy says
/// ([`rollout`]); reports how the pod stands.
async fn ensure_pod(
    ctx: &Context,
    session: &Session,
    namespace: &str,
    desired: &Pod,
) -> Result<PodOutcome, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired.name_any();
    let session_name = session.name_any();
    let live = pods.get_opt(&name).await?;
    let policy = ctx
        .stores
        .update_policy(namespace, ctx.default_update_policy);
    let take_slot = || {
        ctx.rollouts.try_take(
            namespace,
            &session_name,
            policy.max_unavailable(),
            Instant::now(),
        )
    };
    let replacement = match rollout::plan(live.as_ref(), desired, &policy, take_slot) {
        PodPlan::Create => {
            pods.patch(&name, &apply_params(), &Patch::Apply(desired))
                .await?;
            return Ok(PodOutcome::new(PodState::Starting));
        }
        PodPlan::AwaitDeletion => return Ok(PodOutcome::new(PodState::Replacing)),
        PodPlan::Keep { ready, pending } => {
            if ready && pending.is_none() {
                ctx.rollouts.release(namespace, &session_name);
            }
            let state = if ready {
                PodState::Ready
            } else {
                PodState::Starting
            };
            return Ok(PodOutcome {
                state,
                pending,
                checks: live.as_ref().map(sandbox_checks).unwrap_or_default(),
            });
        }
        PodPlan::Replace(replacement) => replacement,
    };
    let live = live.expect("only a live pod is replaced");
    delete_pod(&pods, &live).await?;
    let (event, state) = match replacement {
        Replacement::Failed(why) => {
            let event = warning(
                "SandboxFailed",
                format!("pod {name} failed ({why}); recreating it"),
            );
            (event, PodState::Failed(why))
        }
        Replacement::SandboxChanged => (
            normal(
                "SandboxReplaced",
                format!("pod {name} is replaced: its sandbox changed"),
            ),
            PodState::Replacing,
        ),
        Replacement::OperatorChanged(changed) => (
            normal(
                "SandboxUpdated",
                format!(
                    "pod {name} is replaced to apply the operator's new settings ({changed}), updatePolicy {:?}",
                    policy.type_
                ),
            ),
            PodState::Replacing,
        ),
    };
    publish(ctx, &event, session).await;
    Ok(PodOutcome::new(state))
}

/// The sandbox checks the sidecar of `pod` reported, as pod conditions.
fn sandbox_checks(pod: &Pod) -> Vec<PodCondition> {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .filter(|condition| condition.type_.starts_with(POD_CONDITION_PREFIX))
        .cloned()
        .collect()
}

/// Deletes `pod`, only if it is still the same object (uid precondition).
async fn delete_pod(pods: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods.delete(&pod.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Fails closed: an invalid Session has no sandbox. Deletes its pod, says
/// why in its status and in a Warning event, and waits for a change.
async fn stop_invalid(
    ctx: &Context,
    object: &DeserializeGuard<Session>,
    reason: &'static str,
    message: String,
    now: Timestamp,
) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    if let Some(pod) = pods.get_opt(&child_name(&object.name_any())).await? {
        delete_pod(&pods, &pod).await?;
    }
    ctx.rollouts.release(&namespace, &object.name_any());
    let previous = object
        .0
        .as_ref()
        .ok()
        .and_then(|session| session.status.as_ref());
    let observation = Observation::Invalid {
        reason,
        message: message.clone(),
    };
    let desired = session_status(previous, object.meta().generation, &observation, &Time(now));
    if previous != Some(&desired) {
        let event =
            decisions::refused_invalid(&namespace, &object.name_any(), reason, &message, now);
        ctx.store.insert_events(&[event]).await?;
    }
    if patch_status_if_changed(&ctx.client, object, previous, &desired).await? {
        tracing::info!(session = %object.name_any(), reason, %message, "session is invalid");
        let reference = object.object_ref(&());
        if let Err(error) = ctx
            .recorder
            .publish(&warning(reason, message), &reference)
            .await
        {
            tracing::warn!(%error, "could not publish an event");
        }
    }
    Ok(Action::await_change())
}

/// Writes the status `observation` calls for, unless the Session already
/// has it. Returns whether it wrote.
async fn write_status(
    ctx: &Context,
    object: &DeserializeGuard<Session>,
    previous: Option<&SessionStatus>,
    observation: &Observation<'_>,
    now: Timestamp,
) -> Result<bool, Error> {
    let desired = session_status(previous, object.meta().generation, observation, &Time(now));
    patch_status_if_changed(&ctx.client, object, previous, &desired).await
}

fn warning(reason: &str, note: String) -> Event {
    Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    }
}

fn normal(reason: &str, note: String) -> Event {
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "ReplacePod".into(),
        secondary: None,
    }
}

async fn publish(ctx: &Context, event: &Event, session: &Session) {
    if let Err(error) = ctx.recorder.publish(event, &session.object_ref(&())).await {
        tracing::warn!(%error, "could not publish an event");
    }
}

/// Time until the session's context changes because a grant expires, at
/// most [`RESYNC`].
fn until_next_expiry(context: &EffectiveContext, now: Timestamp) -> Duration {
    context
        .valid_until
        .and_then(|until| Duration::try_from(until.duration_since(now)).ok())
        .map_or(RESYNC, |until| (until + Duration::from_secs(1)).min(RESYNC))
}
