//! One way to name an enum value as a string: its serde name, the one
//! manifests use (`semi-trusted`, `inject.tools`, `restricted`, `warn`).
//! The wire format, flags and messages all go through here or through a
//! type's own `as_str`, which a test holds to the serde name. And what a
//! namespace or a Session may be called, checked where a caller names one.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The serde name of a unit variant.
pub fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("only unit variants have names, not {other:?}"),
    }
}

/// The value named `name`, if any.
pub fn from_name<T: DeserializeOwned>(name: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).ok()
}

/// Why a string names no value of one of the API's enums; the message
/// says which names there are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("unknown trust level {0:?}: expected owner, trusted, semi-trusted or untrusted")]
    TrustLevel(String),
    #[error("{0:?} is not a network mode: use none, restricted or full")]
    NetworkMode(String),
    #[error("{0:?} is not an update policy: use Immediate, Rolling or OnRestart")]
    UpdateType(String),
    #[error(
        "invalid access pattern {0:?}: expected *, trust:<level>, session:<name>, peer:<public-key> or type:<source-type>"
    )]
    AccessPattern(String),
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// A name a caller gave that no namespace or Session can have; at most
    /// a label's length of it is shown.
    #[error(
        "{what} {shown:?}{cut} ({bytes} bytes) is not a DNS-1123 label: at most {MAX_LABEL} lower-case letters, digits and '-', starting and ending with a letter or digit"
    )]
    NotALabel {
        what: String,
        shown: String,
        cut: &'static str,
        bytes: usize,
    },
}

/// The longest DNS-1123 label, what namespaces and Sessions are named:
/// a Session's pod, service account and label values hold its name.
pub const MAX_LABEL: usize = 63;

/// Why `name`, given as the `what` of a call, is not a DNS-1123 label (at
/// most [`MAX_LABEL`] lower-case letters, digits and `-`, starting and
/// ending with a letter or digit), if it is not. The message shows at most
/// the label's length of it: a caller's name may be any size.
pub fn check_label(what: &str, name: &str) -> Result<(), NameError> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = name.len() <= MAX_LABEL
        && name.starts_with(alphanumeric)
        && name.ends_with(alphanumeric)
        && name.chars().all(|c| alphanumeric(c) || c == '-');
    if valid {
        return Ok(());
    }
    let shown: String = name.chars().take(MAX_LABEL).collect();
    Err(NameError::NotALabel {
        what: what.to_owned(),
        cut: if shown.len() < name.len() { "..." } else { "" },
        shown,
        bytes: name.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Capability, Enforcement, NetworkMode, TrustLevel};

    #[test]
    fn labels_are_short_lower_case_names() {
        for name in ["a", "team-a", "research-agent", "0x", &"a".repeat(63)] {
            assert_eq!(check_label("session", name), Ok(()), "{name}");
        }
        let long = "a".repeat(64);
        for bad in [
            "", "-a", "a-", "A", "a.b", "a_b", "a b", "a/b", "\u{e9}", &long,
        ] {
            assert!(check_label("session", bad).is_err(), "{bad}");
        }
        let huge = check_label("session", &"s".repeat(200_000))
            .unwrap_err()
            .to_string();
        assert!(huge.len() < 300, "the name is not echoed whole: {huge}");
        assert!(
            huge.contains("(200000 bytes)") && huge.contains("63"),
            "{huge}"
        );
    }

    #[test]
    fn as_str_is_the_serde_name() {
        for level in TrustLevel::ALL {
            assert_eq!(level.as_str(), name_of(&level));
            assert_eq!(from_name::<TrustLevel>(level.as_str()), Some(level));
        }
        for capability in Capability::ALL {
            assert_eq!(capability.as_str(), name_of(&capability));
        }
        assert_eq!(name_of(&NetworkMode::Restricted), "restricted");
        assert_eq!(name_of(&Enforcement::Warn), "warn");
        assert_eq!(from_name::<NetworkMode>("wide"), None);
    }
}
