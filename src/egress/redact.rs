//! Redaction of credentials from text a provider wrote (error bodies),
//! before it reaches a log, an event or the agent. It errs towards
//! redacting: a long identifier may go too, a key never stays.

use std::borrow::Cow;

/// What replaces a credential.
pub const REDACTED: &str = "[REDACTED]";

/// Shortest run of token characters (letters and digits both present)
/// taken for an opaque secret: hex and base64 keys, signatures.
const LONG_RUN: usize = 32;

/// Names after which the next token is a credential, whatever it looks like.
const KEY_NAMES: &[&str] = &["bearer", "x-api-key", "api-key", "api_key", "apikey"];

/// `text` with anything that looks like a credential replaced by
/// [`REDACTED`]: OpenAI (`sk-…`, `sk-proj-…`) and Anthropic (`sk-ant-…`)
/// keys, the token after `Bearer` or an `x-api-key`/`api_key` name,
/// JWT-shaped `eyJ….….…` triples, and runs of 32+ token characters.
pub fn redact(text: &str) -> Cow<'_, str> {
    let spans = secret_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in spans {
        out.push_str(&text[last..start]);
        out.push_str(REDACTED);
        last = end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// `text` with every occurrence of the known credential `key` replaced by
/// [`REDACTED`] (an empty key redacts nothing).
pub fn redact_key<'a>(text: &'a str, key: &str) -> Cow<'a, str> {
    if key.is_empty() || !text.contains(key) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.replace(key, REDACTED))
}

/// Characters a key or token is made of (base64, base64url, hex, JWT
/// dots); base64's `=` padding only ends one (so `key=value` is two words).
fn token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'/' | b'.' | b'~')
}

/// The byte spans to redact, in order, not overlapping.
fn secret_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut after_key_name = false;
    let mut i = 0;
    while i < bytes.len() {
        if !token_char(bytes[i]) {
            // Separators between a key name and its value keep the name in force.
            if !matches!(bytes[i], b' ' | b':' | b'=' | b'"' | b'\'' | b'\t') {
                after_key_name = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && token_char(bytes[i]) {
            i += 1;
        }
        let mut padding = i;
        while padding < bytes.len() && bytes[padding] == b'=' {
            padding += 1;
        }
        if padding == bytes.len() || !token_char(bytes[padding]) {
            i = padding;
        }
        // A sentence's full stop is not part of the token.
        let end = start + text[start..i].trim_end_matches('.').len();
        let word = &text[start..end];
        if word.is_empty() {
            continue;
        }
        if after_key_name && !is_key_name(word) {
            spans.push((start, end));
            after_key_name = false;
        } else if is_key_name(word) {
            after_key_name = true;
        } else if is_secret(word) {
            spans.push((start, end));
        } else {
            // Parts of a dotted word (a host, a file name) are judged alone.
            let mut offset = start;
            for part in word.split('.') {
                if is_long_run(part) {
                    spans.push((offset, offset + part.len()));
                }
                offset += part.len() + 1;
            }
        }
    }
    spans
}

fn is_key_name(word: &str) -> bool {
    KEY_NAMES.iter().any(|name| word.eq_ignore_ascii_case(name))
}

fn is_secret(word: &str) -> bool {
    let provider_key = word
        .strip_prefix("sk-")
        .is_some_and(|rest| rest.len() >= 16);
    let jwt = word.starts_with("eyJ") && {
        let parts: Vec<&str> = word.split('.').collect();
        parts.len() == 3 && parts[0].len() >= 10 && !parts[1].is_empty()
    };
    provider_key || jwt || is_long_run(word)
}

fn is_long_run(part: &str) -> bool {
    part.len() >= LONG_RUN
        && part.bytes().any(|b| b.is_ascii_digit())
        && part.bytes().any(|b| b.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = "sk-proj-Xy7aBc9dEf1GhIjKlMnOpQrStUvWxYz0123456789abcdefT3BlbkFJ";
    const ANTHROPIC: &str = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345678-AbCdEfAA";
    const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IkFCQyJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

    #[test]
    fn provider_keys_are_redacted() {
        let text = format!(
            "Incorrect API key provided: {OPENAI}. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        let redacted = redact(&text);
        assert!(!redacted.contains("Xy7aBc9dEf"), "{redacted}");
        assert_eq!(
            redacted,
            "Incorrect API key provided: [REDACTED]. You can find your API key at https://platform.openai.com/account/api-keys."
        );
        let text = format!("{{\"error\":{{\"message\":\"invalid x-api-key {ANTHROPIC}\"}}}}");
        assert_eq!(
            redact(&text),
            "{\"error\":{\"message\":\"invalid x-api-key [REDACTED]\"}}"
        );
        assert_eq!(
            redact("legacy sk-0123456789abcdefABCDEF key"),
            "legacy [REDACTED] key"
        );
    }

    #[test]
    fn headers_bearer_tokens_and_jwts_are_redacted() {
        assert_eq!(
            redact("Authorization: Bearer abc.def-123"),
            "Authorization: Bearer [REDACTED]"
        );
        assert_eq!(redact("x-api-key: short1"), "x-api-key: [REDACTED]");
        assert_eq!(
            redact("{\"api_key\": \"hunter2\"}"),
            "{\"api_key\": \"[REDACTED]\"}"
        );
        assert_eq!(
            redact(&format!("token {JWT} rejected")),
            "token [REDACTED] rejected"
        );
    }

    #[test]
    fn long_hex_and_base64_runs_are_redacted() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(redact(&format!("key={hex}")), "key=[REDACTED]");
        let b64 = "QWxhZGRpbjpvcGVuIHNlc2FtZQ0123456789+/abcdXYZ==";
        assert_eq!(redact(&format!("secret {b64}")), "secret [REDACTED]");
    }

    #[test]
    fn ordinary_error_text_is_kept_borrowed() {
        for text in [
            "Rate limit reached for gpt-4o-mini in organization org-abc on tokens per min (TPM).",
            "model_context_window_exceeded_error_really_long_name",
            "The model `claude-3-5-haiku-20241022` does not exist",
            "request_id: req_011CSHoEeqs5C35K2UUqR7Fy",
        ] {
            assert!(
                matches!(redact(text), Cow::Borrowed(_)),
                "{text} -> {}",
                redact(text)
            );
        }
    }

    #[test]
    fn a_known_key_is_redacted_wherever_it_appears() {
        let key = "plain-key-value";
        assert_eq!(
            redact_key("a plain-key-value b plain-key-value", key),
            "a [REDACTED] b [REDACTED]"
        );
        assert!(matches!(redact_key("nothing here", key), Cow::Borrowed(_)));
        assert!(matches!(redact_key("nothing here", ""), Cow::Borrowed(_)));
    }
}
