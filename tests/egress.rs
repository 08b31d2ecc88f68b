//! The egress service with real servers and real clients: a fake control
//! plane serving `Policy.Watch` (the token passthrough), fake providers of
//! both dialects that check the key they get, and a tonic client calling
//! the Models service over TLS as a sidecar would.

mod common;

use std::time::Duration;

use common::egress::{
    Behaviour, Egress, FakeControlPlane, FakeProvider, Speaks, StaticKeys, call, context, link,
    provider, request,
};
use serde_json::{Value, json};
use tonic::Code;
use wopr_operator::audit::{AuditEvent, EventType};
use wopr_operator::egress::service::Settings;
use wopr_operator::egress::sessions::SessionSettings;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1 as pb;
use wopr_operator::proto::v1alpha1::Dialect;

const NS: &str = "team-a";
const SESSION: &str = "agent";
const TOKEN: &str = "token-of-agent";
const OTHER_TOKEN: &str = "token-of-other";
const PRIMARY_KEY: &str = "sk-primary-0123456789abcdef";
const BACKUP_KEY: &str = "sk-backup-0123456789abcdef";

/// Settings with a quick heartbeat, so staleness shows within seconds.
fn settings() -> Settings {
    Settings {
        sessions: SessionSettings {
            heartbeat: Duration::from_secs(1),
            first_update: Duration::from_secs(3),
            max_age: Duration::from_secs(300),
        },
        ..Settings::default()
    }
}

/// A control plane knowing `agent` (and `other`), two providers
/// (`primary`, `backup`) of the dialects given, and an egress service.
struct World {
    control_plane: FakeControlPlane,
    primary: FakeProvider,
    backup: FakeProvider,
    egress: Egress,
}

impl World {
    async fn start(primary: Speaks, backup: Speaks, settings: Settings) -> World {
        let control_plane = FakeControlPlane::start().await;
        control_plane.admit(TOKEN, NS, SESSION);
        control_plane.admit(OTHER_TOKEN, NS, "other");
        let primary = FakeProvider::start(primary, PRIMARY_KEY).await;
        let backup = FakeProvider::start(backup, BACKUP_KEY).await;
        let keys = StaticKeys::default()
            .with(NS, "primary", PRIMARY_KEY)
            .with(NS, "backup", BACKUP_KEY);
        let egress = Egress::start(&control_plane, keys, settings).await;
        World {
            control_plane,
            primary,
            backup,
            egress,
        }
    }

    /// Serves `agent` a policy with this chain and these patterns.
    fn policy(&self, chain: Vec<pb::ModelLink>, allow: &[&str], enforcement: &str) {
        self.policy_with(chain, allow, enforcement, |_| {});
    }

    fn policy_with(
        &self,
        chain: Vec<pb::ModelLink>,
        allow: &[&str],
        enforcement: &str,
        change: impl FnOnce(&mut pb::ModelPolicy),
    ) {
        let kind = |provider: &FakeProvider| match provider.speaks {
            Speaks::OpenAi => "openai-compatible",
            Speaks::Anthropic => "anthropic",
        };
        let mut models = pb::ModelPolicy {
            allow: allow.iter().map(|p| p.to_string()).collect(),
            chain,
            providers: vec![
                provider("primary", kind(&self.primary), &self.primary.base_url()),
                provider("backup", kind(&self.backup), &self.backup.base_url()),
            ],
            ..pb::ModelPolicy::default()
        };
        change(&mut models);
        self.control_plane
            .serve(context(NS, SESSION, enforcement, models));
    }

    async fn call(
        &self,
        dialect: Dialect,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<common::egress::Answer, tonic::Status> {
        let mut client = self.egress.client().await;
        let body = serde_json::to_vec(&body).unwrap();
        call(
            &mut client,
            request(Some(TOKEN), NS, SESSION, dialect, &body, headers),
        )
        .await
    }

    /// The model_call events recorded so far (and forgets them), each
    /// checked to hold no key.
    fn events(&self) -> Vec<AuditEvent> {
        let events = self.egress.audit.take();
        for event in &events {
            assert_eq!(event.event_type, EventType::ModelCall);
            let line = serde_json::to_string(event).unwrap();
            assert!(
                !line.contains(PRIMARY_KEY) && !line.contains(BACKUP_KEY),
                "a key in an audit line: {line}"
            );
        }
        events
    }
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

fn message(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn an_openai_provider_gets_its_key_streamed_and_not() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o-mini")],
        &["primary:*"],
        "enforce",
    );

    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o-mini", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["choices"][0]["message"]["content"], "hello");
    let outcome = answer.outcome();
    assert_eq!(
        (
            outcome.decision.as_str(),
            outcome.provider.as_str(),
            outcome.model.as_str()
        ),
        ("allowed", "primary", "gpt-4o-mini")
    );
    assert_eq!((outcome.input_tokens, outcome.output_tokens), (7, 5));
    assert!(!outcome.streamed);
    assert_eq!(outcome.enforcement, "enforce");
    assert_eq!(outcome.policy_hash, "hash-of-primary:*");
    let seen = world.primary.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {PRIMARY_KEY}")
    );
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(seen[0].body["messages"][0]["content"], "hi");

    let streamed = world
        .call(Dialect::OpenaiChat, chat("gpt-4o-mini", true), &[])
        .await
        .unwrap();
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.content_type, "text/event-stream");
    assert!(
        streamed.text().contains("\"content\":\"hel\""),
        "{}",
        streamed.text()
    );
    assert!(streamed.text().ends_with("data: [DONE]\n\n"));
    let outcome = streamed.outcome();
    assert!(outcome.streamed);
    assert_eq!((outcome.input_tokens, outcome.output_tokens), (7, 5));
    assert_eq!(
        world.primary.seen()[1].body["stream_options"]["include_usage"],
        true,
        "usage asked for, so the tokens are known"
    );

    let events = world.events();
    assert_eq!(events.len(), 2);
    let model = events[1].model.as_ref().unwrap();
    assert_eq!(
        (
            model.provider.as_str(),
            model.input_tokens,
            model.output_tokens
        ),
        ("primary", 7, 5)
    );
    assert!(model.streamed);
    assert_eq!(events[1].decision, Outcome::Allowed);
    assert_eq!(events[1].policy_hash.as_deref(), Some("hash-of-primary:*"));
}

#[tokio::test]
async fn an_anthropic_provider_gets_its_key_and_version_streamed_and_not() {
    let world = World::start(Speaks::Anthropic, Speaks::Anthropic, settings()).await;
    world.policy(vec![link("primary", "")], &["primary:claude-*"], "enforce");

    let answer = world
        .call(
            Dialect::AnthropicMessages,
            message("claude-haiku", false),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json()["content"][0]["text"], "hello");
    assert_eq!(answer.outcome().model, "claude-haiku");
    assert_eq!(
        (
            answer.outcome().input_tokens,
            answer.outcome().output_tokens
        ),
        (11, 3)
    );
    let streamed = world
        .call(
            Dialect::AnthropicMessages,
            message("claude-haiku", true),
            &[
                ("anthropic-version", "2023-01-01"),
                ("anthropic-beta", "tools-2024"),
            ],
        )
        .await
        .unwrap();
    assert!(
        streamed.text().contains("event: message_stop"),
        "{}",
        streamed.text()
    );
    assert_eq!(
        (
            streamed.outcome().input_tokens,
            streamed.outcome().output_tokens
        ),
        (11, 3)
    );

    let seen = world.primary.seen();
    assert_eq!(seen[0].headers["x-api-key"], PRIMARY_KEY);
    assert_eq!(
        seen[0].headers["anthropic-version"], "2023-06-01",
        "the default"
    );
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(
        seen[1].headers["anthropic-version"], "2023-01-01",
        "the agent's"
    );
    assert_eq!(seen[1].headers["anthropic-beta"], "tools-2024");
    assert_eq!(world.events().len(), 2);
}

#[tokio::test]
async fn a_rate_limited_primary_is_not_called_during_its_retry_after() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "gpt-4o-mini")],
        &["*"],
        "enforce",
    );
    world.primary.behave(Behaviour::Fail {
        status: 429,
        retry_after: Some("60".into()),
    });

    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let outcome = answer.outcome();
    assert_eq!(
        (outcome.provider.as_str(), outcome.model.as_str()),
        ("backup", "gpt-4o-mini")
    );
    assert_eq!(outcome.fallback, ["primary:gpt-4o (HTTP 429)"]);
    let backup = world.backup.seen();
    assert_eq!(
        backup[0].headers["authorization"],
        format!("Bearer {BACKUP_KEY}")
    );
    assert_eq!(backup[0].body["model"], "gpt-4o-mini");

    let again = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(
        world.primary.seen().len(),
        1,
        "not called during retry-after"
    );
    assert!(
        again.outcome().fallback[0].starts_with("primary:gpt-4o (rate limited until "),
        "{:?}",
        again.outcome().fallback
    );
    let events = world.events();
    assert_eq!(events[1].model.as_ref().unwrap().provider, "backup");
    assert_eq!(events[1].model.as_ref().unwrap().fallback.len(), 1);
}

/// The `data:` payloads of an OpenAI stream, `[DONE]` last.
fn openai_chunks(stream: &str) -> Vec<String> {
    stream
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_fallback_of_the_other_dialect_answers_in_the_agents_own() {
    let world = World::start(Speaks::OpenAi, Speaks::Anthropic, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "claude-haiku")],
        &["*"],
        "enforce",
    );
    world.primary.behave(Behaviour::Fail {
        status: 429,
        retry_after: Some("60".into()),
    });

    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.content_type, "application/json");
    let completion = answer.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], "gpt-4o", "the model the agent asked");
    assert_eq!(completion["choices"][0]["message"]["content"], "hello");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 11);
    let outcome = answer.outcome();
    assert_eq!(
        (outcome.provider.as_str(), outcome.model.as_str()),
        ("backup", "claude-haiku")
    );
    assert_eq!(
        (outcome.input_tokens, outcome.output_tokens),
        (11, 3),
        "the Anthropic usage"
    );
    assert_eq!(outcome.fallback, ["primary:gpt-4o (HTTP 429)"]);
    let seen = world.backup.seen();
    assert_eq!(seen[0].path, "/v1/messages");
    assert_eq!(seen[0].headers["x-api-key"], BACKUP_KEY);
    assert!(!seen[0].headers.contains_key("authorization"));
    assert_eq!(seen[0].body["model"], "claude-haiku");
    assert!(
        seen[0].body["max_tokens"].as_u64().is_some(),
        "Anthropic requires it"
    );
    assert_eq!(
        seen[0].body["messages"],
        json!([{"role": "user", "content": "hi"}])
    );
    assert!(seen[0].body.get("stream_options").is_none());

    let streamed = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", true), &[])
        .await
        .unwrap();
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    assert_eq!(streamed.content_type, "text/event-stream");
    let chunks = openai_chunks(&streamed.text());
    assert_eq!(
        chunks.last().map(String::as_str),
        Some("[DONE]"),
        "{chunks:?}"
    );
    let chunks: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|chunk| chunk["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "hello");
    let outcome = streamed.outcome();
    assert!(outcome.streamed);
    assert_eq!(outcome.provider, "backup");
    assert_eq!((outcome.input_tokens, outcome.output_tokens), (11, 3));
    assert!(
        outcome.fallback[0].starts_with("primary:gpt-4o (rate limited until "),
        "{:?}",
        outcome.fallback
    );
    let seen = world.backup.seen();
    assert_eq!(seen[1].headers["x-api-key"], BACKUP_KEY);
    assert_eq!(seen[1].body["stream"], true);
    assert_eq!(
        world.primary.seen().len(),
        1,
        "not called during retry-after"
    );
    let events = world.events();
    assert_eq!(events.len(), 2);
    let model = events[0].model.as_ref().unwrap();
    assert_eq!(
        (model.provider.as_str(), model.input_tokens),
        ("backup", 11)
    );
}

#[tokio::test]
async fn an_anthropic_agent_falls_back_to_an_openai_provider_in_its_own_dialect() {
    let world = World::start(Speaks::Anthropic, Speaks::OpenAi, settings()).await;
    world.policy(
        vec![
            link("primary", "claude-haiku"),
            link("backup", "gpt-4o-mini"),
        ],
        &["*"],
        "enforce",
    );
    world.primary.behave(Behaviour::Fail {
        status: 529,
        retry_after: None,
    });
    let answer = world
        .call(
            Dialect::AnthropicMessages,
            message("claude-haiku", false),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let reply = answer.json();
    assert_eq!(reply["type"], "message");
    assert_eq!(reply["role"], "assistant");
    assert_eq!(reply["content"][0]["text"], "hello");
    assert_eq!(reply["stop_reason"], "end_turn");
    assert_eq!(reply["usage"]["input_tokens"], 7);
    let outcome = answer.outcome();
    assert_eq!(outcome.provider, "backup");
    assert_eq!((outcome.input_tokens, outcome.output_tokens), (7, 5));
    assert_eq!(outcome.fallback, ["primary:claude-haiku (HTTP 529)"]);
    let seen = world.backup.seen();
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {BACKUP_KEY}")
    );
    assert_eq!(seen[0].body["model"], "gpt-4o-mini");
    assert_eq!(seen[0].body["messages"][0]["role"], "user");
    world.events();
}

#[tokio::test]
async fn a_feature_the_other_dialect_lacks_is_refused_naming_it() {
    let world = World::start(Speaks::OpenAi, Speaks::Anthropic, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "claude-haiku")],
        &["*"],
        "enforce",
    );
    let mut two = chat("gpt-4o", false);
    two["n"] = json!(2);

    let served = world
        .call(Dialect::OpenaiChat, two.clone(), &[])
        .await
        .unwrap();
    assert_eq!(
        served.status,
        200,
        "the same dialect serves it: {}",
        served.text()
    );
    assert_eq!(world.primary.seen()[0].body["n"], 2);

    world.primary.behave(Behaviour::Fail {
        status: 500,
        retry_after: None,
    });
    let refused = world.call(Dialect::OpenaiChat, two, &[]).await.unwrap();
    assert_eq!(refused.status, 400, "{}", refused.text());
    let error = refused.json();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("backup:claude-haiku") && message.contains("n > 1"),
        "names the link and the feature: {message}"
    );
    assert!(world.backup.seen().is_empty(), "the link is not tried");
    let outcome = refused.outcome();
    assert_eq!(outcome.decision, "denied");
    assert_eq!(outcome.fallback, ["primary:gpt-4o (HTTP 500)"]);
    world.events();
}

#[tokio::test]
async fn a_failing_or_hanging_primary_falls_back() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "gpt-4o-mini")],
        &["*"],
        "enforce",
    );
    world.primary.behave(Behaviour::Fail {
        status: 500,
        retry_after: None,
    });
    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", true), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.outcome().provider, "backup");
    assert_eq!(answer.outcome().fallback, ["primary:gpt-4o (HTTP 500)"]);

    world.primary.behave(Behaviour::Hang);
    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.outcome().provider, "backup");
    assert_eq!(
        answer.outcome().fallback,
        ["primary:gpt-4o (no answer within 1s)"]
    );
    assert_eq!(world.primary.seen().len(), 2, "a 500 sets no retry-after");
}

#[tokio::test]
async fn a_link_the_policy_forbids_is_skipped_and_a_model_outside_the_patterns_refused() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "gpt-4o-mini")],
        &["backup:*"],
        "enforce",
    );
    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.outcome().fallback,
        ["primary:gpt-4o (not allowed by the policy)"]
    );
    assert!(
        world.primary.seen().is_empty(),
        "a forbidden link is never called"
    );

    world.policy(vec![link("primary", "")], &["primary:*mini*"], "enforce");
    let refused = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        refused.json()["error"]["message"],
        "model \"gpt-4o\" is not allowed for this session by its policy"
    );
    assert_eq!(refused.outcome().decision, "denied");
    assert!(world.primary.seen().is_empty());

    world.policy(vec![link("primary", "")], &["primary:*mini*"], "warn");
    let warned = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(warned.status, 200, "warn mode lets it through");
    assert_eq!(warned.outcome().decision, "would_deny");
    assert_eq!(warned.outcome().enforcement, "warn");
    let events = world.events();
    assert_eq!(events.last().unwrap().decision, Outcome::WouldDeny);
}

#[tokio::test]
async fn a_spent_budget_and_too_many_tokens_are_refused() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy_with(
        vec![link("primary", "gpt-4o")],
        &["*"],
        "enforce",
        |models| {
            models.tokens_per_minute = 10;
            models.max_tokens_per_request = 100;
        },
    );
    let first = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(
        world.primary.seen()[0].body["max_tokens"],
        100,
        "given the limit"
    );

    let spent = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(spent.status, 429, "{}", spent.text());
    let seconds: u64 = spent.headers["retry-after"].parse().unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    let message = spent.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with("token budget spent: 10 tokens per minute; it resets at "),
        "{message}"
    );
    assert_eq!(
        world.primary.seen().len(),
        1,
        "a spent budget calls no provider"
    );

    let mut asking = chat("gpt-4o", false);
    asking["max_tokens"] = json!(1000);
    let over = world.call(Dialect::OpenaiChat, asking, &[]).await.unwrap();
    assert_eq!(over.status, 400);
    assert_eq!(
        over.json()["error"]["message"],
        "max_tokens 1000 exceeds this session's limit of 100 tokens per request"
    );
    let events = world.events();
    assert_eq!(
        events
            .iter()
            .map(|event| event.decision)
            .collect::<Vec<_>>(),
        [Outcome::Allowed, Outcome::Denied, Outcome::Denied]
    );
}

#[tokio::test]
async fn a_revoked_grant_refuses_the_next_call() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "gpt-4o")], &["primary:*"], "enforce");
    let allowed = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(allowed.status, 200);

    // The grant that allowed the model is revoked: the control plane
    // pushes the narrower policy on the open watch.
    world.policy(vec![link("primary", "gpt-4o")], &[], "enforce");
    let revoked = tokio::time::Instant::now();
    let refused = loop {
        let answer = world
            .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
            .await
            .unwrap();
        if answer.status != 200 {
            break answer;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "still allowed after 2 s"
        );
    };
    assert_eq!(refused.status, 403);
    assert_eq!(refused.outcome().policy_hash, "hash-of-");
    assert_eq!(
        world.control_plane.watches(),
        1,
        "the session's calls share one watch"
    );
}

#[tokio::test]
async fn wrong_missing_and_foreign_tokens_are_refused_and_audited() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "gpt-4o")], &["*"], "enforce");
    let body = serde_json::to_vec(&chat("gpt-4o", false)).unwrap();
    let mut client = world.egress.client().await;
    let refused = |token: Option<&'static str>| {
        let request = request(token, NS, SESSION, Dialect::OpenaiChat, &body, &[]);
        let mut client = client.clone();
        async move { call(&mut client, request).await.unwrap_err() }
    };
    let missing = refused(None).await;
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(
        world.control_plane.watches(),
        0,
        "nothing asked without a token"
    );
    let wrong = refused(Some("not-a-token")).await;
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let foreign = refused(Some(OTHER_TOKEN)).await;
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    assert!(
        foreign.message().contains("not of team-a/agent"),
        "{foreign:?}"
    );
    let malformed = {
        let mut request = request(None, NS, SESSION, Dialect::OpenaiChat, &body, &[]);
        request
            .metadata_mut()
            .insert("authorization", "Basic abc".parse().unwrap());
        call(&mut client, request).await.unwrap_err()
    };
    assert_eq!(malformed.code(), Code::Unauthenticated);
    assert!(world.primary.seen().is_empty());

    let events = world.events();
    assert_eq!(events.len(), 4);
    for event in &events {
        assert_eq!(
            (event.namespace.as_str(), event.session.as_str()),
            (NS, SESSION)
        );
        assert_eq!(event.decision, Outcome::Denied);
    }
    assert!(
        events[2].reason.contains("PermissionDenied"),
        "{}",
        events[2].reason
    );
}

#[tokio::test]
async fn bad_requests_get_precise_errors_in_the_agents_dialect() {
    let world = World::start(
        Speaks::OpenAi,
        Speaks::Anthropic,
        Settings {
            max_body: 4096,
            ..settings()
        },
    )
    .await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "claude-haiku")],
        &["primary:gpt-*", "backup:claude-haiku"],
        "enforce",
    );
    let mut client = world.egress.client().await;
    let malformed = call(
        &mut client,
        request(
            Some(TOKEN),
            NS,
            SESSION,
            Dialect::OpenaiChat,
            b"{\"model\":",
            &[],
        ),
    )
    .await
    .unwrap();
    assert_eq!(malformed.status, 400);
    let error = malformed.json();
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed request: the request body is not valid JSON"),
        "{error}"
    );

    let unknown = world
        .call(
            Dialect::AnthropicMessages,
            message("claude-opus", false),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let error = unknown.json();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "not_found_error");
    assert_eq!(
        error["error"]["message"],
        "model \"claude-opus\" is not available to this session; available: gpt-4o, claude-haiku"
    );

    let mut big = message("claude-haiku", false);
    big["messages"][0]["content"] = json!("x".repeat(5000));
    let too_big = world
        .call(Dialect::AnthropicMessages, big, &[])
        .await
        .unwrap();
    assert_eq!(too_big.status, 413);
    assert_eq!(too_big.json()["error"]["type"], "request_too_large");

    let no_max_tokens = world
        .call(
            Dialect::AnthropicMessages,
            json!({"model": "claude-haiku", "messages": []}),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(no_max_tokens.status, 400);
    assert_eq!(
        no_max_tokens.json()["error"]["message"],
        "malformed request: `max_tokens` is required"
    );
    assert!(world.primary.seen().is_empty() && world.backup.seen().is_empty());
    let events = world.events();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|event| event.decision == Outcome::Denied));
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_stream_cancels_the_provider_request() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "gpt-4o")], &["*"], "enforce");
    world.primary.behave(Behaviour::Stall);
    let mut client = world.egress.client().await;
    let body = serde_json::to_vec(&chat("gpt-4o", true)).unwrap();
    let mut replies = client
        .call(request(
            Some(TOKEN),
            NS,
            SESSION,
            Dialect::OpenaiChat,
            &body,
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    let head = replies.message().await.unwrap().unwrap();
    assert!(matches!(head.reply, Some(pb::model_reply::Reply::Head(_))));
    let first = replies.message().await.unwrap().unwrap();
    assert!(matches!(
        first.reply,
        Some(pb::model_reply::Reply::Chunk(_))
    ));
    assert_eq!(world.primary.streams_dropped(), 0);
    drop(replies);
    drop(client);
    let gone = tokio::time::Instant::now();
    while world.primary.streams_dropped() == 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "the provider's stream is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = loop {
        let events = world.events();
        if !events.is_empty() {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        events[0].reason.starts_with("the caller went away"),
        "{}",
        events[0].reason
    );
}

#[tokio::test]
async fn a_stale_or_unavailable_policy_is_refused() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "gpt-4o")], &["*"], "enforce");
    assert_eq!(
        world
            .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
            .await
            .unwrap()
            .status,
        200
    );
    world.control_plane.fall_silent(true);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let stale = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap_err();
    // The stale watch is dropped and a new one opened, which the hung
    // control plane does not answer either.
    assert_eq!(stale.code(), Code::Unavailable, "{stale:?}");
    assert_eq!(
        stale.message(),
        "the control plane served no policy for team-a/agent within 3s"
    );
    assert_eq!(world.control_plane.watches(), 2, "verified anew");
    world.control_plane.fall_silent(false);

    world
        .control_plane
        .unavailable(NS, SESSION, "the Session is gone");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    assert!(gone.message().contains("the Session is gone"), "{gone:?}");
    assert_eq!(world.primary.seen().len(), 1);
}

#[tokio::test]
async fn list_models_names_the_links_that_name_a_model() {
    let world = World::start(Speaks::OpenAi, Speaks::Anthropic, settings()).await;
    world.policy(
        vec![link("primary", "gpt-4o"), link("backup", "")],
        &["*"],
        "enforce",
    );
    let mut client = world.egress.client().await;
    let mut list = tonic::Request::new(pb::ListModelsRequest {
        namespace: NS.into(),
        session: SESSION.into(),
    });
    list.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let models = client.list_models(list).await.unwrap().into_inner().models;
    assert_eq!(models, [link("primary", "gpt-4o")]);
}

#[tokio::test]
async fn keys_are_read_from_secrets_by_name_only_and_never_shown() {
    use common::fake_api::FakeApi;
    use secrecy::ExposeSecret;
    use wopr_operator::egress::credentials::{CredentialError, Credentials, KubeSecrets};

    let (client, api) = FakeApi::start();
    api.insert(
        "/api/v1/namespaces/team-a/secrets/openai-key",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "openai-key", "namespace": NS},
            "data": {"apiKey": "c2stc2VjcmV0LWtleQ=="}
        }),
    );
    let secrets = KubeSecrets::new(client);
    let key = secrets.key(NS, "openai-key", "apiKey").await.unwrap();
    assert_eq!(key.expose_secret(), "sk-secret-key");
    assert!(
        !format!("{key:?}").contains("sk-secret-key"),
        "Debug hides the key"
    );
    // Read again within the cache's time: no second request.
    secrets.key(NS, "openai-key", "apiKey").await.unwrap();
    let missing_key = secrets.key(NS, "openai-key", "other").await.unwrap_err();
    assert!(
        matches!(missing_key, CredentialError::Key { .. }),
        "{missing_key}"
    );
    let missing = secrets.key(NS, "absent", "apiKey").await.unwrap_err();
    assert!(
        matches!(missing, CredentialError::Secret { .. }),
        "{missing}"
    );
    let requests: Vec<String> = api.take_requests().iter().map(|r| r.line()).collect();
    assert_eq!(
        requests,
        [
            "GET /api/v1/namespaces/team-a/secrets/openai-key",
            "GET /api/v1/namespaces/team-a/secrets/absent",
        ],
        "one get by name per Secret, never a list or a watch"
    );
}

#[tokio::test]
async fn calls_tokens_and_latency_are_counted_per_provider_and_decision() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "")], &["primary:gpt-*"], "enforce");
    world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    world
        .call(Dialect::OpenaiChat, chat("o3", false), &[])
        .await
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    world.egress.metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "wopr_model_calls_total{provider=\"primary\",decision=\"allowed\"} 1",
        "wopr_model_calls_total{provider=\"primary\",decision=\"denied\"} 1",
        "wopr_model_tokens_total{provider=\"primary\",direction=\"input\"} 7",
        "wopr_model_tokens_total{provider=\"primary\",direction=\"output\"} 5",
        "wopr_model_call_seconds_count{provider=\"primary\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test]
async fn a_new_token_takes_over_the_sessions_watch_and_a_refused_one_changes_nothing() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy(vec![link("primary", "gpt-4o")], &["*"], "enforce");
    world
        .control_plane
        .admit("rotated-token-of-agent", NS, SESSION);
    let body = serde_json::to_vec(&chat("gpt-4o", false)).unwrap();
    let mut client = world.egress.client().await;
    let mut status_with = async |token: &str| {
        call(
            &mut client,
            request(Some(token), NS, SESSION, Dialect::OpenaiChat, &body, &[]),
        )
        .await
        .map(|answer| answer.status)
        .map_err(|status| status.code())
    };
    assert_eq!(status_with(TOKEN).await, Ok(200));
    assert_eq!(status_with(TOKEN).await, Ok(200));
    assert_eq!(
        world.control_plane.watches(),
        1,
        "one watch for the session's calls"
    );
    assert_eq!(status_with(OTHER_TOKEN).await, Err(Code::PermissionDenied));
    assert_eq!(status_with(TOKEN).await, Ok(200));
    assert_eq!(
        world.control_plane.watches(),
        1,
        "a refused token evicts nothing"
    );
    assert_eq!(status_with("rotated-token-of-agent").await, Ok(200));
    assert_eq!(status_with("rotated-token-of-agent").await, Ok(200));
    assert_eq!(
        world.control_plane.watches(),
        2,
        "the new token's watch serves on"
    );
}

#[tokio::test]
async fn a_link_without_its_secret_is_skipped_and_a_providers_error_never_shows_the_key() {
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, settings()).await;
    world.policy_with(
        vec![link("primary", "gpt-4o"), link("backup", "gpt-4o-mini")],
        &["*"],
        "enforce",
        |models| models.providers[0].secret_name = "absent".into(),
    );
    let answer = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.outcome().fallback,
        ["primary:gpt-4o (Secret team-a/absent cannot be read: not found)"]
    );
    assert!(world.primary.seen().is_empty());

    world.backup.behave(Behaviour::EchoKey);
    let refused = world
        .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
        .await
        .unwrap();
    assert_eq!(
        refused.status, 400,
        "the provider's refusal reaches the agent"
    );
    assert_eq!(
        refused.json()["error"]["message"],
        "bad request with key [REDACTED]"
    );
    assert!(!refused.text().contains(BACKUP_KEY));
    assert_eq!(
        refused.outcome().reason,
        "backup:gpt-4o-mini answered HTTP 400"
    );
    world.events();
}

/// `wopr-operator egress` as a process: its flags, its TLS from files, the
/// key read from the Secret through the API server, the audit line on its
/// stdout, its metrics on the admin port, and its exit on SIGTERM.
#[tokio::test]
async fn the_egress_process_serves_calls_with_keys_from_secrets() {
    use common::fake_api::FakeApi;
    use common::process::{Process, free_port};

    let control_plane = FakeControlPlane::start().await;
    control_plane.admit(TOKEN, NS, SESSION);
    let provider_server = FakeProvider::start(Speaks::OpenAi, "sk-from-the-secret").await;
    let mut models = pb::ModelPolicy {
        allow: vec!["*".into()],
        chain: vec![link("openai", "gpt-4o")],
        providers: vec![provider("openai", "openai", &provider_server.base_url())],
        ..pb::ModelPolicy::default()
    };
    models.providers[0].secret_name = "openai-credentials".into();
    control_plane.serve(context(NS, SESSION, "enforce", models));
    let api = FakeApi::default();
    api.insert(
        "/api/v1/namespaces/team-a/secrets/openai-credentials",
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "openai-credentials", "namespace": NS},
            "data": {"apiKey": "c2stZnJvbS10aGUtc2VjcmV0"}
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = FakeApi::kubeconfig(dir.path(), api.serve_http().await);
    let (port, admin_port) = (free_port(), free_port());
    let pki = common::tls::pki();
    let mut egress = Process::start(
        "egress",
        &[
            "egress".to_owned(),
            format!("--listen=127.0.0.1:{port}"),
            format!("--admin-address=127.0.0.1:{admin_port}"),
            format!("--control-plane-address={}", control_plane.address),
            format!("--control-plane-ca={}", pki.ca_file.display()),
            format!("--tls-cert-file={}", pki.cert_file.display()),
            format!("--tls-key-file={}", pki.key_file.display()),
            "--shutdown-drain-seconds=1".to_owned(),
        ],
        &[("KUBECONFIG", kubeconfig.display().to_string())],
    );
    egress
        .wait_for("egress service starting", 1, Duration::from_secs(30))
        .await;

    let mut client = pb::models_client::ModelsClient::new(
        common::tls::channel(format!("127.0.0.1:{port}")).await,
    );
    let body = serde_json::to_vec(&chat("gpt-4o", false)).unwrap();
    let answer = call(
        &mut client,
        request(Some(TOKEN), NS, SESSION, Dialect::OpenaiChat, &body, &[]),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(
        provider_server.seen()[0].headers["authorization"],
        "Bearer sk-from-the-secret"
    );

    let line = egress
        .wait_for_stdout(|line| line.contains("model_call"))
        .await;
    let event: AuditEvent = serde_json::from_str(&line).unwrap();
    assert_eq!(event.decision, Outcome::Allowed);
    assert_eq!(event.model.unwrap().input_tokens, 7);
    assert!(!line.contains("sk-from-the-secret"));
    let metrics = http_get(&format!("127.0.0.1:{admin_port}"), "/metrics").await;
    assert!(
        metrics.contains("wopr_model_calls_total{provider=\"openai\",decision=\"allowed\"} 1"),
        "{metrics}"
    );
    egress.signal(libc::SIGTERM);
    assert!(
        egress
            .exited_within(Duration::from_secs(10))
            .await
            .is_some(),
        "it stops on SIGTERM"
    );
    for line in egress.stderr() {
        assert!(
            !line.contains("sk-from-the-secret"),
            "the key in a log: {line}"
        );
    }
}

/// The body of a plain HTTP/1.0 GET of `path` at `address`.
async fn http_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    connection
        .write_all(format!("GET {path} HTTP/1.0\r\nhost: {address}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    connection.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn a_sessions_watch_is_verified_anew_past_its_age() {
    let mut quick = settings();
    quick.sessions.max_age = Duration::from_millis(500);
    let world = World::start(Speaks::OpenAi, Speaks::OpenAi, quick).await;
    world.policy(vec![link("primary", "gpt-4o")], &["*"], "enforce");
    let ok = async || {
        world
            .call(Dialect::OpenaiChat, chat("gpt-4o", false), &[])
            .await
            .unwrap()
            .status
    };
    assert_eq!(ok().await, 200);
    assert_eq!(ok().await, 200);
    assert_eq!(world.control_plane.watches(), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(ok().await, 200);
    assert_eq!(
        world.control_plane.watches(),
        2,
        "the token was checked again"
    );
}
