//! `exec_command`: run by the control plane in this session's own agent
//! container (never here: the sidecar holds a token), through the broker.
//! The answer carries the command's output as text; output that is not
//! UTF-8 comes as lossy text (each bad sequence a U+FFFD) and, exact, as
//! base64 beside it.

use base64::Engine;
use serde_json::{Value, json};

use super::{Ran, Scope};
use crate::policy::tools::arguments::CommandRun;
use crate::proto::v1alpha1::ExecResponse;

/// `exec_command`.
pub async fn run(scope: &Scope<'_>, run: CommandRun) -> Ran {
    let messenger = match scope.messenger() {
        Ok(messenger) => messenger,
        Err(error) => return Ran::from(Err(error)),
    };
    match messenger.exec(run).await {
        Ok(ended) => {
            let answer = answer(ended);
            Ran {
                summary: Some(summary(&answer)),
                result: Ok(answer),
                fetch: None,
            }
        }
        Err(error) => Ran::from(Err(error)),
    }
}

/// The agent's answer for a command's end.
pub fn answer(ended: ExecResponse) -> Value {
    let mut answer = json!({
        "exitCode": ended.exit_code,
        "timedOut": ended.timed_out,
        "stdoutTruncated": ended.stdout_truncated,
        "stderrTruncated": ended.stderr_truncated,
        "durationMs": ended.duration_ms,
        "decision": ended.decision,
        "auditId": ended.audit_id,
    });
    for (name, bytes, truncated) in [
        ("stdout", &ended.stdout, ended.stdout_truncated),
        ("stderr", &ended.stderr, ended.stderr_truncated),
    ] {
        let (text, exact) = text_of(bytes, truncated);
        answer[name] = text.into();
        if !exact {
            answer[format!("{name}Base64")] = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
        }
    }
    answer
}

/// The words of an answer for the sidecar's audit event: exit code,
/// timeout, truncation, duration (never the output).
fn summary(answer: &Value) -> String {
    let mut words = format!("exit {} in {} ms", answer["exitCode"], answer["durationMs"]);
    for (flag, said) in [
        ("timedOut", "killed at its timeout"),
        ("stdoutTruncated", "stdout truncated"),
        ("stderrTruncated", "stderr truncated"),
    ] {
        if answer[flag] == true {
            words.push_str(&format!(", {said}"));
        }
    }
    words
}

/// `bytes` as text, and whether that text is exactly them: UTF-8 as it
/// is, or lossy. A cut at the cap may split a character: a truncated
/// stream that is UTF-8 up to its last incomplete character is exact
/// without it.
fn text_of(bytes: &[u8], truncated: bool) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), true),
        Err(error) if truncated && error.error_len().is_none() => {
            let whole = &bytes[..error.valid_up_to()];
            (String::from_utf8_lossy(whole).into_owned(), true)
        }
        Err(_) => (String::from_utf8_lossy(bytes).into_owned(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_that_is_not_utf8_comes_lossy_and_exact() {
        let ended = ExecResponse {
            exit_code: 3,
            stdout: b"plain \xe2\x9c\x93\n".to_vec(),
            stderr: vec![0xff, b'a', 0xfe],
            ..ExecResponse::default()
        };
        let answer = answer(ended);
        assert_eq!(answer["exitCode"], 3);
        assert_eq!(answer["stdout"], "plain \u{2713}\n");
        assert!(answer.get("stdoutBase64").is_none());
        assert_eq!(answer["stderr"], "\u{fffd}a\u{fffd}");
        assert_eq!(answer["stderrBase64"], "/2H+");
        assert_eq!(summary(&answer), "exit 3 in 0 ms");
    }

    #[test]
    fn a_character_cut_at_the_cap_is_not_bad_output() {
        // "✓" is three bytes; the cap kept two of them.
        assert_eq!(text_of(b"ok \xe2\x9c", true), ("ok ".to_owned(), true));
        // Not cut there: the same bytes are not UTF-8.
        assert_eq!(
            text_of(b"ok \xe2\x9c", false),
            ("ok \u{fffd}".to_owned(), false)
        );
    }
}
