//! `child_session`: the Session an agent's `sessions_spawn` creates. Pure:
//! the broker decides the call (`Request::Spawn`: the tool, and a child
//! no higher than its parent), then builds the child from the parent's own
//! Session, never from the agent's word beyond its name, level and prompt.
//!
//! The child is owned by its parent (deleting the parent deletes it),
//! takes messages from its parent, keeps the parent's provider and tool
//! rules (a session's rules only narrow), and runs in a sandbox no weaker
//! than the parent's: the parent's, always enabled, with the parent's
//! network when it has the parent's level and none when lower.

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::ObjectMeta;

use super::resolve::EffectiveContext;
use crate::api::{
    AccessPattern, MAX_PROMPT_BYTES, NetworkMode, SandboxSpec, Session, SessionSpec, SpawnPolicy,
    TrustLevel,
};

/// The label naming a spawned session's parent.
pub const PARENT_LABEL: &str = "wopr.dev/parent";
/// The longest child name: its children are named `wopr-<name>`, and
/// Kubernetes names of pods and service accounts hold 63 characters.
pub const MAX_CHILD_NAME: usize = 58;

/// What an agent asks for.
#[derive(Clone, Copy, Debug)]
pub struct SpawnRequest<'a> {
    pub name: &'a str,
    pub trust_level: TrustLevel,
    pub prompt: &'a str,
    /// An agent image other than the parent's, if the policy allows it.
    pub image: Option<&'a str>,
}

/// Why a child may not be spawned.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpawnRefusal {
    /// The parent has as many children as the policy allows.
    #[error(
        "session {parent} has {children} children, the limit is {limit} (SecurityPolicy spec.spawn.maxChildren)"
    )]
    TooManyChildren {
        parent: String,
        children: usize,
        limit: u32,
    },
    /// The request itself asks for what no parent may have.
    #[error("{0}")]
    Invalid(String),
}

/// The child `request` asks `parent` (whose effective context is
/// `context`, with `children` children now) to spawn under `policy`, or
/// why it may not.
pub fn child_session(
    parent: &Session,
    context: &EffectiveContext,
    request: SpawnRequest<'_>,
    policy: &SpawnPolicy,
    children: usize,
) -> Result<Session, SpawnRefusal> {
    let parent_name = parent.meta().name.as_deref().unwrap_or_default();
    let invalid = |why: String| Err(SpawnRefusal::Invalid(why));
    if request.trust_level > context.trust_level {
        return invalid(format!(
            "a child's trust level must not exceed its parent's ({})",
            context.trust_level
        ));
    }
    if children >= policy.max_children as usize {
        return Err(SpawnRefusal::TooManyChildren {
            parent: parent_name.to_owned(),
            children,
            limit: policy.max_children,
        });
    }
    check_name(request.name)?;
    if request.prompt.len() > MAX_PROMPT_BYTES {
        return invalid(format!("the prompt is over {MAX_PROMPT_BYTES} bytes"));
    }
    let parent_sandbox = parent.spec.sandbox.clone().unwrap_or_default();
    let image = match request.image {
        None => parent_sandbox.image.clone(),
        Some(image) if Some(image) == parent_sandbox.image.as_deref() => Some(image.to_owned()),
        Some(image) if policy.images.iter().any(|allowed| allowed == image) => {
            Some(image.to_owned())
        }
        Some(image) => {
            return invalid(format!(
                "image {image} is neither the parent's nor one the SecurityPolicy allows (spec.spawn.images)"
            ));
        }
    };
    let network = if request.trust_level == context.trust_level {
        context.network
    } else {
        NetworkMode::None
    };
    let sandbox = SandboxSpec {
        enabled: Some(true),
        image,
        network: Some(network),
        egress: if network == NetworkMode::Restricted {
            parent_sandbox.egress.clone()
        } else {
            Vec::new()
        },
        ..parent_sandbox
    };
    let labels = BTreeMap::from([(PARENT_LABEL.to_owned(), parent_name.to_owned())]);
    Ok(Session {
        metadata: ObjectMeta {
            name: Some(request.name.to_owned()),
            namespace: parent.meta().namespace.clone(),
            labels: Some(labels),
            owner_references: parent.owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: SessionSpec {
            trust_level: request.trust_level,
            prompt: Some(request.prompt.to_owned()),
            provider: parent.spec.provider.clone(),
            access: vec![AccessPattern::Session(parent_name.to_owned())],
            tools: parent.spec.tools.clone(),
            sandbox: Some(sandbox),
        },
        status: None,
    })
}

/// A child's name: a DNS label short enough for its children's names.
fn check_name(name: &str) -> Result<(), SpawnRefusal> {
    let valid = !name.is_empty()
        && name.len() <= MAX_CHILD_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(SpawnRefusal::Invalid(format!(
            "name {name:?} is not a session name: lowercase letters, digits and '-', at most {MAX_CHILD_NAME} characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EgressRule, Provider, ToolRules};
    use crate::policy::resolve;

    fn parent(level: TrustLevel, network: NetworkMode) -> (Session, EffectiveContext) {
        let mut parent = Session::new("lead", SessionSpec::for_trust_level(level));
        parent.metadata.namespace = Some("team".into());
        parent.metadata.uid = Some("uid-lead".into());
        parent.spec.provider = Some(Provider {
            name: "anthropic".into(),
            model: None,
            fallback: Vec::new(),
        });
        parent.spec.tools = Some(ToolRules {
            allow: Vec::new(),
            deny: vec!["exec_command".into()],
            rules: None,
        });
        parent.spec.sandbox = Some(SandboxSpec {
            enabled: Some(true),
            image: Some("agents/lead:1".into()),
            network: Some(network),
            egress: vec![EgressRule {
                cidr: "10.0.0.0/8".into(),
                ports: Vec::new(),
            }],
            runtime_class_name: Some("gvisor".into()),
            ..SandboxSpec::default()
        });
        let now = "2026-11-29T12:00:00Z".parse().unwrap();
        let context = resolve(&parent, None, &[], &[], now).unwrap();
        (parent, context)
    }

    fn request(level: TrustLevel) -> SpawnRequest<'static> {
        SpawnRequest {
            name: "helper",
            trust_level: level,
            prompt: "summarize the logs",
            image: None,
        }
    }

    #[test]
    fn a_child_is_owned_by_its_parent_and_sandboxed_no_weaker() {
        let (lead, context) = parent(TrustLevel::SemiTrusted, NetworkMode::Restricted);
        let policy = SpawnPolicy::default();
        let child = child_session(
            &lead,
            &context,
            request(TrustLevel::SemiTrusted),
            &policy,
            0,
        )
        .unwrap();
        assert_eq!(child.metadata.name.as_deref(), Some("helper"));
        assert_eq!(child.metadata.namespace.as_deref(), Some("team"));
        let owner = &child.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Session", "uid-lead")
        );
        assert_eq!(
            child.metadata.labels.as_ref().unwrap()[PARENT_LABEL],
            "lead"
        );
        assert_eq!(child.spec.access, [AccessPattern::Session("lead".into())]);
        assert_eq!(child.spec.tools, lead.spec.tools);
        assert_eq!(child.spec.provider, lead.spec.provider);
        let sandbox = child.spec.sandbox.unwrap();
        assert_eq!(sandbox.enabled, Some(true));
        assert_eq!(sandbox.image.as_deref(), Some("agents/lead:1"));
        assert_eq!(sandbox.network, Some(NetworkMode::Restricted));
        assert_eq!(sandbox.egress.len(), 1);
        assert_eq!(sandbox.runtime_class_name.as_deref(), Some("gvisor"));
    }

    #[test]
    fn a_lower_child_starts_without_network() {
        let (lead, context) = parent(TrustLevel::Trusted, NetworkMode::Full);
        let child = child_session(
            &lead,
            &context,
            request(TrustLevel::Untrusted),
            &SpawnPolicy::default(),
            0,
        )
        .unwrap();
        let sandbox = child.spec.sandbox.unwrap();
        assert_eq!(sandbox.network, Some(NetworkMode::None));
        assert!(sandbox.egress.is_empty());
        assert_eq!(sandbox.enabled, Some(true));
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let (lead, context) = parent(TrustLevel::SemiTrusted, NetworkMode::Restricted);
        let policy = SpawnPolicy {
            max_children: 2,
            images: vec!["agents/helper:2".into()],
        };
        let refuse = |request: SpawnRequest<'_>, children| {
            child_session(&lead, &context, request, &policy, children)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refuse(request(TrustLevel::Trusted), 0),
            "a child's trust level must not exceed its parent's (semi-trusted)"
        );
        assert_eq!(
            refuse(request(TrustLevel::Untrusted), 2),
            "session lead has 2 children, the limit is 2 (SecurityPolicy spec.spawn.maxChildren)"
        );
        for name in ["", "Helper", "-x", "x-", "a_b", &"x".repeat(59)] {
            let bad = SpawnRequest {
                name,
                ..request(TrustLevel::Untrusted)
            };
            assert!(refuse(bad, 0).contains("is not a session name"), "{name}");
        }
        let other_image = SpawnRequest {
            image: Some("evil/miner"),
            ..request(TrustLevel::Untrusted)
        };
        assert_eq!(
            refuse(other_image, 0),
            "image evil/miner is neither the parent's nor one the SecurityPolicy allows (spec.spawn.images)"
        );
        let allowed = SpawnRequest {
            image: Some("agents/helper:2"),
            ..request(TrustLevel::Untrusted)
        };
        let child = child_session(&lead, &context, allowed, &policy, 1).unwrap();
        assert_eq!(
            child.spec.sandbox.unwrap().image.as_deref(),
            Some("agents/helper:2")
        );
    }
}
