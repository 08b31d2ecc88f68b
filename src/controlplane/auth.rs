//! Who is calling: a projected service-account token, checked with the
//! TokenReview API (audience `wopr.dev`), and whether that caller may watch
//! a session (only the session whose pod it runs in).

use std::collections::HashMap;
use std::future::Future;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::contract::{TOKEN_AUDIENCE, child_name};

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

/// Why a caller is not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token was refused.
    #[error("token refused: {0}")]
    Refused(String),
    /// The token does not belong to a service account.
    #[error("token does not belong to a service account: {0}")]
    NotAServiceAccount(String),
    /// The TokenReview call failed.
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// Checks bearer tokens.
pub trait Authenticator: Send + Sync + 'static {
    /// The identity `token` proves.
    fn authenticate(&self, token: &str)
    -> impl Future<Output = Result<Identity, AuthError>> + Send;
}

/// Checks tokens with the Kubernetes TokenReview API.
pub struct TokenReviewer {
    client: Client,
}

impl TokenReviewer {
    /// A reviewer using `client` (which needs `create` on `tokenreviews`).
    pub fn new(client: Client) -> TokenReviewer {
        TokenReviewer { client }
    }
}

/// The extra field the API server sets to the pod a bound token belongs to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";

impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| AuthError::Unavailable(error.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Refused(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|audience| audience == TOKEN_AUDIENCE)
        {
            return Err(AuthError::Refused(format!(
                "the token is not for audience {TOKEN_AUDIENCE}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let pod_name = user.extra.and_then(|extra| {
            extra
                .get(POD_NAME_EXTRA)
                .and_then(|values| values.first().cloned())
        });
        identity_of(&username, pod_name)
    }
}

/// The identity of a `system:serviceaccount:<namespace>:<name>` user.
pub fn identity_of(username: &str, pod_name: Option<String>) -> Result<Identity, AuthError> {
    match username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
    {
        Some((namespace, service_account))
            if !namespace.is_empty() && !service_account.is_empty() =>
        {
            Ok(Identity {
                namespace: namespace.to_owned(),
                service_account: service_account.to_owned(),
                pod_name,
            })
        }
        _ => Err(AuthError::NotAServiceAccount(username.to_owned())),
    }
}

/// Fixed tokens, for tests and local development.
#[derive(Default)]
pub struct StaticTokens(pub HashMap<String, Identity>);

impl Authenticator for StaticTokens {
    async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        self.0
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Refused("unknown token".into()))
    }
}

/// Whether `identity` may act for `namespace/session` (watch its policy,
/// ship and read its audit events): it must be the
/// session's own service account (and pod, when the token names one).
pub fn authorize(identity: &Identity, namespace: &str, session: &str) -> Result<(), String> {
    let own = child_name(session);
    let same_pod = identity.pod_name.as_ref().is_none_or(|pod| *pod == own);
    if identity.namespace == namespace && identity.service_account == own && same_pod {
        Ok(())
    } else {
        Err(format!(
            "service account {}/{} may not act for session {namespace}/{session}",
            identity.namespace, identity.service_account
        ))
    }
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
