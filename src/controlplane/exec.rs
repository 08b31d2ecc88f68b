//! `exec_command` as the control plane runs it: in a session's own agent
//! container, through the `pods/exec` subresource, never in the sidecar
//! (which holds a token) and never in a pod the caller's token is not
//! bound to. What may run was decided before (the broker's `Exec`); here
//! is how: which pod counts as the session's ([`check_pod`]), the fixed
//! `/bin/sh` wrapper the command runs under ([`WRAPPER`]), and the
//! exchange with the API server, its output capped and its stream held to
//! a hard deadline ([`Executor::run`]).
//!
//! The agent image has no `wopr-operator` binary, so the wrapper is a
//! POSIX sh script, and the agent image needs `/bin/sh` (an image without
//! one gets [`ExecError::NotStarted`], naming it). The agent's input never
//! becomes script text: the working directory, the timeout, the command
//! and its arguments are the script's positional parameters.

use std::fmt;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::api::Session;
use crate::cluster::describe;
use crate::contract::{AGENT_CONTAINER, SESSION_LABEL, child_name};
use crate::policy::tools::arguments::CommandRun;

/// The shell the wrapper runs in: the agent image must have it.
pub const SHELL: &str = "/bin/sh";
/// The wrapper's `$0`, as `ps` in the agent container shows it.
pub const WRAPPER_NAME: &str = "wopr-exec";

/// The wrapper: `sh -c WRAPPER wopr-exec CWD TIMEOUT COMMAND ARGS...`.
///
/// It changes to CWD, then starts COMMAND in a process group of its own:
/// with `setsid` (util-linux and busybox have it) or, without it, with
/// job control (`set -m`, which dash and busybox ash turn off when there
/// is no terminal, as here: then it refuses, exit [`NOT_CONTAINED`],
/// rather than run a command it could not kill whole). A watcher in a
/// group of its own sleeps TIMEOUT seconds and kills the command's group
/// with SIGKILL. When the command ends (or is killed), whatever of its
/// group is left is killed too, then the watcher: first the process (so it
/// cannot start its sleep any more, even if it has not yet made its group),
/// then its group (its sleep, if it had started one). Nothing of the call
/// outlives it. Exit status: the command's (128 + n for a signal n, so
/// [`KILLED`] when the watcher fired). The command's standard input is
/// the exec's (saved as fd 3 first: an asynchronous command without job
/// control reads /dev/null otherwise); the watcher holds none of the
/// exec's streams, which would keep it open.
pub const WRAPPER: &str = r#"cd -- "$1" || { echo "wopr-exec: cannot change to the directory $1" >&2; exit 125; }
limit=$2
shift 2
if command -v setsid >/dev/null 2>&1; then
  group='setsid --'
else
  group=
  set -m 2>/dev/null
  case $- in
    *m*) ;;
    *) echo 'wopr-exec: the agent image has neither setsid nor a /bin/sh with job control: the command could not be given a process group of its own' >&2; exit 125 ;;
  esac
fi
{ command exec 3<&0; } 2>/dev/null || exec 3</dev/null
$group "$@" <&3 3<&- &
pid=$!
exec 3<&-
$group /bin/sh -c 'sleep "$1"; kill -s KILL -- "-$2" 2>/dev/null' wopr-watch "$limit" "$pid" </dev/null >/dev/null 2>&1 &
watcher=$!
wait "$pid" 2>/dev/null
status=$?
kill -s KILL -- "-$pid" 2>/dev/null
kill -s KILL "$watcher" 2>/dev/null
kill -s KILL -- "-$watcher" 2>/dev/null
wait "$watcher" 2>/dev/null
exit "$status"
"#;

/// The exit status of a command SIGKILL ended, as the watcher does at the
/// timeout. Something else may kill it so (the kernel's OOM killer): the
/// run counts as timed out only when it also lasted the timeout.
pub const KILLED: i32 = 128 + 9;
/// The wrapper's exit status when it could not start the command: the
/// directory cannot be entered, or the command cannot get a process group
/// of its own (its stderr says which).
pub const NOT_CONTAINED: i32 = 125;
/// How much of each of stdout and stderr is kept by default.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// How long past its timeout the control plane waits for a command's
/// status before it closes the stream (the wrapper kills the command at
/// the timeout; this bounds what the control plane holds).
pub const GRACE: Duration = Duration::from_secs(5);
/// The buffer between kube's WebSocket task and the readers here.
const PIPE_BYTES: usize = 64 * 1024;

/// The exec's command line: the wrapper, then the call's working
/// directory, timeout, command and arguments as positional parameters.
pub fn command_line(run: &CommandRun) -> Vec<String> {
    [SHELL, "-c", WRAPPER, WRAPPER_NAME, run.cwd()]
        .into_iter()
        .map(str::to_owned)
        .chain([run.timeout_seconds().to_string(), run.command.clone()])
        .chain(run.args.iter().cloned())
        .collect()
}

/// Why a command did not run to its status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExecError {
    /// The pod the token is bound to is not the session's agent pod.
    #[error("{0}")]
    NotItsPod(String),
    /// The container could not start the wrapper (no `/bin/sh`, the pod
    /// not running, RBAC refusing `pods/exec`).
    #[error("{0}")]
    NotStarted(String),
    /// The API server could not be reached, or the stream broke.
    #[error("{0}")]
    Unavailable(String),
    /// No status within the timeout and its grace: the stream was closed.
    #[error(
        "no status from the command within its timeout of {timeout} s and {} s of grace: the stream was closed",
        GRACE.as_secs()
    )]
    Deadline { timeout: u64 },
}

/// Whether `pod`, the pod a caller's token is bound to, is the agent pod
/// of `session`: named for it and recorded in its status, controlled by
/// it (its uid), labelled for it, not being deleted, with an agent
/// container.
pub fn check_pod(pod: &Pod, session: &Session) -> Result<(), ExecError> {
    let name = session.name_any();
    let pod_name = pod.name_any();
    let refuse = |why: &str| {
        Err(ExecError::NotItsPod(format!(
            "pod {pod_name} is not the agent pod of session {name}: {why}"
        )))
    };
    if pod_name != child_name(&name) {
        return refuse(&format!("the session's pod is named {}", child_name(&name)));
    }
    let recorded = session.status.as_ref().and_then(|s| s.pod_name.as_deref());
    if recorded != Some(pod_name.as_str()) {
        return refuse(&format!("the Session's status.podName is {recorded:?}"));
    }
    let controller = pod
        .owner_references()
        .iter()
        .find(|owner| owner.controller == Some(true));
    let controlled = controller.is_some_and(|owner| {
        owner.kind == Session::kind(&())
            && owner.api_version == Session::api_version(&())
            && owner.name == name
            && Some(&owner.uid) == session.metadata.uid.as_ref()
    });
    if !controlled {
        return refuse("it is not controlled by the Session (owner reference and uid)");
    }
    if pod.labels().get(SESSION_LABEL) != Some(&name) {
        return refuse(&format!(
            "its label {SESSION_LABEL} does not name the session"
        ));
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return refuse("it is being deleted");
    }
    let containers = pod.spec.as_ref().map(|spec| spec.containers.as_slice());
    if !containers
        .unwrap_or_default()
        .iter()
        .any(|container| container.name == AGENT_CONTAINER)
    {
        return refuse(&format!("it has no container {AGENT_CONTAINER}"));
    }
    Ok(())
}

/// What a command wrote on one stream, at most a cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Whether it wrote more (read and dropped).
    pub truncated: bool,
}

/// Reads `reader` to its end, keeping its first `cap` bytes: the rest is
/// read and dropped, so the command never blocks on a full pipe. A read
/// error ends the stream as its end would.
pub async fn capture(mut reader: impl AsyncRead + Unpin, cap: usize) -> Captured {
    let mut captured = Captured::default();
    let mut buffer = vec![0; PIPE_BYTES];
    while let Ok(read @ 1..) = reader.read(&mut buffer).await {
        let kept = read.min(cap.saturating_sub(captured.bytes.len()));
        captured.bytes.extend_from_slice(&buffer[..kept]);
        captured.truncated |= kept < read;
    }
    captured
}

/// A command's end: its exit status, whether the timeout killed it, what
/// it wrote, how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ran {
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout: Captured,
    pub stderr: Captured,
    pub duration: Duration,
}

/// The exit status the API server's final `Status` reports: 0 for
/// Success, the `ExitCode` cause of a `NonZeroExitCode` failure; any other
/// failure is the command not having started (a container without
/// `/bin/sh`, one not running), in the API server's words.
pub fn exit_code(status: &Status) -> Result<i32, ExecError> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = (status.reason.as_deref() == Some("NonZeroExitCode"))
        .then_some(status.details.as_ref())
        .flatten()
        .and_then(|details| details.causes.as_ref())
        .and_then(|causes| {
            causes
                .iter()
                .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
        })
        .and_then(|cause| cause.message.as_deref()?.parse().ok());
    code.ok_or_else(|| {
        ExecError::NotStarted(format!(
            "the agent container could not run the command (exec_command needs {SHELL} in the agent image): {}",
            status.message.as_deref().unwrap_or("no reason given")
        ))
    })
}

/// Runs commands in pods with the Kubernetes API (the operator's service
/// account needs `create` and `get` on `pods/exec`, and `get` on pods).
#[derive(Clone)]
pub struct Executor {
    client: Client,
    max_output_bytes: usize,
}

impl fmt::Debug for Executor {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Executor")
            .field("max_output_bytes", &self.max_output_bytes)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Runs with `client`, keeping at most `max_output_bytes` of each of
    /// stdout and stderr.
    pub fn new(client: Client, max_output_bytes: usize) -> Executor {
        Executor {
            client,
            max_output_bytes,
        }
    }

    /// The pod `namespace/name`, checked to be the agent pod of `session`.
    pub async fn session_pod(
        &self,
        namespace: &str,
        name: &str,
        session: &Session,
    ) -> Result<(), ExecError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.get_opt(name).await {
            Ok(Some(pod)) => check_pod(&pod, session),
            Ok(None) => Err(ExecError::NotStarted(format!(
                "the session's pod {name} does not exist"
            ))),
            Err(error) => Err(ExecError::Unavailable(format!(
                "cannot read the session's pod: {}",
                describe(&error)
            ))),
        }
    }

    /// Runs `run` in the agent container of the pod `namespace/pod` under
    /// the wrapper, feeding its stdin if it has one; the stream is closed
    /// once it outlives the timeout by [`GRACE`].
    pub async fn run(
        &self,
        namespace: &str,
        pod: &str,
        run: &CommandRun,
    ) -> Result<Ran, ExecError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let params = AttachParams {
            container: Some(AGENT_CONTAINER.to_owned()),
            stdin: run.stdin.is_some(),
            stdout: true,
            stderr: true,
            tty: false,
            max_stdin_buf_size: Some(PIPE_BYTES),
            max_stdout_buf_size: Some(PIPE_BYTES),
            max_stderr_buf_size: Some(PIPE_BYTES),
        };
        let timeout = Duration::from_secs(u64::from(run.timeout_seconds()));
        let started = Instant::now();
        let exchange = async {
            let mut attached = pods
                .exec(pod, command_line(run), &params)
                .await
                .map_err(not_started)?;
            let (stdin, stdout, stderr) = (attached.stdin(), attached.stdout(), attached.stderr());
            let status = attached.take_status();
            let feed = async {
                if let (Some(mut writer), Some(text)) = (stdin, run.stdin.as_deref()) {
                    // A command that exits without reading all of it is
                    // not an error of the call.
                    let _ = writer.write_all(text.as_bytes()).await;
                    let _ = writer.shutdown().await;
                }
            };
            let read = |reader: Option<_>| async {
                match reader {
                    Some(reader) => capture(reader, self.max_output_bytes).await,
                    None => Captured::default(),
                }
            };
            let status = async {
                match status {
                    Some(status) => status.await,
                    None => None,
                }
            };
            let ((), stdout, stderr, status) =
                tokio::join!(feed, read(stdout), read(stderr), status);
            // Dropped only now: dropping it aborts the stream's task.
            drop(attached);
            let status = status.ok_or_else(|| {
                ExecError::Unavailable("the exec stream ended without the command's status".into())
            })?;
            Ok::<_, ExecError>((exit_code(&status)?, stdout, stderr))
        };
        let (exit_code, stdout, stderr) = tokio::time::timeout(timeout + GRACE, exchange)
            .await
            .map_err(|_| ExecError::Deadline {
            timeout: timeout.as_secs(),
        })??;
        let duration = started.elapsed();
        Ok(Ran {
            exit_code,
            timed_out: exit_code == KILLED && duration >= timeout,
            stdout,
            stderr,
            duration,
        })
    }
}

/// Why the exec did not start: the API server's refusal (RBAC, a pod
/// gone), or it could not be reached.
fn not_started(error: kube::Error) -> ExecError {
    match error {
        kube::Error::UpgradeConnection(upgrade) => ExecError::NotStarted(format!(
            "the API server refused the exec ({upgrade}): the pod must be running, and the operator needs create and get on pods/exec"
        )),
        error => {
            ExecError::Unavailable(format!("cannot reach the API server: {}", describe(&error)))
        }
    }
}

#[cfg(test)]
mod tests;
