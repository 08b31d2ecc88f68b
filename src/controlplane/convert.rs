//! Effective contexts to and from their wire form. Decoding fails on any
//! value this version does not know, so a sidecar never guesses a policy.

use crate::api::{
    AccessPattern, Capability, Enforcement, ForwardRule, NetworkMode, RateLimit, TrustLevel,
};
use crate::policy::{EffectiveContext, EffectiveSandbox, GatewayRules, ToolId};
use crate::proto::v1alpha1 as pb;

/// A wire value this version cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy from the control plane has an unknown {field}: {value:?}")]
pub struct DecodeError {
    /// Which field.
    pub field: &'static str,
    /// The value.
    pub value: String,
}

/// The wire form of `context`, with the session's model provider.
pub fn encode(context: &EffectiveContext, provider: Option<pb::Provider>) -> pb::SecurityContext {
    pb::SecurityContext {
        namespace: context.namespace.clone(),
        session: context.session.clone(),
        trust_level: context.trust_level.as_str().to_owned(),
        capabilities: context
            .capabilities
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        tools: context
            .tools
            .iter()
            .map(|id| id.tool().name.to_owned())
            .collect(),
        sandbox: context.sandbox.enabled,
        network: context.network.to_string(),
        enforcement: match context.enforcement {
            Enforcement::Enforce => "enforce",
            Enforcement::Warn => "warn",
        }
        .to_owned(),
        access: context.access.iter().map(ToString::to_string).collect(),
        grants: context.grants.clone(),
        gateways: context.gateways.iter().map(encode_gateway).collect(),
        policy_hash: context.policy_hash.clone(),
        provider,
    }
}

fn encode_gateway(gateway: &GatewayRules) -> pb::GatewayRules {
    pb::GatewayRules {
        gateway: gateway.gateway.clone(),
        forward_rules: gateway
            .forward_rules
            .iter()
            .map(|rule| pb::ForwardRule {
                allow_forward_to: rule.allow_forward_to.clone(),
                allow_actions: rule.allow_actions.clone(),
                require_approval: rule.require_approval,
                rate_limit_per_minute: rule.rate_limit.as_ref().map_or(0, |limit| limit.per_minute),
            })
            .collect(),
        approval_timeout_seconds: std::time::Duration::from(gateway.approval_timeout).as_secs(),
    }
}

fn parse<T: std::str::FromStr>(field: &'static str, value: &str) -> Result<T, DecodeError> {
    value.parse().map_err(|_| DecodeError {
        field,
        value: value.to_owned(),
    })
}

/// The effective context a wire message describes. Tools this version does
/// not know are left out (they stay denied).
pub fn decode(message: &pb::SecurityContext) -> Result<EffectiveContext, DecodeError> {
    let network = parse::<NetworkMode>("network", &message.network)?;
    let enforcement = match message.enforcement.as_str() {
        "enforce" => Enforcement::Enforce,
        "warn" => Enforcement::Warn,
        other => {
            return Err(DecodeError {
                field: "enforcement",
                value: other.to_owned(),
            });
        }
    };
    Ok(EffectiveContext {
        namespace: message.namespace.clone(),
        session: message.session.clone(),
        trust_level: parse::<TrustLevel>("trust level", &message.trust_level)?,
        capabilities: message
            .capabilities
            .iter()
            .map(|c| parse::<Capability>("capability", c))
            .collect::<Result<_, _>>()?,
        tools: message
            .tools
            .iter()
            .filter_map(|name| ToolId::lookup(name))
            .collect(),
        // Pod-level settings: the sidecar learns them from its pod, not the wire.
        sandbox: EffectiveSandbox {
            enabled: message.sandbox,
            resources: None,
            require_verified_isolation: false,
        },
        network,
        enforcement,
        access: message
            .access
            .iter()
            .map(|a| parse::<AccessPattern>("access pattern", a))
            .collect::<Result<_, _>>()?,
        grants: message.grants.clone(),
        valid_until: None,
        gateways: message
            .gateways
            .iter()
            .map(|gateway| GatewayRules {
                gateway: gateway.gateway.clone(),
                forward_rules: gateway
                    .forward_rules
                    .iter()
                    .map(|rule| ForwardRule {
                        allow_forward_to: rule.allow_forward_to.clone(),
                        allow_actions: rule.allow_actions.clone(),
                        require_approval: rule.require_approval,
                        rate_limit: (rule.rate_limit_per_minute > 0).then_some(RateLimit {
                            per_minute: rule.rate_limit_per_minute,
                        }),
                    })
                    .collect(),
                approval_timeout: std::time::Duration::from_secs(gateway.approval_timeout_seconds)
                    .into(),
            })
            .collect(),
        policy_hash: message.policy_hash.clone(),
    })
}
