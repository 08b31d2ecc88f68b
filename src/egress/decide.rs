//! What a request may do, before any provider is called: the chain it
//! walks (the request's model against the session's links and patterns),
//! which links may be used, and its `max_tokens` against the policy's
//! bound. Pure: the service does the I/O.

use serde_json::{Map, Value};

use super::policy::{Link, ModelRules};
use super::translate::ErrorKind;
use crate::policy::models::allows;
use crate::proto::v1alpha1::Dialect;

/// Why a request is refused before any provider is called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The body is not a JSON object of the dialect.
    Malformed(String),
    /// The body is over the limit (bytes).
    TooLarge(usize),
    /// No link serves the model asked for.
    UnknownModel {
        /// What was asked for.
        asked: String,
        /// What may be asked for (as `GET /v1/models` lists).
        offered: Vec<String>,
    },
    /// `max_tokens` above the policy's bound.
    TooManyTokens { asked: u64, limit: u32 },
    /// A token budget is spent.
    Budget {
        /// `per minute` or `per day`.
        window: &'static str,
        limit: u64,
        /// When enough of it is free again.
        resets: k8s_openapi::jiff::Timestamp,
    },
    /// The policy allows no link of the chain for the model.
    NotAllowed(String),
    /// Every link was skipped or failed.
    NoLink(Vec<String>),
    /// The link reached uses a feature its dialect lacks (the translator's
    /// words, naming the feature).
    Unsupported(String),
}

impl Refusal {
    /// What kind of error the agent's SDK raises for it (and so the HTTP
    /// status it gets, [`ErrorKind::status`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::Malformed(_) | Refusal::TooManyTokens { .. } | Refusal::Unsupported(_) => {
                ErrorKind::InvalidRequest
            }
            Refusal::TooLarge(_) => ErrorKind::TooLarge,
            Refusal::NotAllowed(_) => ErrorKind::Permission,
            Refusal::UnknownModel { .. } => ErrorKind::NotFound,
            Refusal::Budget { .. } => ErrorKind::RateLimit,
            Refusal::NoLink(_) => ErrorKind::Overloaded,
        }
    }

    /// Whether warn mode lets the request through (a refusal by policy or
    /// budget; never bad input).
    pub fn by_policy(&self) -> bool {
        matches!(
            self,
            Refusal::TooManyTokens { .. } | Refusal::Budget { .. } | Refusal::NotAllowed(_)
        )
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(why) => write!(f, "malformed request: {why}"),
            Refusal::Unsupported(why) => write!(f, "{why}"),
            Refusal::TooLarge(limit) => write!(f, "the request body is over {limit} bytes"),
            Refusal::NotAllowed(model) => write!(
                f,
                "model {model:?} is not allowed for this session by its policy"
            ),
            Refusal::UnknownModel { asked, offered } if offered.is_empty() => write!(
                f,
                "model {asked:?} is not available to this session: the request must name a model its policy allows"
            ),
            Refusal::UnknownModel { asked, offered } => write!(
                f,
                "model {asked:?} is not available to this session; available: {}",
                offered.join(", ")
            ),
            Refusal::TooManyTokens { asked, limit } => write!(
                f,
                "max_tokens {asked} exceeds this session's limit of {limit} tokens per request"
            ),
            Refusal::Budget {
                window,
                limit,
                resets,
            } => write!(
                f,
                "token budget spent: {limit} tokens {window}; it resets at {resets}"
            ),
            Refusal::NoLink(tried) => write!(
                f,
                "no provider of this session's chain could answer: {}",
                tried.join("; ")
            ),
        }
    }
}

/// The models a session may name, first link first (links naming none
/// are left out: the agent names the model).
pub fn offered(rules: &ModelRules) -> Vec<Link> {
    rules
        .chain
        .iter()
        .filter(|link| !link.model.is_empty())
        .cloned()
        .collect()
}

/// The chain a request for `model` walks: from the link naming `model`;
/// else, when the first link names none or the policy allows
/// `first.provider:model`, the whole chain with `model` for the first link
/// (and for any link naming none); else an unknown model.
pub fn chain(rules: &ModelRules, model: &str) -> Result<Vec<Link>, Refusal> {
    let unknown = || Refusal::UnknownModel {
        asked: model.to_owned(),
        offered: offered(rules)
            .iter()
            .map(|link| link.model.clone())
            .collect(),
    };
    let fill = |links: &[Link]| {
        links
            .iter()
            .map(|link| Link {
                provider: link.provider.clone(),
                model: if link.model.is_empty() {
                    model.to_owned()
                } else {
                    link.model.clone()
                },
            })
            .collect::<Vec<_>>()
    };
    if let Some(start) = rules
        .chain
        .iter()
        .position(|link| !model.is_empty() && link.model == model)
    {
        return Ok(fill(&rules.chain[start..]));
    }
    let first = rules.chain.first().ok_or_else(unknown)?;
    if model.is_empty() {
        return if first.model.is_empty() {
            Err(Refusal::Malformed("the request names no model".into()))
        } else {
            Ok(fill(&rules.chain))
        };
    }
    if first.model.is_empty() || allows(&rules.allow, &first.provider, model) {
        let mut links = fill(&rules.chain);
        links[0].model = model.to_owned();
        return Ok(links);
    }
    Err(unknown())
}

/// The reason a link the policy does not allow is skipped.
pub const NOT_ALLOWED: &str = "not allowed by the policy";

/// Why a link may not be used, before calling it (`None`: it may).
pub fn forbidden(rules: &ModelRules, link: &Link) -> Option<&'static str> {
    if !allows(&rules.allow, &link.provider, &link.model) {
        return Some(NOT_ALLOWED);
    }
    if rules.provider(&link.provider).is_none() {
        return Some("provider not configured in the namespace's SecurityPolicy");
    }
    None
}

/// Checks the request's `max_tokens` (OpenAI also `max_completion_tokens`)
/// against `limit` (0: none). Anthropic requires one; an OpenAI request
/// without one is given the limit. Over the limit is a refusal by policy.
pub fn bound_max_tokens(
    dialect: Dialect,
    body: &mut Map<String, Value>,
    limit: u32,
) -> Result<(), Refusal> {
    let fields: &[&str] = match dialect {
        Dialect::AnthropicMessages => &["max_tokens"],
        _ => &["max_completion_tokens", "max_tokens"],
    };
    let mut asked = None;
    for field in fields {
        match body.get(*field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                let tokens = value.as_u64().ok_or_else(|| {
                    Refusal::Malformed(format!("{field} is not a non-negative integer"))
                })?;
                asked = Some(asked.map_or(tokens, |other: u64| other.max(tokens)));
            }
        }
    }
    match asked {
        None if dialect == Dialect::AnthropicMessages => {
            Err(Refusal::Malformed("max_tokens is required".into()))
        }
        None if limit > 0 => {
            body.insert("max_tokens".into(), Value::from(limit));
            Ok(())
        }
        Some(asked) if limit > 0 && asked > u64::from(limit) => {
            Err(Refusal::TooManyTokens { asked, limit })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(provider: &str, model: &str) -> Link {
        Link {
            provider: provider.into(),
            model: model.into(),
        }
    }

    fn rules(chain: &[(&str, &str)], allow: &[&str]) -> ModelRules {
        ModelRules {
            allow: allow.iter().map(|p| p.to_string()).collect(),
            chain: chain.iter().map(|(p, m)| link(p, m)).collect(),
            ..ModelRules::default()
        }
    }

    #[test]
    fn a_model_of_a_link_starts_the_chain_there() {
        let rules = rules(&[("openai", "gpt-4o"), ("anthropic", "claude")], &["*"]);
        assert_eq!(
            chain(&rules, "claude").unwrap(),
            [link("anthropic", "claude")]
        );
        assert_eq!(
            chain(&rules, "gpt-4o").unwrap(),
            [link("openai", "gpt-4o"), link("anthropic", "claude")]
        );
        assert_eq!(
            chain(&rules, "").unwrap(),
            [link("openai", "gpt-4o"), link("anthropic", "claude")],
            "no model: the chain's"
        );
    }

    #[test]
    fn another_model_takes_the_first_link_when_allowed() {
        let allowed = rules(
            &[("openai", "gpt-4o"), ("anthropic", "claude")],
            &["openai:gpt-*"],
        );
        assert_eq!(
            chain(&allowed, "gpt-4o-mini").unwrap(),
            [link("openai", "gpt-4o-mini"), link("anthropic", "claude")]
        );
        let refused = chain(&allowed, "o3").unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::NotFound);
        assert!(
            refused.to_string().contains("available: gpt-4o, claude"),
            "{refused}"
        );
        let open = rules(&[("openai", ""), ("anthropic", "")], &[]);
        assert_eq!(
            chain(&open, "m").unwrap(),
            [link("openai", "m"), link("anthropic", "m")],
            "links naming no model take the request's"
        );
        assert!(matches!(chain(&open, ""), Err(Refusal::Malformed(_))));
        assert!(matches!(
            chain(&ModelRules::default(), "m"),
            Err(Refusal::UnknownModel { .. })
        ));
    }

    #[test]
    fn a_link_is_forbidden_unless_allowed_and_configured() {
        let rules = rules(&[("openai", "gpt-4o")], &["openai:gpt-4o"]);
        assert_eq!(
            forbidden(&rules, &link("openai", "o3")).unwrap(),
            "not allowed by the policy"
        );
        assert!(
            forbidden(&rules, &link("openai", "gpt-4o"))
                .unwrap()
                .contains("not configured")
        );
    }

    #[test]
    fn max_tokens_is_bounded_and_anthropic_needs_it() {
        let body = |json: Value| json.as_object().unwrap().clone();
        let mut openai = body(serde_json::json!({"model": "m"}));
        bound_max_tokens(Dialect::OpenaiChat, &mut openai, 100).unwrap();
        assert_eq!(openai["max_tokens"], 100, "given the limit");
        let mut over = body(serde_json::json!({"max_completion_tokens": 101}));
        assert_eq!(
            bound_max_tokens(Dialect::OpenaiChat, &mut over, 100),
            Err(Refusal::TooManyTokens {
                asked: 101,
                limit: 100
            })
        );
        let mut unlimited = body(serde_json::json!({"max_tokens": 1_000_000}));
        bound_max_tokens(Dialect::OpenaiChat, &mut unlimited, 0).unwrap();
        let mut missing = body(serde_json::json!({}));
        assert!(matches!(
            bound_max_tokens(Dialect::AnthropicMessages, &mut missing, 0),
            Err(Refusal::Malformed(why)) if why == "max_tokens is required"
        ));
        let mut negative = body(serde_json::json!({"max_tokens": -1}));
        assert!(matches!(
            bound_max_tokens(Dialect::AnthropicMessages, &mut negative, 0),
            Err(Refusal::Malformed(_))
        ));
    }
}
