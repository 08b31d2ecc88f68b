//! The kinds of source the operator itself records: who sent a message,
//! asked for something or made an audit event. One name for each, written
//! through [`SourceType::as_str`] wherever a record holds it as text.
//!
//! Records (`SourceRef`, audit events, store rows, the wire) keep the type
//! as a string: a Session's access list may admit any `type:<name>`
//! (`type:api`), and a trail written by an older version must stay
//! readable. Code that writes or compares one uses this enum instead of a
//! literal, so a human is `person` everywhere.

use serde::{Deserialize, Serialize};

/// A kind of source the operator records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// A WOPR Session (its sidecar, on its behalf).
    Session,
    /// A remote WOPR peer, known by its public key.
    #[serde(rename = "p2p")]
    Peer,
    /// A Kubernetes workload, by its service account.
    #[serde(rename = "serviceaccount")]
    ServiceAccount,
    /// A human, by their Kubernetes user name (never a service account).
    Person,
    /// The agent inside a Session's pod, as its sidecar saw it.
    Agent,
    /// A Session's sidecar itself (its token, its reports).
    Sidecar,
    /// The operator's controller.
    Controller,
    /// A person's decision on an ApprovalRequest, relayed by the controller.
    Approval,
}

impl SourceType {
    /// Every source type.
    pub const ALL: [SourceType; 8] = [
        SourceType::Session,
        SourceType::Peer,
        SourceType::ServiceAccount,
        SourceType::Person,
        SourceType::Agent,
        SourceType::Sidecar,
        SourceType::Controller,
        SourceType::Approval,
    ];

    /// The name records hold (the serde name).
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceType::Session => "session",
            SourceType::Peer => "p2p",
            SourceType::ServiceAccount => "serviceaccount",
            SourceType::Person => "person",
            SourceType::Agent => "agent",
            SourceType::Sidecar => "sidecar",
            SourceType::Controller => "controller",
            SourceType::Approval => "approval",
        }
    }

    /// Whether `recorded`, a record's source type, names this one.
    pub fn is(self, recorded: &str) -> bool {
        recorded == self.as_str()
    }
}

impl From<SourceType> for String {
    fn from(source_type: SourceType) -> String {
        source_type.as_str().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{from_name, name_of};

    #[test]
    fn each_name_is_the_serde_name_and_names_one_type() {
        for source_type in SourceType::ALL {
            assert_eq!(source_type.as_str(), name_of(&source_type));
            assert_eq!(
                from_name::<SourceType>(source_type.as_str()),
                Some(source_type)
            );
        }
        let mut names: Vec<_> = SourceType::ALL.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SourceType::ALL.len());
    }
}
