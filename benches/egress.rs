//! Benchmarks of the model path (issue 25): what the sidecar's proxy and
//! the egress service add to a model call, measured in one run against
//! calling the (fake, loopback) provider directly with the same HTTP
//! client, so that the noisy shared cores move both alike.
//!
//! Run: `cargo bench --bench egress`. Criterion rows:
//! - `model_call/direct` and `model_call/through_sidecar_and_egress`: one
//!   non-streamed chat completion. Added latency = the difference of the
//!   medians. Target: ≤ 1 ms p50 added.
//! - `model_stream/{direct,proxied}/{1,1000}`: a streamed completion of 1
//!   and of 1,000 chunks. Added per chunk = ((proxied 1000 − direct 1000) −
//!   (proxied 1 − direct 1)) / 999. Target: ≤ 50 µs.
//!
//! Then a report: 1,000 concurrent idle streams (the provider sends one
//! event and then nothing) through one egress service in this process, and
//! the resident memory they add, less what the same 1,000 streams cost
//! when opened to the provider directly (the client's and the provider's
//! share). Target: ≤ 64 KiB per idle stream.

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::json;
use tokio::runtime::Runtime;

#[path = "../tests/common/mod.rs"]
mod common;

use common::egress::{Behaviour, request};
use common::sidecar::token_for;
use common::stack::{OPENAI_KEY, Stack, policy};
use wopr_operator::proto::v1alpha1::Dialect;
use wopr_operator::proto::v1alpha1::models_client::ModelsClient;

const SESSION: &str = "bench";
const MODEL: &str = "gpt-4o-mini";
const IDLE_STREAMS: usize = 1_000;
/// Streams per gRPC channel (HTTP/2 servers cap concurrent streams per connection).
const STREAMS_PER_CHANNEL: usize = 100;

fn body(stream: bool) -> String {
    format!(
        r#"{{"model":"{MODEL}","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// One chat completion to `url`, read to its end.
async fn complete(client: &reqwest::Client, url: &str, stream: bool) {
    let response = client
        .post(url)
        .bearer_auth(OPENAI_KEY)
        .header("content-type", "application/json")
        .body(body(stream))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.bytes().await.unwrap();
}

fn benches(c: &mut Criterion) {
    // The benchmark's own HTTP client takes the process's one crypto
    // provider (the product's clients are built with it explicitly).
    let _ = wopr_operator::tls::server::provider().install_default();
    let runtime = Runtime::new().unwrap();
    let mut stack = runtime.block_on(Stack::start(SESSION, "openai", MODEL));
    // No token budget: thousands of calls a second would spend the
    // trusted level's per-minute one.
    let unlimited = policy(&stack.openai, &stack.anthropic, Some(unlimited()));
    stack.control_plane.put_policy(unlimited);
    let client = reqwest::Client::new();
    let direct = format!("{}/chat/completions", stack.openai.base_url());
    let proxied = format!("http://{}/v1/chat/completions", stack.sidecar.models);

    let mut group = c.benchmark_group("model_call");
    group.bench_function("direct", |b| {
        b.iter(|| runtime.block_on(complete(&client, &direct, false)))
    });
    group.bench_function("through_sidecar_and_egress", |b| {
        b.iter(|| runtime.block_on(complete(&client, &proxied, false)))
    });
    group.finish();

    let mut group = c.benchmark_group("model_stream");
    for chunks in [1, 1_000] {
        stack.openai.behave(Behaviour::Chunks(chunks));
        for (path, url) in [("direct", &direct), ("proxied", &proxied)] {
            group.bench_with_input(BenchmarkId::new(path, chunks), &chunks, |b, _| {
                b.iter(|| runtime.block_on(complete(&client, url, true)))
            });
        }
    }
    group.finish();

    runtime.block_on(revocation(&mut stack, &client, &proxied));
    runtime.block_on(idle_streams(&stack));
}

/// A SecurityPolicy edit that takes the session's models away → the first
/// model call refused, through the whole path (the control plane pushes the
/// new policy to the egress service's watch); p50 and max of 20.
async fn revocation(stack: &mut Stack, client: &reqwest::Client, proxied: &str) {
    stack.openai.behave(Behaviour::Answer);
    let status = |client: &reqwest::Client| {
        let request = client
            .post(proxied)
            .header("content-type", "application/json")
            .body(body(false))
            .send();
        async move { request.await.unwrap().status().as_u16() }
    };
    let mut took = Vec::new();
    for _ in 0..20 {
        let none = policy(&stack.openai, &stack.anthropic, Some(json!({"allow": []})));
        let started = Instant::now();
        stack.control_plane.put_policy(none);
        while status(client).await == 200 {}
        took.push(started.elapsed());
        stack
            .control_plane
            .put_policy(policy(&stack.openai, &stack.anthropic, Some(unlimited())));
        while status(client).await != 200 {}
    }
    took.sort();
    println!(
        "revocation: a policy edit taking the models away → the next call refused: p50 {:?}, max {:?} (20 rounds)",
        took[took.len() / 2],
        took[took.len() - 1]
    );
}

/// The trusted level's providers without budgets: any model, no limit.
fn unlimited() -> serde_json::Value {
    json!({"allow": ["*"], "maxTokensPerRequest": 0, "tokensPerMinute": 0, "tokensPerDay": 0})
}

/// Resident memory of this process, in bytes.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The memory 1,000 idle streams add through the egress service, less what
/// they add opened to the provider directly.
async fn idle_streams(stack: &Stack) {
    stack.openai.behave(Behaviour::Stall);
    let settle = || tokio::time::sleep(Duration::from_millis(500));

    settle().await;
    let before = resident();
    let client = reqwest::Client::new();
    let mut direct = Vec::new();
    for _ in 0..IDLE_STREAMS {
        let response = client
            .post(format!("{}/chat/completions", stack.openai.base_url()))
            .bearer_auth(OPENAI_KEY)
            .body(body(true))
            .send()
            .await
            .unwrap();
        direct.push(response);
    }
    settle().await;
    let direct_cost = resident().saturating_sub(before);
    drop(direct);
    settle().await;

    let before = resident();
    let mut channels = Vec::new();
    for _ in 0..IDLE_STREAMS.div_ceil(STREAMS_PER_CHANNEL) {
        channels.push(stack.egress.client().await);
    }
    let mut streams = Vec::new();
    for index in 0..IDLE_STREAMS {
        let mut client: ModelsClient<_> = channels[index / STREAMS_PER_CHANNEL].clone();
        let call = request(
            Some(&token_for(SESSION)),
            common::NAMESPACE,
            SESSION,
            Dialect::OpenaiChat,
            body(true).as_bytes(),
            &[],
        );
        let mut replies = client.call(call).await.unwrap().into_inner();
        // The head and the first event: the stream is open end to end.
        replies.message().await.unwrap();
        replies.message().await.unwrap();
        streams.push(replies);
    }
    settle().await;
    let egress_cost = resident().saturating_sub(before);
    let per_stream = egress_cost.saturating_sub(direct_cost) / IDLE_STREAMS as u64;
    println!(
        "idle streams: {IDLE_STREAMS} through the egress service add {} KiB, \
         {IDLE_STREAMS} to the provider directly {} KiB: {} KiB per stream for the egress service (target ≤ 64 KiB)",
        egress_cost / 1024,
        direct_cost / 1024,
        per_stream / 1024
    );
    drop(streams);
}

criterion_group! {
    name = egress;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(egress);
