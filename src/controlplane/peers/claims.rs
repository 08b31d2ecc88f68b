//! Invites claimed and keys rotated.
//!
//! A claim is accepted when its invite was signed by the ingress key of
//! the namespace its sessions are in, names the claimer as its subject,
//! has not expired and was never claimed: the Grant it makes (named by the
//! invite's nonce) is created first, then the claim is recorded, so a
//! claim cut short is finished by claiming again, and a second claim of a
//! used invite is refused.
//!
//! A rotation moves every Grant naming the old key as current to the new
//! one, the old key into `previousKeys` with when and why: it keeps
//! working for the namespace's `p2p.keyRotationGracePeriod`, except after
//! `compromise`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use super::receive::peer_source;
use super::{Ingress, RefusalKind, Refused, Reply, grant_capabilities};
use crate::api::{
    Grant, GrantSpec, GrantSubject, PreviousKey, RotationReason as KeyRotationReason, TrustLevel,
};
use crate::audit::EventType;
use crate::cluster::managed_meta;
use crate::controlplane::discover::DiscoverPolicy;
use crate::p2p::PeerKey;
use crate::p2p::invite::{self, Invite};
use crate::p2p::rotation::{Rotation, RotationReason};
use crate::policy::{Outcome, stable_hash};
use crate::store::{Claim, StoreError};

/// The label naming the invite (a digest of its nonce) a Grant was made for.
pub const INVITE_LABEL: &str = "wopr.dev/invite";

/// The most previous keys a Grant keeps (the oldest go first).
pub const MAX_PREVIOUS_KEYS: usize = 8;

/// The namespace of an invite and its sessions in it (empty: all):
/// every entry of `ses` is `namespace/session` or `namespace/*`, all in
/// one namespace.
pub fn invite_scope(invite: &Invite) -> Result<(String, Vec<String>), String> {
    let mut namespace: Option<&str> = None;
    let mut sessions = Vec::new();
    for entry in &invite.sessions {
        let Some((ns, session)) = entry.split_once('/') else {
            return Err(format!("invite session {entry:?} is not namespace/session"));
        };
        if *namespace.get_or_insert(ns) != ns {
            return Err("an invite's sessions are all in one namespace".to_owned());
        }
        if session != "*" {
            sessions.push(session.to_owned());
        }
    }
    let namespace = namespace.ok_or("the invite names no session")?;
    if invite.sessions.iter().any(|entry| entry.ends_with("/*")) {
        sessions.clear();
    }
    Ok((namespace.to_owned(), sessions))
}

/// The Grant a claim of `invite` makes in `namespace`.
pub fn invited_grant(
    invite: &Invite,
    namespace: &str,
    sessions: Vec<String>,
) -> Result<Grant, String> {
    let digest = stable_hash(&invite.nonce);
    let labels = [(INVITE_LABEL, digest.as_str())];
    Ok(Grant {
        metadata: managed_meta(&format!("invite-{digest}"), namespace, &labels),
        spec: GrantSpec {
            subject: GrantSubject::peer(invite.subject.as_str()),
            profile: None,
            capabilities: grant_capabilities(&invite.capabilities)?,
            sessions,
            not_before: None,
            expires_at: None,
            previous_keys: Vec::new(),
        },
        status: None,
    })
}

impl<D: DiscoverPolicy> Ingress<D> {
    pub(super) async fn claim(
        &self,
        peer: &PeerKey,
        token: &str,
        now: Timestamp,
    ) -> Result<Reply, Refused> {
        let invite = match invite::parse(token) {
            Ok(invite) => invite,
            Err(why) => {
                return Err(self
                    .refuse(
                        peer,
                        ("", ""),
                        Refused::new(RefusalKind::Invalid, why.to_string()),
                    )
                    .await);
            }
        };
        let (namespace, sessions) = match invite_scope(&invite) {
            Ok(scope) => scope,
            Err(why) => {
                return Err(self
                    .refuse(peer, ("", ""), Refused::new(RefusalKind::Invalid, why))
                    .await);
            }
        };
        let target = (namespace.as_str(), "");
        if invite.subject != *peer {
            let why = format!(
                "the invite is for peer {}, not for {}: claim it with the key it names",
                invite.subject.short_id(),
                peer.short_id()
            );
            return Err(self
                .refuse(peer, target, Refused::new(RefusalKind::Forbidden, why))
                .await);
        }
        if invite.expired(now) {
            let expired = Timestamp::from_millisecond(invite.expires_ms).unwrap_or(Timestamp::MIN);
            let why = format!("the invite expired at {expired}: ask for a new one");
            return Err(self
                .refuse(peer, target, Refused::new(RefusalKind::Forbidden, why))
                .await);
        }
        match self.keys.existing(&namespace).await {
            Ok(Some(key)) if key.public_key() == invite.issuer => {}
            Ok(_) => {
                let why = format!(
                    "the invite is not signed by namespace {namespace}'s ingress key (was it rotated since?): ask for a new one"
                );
                return Err(self
                    .refuse(peer, target, Refused::new(RefusalKind::Forbidden, why))
                    .await);
            }
            Err(why) => {
                let why = format!("cannot read namespace {namespace}'s ingress key: {why}");
                return Err(self
                    .refuse(peer, target, Refused::new(RefusalKind::Unavailable, why))
                    .await);
            }
        }
        let grant = match invited_grant(&invite, &namespace, sessions) {
            Ok(grant) => grant,
            Err(why) => {
                return Err(self
                    .refuse(peer, target, Refused::new(RefusalKind::Invalid, why))
                    .await);
            }
        };
        let grant_name = grant.metadata.name.clone().unwrap_or_default();
        if let Err(why) = self.writer.create_grant(&grant).await {
            let why = format!("the invite's Grant could not be created ({why}): claim it again");
            return Err(self
                .refuse(peer, target, Refused::new(RefusalKind::Unavailable, why))
                .await);
        }
        let expires = Timestamp::from_millisecond(invite.expires_ms).unwrap_or(Timestamp::MAX);
        let claim = Claim {
            nonce: &invite.nonce,
            issuer: invite.issuer.as_str(),
            namespace: &namespace,
            claimed_by: peer.as_str(),
            grant_name: &grant_name,
            at: now,
            expires,
        };
        if let Err(error) = self.store.claim_invite(&claim).await {
            let kind = match error {
                StoreError::Peer(_) => RefusalKind::Forbidden,
                _ => RefusalKind::Unavailable,
            };
            return Err(self
                .refuse(peer, target, Refused::new(kind, error.to_string()))
                .await);
        }
        let capabilities: Vec<&str> = grant.spec.capabilities.iter().map(|c| c.as_str()).collect();
        let reason = format!(
            "peer {} claimed an invite: Grant {grant_name} gives {}",
            peer.short_id(),
            capabilities.join(", ")
        );
        let source = peer_source(peer, TrustLevel::Untrusted);
        let event = self.event(EventType::Grant, target, source, Outcome::Allowed, &reason);
        if let Err(error) = self.store.insert_events(&[event]).await {
            tracing::error!(%error, grant = %grant_name, "cannot store the audit event of a claim");
        }
        Ok(Reply {
            status: 200,
            body: json!({
                "ok": true,
                "type": "claim",
                "namespace": namespace,
                "grant": grant_name,
                "sessions": grant.spec.sessions,
                "capabilities": capabilities,
            }),
        })
    }

    pub(super) async fn rotate(
        &self,
        peer: &PeerKey,
        rotation: &Rotation,
        now: Timestamp,
    ) -> Result<Reply, Refused> {
        let grants = self.discover.peer_grants(peer.as_str());
        if grants.is_empty() {
            let why = format!(
                "no Grant names key {} as the peer's current key: nothing to rotate",
                peer.short_id()
            );
            return Err(self
                .refuse(peer, ("", ""), Refused::new(RefusalKind::Forbidden, why))
                .await);
        }
        let reason = match rotation.reason {
            RotationReason::Scheduled => KeyRotationReason::Scheduled,
            RotationReason::Compromise => KeyRotationReason::Compromise,
            RotationReason::Upgrade => KeyRotationReason::Upgrade,
        };
        let mut rotated = Vec::new();
        for grant in grants {
            let namespace = grant.metadata.namespace.clone().unwrap_or_default();
            let name = grant.metadata.name.clone().unwrap_or_default();
            let version = grant.metadata.resource_version.clone().unwrap_or_default();
            let mut previous = grant.spec.previous_keys.clone();
            previous.push(PreviousKey {
                public_key: peer.as_str().to_owned(),
                rotated_at: Time(now),
                reason: Some(reason),
            });
            let excess = previous.len().saturating_sub(MAX_PREVIOUS_KEYS);
            previous.drain(..excess);
            let written = self
                .writer
                .rotate_peer_key(
                    (&namespace, &name),
                    &version,
                    rotation.new.as_str(),
                    &previous,
                )
                .await;
            let source = peer_source(peer, TrustLevel::Untrusted);
            let target = (namespace.as_str(), "");
            if let Err(why) = written {
                let why = format!(
                    "Grant {namespace}/{name} could not be rotated ({why}): send the rotation again"
                );
                return Err(self
                    .refuse(peer, target, Refused::new(RefusalKind::Unavailable, why))
                    .await);
            }
            let what = format!(
                "peer {} rotated its key to {} ({}): Grant {name} names the new key; the old one {}",
                peer.short_id(),
                rotation.new.short_id(),
                reason_name(reason),
                if reason == KeyRotationReason::Compromise {
                    "works no more".to_owned()
                } else {
                    "works for the grace period (p2p.keyRotationGracePeriod)".to_owned()
                }
            );
            let event = self.event(EventType::Grant, target, source, Outcome::Allowed, &what);
            if let Err(error) = self.store.insert_events(&[event]).await {
                tracing::error!(%error, grant = %name, "cannot store the audit event of a key rotation");
            }
            rotated.push(format!("{namespace}/{name}"));
        }
        Ok(Reply {
            status: 200,
            body: json!({
                "ok": true,
                "type": "key-rotation",
                "newKeyId": rotation.new.short_id(),
                "grants": rotated,
            }),
        })
    }
}

fn reason_name(reason: KeyRotationReason) -> String {
    crate::api::name_of(&reason)
}
