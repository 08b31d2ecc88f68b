//! Who a username is and what it may do, asked the same way by every role:
//! the one parser of service-account usernames and the one
//! SelfSubjectAccessReview (what `kubectl auth can-i` asks).

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// The prefix of every service account's username.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The service account (namespace, name) `username` names, as
/// `system:serviceaccount:<namespace>:<name>`; `None` for anyone else (a
/// person, a node, a username with an empty part).
pub fn service_account_of(username: &str) -> Option<(&str, &str)> {
    let (namespace, name) = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)?
        .split_once(':')?;
    (!namespace.is_empty() && !name.is_empty()).then_some((namespace, name))
}

/// The username of the service account `namespace/name`.
pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}")
}

/// One verb on one resource, in one namespace or all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access<'a> {
    /// One namespace, or every namespace (and cluster-scoped resources)
    /// when `None`.
    pub namespace: Option<&'a str>,
    /// The API group (`""` for the core group).
    pub group: &'a str,
    /// The resource, with a subresource as `sessions/status`.
    pub resource: &'a str,
    pub verb: &'a str,
    /// One object, or every object when `None`.
    pub name: Option<&'a str>,
}

impl Access<'_> {
    /// The SelfSubjectAccessReview that asks whether the caller has this access.
    pub fn review(&self) -> SelfSubjectAccessReview {
        let (resource, subresource) = match self.resource.split_once('/') {
            Some((resource, subresource)) => (resource, Some(subresource.to_owned())),
            None => (self.resource, None),
        };
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: self.namespace.map(str::to_owned),
                    group: Some(self.group.to_owned()),
                    resource: Some(resource.to_owned()),
                    subresource,
                    verb: Some(self.verb.to_owned()),
                    name: self.name.map(str::to_owned),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        }
    }

    /// Whether the API server says the caller of `client` has this access.
    pub async fn allowed(&self, client: &Client) -> Result<bool, kube::Error> {
        let answer = Api::<SelfSubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &self.review())
            .await?;
        Ok(answer.status.is_some_and(|status| status.allowed))
    }
}

/// `list sessions.wopr.dev in team-a`, `patch sessions.wopr.dev/status`,
/// `get pods`: what `kubectl auth can-i` takes.
impl std::fmt::Display for Access<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (resource, subresource) = match self.resource.split_once('/') {
            Some((resource, subresource)) => (resource, format!("/{subresource}")),
            None => (self.resource, String::new()),
        };
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        write!(f, "{} {resource}{group}{subresource}", self.verb)?;
        if let Some(name) = self.name {
            write!(f, " named {name}")?;
        }
        if let Some(namespace) = self.namespace {
            write!(f, " in {namespace}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_usernames_parse_and_nothing_else() {
        assert_eq!(
            service_account_of("system:serviceaccount:ns:wopr-a"),
            Some(("ns", "wopr-a"))
        );
        assert_eq!(
            service_account_of(&service_account_username("ci", "bot")),
            Some(("ci", "bot"))
        );
        for bad in [
            "alice",
            "system:serviceaccount:ns",
            "system:serviceaccount::a",
            "system:serviceaccount:ns:",
            "system:node:n1",
        ] {
            assert_eq!(service_account_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn rights_read_as_kubectl_would_say_them() {
        let check = |namespace, group, resource, verb| {
            Access {
                namespace,
                group,
                resource,
                verb,
                name: None,
            }
            .to_string()
        };
        assert_eq!(
            check(None, "wopr.dev", "sessions", "list"),
            "list sessions.wopr.dev"
        );
        assert_eq!(
            check(Some("team-a"), "wopr.dev", "sessions/status", "patch"),
            "patch sessions.wopr.dev/status in team-a"
        );
        assert_eq!(
            check(Some("wopr-system"), "", "pods", "get"),
            "get pods in wopr-system"
        );
        let named = Access {
            namespace: Some("team-a"),
            group: "wopr.dev",
            resource: "trustlevels",
            verb: "use",
            name: Some("owner"),
        };
        assert_eq!(
            named.to_string(),
            "use trustlevels.wopr.dev named owner in team-a"
        );
    }

    #[test]
    fn a_review_splits_the_subresource_and_names_the_object() {
        let review = Access {
            namespace: Some("team-a"),
            group: "wopr.dev",
            resource: "approvalrequests/status",
            verb: "patch",
            name: Some("r1"),
        }
        .review();
        let attributes = review.spec.resource_attributes.unwrap();
        assert_eq!(attributes.namespace.as_deref(), Some("team-a"));
        assert_eq!(attributes.group.as_deref(), Some("wopr.dev"));
        assert_eq!(attributes.resource.as_deref(), Some("approvalrequests"));
        assert_eq!(attributes.subresource.as_deref(), Some("status"));
        assert_eq!(attributes.verb.as_deref(), Some("patch"));
        assert_eq!(attributes.name.as_deref(), Some("r1"));
        let whole = Access {
            namespace: None,
            group: "",
            resource: "pods",
            verb: "list",
            name: None,
        }
        .review()
        .spec
        .resource_attributes
        .unwrap();
        assert_eq!(whole.subresource, None);
        assert_eq!(whole.namespace, None);
        assert_eq!(whole.name, None);
    }
}
