//! `exec_command`: the control plane decides again on its own view of the
//! caller's policy (the tool, then `tools.rules.exec_command`), never on
//! the sidecar's, then runs the command in the agent container of the pod
//! the caller's token is bound to, once that pod is checked to be its
//! Session's ([`crate::controlplane::exec`]). Every refusal is audited in
//! the caller's trail as the broker's are; the command's end is an event
//! there too, with its exit status, truncation and duration.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{BrokerService, Target};
use crate::api::Enforcement;
use crate::audit::{EventType, ExecRun};
use crate::contract::AGENT_CONTAINER;
use crate::controlplane::auth::Authenticator;
use crate::controlplane::discover::DiscoverPolicy;
use crate::controlplane::exec::{ExecError, Ran};
use crate::policy::tools::argument_rules;
use crate::policy::tools::arguments::{Arguments, CommandRun};
use crate::policy::{Outcome, ToolCall, ToolId};
use crate::proto::v1alpha1::{ExecRequest, ExecResponse};

/// The answer of an allowed `Exec`: one message, the command's end.
pub(super) type Ended = Pin<Box<dyn Stream<Item = Result<ExecResponse, Status>> + Send>>;

/// The gRPC status of a command that did not run to its end.
fn status_of(error: ExecError) -> Status {
    match error {
        ExecError::NotItsPod(why) => Status::permission_denied(why),
        ExecError::NotStarted(why) => Status::failed_precondition(why),
        ExecError::Unavailable(why) => Status::unavailable(why),
        deadline @ ExecError::Deadline { .. } => Status::deadline_exceeded(deadline.to_string()),
    }
}

/// The call's arguments as `exec_command` takes them (empty and zero mean
/// the defaults).
fn command_of(wire: ExecRequest) -> CommandRun {
    CommandRun {
        command: wire.command,
        args: wire.args,
        cwd: Some(wire.cwd).filter(|cwd| !cwd.is_empty()),
        timeout: Some(wire.timeout_seconds).filter(|seconds| *seconds != 0),
        stdin: wire.stdin,
    }
}

/// The words of a command's end, for its audit event.
fn summary(run: &CommandRun, pod: &str, ran: &Ran) -> String {
    let mut words = format!(
        "ran {:?} in {pod}/{AGENT_CONTAINER}: exit {} in {} ms",
        run.command,
        ran.exit_code,
        ran.duration.as_millis()
    );
    if ran.timed_out {
        words.push_str(", killed at its timeout");
    }
    for (stream, captured) in [("stdout", &ran.stdout), ("stderr", &ran.stderr)] {
        if captured.truncated {
            words.push_str(&format!(", {stream} truncated"));
        }
    }
    words
}

impl<D: DiscoverPolicy, A: Authenticator> BrokerService<D, A> {
    pub(super) async fn run_command(
        &self,
        request: Request<ExecRequest>,
    ) -> Result<Response<Ended>, Status> {
        let (metadata, _, wire) = request.into_parts();
        let (namespace, session) = (wire.namespace.clone(), wire.session.clone());
        let tool = (EventType::ToolCall, ToolId::ExecCommand);
        let names = (namespace.as_str(), session.as_str());
        let mut call = self.sidecar(&metadata, names, Target::Own, tool).await?;
        let decision = call.decide().await?;
        let run = command_of(wire);
        if let Err(why) = run.validate() {
            let status = Status::invalid_argument(format!("invalid arguments: {why}"));
            return Err(call.refuse(status).await);
        }
        let checked = ToolCall::ExecCommand(run);
        let breach = argument_rules::check(&checked, &call.caller.rules).err();
        let ToolCall::ExecCommand(run) = checked else {
            unreachable!("built as an exec_command just above")
        };
        let mut outcome = decision.outcome;
        let mut warning = String::new();
        if let Some(breach) = breach {
            if call.caller.enforcement == Enforcement::Enforce {
                return Err(call
                    .refuse(Status::permission_denied(breach.to_string()))
                    .await);
            }
            outcome = Outcome::WouldDeny;
            warning = format!("; would be {breach}");
        }
        let Some(executor) = self.executor.clone() else {
            let status = Status::failed_precondition("this control plane runs no commands");
            return Err(call.refuse(status).await);
        };
        // The pod is the token's, never an argument's.
        let Some(pod) = call.identity.pod_name.clone() else {
            let status = Status::permission_denied(
                "exec_command needs the token bound to the session's pod",
            );
            return Err(call.refuse(status).await);
        };
        let Some(own) = self.discover.session(&namespace, &session) else {
            let status = Status::failed_precondition(format!("session {session} cannot be read"));
            return Err(call.refuse(status).await);
        };
        let checked = executor.session_pod(&namespace, &pod, &own).await;
        call.or_refuse(checked.map_err(status_of)).await?;
        // Allowed: the rest runs past the bound on unary calls, as a stream.
        let recorder = self.trail();
        let enforcement = call.caller.enforcement;
        let mut event = call.event(outcome, enforcement, "");
        let answer = async move {
            match executor.run(&namespace, &pod, &run).await {
                Ok(ran) => {
                    event.reason = format!("{}{warning}", summary(&run, &pod, &ran));
                    event.exec = Some(ExecRun {
                        pod: pod.clone(),
                        container: AGENT_CONTAINER.to_owned(),
                        exit_code: ran.exit_code,
                        timed_out: ran.timed_out,
                        stdout_truncated: ran.stdout.truncated,
                        stderr_truncated: ran.stderr.truncated,
                        duration_ms: u64::try_from(ran.duration.as_millis()).unwrap_or(u64::MAX),
                    });
                    let audit_id = recorder.audit(event).await.map_err(|error| {
                        Status::unavailable(format!("cannot record the command: {error}"))
                    })?;
                    Ok(ExecResponse {
                        exit_code: ran.exit_code,
                        timed_out: ran.timed_out,
                        stdout: ran.stdout.bytes,
                        stderr: ran.stderr.bytes,
                        stdout_truncated: ran.stdout.truncated,
                        stderr_truncated: ran.stderr.truncated,
                        duration_ms: u64::try_from(ran.duration.as_millis()).unwrap_or(u64::MAX),
                        decision: crate::api::name_of(&outcome),
                        audit_id,
                    })
                }
                Err(error) => {
                    let status = status_of(error);
                    event.reason = format!("the command failed: {}", status.message());
                    if let Err(error) = recorder.audit(event).await {
                        tracing::error!(%error, "cannot store a broker audit event");
                    }
                    Err(status)
                }
            }
        };
        Ok(Response::new(Box::pin(futures::stream::once(answer))))
    }
}
