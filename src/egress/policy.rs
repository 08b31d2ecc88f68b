//! What the egress service decides a session's model calls with: the parts
//! of its effective policy (as the control plane's Policy watch serves it)
//! that concern models, checked and typed once when an update arrives.

use crate::api::{Enforcement, ProviderType, TrustLevel};
use crate::policy::EffectiveContext;
use crate::policy::models::EffectiveModels;
use crate::proto::v1alpha1 as pb;
use crate::wire::{DecodeError, decode};

/// OpenAI's public API, for a provider of type `openai` without `baseURL`.
pub const OPENAI_API: &str = "https://api.openai.com/v1";
/// Anthropic's public API, for a provider of type `anthropic` without `baseURL`.
pub const ANTHROPIC_API: &str = "https://api.anthropic.com";

/// A session's policy, as far as model calls go.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionPolicy {
    /// The session's namespace.
    pub namespace: String,
    /// The session.
    pub session: String,
    /// Its trust level (recorded with each call).
    pub trust_level: TrustLevel,
    /// enforce or warn.
    pub enforcement: Enforcement,
    /// The hash of the whole effective policy (recorded with each call).
    pub policy_hash: String,
    /// What it may ask of which providers.
    pub models: ModelRules,
    /// The whole effective policy, for the decisions the egress service
    /// makes again itself (`http_fetch`: the capability, the tool lists,
    /// `tools.rules`).
    pub context: EffectiveContext,
}

/// A session's model rules (`SecurityContext.models`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelRules {
    /// `provider:model` patterns ([`crate::policy::models::allows`]).
    pub allow: Vec<String>,
    /// Most `max_tokens` a request may ask for; 0 for no limit.
    pub max_tokens_per_request: u32,
    /// Tokens (in and out) per sliding minute and per UTC day; 0 for no limit.
    pub tokens_per_minute: u64,
    pub tokens_per_day: u64,
    /// `[provider, ...fallback]`, in order.
    pub chain: Vec<Link>,
    /// The namespace's configured providers.
    pub providers: Vec<Provider>,
}

/// One link of a chain: a provider and a model (empty: the request's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub provider: String,
    pub model: String,
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.provider, self.model)
    }
}

/// A configured provider: where it is and which Secret key holds its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub name: String,
    pub kind: ProviderType,
    /// The API's base URL, without a trailing `/` (the type's public API
    /// when the SecurityPolicy names none).
    pub base_url: String,
    pub secret_name: String,
    pub secret_key: String,
}

impl ModelRules {
    /// The configured provider `name`.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|provider| provider.name == name)
    }
}

/// The session policy a Policy watch update carries. An update that does
/// not decode is an error, so the caller denies (fail closed).
pub fn session_policy(context: &pb::SecurityContext) -> Result<SessionPolicy, DecodeError> {
    let effective = decode(context)?;
    Ok(SessionPolicy {
        models: model_rules(&effective.models)?,
        namespace: effective.namespace.clone(),
        session: effective.session.clone(),
        trust_level: effective.trust_level,
        enforcement: effective.enforcement,
        policy_hash: effective.policy_hash.clone(),
        context: effective,
    })
}

/// The session's model rules, each provider located (its type's public API
/// when the SecurityPolicy names no `baseURL`).
fn model_rules(models: &EffectiveModels) -> Result<ModelRules, DecodeError> {
    let providers = models
        .providers
        .iter()
        .map(|provider| {
            let configured = provider.base_url.as_deref().unwrap_or("");
            let base_url = match (configured.trim_end_matches('/'), provider.type_) {
                ("", ProviderType::Anthropic) => ANTHROPIC_API.to_owned(),
                ("", ProviderType::Openai) => OPENAI_API.to_owned(),
                ("", ProviderType::OpenaiCompatible) => {
                    return Err(DecodeError {
                        field: "provider baseURL",
                        value: format!("{} (openai-compatible needs one)", provider.name),
                    });
                }
                (url, _) => url.to_owned(),
            };
            Ok(Provider {
                name: provider.name.clone(),
                kind: provider.type_,
                base_url,
                secret_name: provider.secret_ref.name.clone(),
                secret_key: provider.secret_ref.key.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ModelRules {
        allow: models.allow.clone(),
        max_tokens_per_request: models.max_tokens_per_request,
        tokens_per_minute: models.tokens_per_minute,
        tokens_per_day: models.tokens_per_day,
        chain: models
            .chain
            .iter()
            .map(|link| Link {
                provider: link.provider.clone(),
                model: link.model.clone().unwrap_or_default(),
            })
            .collect(),
        providers,
    })
}
