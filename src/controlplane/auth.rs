//! Who is calling. A sidecar presents its pod's projected service-account
//! token (audience `wopr.dev`), checked with the TokenReview API, and may
//! act only for the session whose pod it runs in. A person or a workload
//! reading the audit trail presents an ordinary Kubernetes credential (the
//! API server's own audience): the API server reviews it, and a
//! SubjectAccessReview asks whether its RBAC allows `list` on the virtual
//! resource `auditevents.wopr.dev` in the namespace read, or, to send a
//! session a message, `create` on that Session's `inject` subresource and,
//! for a person (whose message arrives as the session's operator), `use` on
//! `trustlevels.wopr.dev` named by the session's trust level, as writing the
//! Session at that level needs.

use std::collections::HashMap;
use std::future::Future;

use k8s_openapi::ClusterResourceScope;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::reviews::{Answer, Reviews};
use crate::api::{SourceRef, SourceType, TrustLevel};
use crate::cluster::access::{service_account_of, service_account_username};
use crate::contract::{TOKEN_AUDIENCE, child_name};
use tonic::Status;
use tonic::metadata::MetadataMap;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The namespace of its service account.
    pub namespace: String,
    /// The service account's name.
    pub service_account: String,
    /// The pod the token is bound to, when the token says.
    pub pod_name: Option<String>,
}

impl Identity {
    /// The username the caller authenticated as.
    pub fn username(&self) -> String {
        service_account_username(&self.namespace, &self.service_account)
    }

    /// This caller (a session's sidecar) as the source of an audit event:
    /// what it asks for, not what its session may do, so untrusted.
    pub fn as_source(&self) -> SourceRef {
        SourceRef {
            source_type: SourceType::Sidecar.into(),
            identity: self.service_account.clone(),
            trust_level: TrustLevel::Untrusted,
        }
    }
}

/// Why a caller is not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token was refused.
    #[error("token refused: {0}")]
    Refused(String),
    /// The token does not belong to a service account.
    #[error("token does not belong to a service account: {0}")]
    NotAServiceAccount(String),
    /// The caller's RBAC does not allow what it asked.
    #[error("{reason}")]
    Forbidden { username: String, reason: String },
    /// The caller may send the session messages but not operate it at its
    /// trust level: it holds a right in the namespace, unlike the holder
    /// of a [`AuthError::Forbidden`] refusal.
    #[error("{reason}")]
    CannotOperate { username: String, reason: String },
    /// The TokenReview or SubjectAccessReview call failed.
    #[error("cannot check the caller: {0}")]
    Unavailable(String),
}

/// The virtual resource whose `list` verb reading the audit trail needs:
/// `auditevents.wopr.dev`.
pub const AUDIT_RESOURCE: &str = "auditevents";
/// The ClusterRole the chart ships that grants it.
pub const AUDIT_READER_ROLE: &str = "wopr-audit-reader";

/// Checks bearer tokens.
pub trait Authenticator: Send + Sync + 'static {
    /// The sidecar identity `token` proves (audience `wopr.dev`).
    fn authenticate(&self, token: &str)
    -> impl Future<Output = Result<Identity, AuthError>> + Send;

    /// Whether the holder of `token`, a Kubernetes credential, may read the
    /// audit trail of `namespace` (of every namespace when `None`): the
    /// username it authenticates as, if so.
    fn may_read_audit(
        &self,
        token: &str,
        namespace: Option<&str>,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;

    /// Whether the holder of `token`, a Kubernetes credential, may send
    /// the session `namespace/session` a message: the username it
    /// authenticates as, if so, from one review of the token.
    ///
    /// Anyone needs `create` on `sessions/inject`. A person (a user who is
    /// not a service account) also needs `use` on `trustlevels.wopr.dev`
    /// named `level`, the session's trust level, in `namespace`: a person's
    /// message arrives as the session's operator, and operating a session
    /// at a level needs what writing it at that level needs. A workload's
    /// standing comes from its Grants and the session's access list
    /// instead, so it is not asked. `level` is `None` when the session is
    /// not known: only the first right is asked, and the caller learns
    /// that the session is missing only after passing it.
    fn may_inject(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
        level: Option<TrustLevel>,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;

    /// Whether the holder of `token`, a Kubernetes credential, may make a
    /// Grant conferring `level` in `namespace` (what inviting a peer
    /// commits the operator to): `create` on grants there, and `use` on
    /// `trustlevels.wopr.dev` named `level`, as the escalation guard asks
    /// of anyone writing that Grant. The username, if so.
    fn may_grant(
        &self,
        token: &str,
        namespace: &str,
        level: TrustLevel,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;
}

/// The refusal of `username`'s Grant at `level` in `namespace`, naming
/// the missing right and the role that holds it.
pub fn may_not_grant(username: &str, namespace: &str, what: &str, why: &str) -> AuthError {
    let remedy = format!(
        "bind edit (for grants) and the ClusterRole {} (for the level) in namespace {namespace}",
        what
    );
    forbidden(
        username,
        &format!("make this Grant in namespace {namespace}"),
        why,
        &remedy,
    )
}

/// Where a reader is refused: the namespace, or every namespace.
fn scope_of(namespace: Option<&str>) -> String {
    namespace.map_or_else(|| "every namespace".into(), |ns| format!("namespace {ns}"))
}

/// The refusal of `username`: what it may not do, the authorizer's reason
/// when it gave one, and what to bind.
fn forbidden(username: &str, what: &str, why: &str, remedy: &str) -> AuthError {
    AuthError::Forbidden {
        username: username.to_owned(),
        reason: refusal(username, what, why, remedy),
    }
}

/// The words of a refusal of `username`.
fn refusal(username: &str, what: &str, why: &str, remedy: &str) -> String {
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    format!("{username} may not {what}{why}: {remedy}")
}

/// The refusal of `username`'s read of `namespace`, naming the missing
/// right and the role that holds it.
pub fn may_not_read(username: &str, namespace: Option<&str>, why: &str) -> AuthError {
    let what = format!(
        "list {AUDIT_RESOURCE}.{} in {}",
        crate::api::GROUP,
        scope_of(namespace)
    );
    let remedy = format!("bind the ClusterRole {AUDIT_READER_ROLE} (or edit/admin) there");
    forbidden(username, &what, why, &remedy)
}

/// The subresource of Sessions whose `create` verb lets a person or a
/// workload send a session a message: `sessions/inject`.
pub const INJECT_SUBRESOURCE: &str = "inject";
/// The ClusterRole the chart ships that grants it.
pub const INJECTOR_ROLE: &str = "wopr-session-injector";

/// The refusal of `username`'s message to `namespace/session`, naming the
/// missing right and the role that holds it.
pub fn may_not_inject(username: &str, namespace: &str, session: &str, why: &str) -> AuthError {
    let what = format!(
        "create sessions/{INJECT_SUBRESOURCE} of {}/{session}",
        crate::api::GROUP
    );
    let remedy =
        format!("bind the ClusterRole {INJECTOR_ROLE} (or edit/admin) in namespace {namespace}");
    forbidden(username, &what, why, &remedy)
}

/// The level whose `use` the message of `username` to a session at `level`
/// needs: the session's, for a person; none for a service account (a
/// workload, which its Grants place) or a session not known.
fn level_to_check(username: &str, level: Option<TrustLevel>) -> Option<TrustLevel> {
    level.filter(|_| identity_of(username, None).is_err())
}

/// The refusal of `username`'s message to `namespace/session`, a session
/// at `level`, naming the missing right and the role that holds it.
pub fn may_not_operate(
    username: &str,
    namespace: &str,
    session: &str,
    level: TrustLevel,
    why: &str,
) -> AuthError {
    let why = if why.is_empty() {
        format!("trust level {level}")
    } else {
        format!("trust level {level}; {why}")
    };
    let remedy = format!(
        "that needs use on {}.{} named {level} in namespace {namespace}: bind the ClusterRole {} there",
        crate::api::TRUST_LEVELS_RESOURCE,
        crate::api::GROUP,
        crate::api::trust_level_role(level)
    );
    AuthError::CannotOperate {
        username: username.to_owned(),
        reason: refusal(
            username,
            &format!("operate session {namespace}/{session}"),
            &why,
            &remedy,
        ),
    }
}

/// Checks tokens with the Kubernetes TokenReview API, remembering its
/// answers for a while ([`Reviews`]).
pub struct TokenReviewer {
    client: Client,
    reviews: Reviews,
}

impl TokenReviewer {
    /// A reviewer using `client` (which needs `create` on `tokenreviews`).
    pub fn new(client: Client) -> TokenReviewer {
        TokenReviewer {
            client,
            reviews: Reviews::default(),
        }
    }
}

/// Creates `review` (a TokenReview, a SubjectAccessReview); the API server
/// answers in the returned object's status.
async fn ask<K>(client: &Client, review: &K) -> Result<K, AuthError>
where
    K: Resource<Scope = ClusterResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    Api::<K>::all(client.clone())
        .create(&PostParams::default(), review)
        .await
        .map_err(|error| AuthError::Unavailable(error.to_string()))
}

/// The extra field the API server sets to the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl TokenReviewer {
    /// Reviews `token` for `audiences` (the API server's own when `None`),
    /// or answers as a review kept from moments ago did.
    async fn review(
        &self,
        token: &str,
        audiences: Option<Vec<String>>,
    ) -> Result<(UserInfo, Vec<String>), AuthError> {
        let now = k8s_openapi::jiff::Timestamp::now();
        let answer = match self.reviews.get(token, audiences.as_deref(), now) {
            Some(kept) => kept,
            None => {
                let answer = self.ask_review(token, audiences.clone()).await?;
                self.reviews
                    .put(token, audiences.as_deref(), answer.clone(), now);
                answer
            }
        };
        answer.map_err(AuthError::Refused)
    }

    /// What the API server answers a TokenReview of `token` for
    /// `audiences`; an error when it could not be asked.
    async fn ask_review(
        &self,
        token: &str,
        audiences: Option<Vec<String>>,
    ) -> Result<Answer, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences,
            },
            ..TokenReview::default()
        };
        let status = ask(&self.client, &review).await?.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(status
                .error
                .unwrap_or_else(|| "not authenticated".into())));
        }
        Ok(Ok((
            status.user.unwrap_or_default(),
            status.audiences.unwrap_or_default(),
        )))
    }
}

impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let (user, audiences) = self
            .review(token, Some(vec![TOKEN_AUDIENCE.to_owned()]))
            .await?;
        if !audiences.iter().any(|audience| audience == TOKEN_AUDIENCE) {
            return Err(AuthError::Refused(format!(
                "the token is not for audience {TOKEN_AUDIENCE}"
            )));
        }
        let username = user.username.unwrap_or_default();
        let pod_name = user.extra.and_then(|extra| {
            extra
                .get(POD_NAME_EXTRA)
                .and_then(|values| values.first().cloned())
        });
        identity_of(&username, pod_name)
    }

    async fn may_read_audit(
        &self,
        token: &str,
        namespace: Option<&str>,
    ) -> Result<String, AuthError> {
        let attributes = ResourceAttributes {
            group: Some(crate::api::GROUP.to_owned()),
            resource: Some(AUDIT_RESOURCE.to_owned()),
            verb: Some("list".to_owned()),
            namespace: namespace.map(str::to_owned),
            ..ResourceAttributes::default()
        };
        let (user, username) = self.person_or_workload(token).await?;
        match self.refusal(&user, attributes).await? {
            None => Ok(username),
            Some(why) => Err(may_not_read(&username, namespace, &why)),
        }
    }

    async fn may_inject(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
        level: Option<TrustLevel>,
    ) -> Result<String, AuthError> {
        let inject = ResourceAttributes {
            group: Some(crate::api::GROUP.to_owned()),
            resource: Some("sessions".to_owned()),
            subresource: Some(INJECT_SUBRESOURCE.to_owned()),
            verb: Some("create".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(session.to_owned()),
            ..ResourceAttributes::default()
        };
        let (user, username) = self.person_or_workload(token).await?;
        if let Some(why) = self.refusal(&user, inject).await? {
            return Err(may_not_inject(&username, namespace, session, &why));
        }
        let Some(level) = level_to_check(&username, level) else {
            return Ok(username);
        };
        match self.refusal(&user, use_level(namespace, level)).await? {
            None => Ok(username),
            Some(why) => Err(may_not_operate(&username, namespace, session, level, &why)),
        }
    }

    async fn may_grant(
        &self,
        token: &str,
        namespace: &str,
        level: TrustLevel,
    ) -> Result<String, AuthError> {
        let (user, username) = self.person_or_workload(token).await?;
        let role = crate::api::trust_level_role(level);
        let create = ResourceAttributes {
            group: Some(crate::api::GROUP.to_owned()),
            resource: Some("grants".to_owned()),
            verb: Some("create".to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ResourceAttributes::default()
        };
        for attributes in [create, use_level(namespace, level)] {
            if let Some(why) = self.refusal(&user, attributes).await? {
                return Err(may_not_grant(&username, namespace, &role, &why));
            }
        }
        Ok(username)
    }
}

/// `use` on `trustlevels.wopr.dev` named `level` in `namespace`: what
/// writing (and so operating) a Session, or a Grant, at that level needs.
fn use_level(namespace: &str, level: TrustLevel) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(crate::api::GROUP.to_owned()),
        resource: Some(crate::api::TRUST_LEVELS_RESOURCE.to_owned()),
        verb: Some("use".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(level.as_str().to_owned()),
        ..ResourceAttributes::default()
    }
}

impl TokenReviewer {
    /// Who holds `token` (a Kubernetes credential, the API server's own
    /// audience): the user, for SubjectAccessReviews, and its name.
    async fn person_or_workload(&self, token: &str) -> Result<(UserInfo, String), AuthError> {
        let (user, _) = self.review(token, None).await?;
        let username = user.username.clone().unwrap_or_default();
        Ok((user, username))
    }

    /// Why RBAC refuses `user` `attributes` (`None`: it allows), from a
    /// SubjectAccessReview as that user with its groups, uid and extras.
    async fn refusal(
        &self,
        user: &UserInfo,
        attributes: ResourceAttributes,
    ) -> Result<Option<String>, AuthError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(attributes),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let status = ask(&self.client, &review).await?.status.unwrap_or_default();
        Ok((!status.allowed).then(|| status.reason.unwrap_or_default()))
    }
}

/// The identity of a `system:serviceaccount:<namespace>:<name>` user.
pub fn identity_of(username: &str, pod_name: Option<String>) -> Result<Identity, AuthError> {
    let (namespace, service_account) = service_account_of(username)
        .ok_or_else(|| AuthError::NotAServiceAccount(username.to_owned()))?;
    Ok(Identity {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod_name,
    })
}

/// The bearer token of a request.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <service-account token>`",
            )
        })
}

/// Fixed tokens, for tests and local development.
#[derive(Default)]
pub struct StaticTokens {
    /// Sidecars' tokens.
    pub sidecars: HashMap<String, Identity>,
    /// Readers' tokens: their username and the namespace they may read
    /// (`None`: every namespace).
    pub readers: HashMap<String, (String, Option<String>)>,
    /// Tokens that may send messages (`create` on `sessions/inject`):
    /// their username and the namespace whose sessions they may send to.
    pub injectors: HashMap<String, (String, String)>,
    /// The highest trust level the holder of a token may use (`use` on
    /// `trustlevels.wopr.dev` named it and every level below, as the
    /// ClusterRoles `wopr-trust-*` hold them) where it may send messages;
    /// none when absent. Only people's messages need it.
    pub trust_levels: HashMap<String, TrustLevel>,
    /// Tokens that may create Grants: their username and the namespace
    /// (the level they may confer is their `trust_levels` entry).
    pub granters: HashMap<String, (String, String)>,
}

impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.sidecars
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Refused("unknown token".into()))
    }

    async fn may_read_audit(
        &self,
        token: &str,
        namespace: Option<&str>,
    ) -> Result<String, AuthError> {
        let (username, readable) = self
            .readers
            .get(token)
            .ok_or_else(|| AuthError::Refused("unknown token".into()))?;
        if readable.is_none() || readable.as_deref() == namespace {
            Ok(username.clone())
        } else {
            Err(may_not_read(username, namespace, ""))
        }
    }

    async fn may_inject(
        &self,
        token: &str,
        namespace: &str,
        session: &str,
        level: Option<TrustLevel>,
    ) -> Result<String, AuthError> {
        let (username, allowed) = self
            .injectors
            .get(token)
            .ok_or_else(|| AuthError::Refused("unknown token".into()))?;
        if allowed != namespace {
            return Err(may_not_inject(username, namespace, session, ""));
        }
        match level_to_check(username, level) {
            Some(level)
                if self
                    .trust_levels
                    .get(token)
                    .is_none_or(|held| *held < level) =>
            {
                Err(may_not_operate(username, namespace, session, level, ""))
            }
            _ => Ok(username.clone()),
        }
    }

    async fn may_grant(
        &self,
        token: &str,
        namespace: &str,
        level: TrustLevel,
    ) -> Result<String, AuthError> {
        let (username, allowed) = self
            .granters
            .get(token)
            .ok_or_else(|| AuthError::Refused("unknown token".into()))?;
        let role = crate::api::trust_level_role(level);
        let confers = self
            .trust_levels
            .get(token)
            .is_some_and(|held| *held >= level);
        if allowed != namespace || !confers {
            return Err(may_not_grant(username, namespace, &role, ""));
        }
        Ok(username.clone())
    }
}

/// Whether `identity` may act for `namespace/session` (watch its policy,
/// ship and read its audit events): it must be the
/// session's own service account (and pod, when the token names one).
pub fn authorize(identity: &Identity, namespace: &str, session: &str) -> Result<(), NotItsSession> {
    let own = child_name(session);
    let same_pod = identity.pod_name.as_ref().is_none_or(|pod| *pod == own);
    if identity.namespace == namespace && identity.service_account == own && same_pod {
        Ok(())
    } else {
        Err(NotItsSession {
            account: format!("{}/{}", identity.namespace, identity.service_account),
            session: format!("{namespace}/{session}"),
        })
    }
}

/// A sidecar's token used for a session that is not its own.
#[derive(Debug, thiserror::Error)]
#[error("service account {account} may not act for session {session}")]
pub struct NotItsSession {
    /// The caller's service account, `namespace/name`.
    pub account: String,
    /// The session it named, `namespace/name`.
    pub session: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(namespace: &str, account: &str, pod: Option<&str>) -> Identity {
        Identity {
            namespace: namespace.into(),
            service_account: account.into(),
            pod_name: pod.map(Into::into),
        }
    }

    #[test]
    fn only_a_sessions_own_account_and_pod_may_watch_it() {
        assert!(authorize(&identity("ns", "wopr-research", None), "ns", "research").is_ok());
        assert!(
            authorize(
                &identity("ns", "wopr-research", Some("wopr-research")),
                "ns",
                "research"
            )
            .is_ok()
        );
        assert!(
            authorize(
                &identity("ns", "wopr-research", Some("other-pod")),
                "ns",
                "research"
            )
            .is_err()
        );
        assert!(authorize(&identity("ns", "wopr-code", None), "ns", "research").is_err());
        assert!(authorize(&identity("other", "wopr-research", None), "ns", "research").is_err());
    }

    #[test]
    fn usernames_of_service_accounts_parse() {
        assert_eq!(
            identity_of("system:serviceaccount:ns:wopr-a", None),
            Ok(identity("ns", "wopr-a", None))
        );
        for bad in [
            "alice",
            "system:serviceaccount:ns",
            "system:serviceaccount::a",
            "system:node:n1",
        ] {
            assert!(identity_of(bad, None).is_err(), "{bad}");
        }
    }
}
