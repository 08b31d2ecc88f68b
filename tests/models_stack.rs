//! The whole model path, nothing faked but the providers: the official
//! `openai` and `anthropic` Python SDKs, unmodified and pointed only by
//! their base-URL variables (and a placeholder key), call a real sidecar's
//! loopback proxy; the sidecar relays to a real egress service over TLS;
//! the egress service learns the session's policy from the real control
//! plane's Policy watch with the sidecar's own token, adds the key, and
//! calls a fake provider, which checks that the right key arrived. Whole
//! and streamed answers, tool calls included, and each call recorded in the
//! session's trail as a `model_call` with the provider's token counts.
//! (That the key is nowhere in the pod the controller builds is
//! `builders::no_container_of_the_pod_carries_a_provider_key`.)

mod common;

use common::sdk::python;
use common::stack::{ANTHROPIC_KEY, OPENAI_KEY, Stack};
use wopr_operator::audit::AuditEvent;
use wopr_operator::policy::Outcome;

/// Each event: allowed, from `provider:model`, with the fake's `tokens`.
fn assert_recorded(events: &[AuditEvent], provider: &str, model: &str, tokens: (u64, u64)) {
    assert_eq!(events.len(), 2, "{events:#?}");
    for (event, streamed) in events.iter().zip([false, true]) {
        assert_eq!(event.decision, Outcome::Allowed, "{event:#?}");
        let figures = event.model.as_ref().expect("the call's figures");
        assert_eq!(
            (figures.provider.as_str(), figures.model.as_str()),
            (provider, model)
        );
        assert_eq!((figures.input_tokens, figures.output_tokens), tokens);
        assert_eq!(figures.streamed, streamed);
        let line = serde_json::to_string(event).unwrap();
        assert!(!line.contains("Paris"), "no prompt in the trail: {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_openai_sdk_reaches_its_provider_with_the_key_it_never_held() {
    let model = "gpt-4o-mini";
    let stack = Stack::start("writer", "openai", model).await;
    let stdout = python("openai_client.py", "chat", stack.sidecar.models, model).await;
    for expected in [
        r#"whole: get_weather {"city": "Paris"} finish=tool_calls tokens=7+5"#,
        r#"streamed: get_weather {"city": "Paris"} text='Let me check.'"#,
        "openai sdk: ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    let seen = stack.openai.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for request in &seen {
        assert_eq!(
            request.headers.get("authorization"),
            Some(&format!("Bearer {OPENAI_KEY}")),
            "the egress service put the real key in"
        );
        assert_eq!(request.body["model"], model);
        assert_eq!(request.body["tools"][0]["function"]["name"], "get_weather");
    }
    assert!(stack.anthropic.seen().is_empty());
    assert_recorded(&stack.model_calls(2).await, "openai", model, (7, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_anthropic_sdk_reaches_its_provider_with_the_key_it_never_held() {
    let model = "claude-3-5-haiku-latest";
    let stack = Stack::start("poet", "anthropic", model).await;
    let stdout = python("anthropic_client.py", "chat", stack.sidecar.models, model).await;
    for expected in [
        r#"whole: get_weather {"city": "Paris"} stop=tool_use tokens=11+3"#,
        r#"streamed: get_weather {"city": "Paris"} text='Let me check.' stop=tool_use"#,
        "anthropic sdk: ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    let seen = stack.anthropic.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    for request in &seen {
        assert_eq!(
            request.headers.get("x-api-key"),
            Some(&ANTHROPIC_KEY.to_owned())
        );
        assert!(
            request
                .headers
                .get("authorization")
                .is_none_or(|value| !value.contains("wopr-no-key")),
            "the placeholder never reaches a provider: {:?}",
            request.headers
        );
        assert_eq!(request.body["model"], model);
    }
    assert!(stack.openai.seen().is_empty());
    assert_recorded(&stack.model_calls(2).await, "anthropic", model, (11, 3));
}
