//! The wrapper run by this machine's real `/bin/sh` (as the agent
//! container's would run it), and the pure parts of the exec: the pod
//! check, the exit status, the capture.

use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, StatusCause, StatusDetails};
use serde_json::json;

use super::*;
use crate::api::{SessionStatus, TrustLevel};

fn command(command: &str, args: &[&str], cwd: &str, timeout: u32) -> CommandRun {
    CommandRun {
        command: command.into(),
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        cwd: Some(cwd.into()),
        timeout: Some(timeout),
        stdin: None,
    }
}

/// What the wrapper's exit status, stdout and stderr are for `run`, run by
/// the real `/bin/sh` here, detached from any terminal (as an exec without
/// a TTY is), and how long it took.
async fn wrapped(run: &CommandRun, cap: usize) -> (Option<i32>, Captured, Captured, Duration) {
    let argv = command_line(run);
    let mut shell = tokio::process::Command::new(&argv[0]);
    shell
        .args(&argv[1..])
        .stdin(if run.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
    unsafe {
        shell.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = shell.spawn().expect("/bin/sh runs");
    let stdin = child.stdin.take();
    let feed = async {
        if let (Some(mut writer), Some(text)) = (stdin, run.stdin.as_deref()) {
            writer.write_all(text.as_bytes()).await.unwrap();
        }
    };
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let ((), stdout, stderr, status) = tokio::join!(
        feed,
        capture(stdout, cap),
        capture(stderr, cap),
        child.wait()
    );
    (status.unwrap().code(), stdout, stderr, started.elapsed())
}

fn text(captured: &Captured) -> String {
    String::from_utf8_lossy(&captured.bytes).into_owned()
}

/// The processes alive now (zombies are dead: nothing reaps orphans in
/// every sandbox) whose process group is `group`, if given, or whose command line
/// holds `needle`, from /proc.
async fn alive(group: Option<u32>, needle: Vec<u8>) -> Vec<String> {
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let path = entry.path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            if fields[0] == "Z" {
                continue;
            }
            let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
            let in_group = group.is_some_and(|group| fields[2] == group.to_string());
            let named = cmdline
                .windows(needle.len())
                .any(|w| w == needle.as_slice());
            if in_group || named {
                found.push(format!(
                    "{}: {}",
                    path.display(),
                    String::from_utf8_lossy(&cmdline)
                ));
            }
        }
        found
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn the_exit_status_and_both_streams_pass_through() {
    let run = command("sh", &["-c", "echo out; echo err >&2; exit 3"], "/tmp", 30);
    let (code, stdout, stderr, _) = wrapped(&run, 1024).await;
    assert_eq!(code, Some(3));
    assert_eq!(text(&stdout), "out\n");
    assert_eq!(text(&stderr), "err\n");
    let run = command("true", &[], "/tmp", 30);
    assert_eq!(wrapped(&run, 1024).await.0, Some(0));
}

#[tokio::test]
async fn the_agents_words_are_never_script_text() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let injection = format!("$(touch {0}); `touch {0}`; touch {0}", marker.display());
    let run = command("echo", &[&injection, "a b", "*"], "/tmp", 30);
    let (code, stdout, _, _) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(0));
    assert_eq!(text(&stdout), format!("{injection} a b *\n"));
    assert!(!marker.exists());
    // A working directory is a word too, and so is a command that looks
    // like an option.
    let cwd = dir.path().join("$(touch x)");
    std::fs::create_dir(&cwd).unwrap();
    let run = command("pwd", &[], cwd.to_str().unwrap(), 30);
    assert_eq!(
        text(&wrapped(&run, 4096).await.1),
        format!("{}\n", cwd.display())
    );
    let run = command("-x", &[], "/tmp", 30);
    assert_eq!(wrapped(&run, 4096).await.0, Some(127));
}

#[tokio::test]
async fn the_command_runs_in_its_directory_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let run = command("pwd", &[], dir.path().to_str().unwrap(), 30);
    let (code, stdout, _, _) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(0));
    assert_eq!(text(&stdout), format!("{}\n", dir.path().display()));
    let missing = dir.path().join("missing");
    let ran = dir.path().join("ran");
    let run = command(
        "touch",
        &[ran.to_str().unwrap()],
        missing.to_str().unwrap(),
        30,
    );
    let (code, _, stderr, _) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(NOT_CONTAINED));
    assert!(
        text(&stderr).contains(&format!(
            "wopr-exec: cannot change to the directory {}",
            missing.display()
        )),
        "{}",
        text(&stderr)
    );
    assert!(!ran.exists(), "the command ran elsewhere");
}

#[tokio::test]
async fn stdin_is_fed_to_the_command() {
    let mut run = command("cat", &[], "/tmp", 30);
    run.stdin = Some("line one\nline two\n".into());
    let (code, stdout, _, _) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(0));
    assert_eq!(text(&stdout), "line one\nline two\n");
    // Without stdin the command reads an empty one, not the wrapper's.
    let run = command("cat", &[], "/tmp", 30);
    assert_eq!(wrapped(&run, 4096).await.1, Captured::default());
}

#[tokio::test]
async fn the_timeout_kills_the_command_and_every_process_it_started() {
    // The command prints its pid (its process group's id), starts a child
    // and waits on another: both must die at the timeout.
    let run = command("sh", &["-c", "echo $$; sleep 171 & sleep 172"], "/tmp", 1);
    let (code, stdout, _, took) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(KILLED));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let group: u32 = text(&stdout).trim().parse().expect("the command's pid");
    // Its watcher and the watcher's sleep are gone too.
    let watcher = format!("wopr-watch\x001\x00{group}\x00").into_bytes();
    assert_eq!(alive(Some(group), watcher).await, Vec::<String>::new());
    assert_eq!(
        alive(None, b"sleep\x00171".to_vec()).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn nothing_of_a_call_outlives_it() {
    // The command leaves a child behind and exits at once: the child is
    // killed, and the watcher's sleep (97 s) does not linger.
    let run = command("sh", &["-c", "echo $$; sleep 173 &"], "/tmp", 97);
    let (code, stdout, _, took) = wrapped(&run, 4096).await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(10), "{took:?}");
    let group: u32 = text(&stdout).trim().parse().expect("the command's pid");
    assert_eq!(
        alive(Some(group), b"sleep\x0097\x00".to_vec()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        alive(None, b"sleep\x00173".to_vec()).await,
        Vec::<String>::new()
    );
    // However fast the command, the watcher never outlives it (it may not
    // even have made its process group yet when the command ends).
    let quick = command("true", &[], "/tmp", 98);
    let runs = futures::future::join_all((0..20).map(|_| wrapped(&quick, 16))).await;
    for (code, _, _, took) in runs {
        assert_eq!(code, Some(0));
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}

#[tokio::test]
async fn without_setsid_or_job_control_nothing_runs() {
    // This machine's /bin/sh (dash, busybox ash) has no job control
    // without a terminal: with no setsid on the PATH, the wrapper refuses.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let run = command("/bin/touch", &[marker.to_str().unwrap()], "/tmp", 30);
    let argv = command_line(&run);
    let mut shell = tokio::process::Command::new(&argv[0]);
    shell
        .args(&argv[1..])
        .env("PATH", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: as in `wrapped`.
    unsafe {
        shell.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let output = shell.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("job control") {
        assert_eq!(output.status.code(), Some(NOT_CONTAINED), "{stderr}");
        assert!(
            stderr.contains("neither setsid nor a /bin/sh with job control"),
            "{stderr}"
        );
        assert!(!marker.exists());
    } else {
        // A /bin/sh with job control without a terminal (bash): it ran in
        // a group of its own.
        assert_eq!(output.status.code(), Some(0), "{stderr}");
        assert!(marker.exists());
    }
}

#[tokio::test]
async fn output_past_the_cap_is_read_and_dropped() {
    // 1 MiB on stdout and stderr, capped at 1000 bytes: the command is not
    // blocked on a full pipe, and both say they were cut.
    let script = "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2; exit 5";
    let run = command("sh", &["-c", script], "/tmp", 30);
    let (code, stdout, stderr, _) = wrapped(&run, 1000).await;
    assert_eq!(code, Some(5));
    assert_eq!((stdout.bytes.len(), stdout.truncated), (1000, true));
    assert_eq!((stderr.bytes.len(), stderr.truncated), (1000, true));
    let run = command("printf", &["12345"], "/tmp", 30);
    let (_, exact, _, _) = wrapped(&run, 5).await;
    assert_eq!(
        (exact.bytes.as_slice(), exact.truncated),
        (&b"12345"[..], false)
    );
}

#[test]
fn the_command_line_is_the_wrapper_then_the_calls_words() {
    let mut run = command("ls", &["-l", "a b"], "/workspace/src", 7);
    assert_eq!(
        command_line(&run),
        [
            "/bin/sh",
            "-c",
            WRAPPER,
            "wopr-exec",
            "/workspace/src",
            "7",
            "ls",
            "-l",
            "a b"
        ]
    );
    run.cwd = None;
    run.timeout = None;
    assert_eq!(command_line(&run)[4..6], ["/workspace", "30"]);
}

fn status(value: serde_json::Value) -> Status {
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_exit_status_is_read_from_the_api_servers_status() {
    assert_eq!(exit_code(&status(json!({"status": "Success"}))), Ok(0));
    let failed = Status {
        status: Some("Failure".into()),
        reason: Some("NonZeroExitCode".into()),
        message: Some("command terminated with non-zero exit code: exit status 3".into()),
        details: Some(StatusDetails {
            causes: Some(vec![StatusCause {
                reason: Some("ExitCode".into()),
                message: Some("3".into()),
                field: None,
            }]),
            ..StatusDetails::default()
        }),
        ..Status::default()
    };
    assert_eq!(exit_code(&failed), Ok(3));
    let no_shell = status(json!({
        "status": "Failure", "reason": "InternalError",
        "message": "Internal error occurred: error executing command in container: failed to exec in container: failed to start exec: OCI runtime exec failed: exec failed: unable to start container process: exec: \"/bin/sh\": stat /bin/sh: no such file or directory: unknown"
    }));
    let Err(ExecError::NotStarted(why)) = exit_code(&no_shell) else {
        panic!("a command that never started has no exit status");
    };
    assert!(
        why.contains("exec_command needs /bin/sh in the agent image"),
        "{why}"
    );
    assert!(
        why.contains("stat /bin/sh: no such file or directory"),
        "{why}"
    );
    // A NonZeroExitCode without a readable code is no exit status either.
    let unreadable = status(json!({"status": "Failure", "reason": "NonZeroExitCode"}));
    assert!(matches!(
        exit_code(&unreadable),
        Err(ExecError::NotStarted(_))
    ));
}

fn session_with_pod(pod: Option<&str>) -> Session {
    let mut session = Session {
        metadata: kube::api::ObjectMeta {
            name: Some("research".into()),
            namespace: Some("team-a".into()),
            uid: Some("uid-research".into()),
            ..Default::default()
        },
        spec: crate::api::SessionSpec::for_trust_level(TrustLevel::Trusted),
        status: None,
    };
    session.status = Some(SessionStatus {
        pod_name: pod.map(Into::into),
        ..SessionStatus::default()
    });
    session
}

fn pod_of(session: &Session) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": "wopr-research", "namespace": "team-a",
            "labels": {SESSION_LABEL: "research"},
            "ownerReferences": [serde_json::to_value(session.controller_owner_ref(&()).unwrap()).unwrap()]
        },
        "spec": {"containers": [{"name": "agent"}, {"name": "a2a"}]}
    }))
    .unwrap()
}

#[test]
fn only_the_sessions_own_agent_pod_is_its_pod() {
    let session = session_with_pod(Some("wopr-research"));
    let pod = pod_of(&session);
    assert_eq!(check_pod(&pod, &session), Ok(()));
    let refused = |pod: &Pod, session: &Session| match check_pod(pod, session) {
        Err(ExecError::NotItsPod(why)) => why,
        other => panic!("{other:?}"),
    };
    let mut other = pod.clone();
    other.metadata.name = Some("wopr-other".into());
    assert!(refused(&other, &session).contains("named wopr-research"));
    assert!(refused(&pod, &session_with_pod(None)).contains("status.podName"));
    let mut foreign = pod.clone();
    foreign.metadata.owner_references = Some(vec![OwnerReference {
        uid: "uid-of-another-research".into(),
        ..session.controller_owner_ref(&()).unwrap()
    }]);
    assert!(refused(&foreign, &session).contains("not controlled by the Session"));
    let mut unlabelled = pod.clone();
    unlabelled.metadata.labels = None;
    assert!(refused(&unlabelled, &session).contains(SESSION_LABEL));
    let mut going = pod.clone();
    going.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    assert!(refused(&going, &session).contains("being deleted"));
    let mut no_agent = pod;
    no_agent
        .spec
        .as_mut()
        .unwrap()
        .containers
        .retain(|c| c.name != "agent");
    assert!(refused(&no_agent, &session).contains("no container agent"));
}
