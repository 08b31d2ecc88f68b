//! One way to name an enum value as a string: its serde name, the one
//! manifests use (`semi-trusted`, `inject.tools`, `restricted`, `warn`).
//! The wire format, flags and messages all go through here or through a
//! type's own `as_str`, which a test holds to the serde name.

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Capability, Enforcement, NetworkMode, TrustLevel};

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
