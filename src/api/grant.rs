//! The `Grant` custom resource: scoped capabilities for a peer, a session or
//! a workload (a service account).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Capability, TrustLevel};

/// Capabilities given to a peer or a workload (for the sessions in
/// `sessions`) or to a session. Never `owner`, never `*`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wopr.dev",
    version = "v1alpha1",
    kind = "Grant",
    namespaced,
    status = "GrantStatus",
    shortname = "wgrant",
    category = "wopr",
    derive = "PartialEq",
    doc = "Scoped capabilities for a peer, a session or a workload (service account).",
    printcolumn(name = "Peer", type_ = "string", json_path = ".spec.subject.peer.name"),
    printcolumn(
        name = "Session",
        type_ = "string",
        json_path = ".spec.subject.session"
    ),
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.profile"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.expiresAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.profile) || self.profile != 'owner'")
        .message("a Grant can never confer the owner profile"),
    validation = Rule::new("!has(self.capabilities) || !self.capabilities.exists(c, c == '*')")
        .message("a Grant can never confer the wildcard capability '*'"),
    validation = Rule::new("has(self.profile) != (has(self.capabilities) && size(self.capabilities) > 0)")
        .message("set exactly one of profile or capabilities"),
    validation = Rule::new("!has(self.subject.session) || !has(self.sessions) || size(self.sessions) == 0")
        .message("sessions applies to peer and service-account grants only; a session grant applies to its subject session"),
    validation = Rule::new("has(self.subject.peer) || !has(self.previousKeys) || size(self.previousKeys) == 0")
        .message("previousKeys applies to peer grants only"),
    validation = Rule::new("!has(self.notBefore) || !has(self.expiresAt) || self.notBefore < self.expiresAt")
        .message("notBefore must be before expiresAt"),
)]
#[serde(rename_all = "camelCase")]
pub struct GrantSpec {
    /// Who receives the capabilities: a peer, a session or a service account.
    pub subject: GrantSubject,
    /// A capability profile: trusted, semi-trusted or untrusted (never owner).
    /// For a peer it is also the trust level the peer is treated as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<TrustLevel>,
    /// Explicit capabilities (never `*`), instead of a profile.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub capabilities: Vec<Capability>,
    /// For a peer or a service account: the sessions the grant is in force
    /// for; every session of the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub sessions: Vec<String>,
    /// When the grant starts counting (RFC 3339): until then it is
    /// NotYetValid and confers nothing. From its creation when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// When the grant stops counting (RFC 3339). Never when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Keys the peer used before its current one. Each counts until its
    /// `rotatedAt` plus the SecurityPolicy's `p2p.keyRotationGracePeriod`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub previous_keys: Vec<PreviousKey>,
}

/// The receiver of a grant: exactly one of `peer`, `session` or
/// `serviceAccount`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.peer), has(self.session), has(self.serviceAccount)].filter(x, x).size() == 1")
    .message("subject needs exactly one of peer, session or serviceAccount"))]
#[serde(rename_all = "camelCase")]
pub struct GrantSubject {
    /// A remote peer, identified by its public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerRef>,
    /// A Session of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub session: Option<String>,
    /// A workload: the service account it sends messages to sessions with,
    /// through the control plane (`Broker.Inject`); the grant sets the trust
    /// level and capabilities it arrives with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountRef>,
}

impl GrantSubject {
    /// The session `name` of the grant's namespace.
    pub fn session(name: &str) -> GrantSubject {
        GrantSubject {
            peer: None,
            session: Some(name.to_owned()),
            service_account: None,
        }
    }

    /// The peer presenting `public_key`.
    pub fn peer(public_key: &str) -> GrantSubject {
        GrantSubject {
            peer: Some(PeerRef {
                public_key: public_key.to_owned(),
                name: None,
            }),
            session: None,
            service_account: None,
        }
    }

    /// The service account `namespace/name`.
    pub fn service_account(namespace: &str, name: &str) -> GrantSubject {
        GrantSubject {
            peer: None,
            session: None,
            service_account: Some(ServiceAccountRef {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }),
        }
    }
}

/// A service account, possibly of another namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A remote peer.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerRef {
    /// The peer's current public key.
    #[schemars(length(min = 1, max = 512))]
    pub public_key: String,
    /// A human-readable name for the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A key the peer used before rotating to its current one.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKey {
    /// The old public key.
    #[schemars(length(min = 1, max = 512))]
    pub public_key: String,
    /// When the peer rotated away from it (RFC 3339).
    pub rotated_at: Time,
    /// Why: `scheduled` and `upgrade` keep the old key working for the
    /// grace period; after `compromise` it works no more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RotationReason>,
}

/// Why a peer rotated its key (WOPR's reasons).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RotationReason {
    /// A routine rotation.
    Scheduled,
    /// The old key may be known to someone else: refused at once.
    Compromise,
    /// A change of key type or strength.
    Upgrade,
}

/// Observed state of a Grant. The controller writes `state` and
/// `conditions`; the control plane writes `lastUsedAt` (at most once a
/// minute per Grant).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantStatus {
    /// NotYetValid, Active, Expired or Revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<GrantState>,
    /// When the grant last allowed something: a message of its workload
    /// delivered, or a call of its session allowed on a capability only
    /// grants give it. Absent when never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Time>,
    /// Conditions (Ready: True while the grant counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// Whether a grant counts: NotYetValid (before `notBefore`), Active (in
/// force), Expired (past `expiresAt`) or Revoked (its deletion was asked
/// and it waits for finalizers); only an Active grant counts.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    /// Before `notBefore`; counts from then on.
    NotYetValid,
    /// In force.
    Active,
    /// Past `expiresAt`; never counts.
    Expired,
    /// Being deleted (`security revoke` deletes); never counts, even while
    /// a finalizer keeps the object.
    Revoked,
}
