//! The top-level members of a JSON object, found in its text as received.
//!
//! WOPR signs `JSON.stringify` of a message before `sig` is appended, and
//! verifies by re-serializing what it parsed. We verify over the bytes a
//! peer sent with the `sig` member cut out of the text, never over a
//! re-serialization: so the signed bytes are exactly the sent ones, and no
//! two JSON libraries need agree on number or string formatting.
//!
//! serde_json checks that the text is valid JSON and decodes the member
//! names; this module only finds where each top-level member starts and
//! ends, which in valid JSON takes skipping strings (and their escapes)
//! and nested brackets.

use std::ops::Range;

use serde::de::DeserializeOwned;

/// The deepest nesting of objects and arrays a message may have.
pub const MAX_DEPTH: usize = 64;

/// One top-level member: its decoded name and where it is in the text.
#[derive(Debug)]
struct Member {
    name: String,
    /// From the name's opening quote to the value's last byte.
    span: Range<usize>,
    value: Range<usize>,
}

/// A JSON object's text and its top-level members, in order.
#[derive(Debug)]
pub struct Members<'a> {
    raw: &'a [u8],
    members: Vec<Member>,
}

impl<'a> Members<'a> {
    /// The members of `raw`, a JSON object (whitespace around it allowed)
    /// nested at most [`MAX_DEPTH`] deep, whose top-level names are unique
    /// once decoded (`"\u0073ig"` is `"sig"`).
    pub fn parse(raw: &'a [u8]) -> Result<Members<'a>, FormatError> {
        let text = std::str::from_utf8(raw).map_err(|error| FormatError::NotUtf8 {
            at: error.valid_up_to(),
        })?;
        check_depth(raw)?;
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|error| FormatError::Invalid(error.to_string()))?;
        let mut members: Vec<Member> = Vec::new();
        for (span, name, value) in Scanner::new(raw).members()? {
            let name: String = serde_json::from_slice(&raw[name])
                .map_err(|error| FormatError::Invalid(error.to_string()))?;
            if members.iter().any(|member| member.name == name) {
                return Err(FormatError::Duplicate(name));
            }
            members.push(Member { name, span, value });
        }
        Ok(Members { raw, members })
    }

    /// The raw text of the value of the member called `name`.
    pub fn raw(&self, name: &str) -> Option<&'a [u8]> {
        self.find(name)
            .map(|at| &self.raw[self.members[at].value.clone()])
    }

    /// The member called `name` decoded as a `T`, `None` when absent; the
    /// error says that it must be `what`.
    pub fn decode<T: DeserializeOwned>(&self, name: &str, what: &str) -> Result<Option<T>, String> {
        self.raw(name)
            .map(|raw| serde_json::from_slice(raw).map_err(|_| format!("{name} must be {what}")))
            .transpose()
    }

    /// [`Members::decode`] of a member that must be there.
    pub fn required<T: DeserializeOwned>(&self, name: &str, what: &str) -> Result<T, String> {
        self.decode(name, what)?
            .ok_or_else(|| format!("{name} is missing: it must be {what}"))
    }

    /// The text without the member called `name` and the separator between
    /// it and a neighbour: the one before it if any, else the one after.
    /// So `{"a":1,"sig":"x"}` becomes `{"a":1}`, as before `sig` was
    /// appended. The whole text when there is no such member.
    pub fn without(&self, name: &str) -> Vec<u8> {
        let Some(at) = self.find(name) else {
            return self.raw.to_vec();
        };
        let member = &self.members[at];
        let cut = match (at.checked_sub(1), self.members.get(at + 1)) {
            (Some(before), _) => self.members[before].span.end..member.span.end,
            (None, Some(after)) => member.span.start..after.span.start,
            (None, None) => member.span.clone(),
        };
        [&self.raw[..cut.start], &self.raw[cut.end..]].concat()
    }

    /// The signed text and its signature: the string member `sig` cut out.
    pub fn split_signature(&self) -> Result<Unsigned, FormatError> {
        let raw = self.raw("sig").ok_or(FormatError::NoSignature)?;
        let signature =
            serde_json::from_slice(raw).map_err(|_| FormatError::SignatureNotAString)?;
        Ok(Unsigned {
            signed: self.without("sig"),
            signature,
        })
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|member| member.name == name)
    }
}

/// A signed object's text split in two: what was signed, and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsigned {
    /// The text as received without its `sig` member.
    pub signed: Vec<u8>,
    /// The `sig` member's value, base64.
    pub signature: String,
}

/// [`Members::split_signature`] of the object `raw`.
pub fn split_signature(raw: &[u8]) -> Result<Unsigned, FormatError> {
    Members::parse(raw)?.split_signature()
}

/// Refuses nesting deeper than [`MAX_DEPTH`] before anything recurses.
fn check_depth(raw: &[u8]) -> Result<(), FormatError> {
    let mut depth = 0usize;
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'"' => at = string_end(raw, at),
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(FormatError::TooDeep { limit: MAX_DEPTH });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

/// The index of the closing quote of the string opening at `open`, or the
/// text's length if it has none.
fn string_end(raw: &[u8], open: usize) -> usize {
    let mut at = open + 1;
    while at < raw.len() {
        match raw[at] {
            b'\\' => at += 2,
            b'"' => return at,
            _ => at += 1,
        }
    }
    raw.len()
}

/// A cursor over text serde_json has found to be valid JSON.
struct Scanner<'a> {
    raw: &'a [u8],
    at: usize,
}

/// A member's span, its name's span (with the quotes) and its value's.
type Spans = (Range<usize>, Range<usize>, Range<usize>);

impl<'a> Scanner<'a> {
    fn new(raw: &'a [u8]) -> Scanner<'a> {
        Scanner { raw, at: 0 }
    }

    /// The spans of each top-level member of the object.
    fn members(mut self) -> Result<Vec<Spans>, FormatError> {
        if self.next_token()? != b'{' {
            return Err(FormatError::NotAnObject);
        }
        let mut found = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            return Ok(found);
        }
        loop {
            self.skip_whitespace();
            let start = self.at;
            if self.peek() != Some(b'"') {
                return Err(Self::unexpected());
            }
            self.skip_string()?;
            let name = start..self.at;
            self.skip_whitespace();
            self.expect(b':')?;
            self.skip_whitespace();
            let value_start = self.at;
            self.skip_value()?;
            found.push((start..self.at, name, value_start..self.at));
            match self.next_token()? {
                b',' => continue,
                b'}' => return Ok(found),
                _ => return Err(Self::unexpected()),
            }
        }
    }

    /// Past one value: a string, a nested object or array, or a scalar.
    fn skip_value(&mut self) -> Result<(), FormatError> {
        match self.peek() {
            Some(b'"') => self.skip_string()?,
            Some(b'{' | b'[') => {
                let mut depth = 0usize;
                while let Some(byte) = self.peek() {
                    match byte {
                        b'"' => self.at = string_end(self.raw, self.at),
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
                return Err(Self::unexpected());
            }
            Some(_) => {
                while self
                    .peek()
                    .is_some_and(|byte| !matches!(byte, b',' | b'}' | b']') && !is_whitespace(byte))
                {
                    self.at += 1;
                }
            }
            None => return Err(Self::unexpected()),
        }
        Ok(())
    }

    /// Past the string opening here, quotes included.
    fn skip_string(&mut self) -> Result<(), FormatError> {
        let close = string_end(self.raw, self.at);
        if close >= self.raw.len() {
            return Err(Self::unexpected());
        }
        self.at = close + 1;
        Ok(())
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_whitespace) {
            self.at += 1;
        }
    }

    fn next_token(&mut self) -> Result<u8, FormatError> {
        self.skip_whitespace();
        let byte = self.peek().ok_or_else(Self::unexpected)?;
        self.at += 1;
        Ok(byte)
    }

    fn expect(&mut self, byte: u8) -> Result<(), FormatError> {
        if self.next_token()? == byte {
            Ok(())
        } else {
            Err(Self::unexpected())
        }
    }

    fn peek(&self) -> Option<u8> {
        self.raw.get(self.at).copied()
    }

    /// What the scanner meets only if its reading of JSON and serde_json's
    /// disagree: refused rather than guessed at.
    fn unexpected() -> FormatError {
        FormatError::Invalid("the object's members could not be delimited".into())
    }
}

fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Why a text is not a JSON object we can verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not UTF-8 (at byte {at}): send the JSON text as UTF-8")]
    NotUtf8 { at: usize },
    #[error("not valid JSON: {0}")]
    Invalid(String),
    #[error("nested deeper than {limit} objects or arrays")]
    TooDeep { limit: usize },
    #[error("not a JSON object: a message is one object")]
    NotAnObject,
    #[error("the member {0:?} appears more than once: send each member once")]
    Duplicate(String),
    #[error("no \"sig\" member: sign the object and append its signature as \"sig\"")]
    NoSignature,
    #[error("\"sig\" is not a string: it is the base64 of the signature")]
    SignatureNotAString,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn values_are_delimited_past_strings_and_nesting() {
        let raw = br#" { "a" : "x\"}],{[\\" , "b":{"c":[1,{"d":"}"}],"e":"\""},"n":-1.5e3,"t":true,"z":null } "#;
        let members = Members::parse(raw).unwrap();
        assert_eq!(members.raw("a"), Some(&br#""x\"}],{[\\""#[..]));
        assert_eq!(
            members.raw("b"),
            Some(&br#"{"c":[1,{"d":"}"}],"e":"\""}"#[..])
        );
        assert_eq!(members.raw("n"), Some(&b"-1.5e3"[..]));
        assert_eq!(members.raw("t"), Some(&b"true"[..]));
        assert_eq!(members.raw("z"), Some(&b"null"[..]));
        assert_eq!(members.raw("c"), None, "only top-level members");
    }

    #[test]
    fn sig_is_cut_wherever_it_is() {
        for (raw, signed) in [
            (r#"{"a":1,"sig":"S"}"#, r#"{"a":1}"#),
            (r#"{"sig":"S","a":1}"#, r#"{"a":1}"#),
            (r#"{"a":1,"sig":"S","b":2}"#, r#"{"a":1,"b":2}"#),
            (r#"{"sig":"S"}"#, r#"{}"#),
            (r#"{ "a" : 1 , "sig" : "S" }"#, r#"{ "a" : 1 }"#),
            (r#"{ "sig" : "S" ,  "a" : 1 }"#, r#"{ "a" : 1 }"#),
            (r#"{"a":1,"\u0073ig":"S"}"#, r#"{"a":1}"#),
        ] {
            let unsigned = split_signature(raw.as_bytes()).unwrap();
            assert_eq!(text(unsigned.signed), signed, "{raw}");
            assert_eq!(unsigned.signature, "S");
        }
    }

    #[test]
    fn without_an_absent_member_is_the_whole_text() {
        let members = Members::parse(br#"{"a":1}"#).unwrap();
        assert_eq!(members.without("b"), br#"{"a":1}"#);
    }

    #[test]
    fn what_is_not_one_object_with_unique_names_is_refused() {
        for (raw, expected) in [
            (&br#"{"a":1,"a":2}"#[..], FormatError::Duplicate("a".into())),
            (
                br#"{"sig":"x","\u0073ig":"y"}"#,
                FormatError::Duplicate("sig".into()),
            ),
            (b"[1,2]", FormatError::NotAnObject),
            (b"\"sig\"", FormatError::NotAnObject),
            (b"{\"a\":\"\xff\"}", FormatError::NotUtf8 { at: 6 }),
        ] {
            assert_eq!(
                Members::parse(raw).unwrap_err(),
                expected,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        for invalid in [
            &br#"{"a":1} x"#[..],
            br#"{"a":1}{}"#,
            br#"{"a":1,}"#,
            br#"{"a" 1}"#,
            b"{",
            b"",
            br#"{"a":01}"#,
        ] {
            assert!(
                matches!(Members::parse(invalid), Err(FormatError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(invalid)
            );
        }
        assert!(
            Members::parse(b" {}\n\t").is_ok(),
            "whitespace around is fine"
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let deep = |depth: usize| {
            format!(
                r#"{{"a":{}1{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert!(Members::parse(deep(MAX_DEPTH).as_bytes()).is_ok());
        assert_eq!(
            Members::parse(deep(MAX_DEPTH + 1).as_bytes()).unwrap_err(),
            FormatError::TooDeep { limit: MAX_DEPTH }
        );
        let bomb = "[".repeat(1_000_000);
        assert_eq!(
            Members::parse(bomb.as_bytes()).unwrap_err(),
            FormatError::TooDeep { limit: MAX_DEPTH }
        );
        // Brackets inside strings are not nesting.
        let quoted = format!(r#"{{"a":"{}"}}"#, "[".repeat(1000));
        assert!(Members::parse(quoted.as_bytes()).is_ok());
    }

    #[test]
    fn members_decode_to_what_they_must_be() {
        let members = Members::parse(br#"{"n":5,"s":"x"}"#).unwrap();
        assert_eq!(members.decode::<i64>("n", "a number"), Ok(Some(5)));
        assert_eq!(members.decode::<i64>("m", "a number"), Ok(None));
        assert_eq!(
            members.decode::<i64>("s", "an integer"),
            Err("s must be an integer".into())
        );
        assert_eq!(
            members.required::<i64>("m", "an integer"),
            Err("m is missing: it must be an integer".into())
        );
    }

    #[test]
    fn sig_must_be_a_string_member() {
        assert_eq!(
            split_signature(br#"{"a":1}"#).unwrap_err(),
            FormatError::NoSignature
        );
        assert_eq!(
            split_signature(br#"{"a":1,"sig":5}"#).unwrap_err(),
            FormatError::SignatureNotAString
        );
        assert_eq!(
            split_signature(br#"{"a":{"sig":"nested"}}"#).unwrap_err(),
            FormatError::NoSignature
        );
    }

    /// A JSON value of bounded depth, written compactly by serde_json.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            ".*".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever object a signer writes compactly, `sig` appended last
        /// as `{...msg, sig}` does, the signed text is exactly what it
        /// wrote before appending.
        #[test]
        fn the_signed_text_is_what_was_written_before_sig(
            members in prop::collection::vec((".*", value()), 0..8),
            signature in "[A-Za-z0-9+/=]{0,88}",
        ) {
            let mut unsigned = String::from("{");
            let mut names = std::collections::BTreeSet::new();
            for (name, value) in members.iter().filter(|(name, _)| name != "sig") {
                if !names.insert(name.clone()) {
                    continue;
                }
                if unsigned.len() > 1 {
                    unsigned.push(',');
                }
                unsigned.push_str(&serde_json::to_string(name).unwrap());
                unsigned.push(':');
                unsigned.push_str(&serde_json::to_string(value).unwrap());
            }
            let comma = if unsigned.len() > 1 { "," } else { "" };
            let signed = format!("{unsigned}{comma}\"sig\":{}}}", serde_json::to_string(&signature).unwrap());
            unsigned.push('}');
            let split = split_signature(signed.as_bytes()).unwrap();
            prop_assert_eq!(text(split.signed), unsigned);
            prop_assert_eq!(split.signature, signature);
        }
    }
}
