//! Effective contexts to and from their wire form, at one edge for both
//! ends (the control plane encodes, the sidecar decodes). Enum values travel
//! as their serde names. Decoding fails on any value this version does not
//! know, so a sidecar never guesses a policy.

use serde::de::DeserializeOwned;

use crate::api::{
    AccessPattern, Capability, ForwardRule, ProviderConfig, RateLimit, SecretKeyRef, from_name,
    name_of,
};
use crate::policy::tools::argument_rules::ArgumentRulesInForce;
use crate::policy::{
    EffectiveContext, EffectiveModels, EffectiveSandbox, GatewayRules, ModelLink, ToolId,
};
use crate::proto::v1alpha1 as pb;

/// A wire value this version cannot read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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
        trust_level: name_of(&context.trust_level),
        capabilities: context.capabilities.iter().map(|c| name_of(&c)).collect(),
        tools: context
            .tools
            .iter()
            .map(|id| id.tool().name.to_owned())
            .collect(),
        sandbox: context.sandbox.enabled,
        network: name_of(&context.network),
        enforcement: name_of(&context.enforcement),
        access: context.access.iter().map(ToString::to_string).collect(),
        grants: context.grants.clone(),
        gateways: context.gateways.iter().map(encode_gateway).collect(),
        policy_hash: context.policy_hash.clone(),
        provider,
        models: Some(encode_models(&context.models)),
        rules: Some(encode_rules(&context.rules)),
    }
}

fn encode_rules(rules: &ArgumentRulesInForce) -> pb::ArgumentRules {
    let patterns = |list: &Option<Vec<String>>| {
        list.as_ref().map(|entries| pb::Patterns {
            entries: entries.clone(),
        })
    };
    pb::ArgumentRules {
        allow_hosts: patterns(&rules.allow_hosts),
        deny_hosts: rules.deny_hosts.clone(),
        allow_commands: patterns(&rules.allow_commands),
        deny_args: rules.deny_args.clone(),
        read_paths: patterns(&rules.read_paths),
        write_paths: patterns(&rules.write_paths),
    }
}

/// The argument rules a message carries; none when it carries none.
fn decode_rules(message: Option<&pb::ArgumentRules>) -> ArgumentRulesInForce {
    let Some(message) = message else {
        return ArgumentRulesInForce::default();
    };
    let patterns =
        |list: &Option<pb::Patterns>| list.as_ref().map(|patterns| patterns.entries.clone());
    ArgumentRulesInForce {
        allow_hosts: patterns(&message.allow_hosts),
        deny_hosts: message.deny_hosts.clone(),
        allow_commands: patterns(&message.allow_commands),
        deny_args: message.deny_args.clone(),
        read_paths: patterns(&message.read_paths),
        write_paths: patterns(&message.write_paths),
    }
}

fn encode_models(models: &EffectiveModels) -> pb::ModelPolicy {
    pb::ModelPolicy {
        allow: models.allow.clone(),
        max_tokens_per_request: models.max_tokens_per_request,
        tokens_per_minute: models.tokens_per_minute,
        tokens_per_day: models.tokens_per_day,
        chain: models
            .chain
            .iter()
            .map(|link| pb::ModelLink {
                provider: link.provider.clone(),
                model: link.model.clone().unwrap_or_default(),
            })
            .collect(),
        providers: models
            .providers
            .iter()
            .map(|provider| pb::ProviderConfig {
                name: provider.name.clone(),
                r#type: name_of(&provider.type_),
                base_url: provider.base_url.clone().unwrap_or_default(),
                secret_name: provider.secret_ref.name.clone(),
                secret_key: provider.secret_ref.key.clone(),
            })
            .collect(),
    }
}

/// The model policy of a wire message; none (an older control plane):
/// no model at all.
fn decode_models(message: Option<&pb::ModelPolicy>) -> Result<EffectiveModels, DecodeError> {
    let Some(message) = message else {
        return Ok(EffectiveModels::default());
    };
    let non_empty = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    Ok(EffectiveModels {
        allow: message.allow.clone(),
        max_tokens_per_request: message.max_tokens_per_request,
        tokens_per_minute: message.tokens_per_minute,
        tokens_per_day: message.tokens_per_day,
        chain: message
            .chain
            .iter()
            .map(|link| ModelLink {
                provider: link.provider.clone(),
                model: non_empty(&link.model),
            })
            .collect(),
        providers: message
            .providers
            .iter()
            .map(|provider| {
                Ok(ProviderConfig {
                    name: provider.name.clone(),
                    type_: named("provider type", &provider.r#type)?,
                    base_url: non_empty(&provider.base_url),
                    secret_ref: SecretKeyRef {
                        name: provider.secret_name.clone(),
                        key: provider.secret_key.clone(),
                    },
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn encode_gateway(gateway: &GatewayRules) -> pb::GatewayRules {
    pb::GatewayRules {
        gateway: gateway.gateway.clone(),
        trust_level: name_of(&gateway.trust_level),
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

/// The enum value named `value`.
fn named<T: DeserializeOwned>(field: &'static str, value: &str) -> Result<T, DecodeError> {
    from_name(value).ok_or_else(|| DecodeError {
        field,
        value: value.to_owned(),
    })
}

/// The effective context a wire message describes. Tools this version does
/// not know are left out (they stay denied).
pub fn decode(message: &pb::SecurityContext) -> Result<EffectiveContext, DecodeError> {
    Ok(EffectiveContext {
        namespace: message.namespace.clone(),
        session: message.session.clone(),
        trust_level: named("trust level", &message.trust_level)?,
        capabilities: message
            .capabilities
            .iter()
            .map(|c| named::<Capability>("capability", c))
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
        network: named("network", &message.network)?,
        enforcement: named("enforcement", &message.enforcement)?,
        access: message
            .access
            .iter()
            .map(|a| {
                a.parse::<AccessPattern>().map_err(|_| DecodeError {
                    field: "access pattern",
                    value: a.clone(),
                })
            })
            .collect::<Result<_, _>>()?,
        grants: message.grants.clone(),
        valid_until: None,
        granted: Vec::new(),
        gateways: message
            .gateways
            .iter()
            .map(|gateway| {
                Ok(GatewayRules {
                    gateway: gateway.gateway.clone(),
                    trust_level: named("gateway trust level", &gateway.trust_level)?,
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
                    approval_timeout: std::time::Duration::from_secs(
                        gateway.approval_timeout_seconds,
                    )
                    .into(),
                })
            })
            .collect::<Result<_, _>>()?,
        models: decode_models(message.models.as_ref())?,
        rules: decode_rules(message.rules.as_ref()),
        policy_hash: message.policy_hash.clone(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::api::{Session, SessionSpec, TrustLevel};
    use crate::policy::resolve;

    fn context(level: TrustLevel) -> EffectiveContext {
        let mut session = Session::new("s", SessionSpec::for_trust_level(level));
        session.metadata.namespace = Some("ns".into());
        resolve(&session, None, &[], &[], Timestamp::UNIX_EPOCH).unwrap()
    }

    #[test]
    fn what_travels_comes_back_the_same() {
        for level in TrustLevel::ALL {
            let context = context(level);
            let wire = encode(&context, None);
            assert_eq!(wire.trust_level, level.as_str());
            let decoded = decode(&wire).unwrap();
            assert_eq!(decoded.capabilities, context.capabilities);
            assert_eq!(decoded.tools, context.tools);
            assert_eq!(decoded.network, context.network);
            assert_eq!(decoded.enforcement, context.enforcement);
            assert_eq!(decoded.access, context.access);
            assert_eq!(decoded.policy_hash, context.policy_hash);
        }
    }

    #[test]
    fn a_gateways_rules_and_level_travel() {
        let mut session = Session::new(
            "gate",
            SessionSpec::for_trust_level(TrustLevel::SemiTrusted),
        );
        session.metadata.namespace = Some("ns".into());
        let mut gateway = crate::api::Gateway::new(
            "gate",
            crate::api::GatewaySpec {
                session: "gate".into(),
                trust_level: TrustLevel::Trusted,
                forward_rules: vec![ForwardRule {
                    allow_forward_to: vec!["executor".into()],
                    allow_actions: vec!["execute".into()],
                    require_approval: true,
                    rate_limit: Some(RateLimit { per_minute: 5 }),
                }],
                approval_timeout: std::time::Duration::from_secs(60).into(),
            },
        );
        gateway.metadata.namespace = Some("ns".into());
        let context = resolve(&session, None, &[], [&gateway], Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(context.gateways.len(), 1);
        let decoded = decode(&encode(&context, None)).unwrap();
        assert_eq!(decoded.gateways, context.gateways);
    }

    #[test]
    fn the_model_policy_travels() {
        let mut session = Session::new("s", SessionSpec::for_trust_level(TrustLevel::SemiTrusted));
        session.metadata.namespace = Some("ns".into());
        session.spec.provider = Some(
            serde_json::from_value(serde_json::json!({"name": "local", "model": "phi-mini",
                "fallback": [{"name": "anthropic"}]}))
            .unwrap(),
        );
        let policy: crate::api::SecurityPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "default", "namespace": "ns"},
            "spec": {"providers": [
                {"name": "local", "type": "openai-compatible", "baseURL": "http://llm.ns.svc:8000/v1",
                 "secretRef": {"name": "keys", "key": "local"}},
                {"name": "anthropic", "type": "anthropic", "secretRef": {"name": "keys", "key": "a"}},
            ]},
        }))
        .unwrap();
        let context = resolve(&session, Some(&policy), &[], &[], Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(context.models.chain.len(), 2);
        let wire = encode(&context, None);
        let models = wire.models.as_ref().unwrap();
        assert_eq!(models.providers[0].r#type, "openai-compatible");
        assert_eq!(models.chain[1].model, "", "no model: the request's");
        assert_eq!(decode(&wire).unwrap().models, context.models);

        // A control plane that sends no model policy allows no model.
        let mut older = wire.clone();
        older.models = None;
        assert_eq!(decode(&older).unwrap().models, EffectiveModels::default());
        assert!(decode(&older).unwrap().models.allow.is_empty());
    }

    #[test]
    fn unknown_values_are_refused_not_guessed() {
        let good = encode(&context(TrustLevel::Trusted), None);
        for (field, mutate) in [
            (
                "trust level",
                (|w: &mut pb::SecurityContext| w.trust_level = "admin".into())
                    as fn(&mut pb::SecurityContext),
            ),
            ("capability", |w| {
                w.capabilities.push("inject.everything".into())
            }),
            ("network", |w| w.network = "wide".into()),
            ("enforcement", |w| w.enforcement = "audit".into()),
            ("access pattern", |w| w.access.push("friends".into())),
            ("gateway trust level", |w| {
                w.gateways.push(pb::GatewayRules {
                    trust_level: "admin".into(),
                    ..pb::GatewayRules::default()
                })
            }),
            ("provider type", |w| {
                let models = w.models.get_or_insert_with(Default::default);
                models.providers.push(pb::ProviderConfig {
                    name: "x".into(),
                    r#type: "azure".into(),
                    ..pb::ProviderConfig::default()
                })
            }),
        ] {
            let mut wire = good.clone();
            mutate(&mut wire);
            assert_eq!(decode(&wire).unwrap_err().field, field);
        }
    }
}
