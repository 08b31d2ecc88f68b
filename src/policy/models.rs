//! Model policy: which `provider:model` a session may ask for, within which
//! token limits, through which chain of providers.

use serde::Serialize;

use super::glob::glob;
use crate::api::{ModelPolicy, Provider, ProviderConfig};

/// What a session may ask of model providers: its level's patterns and
/// limits (widened by its grants' profiles), its chain, and the providers
/// its namespace configures. The egress service decides every model call
/// by it; the controller checks the chain's first link with it
/// ([`provider_problem`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveModels {
    /// `provider:model` patterns ([`allows`]); empty: no model at all.
    pub allow: Vec<String>,
    /// Most tokens one request may ask for; 0 for no limit.
    pub max_tokens_per_request: u32,
    /// Tokens (in and out) per minute; 0 for no limit.
    pub tokens_per_minute: u64,
    /// Tokens (in and out) per UTC day; 0 for no limit.
    pub tokens_per_day: u64,
    /// `[spec.provider, ...spec.provider.fallback]`; empty when the Session
    /// names no provider.
    pub chain: Vec<ModelLink>,
    /// The providers of the namespace's `default` SecurityPolicy
    /// (`spec.providers`): where each is and which Secret holds its key.
    pub providers: Vec<ProviderConfig>,
}

/// One link of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelLink {
    /// A provider's name (`spec.providers[].name`).
    pub provider: String,
    /// The model; `None`: the one the request names.
    pub model: Option<String>,
}

impl EffectiveModels {
    /// The allowance of a trust level: each field from the first of
    /// `layers` (most specific first) that sets it; unset everywhere, no
    /// model and no limit. Chain and providers are the session's, left empty.
    pub(crate) fn of_level(layers: &[Option<&ModelPolicy>]) -> EffectiveModels {
        EffectiveModels {
            allow: first_set(layers, |layer| layer.allow.clone()).unwrap_or_default(),
            max_tokens_per_request: first_set(layers, |layer| layer.max_tokens_per_request)
                .unwrap_or(0),
            tokens_per_minute: first_set(layers, |layer| layer.tokens_per_minute).unwrap_or(0),
            tokens_per_day: first_set(layers, |layer| layer.tokens_per_day).unwrap_or(0),
            chain: Vec::new(),
            providers: Vec::new(),
        }
    }

    /// Widened by `other` (a grant's profile): the union of the patterns
    /// (sorted, so that the order of the grants does not matter), and for
    /// each limit the larger, 0 (no limit) being the largest.
    pub(crate) fn widen(&mut self, other: &EffectiveModels) {
        self.allow.extend(other.allow.iter().cloned());
        self.allow.sort_unstable();
        self.allow.dedup();
        self.max_tokens_per_request =
            larger_limit(self.max_tokens_per_request, other.max_tokens_per_request);
        self.tokens_per_minute = larger_limit(self.tokens_per_minute, other.tokens_per_minute);
        self.tokens_per_day = larger_limit(self.tokens_per_day, other.tokens_per_day);
    }

    /// The chain of a Session's `provider`: it, then its fallbacks.
    pub(crate) fn chain_of(provider: Option<&Provider>) -> Vec<ModelLink> {
        let Some(provider) = provider else {
            return Vec::new();
        };
        let first = ModelLink {
            provider: provider.name.clone(),
            model: provider.model.clone(),
        };
        std::iter::once(first)
            .chain(provider.fallback.iter().map(|link| ModelLink {
                provider: link.name.clone(),
                model: link.model.clone(),
            }))
            .collect()
    }
}

/// The first of `layers` (most specific first) that sets a field.
fn first_set<T>(
    layers: &[Option<&ModelPolicy>],
    field: impl Fn(&ModelPolicy) -> Option<T>,
) -> Option<T> {
    layers.iter().flatten().find_map(|layer| field(layer))
}

/// The larger of two limits, 0 meaning none (larger than any).
fn larger_limit<T: Copy + Ord + Default>(a: T, b: T) -> T {
    let unlimited = T::default();
    if a == unlimited || b == unlimited {
        unlimited
    } else {
        a.max(b)
    }
}

/// Why a Session's provider cannot serve it: the reason (CamelCase, for
/// its Ready condition) and the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderProblem {
    /// The namespace's SecurityPolicy configures no provider of that name.
    #[error(
        "spec.provider.name {provider:?} is not a provider of the namespace: add it to spec.providers of its SecurityPolicy default, or use one of {configured:?}"
    )]
    NotConfigured {
        /// The provider the Session names.
        provider: String,
        /// Those the namespace configures.
        configured: Vec<String>,
    },
    /// The session's trust level (with its grants) allows no model at all.
    #[error(
        "spec.provider: the session's trust level allows no model; a Grant with a profile that allows models, or a higher trust level, is needed"
    )]
    NoModelAllowed,
    /// The model is outside the patterns the session may use.
    #[error(
        "spec.provider: {provider}:{model} is not allowed for the session's trust level (allowed: {allow:?})"
    )]
    ModelNotAllowed {
        /// The provider.
        provider: String,
        /// The model.
        model: String,
        /// The patterns the session may use.
        allow: Vec<String>,
    },
}

impl ProviderProblem {
    /// The stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProviderProblem::NotConfigured { .. } => "ProviderNotConfigured",
            ProviderProblem::NoModelAllowed | ProviderProblem::ModelNotAllowed { .. } => {
                "ProviderNotAllowed"
            }
        }
    }

    /// Whether warn mode lets the calls through (recorded `would_deny`):
    /// a refusal by policy does, a provider that is not configured cannot
    /// be called in any mode.
    pub fn warn_mode_allows(&self) -> bool {
        !matches!(self, ProviderProblem::NotConfigured { .. })
    }
}

/// What keeps the first link of a session's chain from serving it, if
/// anything: its provider is not configured in the namespace, the session
/// may use no model at all, or the link's model (when it names one) is not
/// allowed. A session without a provider has no problem. Fallback links are
/// not judged here: the egress service skips those it may not use.
pub fn provider_problem(models: &EffectiveModels) -> Option<ProviderProblem> {
    let first = models.chain.first()?;
    if !models.providers.iter().any(|p| p.name == first.provider) {
        return Some(ProviderProblem::NotConfigured {
            provider: first.provider.clone(),
            configured: models.providers.iter().map(|p| p.name.clone()).collect(),
        });
    }
    if models.allow.is_empty() {
        return Some(ProviderProblem::NoModelAllowed);
    }
    match &first.model {
        Some(model) if !allows(&models.allow, &first.provider, model) => {
            Some(ProviderProblem::ModelNotAllowed {
                provider: first.provider.clone(),
                model: model.clone(),
                allow: models.allow.clone(),
            })
        }
        _ => None,
    }
}

/// Whether any of `patterns` admits `model` of `provider`. A pattern is
/// `provider:model`, each side a glob where `*` matches any run of
/// characters (`openai:gpt-4o-mini`, `anthropic:*haiku*`, `*:*mini*`); a
/// pattern without `:` names every model of a provider (`openai` is
/// `openai:*`), and `*` admits everything. No pattern admits nothing.
pub fn allows(patterns: &[String], provider: &str, model: &str) -> bool {
    patterns.iter().any(|pattern| {
        let (provider_glob, model_glob) = pattern.split_once(':').unwrap_or((pattern, "*"));
        glob(provider_glob, provider) && glob(model_glob, model)
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    use super::*;
    use crate::api::{Grant, SecurityPolicy, Session, SessionSpec, TrustLevel};
    use crate::policy::resolve;

    fn session(level: TrustLevel, provider: Option<serde_json::Value>) -> Session {
        let mut spec = SessionSpec::for_trust_level(level);
        spec.provider = provider.map(|p| serde_json::from_value(p).unwrap());
        let mut session = Session::new("s", spec);
        session.metadata.namespace = Some("ns".into());
        session
    }

    fn policy(spec: serde_json::Value) -> SecurityPolicy {
        serde_json::from_value(json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "default", "namespace": "ns"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn grant(spec: serde_json::Value) -> Grant {
        serde_json::from_value(json!({
            "apiVersion": "wopr.dev/v1alpha1", "kind": "Grant",
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn models_of(
        session: &Session,
        policy: Option<&SecurityPolicy>,
        grants: &[Grant],
    ) -> EffectiveModels {
        resolve(session, policy, grants, &[], Timestamp::UNIX_EPOCH)
            .unwrap()
            .models
    }

    fn limits(models: &EffectiveModels) -> (u32, u64, u64) {
        (
            models.max_tokens_per_request,
            models.tokens_per_minute,
            models.tokens_per_day,
        )
    }

    #[test]
    fn each_level_has_the_seeds_built_in_models() {
        let of = |level| models_of(&session(level, None), None, &[]);
        let owner = of(TrustLevel::Owner);
        assert_eq!(owner.allow, ["*"]);
        assert_eq!(limits(&owner), (0, 0, 0));
        let trusted = of(TrustLevel::Trusted);
        assert_eq!(trusted.allow, ["*"]);
        assert_eq!(limits(&trusted), (16_384, 200_000, 5_000_000));
        let semi = of(TrustLevel::SemiTrusted);
        assert_eq!(
            semi.allow,
            [
                "*:*mini*",
                "*:*haiku*",
                "*:*flash*",
                "*:*nano*",
                "*:*small*"
            ]
        );
        assert_eq!(limits(&semi), (2_048, 20_000, 200_000));
        assert!(allows(&semi.allow, "openai", "gpt-4o-mini"));
        assert!(allows(&semi.allow, "anthropic", "claude-3-5-haiku-latest"));
        assert!(!allows(&semi.allow, "openai", "gpt-4o"));
        assert!(!allows(&semi.allow, "anthropic", "claude-opus-4"));
        let untrusted = of(TrustLevel::Untrusted);
        assert!(untrusted.allow.is_empty(), "untrusted: no model");
        assert_eq!(limits(&untrusted), (2_048, 20_000, 200_000));
    }

    #[test]
    fn a_policys_level_fields_win_field_by_field() {
        let policy = policy(json!({"trustLevels": {"semi-trusted": {"providers": {
            "allow": ["openai:gpt-4o"], "tokensPerDay": 0,
        }}}}));
        let semi = models_of(&session(TrustLevel::SemiTrusted, None), Some(&policy), &[]);
        assert_eq!(semi.allow, ["openai:gpt-4o"]);
        assert_eq!(
            limits(&semi),
            (2_048, 20_000, 0),
            "unset fields keep the built-in value; 0 set is no limit"
        );
        // Other levels keep their built-in models.
        let trusted = models_of(&session(TrustLevel::Trusted, None), Some(&policy), &[]);
        assert_eq!(limits(&trusted), (16_384, 200_000, 5_000_000));
        // An empty list is no model, not the built-in one.
        let closed =
            self::policy(json!({"trustLevels": {"trusted": {"providers": {"allow": []}}}}));
        let trusted = models_of(&session(TrustLevel::Trusted, None), Some(&closed), &[]);
        assert!(trusted.allow.is_empty());
    }

    #[test]
    fn a_grants_profile_widens_an_untrusted_sessions_models() {
        let untrusted = session(TrustLevel::Untrusted, None);
        let profile = grant(json!({"subject": {"session": "s"}, "profile": "semi-trusted"}));
        let widened = models_of(&untrusted, None, std::slice::from_ref(&profile));
        assert_eq!(
            widened.allow,
            [
                "*:*flash*",
                "*:*haiku*",
                "*:*mini*",
                "*:*nano*",
                "*:*small*"
            ],
            "the union, sorted"
        );
        assert_eq!(
            limits(&widened),
            (2_048, 20_000, 200_000),
            "a grant lifts no limit above its profile's"
        );
        // Over semi-trusted, a trusted profile gives the union and the larger limits.
        let semi = session(TrustLevel::SemiTrusted, None);
        let trusted = grant(json!({"subject": {"session": "s"}, "profile": "trusted"}));
        let widened = models_of(&semi, None, &[trusted]);
        assert_eq!(widened.allow.len(), 6);
        assert!(widened.allow.contains(&"*".to_owned()));
        assert_eq!(limits(&widened), (16_384, 200_000, 5_000_000));
        // No limit (0) is the larger of any two.
        let mut unlimited = EffectiveModels {
            tokens_per_day: 0,
            tokens_per_minute: 10,
            ..EffectiveModels::default()
        };
        unlimited.widen(&EffectiveModels {
            tokens_per_day: 5,
            tokens_per_minute: 20,
            ..EffectiveModels::default()
        });
        assert_eq!(
            (unlimited.tokens_per_minute, unlimited.tokens_per_day),
            (20, 0)
        );
        // Capabilities only, another session's grant, an expired grant: nothing.
        for unchanged in [
            grant(json!({"subject": {"session": "s"}, "capabilities": ["inject.network"]})),
            grant(json!({"subject": {"session": "other"}, "profile": "trusted"})),
            grant(json!({"subject": {"session": "s"}, "profile": "trusted",
                "expiresAt": "1969-12-31T00:00:00Z"})),
        ] {
            assert!(models_of(&untrusted, None, &[unchanged]).allow.is_empty());
        }
    }

    #[test]
    fn the_chain_is_the_provider_then_its_fallbacks() {
        let none = models_of(&session(TrustLevel::Trusted, None), None, &[]);
        assert!(none.chain.is_empty());
        let provider = json!({"name": "anthropic", "model": "claude-sonnet-4",
            "fallback": [{"name": "openai", "model": "gpt-4o"}, {"name": "local"}]});
        let chained = models_of(&session(TrustLevel::Trusted, Some(provider)), None, &[]);
        let link = |provider: &str, model: Option<&str>| ModelLink {
            provider: provider.into(),
            model: model.map(Into::into),
        };
        assert_eq!(
            chained.chain,
            [
                link("anthropic", Some("claude-sonnet-4")),
                link("openai", Some("gpt-4o")),
                link("local", None),
            ]
        );
    }

    #[test]
    fn the_namespaces_providers_and_the_models_are_in_the_hash() {
        let trusted = session(TrustLevel::Trusted, None);
        let hash = |policy: &SecurityPolicy| {
            resolve(&trusted, Some(policy), &[], &[], Timestamp::UNIX_EPOCH)
                .unwrap()
                .policy_hash
        };
        let bare = policy(json!({}));
        let with_provider = policy(json!({"providers": [{"name": "openai", "type": "openai",
            "secretRef": {"name": "keys", "key": "openai"}}]}));
        let limited =
            policy(json!({"trustLevels": {"trusted": {"providers": {"tokensPerMinute": 1}}}}));
        let resolved = resolve(
            &trusted,
            Some(&with_provider),
            &[],
            &[],
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(resolved.models.providers, with_provider.spec.providers);
        assert_ne!(hash(&bare), hash(&with_provider));
        assert_ne!(hash(&bare), hash(&limited));
    }

    fn configured(models: &mut EffectiveModels, names: &[&str]) {
        models.providers = names
            .iter()
            .map(|name| {
                serde_json::from_value(json!({"name": name, "type": "openai",
                    "secretRef": {"name": "keys", "key": name}}))
                .unwrap()
            })
            .collect();
    }

    #[test]
    fn provider_problems() {
        let with = |level, provider: serde_json::Value, providers: &[&str]| {
            let mut models = models_of(&session(level, Some(provider)), None, &[]);
            configured(&mut models, providers);
            provider_problem(&models)
        };
        let semi = TrustLevel::SemiTrusted;
        assert_eq!(
            provider_problem(&models_of(&session(semi, None), None, &[])),
            None,
            "no provider, no problem"
        );
        assert_eq!(
            with(
                semi,
                json!({"name": "openai", "model": "gpt-4o-mini"}),
                &["openai"]
            ),
            None
        );
        assert_eq!(with(semi, json!({"name": "openai"}), &["openai"]), None);
        let not_configured = with(semi, json!({"name": "anthropic"}), &["openai"]).unwrap();
        assert_eq!(not_configured.reason(), "ProviderNotConfigured");
        assert!(
            not_configured.to_string().contains("\"anthropic\""),
            "{not_configured}"
        );
        let outside = with(
            semi,
            json!({"name": "openai", "model": "gpt-4o"}),
            &["openai"],
        )
        .unwrap();
        assert_eq!(outside.reason(), "ProviderNotAllowed");
        assert!(outside.to_string().contains("openai:gpt-4o "), "{outside}");
        let none = with(
            TrustLevel::Untrusted,
            json!({"name": "openai"}),
            &["openai"],
        )
        .unwrap();
        assert_eq!(none, ProviderProblem::NoModelAllowed);
        assert_eq!(none.reason(), "ProviderNotAllowed");
        // Only the first link is judged: the egress service skips the others.
        assert_eq!(
            with(
                semi,
                json!({"name": "openai", "model": "gpt-4o-mini",
                    "fallback": [{"name": "gone", "model": "opus"}]}),
                &["openai"]
            ),
            None
        );
    }

    fn patterns(list: &[&str]) -> Vec<String> {
        list.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn patterns_name_a_provider_and_a_model() {
        let allowed = patterns(&["openai:gpt-4o-mini", "anthropic:*haiku*"]);
        assert!(allows(&allowed, "openai", "gpt-4o-mini"));
        assert!(!allows(&allowed, "openai", "gpt-4o"));
        assert!(allows(&allowed, "anthropic", "claude-3-5-haiku-latest"));
        assert!(!allows(&allowed, "anthropic", "claude-sonnet-4"));
        assert!(!allows(&allowed, "local", "gpt-4o-mini"));
    }

    #[test]
    fn a_bare_provider_and_a_star_admit_more() {
        assert!(allows(&patterns(&["openai"]), "openai", "anything"));
        assert!(!allows(&patterns(&["openai"]), "anthropic", "anything"));
        assert!(allows(&patterns(&["*"]), "any", "thing"));
        assert!(allows(&patterns(&["*:*mini*"]), "openai", "o4-mini"));
        assert!(!allows(&[], "openai", "gpt-4o-mini"));
    }

    #[test]
    fn stars_backtrack() {
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
        assert!(glob("**", ""));
        assert!(!glob("", "x"));
        assert!(glob("gpt-*", "gpt-"));
    }
}
