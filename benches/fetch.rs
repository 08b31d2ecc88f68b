//! Benchmark of `http_fetch` (issue 26): what the sidecar and the egress
//! service add to a fetch, measured in one run against fetching the same
//! local server directly, so that the noisy shared cores move both alike.
//!
//! Run: `cargo bench --bench fetch`. Criterion rows:
//! - `http_fetch/direct`: a GET of a 5-byte page on 127.0.0.2 with an
//!   HTTP client reusing its connection.
//! - `http_fetch/through_sidecar_and_egress`: the same page as an agent
//!   fetches it: a `CallTool` on the sidecar's unix socket, the egress
//!   service's decision, resolution-free guard check of the literal
//!   address, a new connection to it, the reply and the audit event.
//!   Added latency = the difference of the medians. Target: ≤ 1 ms p50.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

#[path = "../tests/common/mod.rs"]
mod common;

use common::stack::FetchingAgent;
use wopr_operator::proto::v1alpha1::CallToolRequest;

const SESSION: &str = "bench";

/// The session's sidecar, the egress service, and the page's URL.
struct Setup {
    agent: FetchingAgent,
    url: String,
}

async fn setup() -> Setup {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let url = format!("http://{}/hello", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "hello" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let agent = FetchingAgent::start(SESSION, &["127.0.0.2"]).await;
    Setup { agent, url }
}

fn benches(c: &mut Criterion) {
    let _ = wopr_operator::tls::server::provider().install_default();
    let runtime = Runtime::new().unwrap();
    let setup = runtime.block_on(setup());
    let client = reqwest::Client::new();
    let mut tools = runtime.block_on(setup.agent.sidecar.tools());
    let request = CallToolRequest {
        name: "http_fetch".into(),
        arguments_json: json!({ "url": setup.url }).to_string(),
    };
    // Once, to see it works (and to open the sidecar's egress channel).
    let first = runtime.block_on(tools.call_tool(request.clone())).unwrap();
    assert!(first.into_inner().result_json.contains("\"hello\""));

    let mut group = c.benchmark_group("http_fetch");
    group.bench_function("direct", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let page = client.get(&setup.url).send().await.unwrap();
                assert_eq!(page.bytes().await.unwrap().as_ref(), b"hello");
            })
        })
    });
    group.bench_function("through_sidecar_and_egress", |b| {
        b.iter(|| runtime.block_on(tools.call_tool(request.clone())).unwrap())
    });
    group.finish();
    // The sidecar audits every call in memory: drop what piled up.
    setup.agent.sidecar.audit.take();
}

criterion_group! {
    name = fetch;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = benches
}
criterion_main!(fetch);
