//! The real `wopr-operator` binary as a child process, for tests of what
//! only whole processes show: signals, crashes, reconnects, start-up errors.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary cargo built for these tests.
pub const BINARY: &str = env!("CARGO_BIN_EXE_wopr-operator");

/// A running `wopr-operator`; killed when dropped.
pub struct Process {
    pub name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// The lines of `stream`, as they come, and the task reading them.
fn collect(
    name: String,
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> (Arc<Mutex<Vec<String>>>, tokio::task::JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            if std::env::var_os("WOPR_TEST_ECHO").is_some() {
                eprintln!("[{name}] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    (lines, reader)
}

impl Process {
    /// Starts `wopr-operator ARGS` with `env` added to the environment.
    pub fn start(name: &str, args: &[String], env: &[(&str, String)]) -> Process {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("the wopr-operator binary starts");
        let (stdout, stdout_reader) =
            collect(format!("{name} stdout"), child.stdout.take().unwrap());
        let (stderr, stderr_reader) = collect(name.to_owned(), child.stderr.take().unwrap());
        Process {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
        }
    }

    /// Every line it wrote to stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Every line it wrote to stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// How many stderr lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.stderr()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until a stdout line satisfies `wanted` (at most 5 s); returns it.
    pub async fn wait_for_stdout(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.stdout().into_iter().rev().find(|line| wanted(line)) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no such stdout line; stdout:\n{}",
                self.name,
                self.stdout().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` stderr lines contain `needle` (at most `timeout`).
    pub async fn wait_for(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.count(needle) < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: no {count} lines with {needle:?} within {timeout:?}; stderr:\n{}",
                self.name,
                self.stderr().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of `key=` on the first stderr line containing `needle`
    /// (waiting up to 30 s for it), such as the address a listener bound.
    pub async fn logged(&self, needle: &str, key: &str) -> String {
        self.wait_for(needle, 1, Duration::from_secs(30)).await;
        let line = self
            .stderr()
            .into_iter()
            .find(|line| line.contains(needle))
            .unwrap();
        let prefix = format!("{key}=");
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
            .to_owned()
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Its resident memory now (`VmRSS` of `/proc/PID/status`), in bytes.
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        kib * 1024
    }

    /// Sends `signal` (SIGTERM, SIGKILL, ...).
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid()).unwrap();
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
    }

    /// Its exit status, if it exits within `timeout`; by then every line
    /// it wrote has been read.
    pub async fn exited_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()?
            .unwrap();
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
        Some(status)
    }
}

/// A port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
