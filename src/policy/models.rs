//! Model policy: which `provider:model` a session may ask for.

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

/// `text` matches `pattern`, where `*` matches any run of characters
/// (greedy with backtracking to the last star: linear in practice).
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

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
