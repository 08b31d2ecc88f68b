//! `http_fetch` through the egress service's SSRF guard (issue 26), with a
//! real egress service in process, called as a sidecar would (or as an
//! attacker holding a sidecar's token would, bypassing the sidecar's own
//! checks), a fake control plane serving the session's policy, a test
//! resolver, and local servers on 127.0.0.0/8 only: 127.0.0.2 is the
//! allowed web server (an `allowHosts` entry names it), 127.0.0.1 a trap
//! that counts every connection it gets. The last tests run the whole
//! path, agent to sidecar to egress service to a local server.

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tonic::Code;

use common::egress::{Egress, FakeControlPlane, StaticKeys};
use wopr_operator::audit::{EventType, FetchRecord};
use wopr_operator::egress::fetch::resolver::Resolver;
use wopr_operator::egress::fetch::{Fetcher, Settings as FetchSettings};
use wopr_operator::egress::service::Settings;
use wopr_operator::egress::upstream::system_roots;
use wopr_operator::policy::Outcome;
use wopr_operator::proto::v1alpha1 as pb;
use wopr_operator::proto::v1alpha1::{FetchCall, FetchReply, FetchResult};

const NS: &str = "team-a";
const SESSION: &str = "researcher";
const TOKEN: &str = "token-of-researcher";
/// The allowed server's address, named by `allowHosts`.
const ALLOWED: &str = "127.0.0.2";
/// The answers' limit in these tests.
const LIMIT: usize = 1024;

/// Answers each name with its scripted answers in turn (the last again
/// and again), counting the questions.
#[derive(Default)]
struct Scripted {
    answers: Mutex<HashMap<String, VecDeque<Vec<IpAddr>>>>,
    asked: AtomicUsize,
}

impl Scripted {
    fn answer(&self, name: &str, answers: &[&[&str]]) {
        let answers = answers
            .iter()
            .map(|addresses| addresses.iter().map(|a| a.parse().unwrap()).collect())
            .collect();
        self.answers.lock().unwrap().insert(name.into(), answers);
    }
}

impl Resolver for Scripted {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let mut answers = self.answers.lock().unwrap();
        let answer = match answers.get_mut(host) {
            Some(queue) if queue.len() > 1 => queue.pop_front(),
            Some(queue) => queue.front().cloned(),
            None => None,
        };
        Box::pin(async move {
            let addresses = answer
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))?;
            Ok(addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect())
        })
    }
}

/// The allowed web server on 127.0.0.2, and how many requests it got.
struct Web {
    address: SocketAddr,
    hits: Arc<AtomicUsize>,
}

/// A server on 127.0.0.1 that answers anything and counts connections.
struct Trap {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// A body of `count` chunks of `size` bytes, one every `every`.
fn dripping(count: usize, size: usize, every: Duration) -> Body {
    let chunks = futures::stream::unfold(0, move |sent| async move {
        if sent == count {
            return None;
        }
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(vec![b'a'; size]), sent + 1))
    });
    Body::from_stream(chunks)
}

fn redirect(location: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn echo(headers: HeaderMap) -> axum::Json<Value> {
    let seen: HashMap<String, String> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or("").to_owned()))
        .collect();
    axum::Json(json!(seen))
}

impl Web {
    fn serve(listener: TcpListener, trap: SocketAddr) -> Web {
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = Router::new()
            .route("/hello", get(|| async { "hello" }))
            .route("/echo", get(echo))
            .route(
                "/cookie",
                get(|| async { ([("set-cookie", "session=1"), ("x-kept", "yes")], "ok") }),
            )
            .route("/binary", get(|| async { vec![0xffu8, 0xfe, 0x00] }))
            .route("/big", get(|| async { vec![b'a'; 4 * LIMIT] }))
            .route(
                "/big-stream",
                get(|| async { dripping(8, LIMIT / 2, Duration::ZERO) }),
            )
            .route(
                "/drip",
                get(|| async { dripping(1000, 1, Duration::from_millis(100)) }),
            )
            .route(
                "/to-private",
                get(move || async move { redirect(format!("http://{trap}/")) }),
            )
            .route(
                "/to-file",
                get(|| async { redirect("file:///etc/passwd".into()) }),
            )
            .route(
                "/to-denied",
                get(|| async { redirect("http://blocked.test/".into()) }),
            )
            .route("/to-hello", get(|| async { redirect("/hello".into()) }))
            .route("/loop", get(|| async { redirect("/loop".into()) }))
            .layer(axum::middleware::from_fn(
                move |request: Request, next: Next| {
                    let counted = counted.clone();
                    async move {
                        counted.fetch_add(1, Ordering::SeqCst);
                        next.run(request).await
                    }
                },
            ));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Web { address, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Trap {
    fn serve(listener: TcpListener) -> Trap {
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = [0u8; 4096];
                    let _ = stream.read(&mut buffer).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ntrap")
                        .await;
                });
            }
        });
        Trap {
            address,
            connections,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The web server on 127.0.0.2 and the trap on 127.0.0.1, on one port
/// (so a rebound name would reach the trap at the port the URL names).
async fn servers() -> (Web, Trap) {
    for _ in 0..20 {
        let web = TcpListener::bind((ALLOWED, 0)).await.unwrap();
        let port = web.local_addr().unwrap().port();
        if let Ok(trap) = TcpListener::bind(("127.0.0.1", port)).await {
            let trap = Trap::serve(trap);
            return (Web::serve(web, trap.address), trap);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

/// A control plane serving the researcher's policy, the egress service
/// with the test resolver and limits, and the local servers.
struct World {
    control_plane: FakeControlPlane,
    egress: Egress,
    resolver: Arc<Scripted>,
    web: Web,
    trap: Trap,
}

impl World {
    async fn start() -> World {
        let control_plane = FakeControlPlane::start().await;
        control_plane.admit(TOKEN, NS, SESSION);
        control_plane.admit("token-of-other", NS, "other");
        let resolver = Arc::new(Scripted::default());
        let fetcher = Fetcher::new(
            FetchSettings {
                max_response_bytes: LIMIT,
                timeout: Duration::from_secs(1),
                deny_cidrs: vec!["44.0.0.0/8".parse().unwrap()],
            },
            resolver.clone(),
            system_roots(),
        )
        .unwrap();
        let egress = Egress::start_fetching(
            control_plane.target(),
            StaticKeys::default(),
            Settings::default(),
            fetcher,
        )
        .await;
        let (web, trap) = servers().await;
        let world = World {
            control_plane,
            egress,
            resolver,
            web,
            trap,
        };
        // Any host by name, and 127.0.0.2 by address: the only special
        // address the guard admits.
        world.policy(&["inject.network"], Some(&["*", ALLOWED]), &[], "enforce");
        world
    }

    /// Serves the researcher a policy with these capabilities and rules.
    fn policy(&self, capabilities: &[&str], allow: Option<&[&str]>, deny: &[&str], mode: &str) {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        self.control_plane.serve(pb::SecurityContext {
            namespace: NS.into(),
            session: SESSION.into(),
            trust_level: "semi-trusted".into(),
            network: "restricted".into(),
            enforcement: mode.into(),
            capabilities: strings(capabilities),
            tools: strings(&["http_fetch"]),
            policy_hash: format!("hash-{}-{mode}", capabilities.join(",")),
            rules: Some(pb::ArgumentRules {
                allow_hosts: allow.map(|entries| pb::Patterns {
                    entries: strings(entries),
                }),
                deny_hosts: strings(deny),
                ..pb::ArgumentRules::default()
            }),
            models: Some(pb::ModelPolicy::default()),
            ..pb::SecurityContext::default()
        });
    }

    async fn call(
        &self,
        token: Option<&str>,
        call: FetchCall,
    ) -> Result<FetchReply, tonic::Status> {
        let mut request = tonic::Request::new(call);
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let mut client = self.egress.fetch_client().await;
        client.fetch(request).await.map(tonic::Response::into_inner)
    }

    async fn fetch(&self, url: &str) -> FetchReply {
        self.call(Some(TOKEN), call_of(url)).await.unwrap()
    }
}

fn call_of(url: &str) -> FetchCall {
    FetchCall {
        namespace: NS.into(),
        session: SESSION.into(),
        url: url.into(),
        ..FetchCall::default()
    }
}

fn refused(reply: &FetchReply) -> &str {
    assert_eq!(reply.result(), FetchResult::Refused, "{reply:?}");
    assert_eq!(reply.decision, "denied");
    assert_eq!(reply.status, 0, "nothing was fetched");
    &reply.reason
}

fn failed(reply: &FetchReply) -> &str {
    assert_eq!(reply.result(), FetchResult::Failed, "{reply:?}");
    &reply.reason
}

#[tokio::test]
async fn an_allowed_host_is_fetched_from_the_address_checked() {
    let world = World::start().await;
    let reply = world.fetch(&world.web.url("/hello")).await;
    assert_eq!(reply.result(), FetchResult::Fetched, "{reply:?}");
    assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(reply.address, world.web.address.to_string());
    assert_eq!(reply.host, ALLOWED);
    assert_eq!(reply.decision, "allowed");
    // Redirects within the allowed host are followed, each hop judged.
    let redirected = world.fetch(&world.web.url("/to-hello")).await;
    assert_eq!(redirected.body, b"hello");
    assert_eq!(redirected.redirects, [world.web.url("/hello")]);
    assert_eq!(redirected.final_url, world.web.url("/hello"));
    // The egress service records the call itself too.
    let events = world.egress.audit.take();
    let event = events.last().unwrap();
    assert_eq!(event.event_type, EventType::ToolCall);
    assert_eq!(event.tool.as_deref(), Some("http_fetch"));
    assert_eq!(
        event.fetch,
        Some(FetchRecord {
            method: "GET".into(),
            host: ALLOWED.into(),
            address: Some(world.web.address.to_string()),
            status: Some(200),
            bytes: 5,
            redirects: 1,
        })
    );
}

/// Every form of a special address the URL parser accepts is judged as
/// the address it is, and refused before any connection.
#[tokio::test]
async fn special_addresses_in_every_spelling_are_refused_with_the_reason() {
    let world = World::start().await;
    let port = world.trap.address.port();
    let loopback = "SSRF guard: 127.0.0.1 is loopback (127.0.0.0/8)";
    let cases: Vec<(String, String)> = vec![
        (format!("http://127.0.0.1:{port}/"), loopback.into()),
        (format!("http://2130706433:{port}/"), loopback.into()),
        (format!("http://0177.0.0.1:{port}/"), loopback.into()),
        (format!("http://0x7f.1:{port}/"), loopback.into()),
        (format!("http://127.1:{port}/"), loopback.into()),
        (format!("http://0x7f000001:{port}/"), loopback.into()),
        (
            format!("http://[::1]:{port}/"),
            "SSRF guard: ::1 is loopback (::1/128)".into(),
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            "SSRF guard: ::ffff:127.0.0.1 is IPv4-mapped for 127.0.0.1, which is loopback (127.0.0.0/8)".into(),
        ),
        (
            format!("http://[64:ff9b::7f00:1]:{port}/"),
            "SSRF guard: 64:ff9b::7f00:1 is NAT64 for 127.0.0.1, which is loopback (127.0.0.0/8)".into(),
        ),
        (
            format!("http://[::127.0.0.1]:{port}/"),
            "SSRF guard: ::7f00:1 is IPv4-compatible for 127.0.0.1, which is loopback (127.0.0.0/8)".into(),
        ),
        (
            "http://10.0.0.1/".into(),
            "SSRF guard: 10.0.0.1 is private (RFC 1918) (10.0.0.0/8)".into(),
        ),
        (
            "http://172.16.0.1/".into(),
            "SSRF guard: 172.16.0.1 is private (RFC 1918) (172.16.0.0/12)".into(),
        ),
        (
            "http://192.168.1.1/".into(),
            "SSRF guard: 192.168.1.1 is private (RFC 1918) (192.168.0.0/16)".into(),
        ),
        (
            "http://100.64.0.1/".into(),
            "SSRF guard: 100.64.0.1 is shared address space (CGNAT, RFC 6598) (100.64.0.0/10)".into(),
        ),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "SSRF guard: 169.254.169.254 is a cloud metadata service".into(),
        ),
        (
            "http://[fd00:ec2::254]/".into(),
            "SSRF guard: fd00:ec2::254 is a cloud metadata service".into(),
        ),
        (
            "http://0.0.0.0/".into(),
            "SSRF guard: 0.0.0.0 is unspecified (this network) (0.0.0.0/8)".into(),
        ),
        (
            "http://[fe80::1]/".into(),
            "SSRF guard: fe80::1 is link-local (fe80::/10)".into(),
        ),
        (
            "http://[fc00::1]/".into(),
            "SSRF guard: fc00::1 is unique local (private) (fc00::/7)".into(),
        ),
        (
            "http://224.0.0.1/".into(),
            "SSRF guard: 224.0.0.1 is multicast (224.0.0.0/4)".into(),
        ),
        (
            "http://255.255.255.255/".into(),
            "SSRF guard: 255.255.255.255 is broadcast (255.255.255.255/32)".into(),
        ),
        (
            "http://[2002:7f00:1::]/".into(),
            "SSRF guard: 2002:7f00:1:: is 6to4 for 127.0.0.1, which is loopback (127.0.0.0/8)".into(),
        ),
    ];
    for (url, reason) in cases {
        let reply = world.fetch(&url).await;
        assert_eq!(refused(&reply), reason, "{url}");
    }
    assert_eq!(
        world.trap.connections(),
        0,
        "no refused address was dialled"
    );
}

#[tokio::test]
async fn names_resolving_to_a_refused_address_are_refused_naming_it() {
    let world = World::start().await;
    world.resolver.answer("internal.test", &[&["10.0.0.5"]]);
    world
        .resolver
        .answer("mixed.test", &[&["93.184.215.14", "10.0.0.5"]]);
    world
        .resolver
        .answer("localhost.test", &[&["127.0.0.1", "::1"]]);
    world.resolver.answer("svc.test", &[&["44.1.2.3"]]);
    for (url, reason) in [
        (
            "http://internal.test/",
            "SSRF guard: internal.test resolves to 10.0.0.5; 10.0.0.5 is private (RFC 1918) (10.0.0.0/8)",
        ),
        (
            "http://mixed.test/",
            "SSRF guard: mixed.test resolves to 93.184.215.14, 10.0.0.5; 10.0.0.5 is private (RFC 1918) (10.0.0.0/8)",
        ),
        (
            "http://localhost.test/",
            "SSRF guard: localhost.test resolves to 127.0.0.1, ::1; 127.0.0.1 is loopback (127.0.0.0/8)",
        ),
        (
            "http://svc.test/",
            "SSRF guard: svc.test resolves to 44.1.2.3; 44.1.2.3 is in the cluster's network 44.0.0.0/8 (--fetch-deny-cidr)",
        ),
    ] {
        assert_eq!(refused(&world.fetch(url).await), reason, "{url}");
    }
    let unknown = world.fetch("http://nowhere.test/").await;
    assert_eq!(
        failed(&unknown),
        "cannot resolve nowhere.test: no such name"
    );
}

/// The name is resolved once, and the address checked is the one dialled:
/// a second answer (the rebinding) is never asked for within a fetch.
#[tokio::test]
async fn a_dns_answer_that_changes_after_the_check_cannot_switch_the_connection() {
    let world = World::start().await;
    world
        .resolver
        .answer("rebind.test", &[&[ALLOWED], &["127.0.0.1"]]);
    let port = world.web.address.port();
    let reply = world
        .fetch(&format!("http://rebind.test:{port}/hello"))
        .await;
    assert_eq!(reply.result(), FetchResult::Fetched, "{reply:?}");
    assert_eq!(reply.body, b"hello");
    assert_eq!(reply.address, world.web.address.to_string());
    assert_eq!(world.web.hits(), 1);
    assert_eq!(world.trap.connections(), 0, "the trap got no connection");
    assert_eq!(world.resolver.asked.load(Ordering::SeqCst), 1);
    // The next fetch resolves anew, gets the rebound answer, and is refused.
    let rebound = world
        .fetch(&format!("http://rebind.test:{port}/hello"))
        .await;
    assert_eq!(
        refused(&rebound),
        "SSRF guard: rebind.test resolves to 127.0.0.1; 127.0.0.1 is loopback (127.0.0.0/8)"
    );
    assert_eq!(world.trap.connections(), 0);
}

#[tokio::test]
async fn every_redirect_hop_is_judged_like_the_first_url() {
    let world = World::start().await;
    world.policy(
        &["inject.network"],
        Some(&["*", ALLOWED]),
        &["blocked.test"],
        "enforce",
    );
    let trap = world.trap.address;
    for (path, reason) in [
        (
            "/to-private",
            format!("redirect 1 to http://{trap}/: SSRF guard: 127.0.0.1 is loopback (127.0.0.0/8)"),
        ),
        (
            "/to-file",
            "redirect 1 to file:///etc/passwd: URL scheme \"file\" refused: only http and https".into(),
        ),
        (
            "/to-denied",
            "redirect 1 to http://blocked.test/: refused by tools.rules.http_fetch.denyHosts: host blocked.test matches \"blocked.test\"".into(),
        ),
        (
            "/loop",
            format!("more than 5 redirects (the next to {})", world.web.url("/loop")),
        ),
    ] {
        let reply = world.fetch(&world.web.url(path)).await;
        assert_eq!(refused(&reply), reason, "{path}");
    }
    assert_eq!(world.trap.connections(), 0);
}

/// What the URL parser would take for a user is refused, not resolved
/// (`http://allowed@evil/` is a URL of `evil`).
#[tokio::test]
async fn urls_with_a_user_or_password_and_other_bad_input_are_refused_precisely() {
    let world = World::start().await;
    let web = world.web.address;
    let trap = world.trap.address;
    let long = format!("http://{web}/{}", "a".repeat(9000));
    let cases: Vec<(FetchCall, String)> = vec![
        (
            call_of(&format!("http://{web}@{trap}/")),
            "invalid arguments: URLs with a user or password are refused".into(),
        ),
        (
            call_of(&format!("http://user:pass@{web}/")),
            "invalid arguments: URLs with a user or password are refused".into(),
        ),
        (
            call_of("not a url"),
            "invalid arguments: invalid URL \"not a url\": relative URL without a base".into(),
        ),
        (
            call_of("file:///etc/passwd"),
            "invalid arguments: URL scheme \"file\" refused: only http and https".into(),
        ),
        (call_of(&long), "invalid arguments: URL longer than 8192 bytes".into()),
        (
            FetchCall {
                headers: [("x-a".to_owned(), "a\0b".to_owned())].into(),
                ..call_of(&world.web.url("/hello"))
            },
            "invalid arguments: header \"x-a\": a value has at most 8192 bytes and no CR, LF or NUL".into(),
        ),
        (
            FetchCall {
                method: "TRACE".into(),
                ..call_of(&world.web.url("/hello"))
            },
            "invalid arguments: method \"TRACE\" is not one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS".into(),
        ),
        (
            FetchCall {
                method: "POST".into(),
                body: "x".repeat(1024 * 1024 + 1),
                ..call_of(&world.web.url("/hello"))
            },
            "invalid arguments: body larger than 1048576 bytes".into(),
        ),
    ];
    for (call, message) in cases {
        let url = call.url.chars().take(60).collect::<String>();
        let status = world.call(Some(TOKEN), call).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{url}");
        assert_eq!(status.message(), message, "{url}");
    }
    assert_eq!(world.trap.connections(), 0);
    assert_eq!(world.web.hits(), 0);
}

#[tokio::test]
async fn an_oversized_or_slow_dripping_answer_is_cut_with_the_reason() {
    let world = World::start().await;
    let limit = format!(
        "the response body is over the limit of {LIMIT} bytes (--fetch-max-response-bytes): cut"
    );
    for path in ["/big", "/big-stream"] {
        let reply = world.fetch(&world.web.url(path)).await;
        assert_eq!(failed(&reply), limit, "{path}");
        assert!(reply.body.is_empty());
        assert_eq!(reply.address, world.web.address.to_string());
    }
    let started = std::time::Instant::now();
    let drip = world.fetch(&world.web.url("/drip")).await;
    assert_eq!(
        failed(&drip),
        "no complete answer within 1s (--fetch-timeout-seconds): cut"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn credentials_and_hop_by_hop_headers_are_stripped_both_ways() {
    let world = World::start().await;
    let headers: HashMap<String, String> = [
        ("authorization", "Bearer sk-secret"),
        ("cookie", "session=stolen"),
        ("proxy-authorization", "Basic eA=="),
        ("connection", "x-hop"),
        ("x-hop", "1"),
        ("host", "evil.test"),
        ("x-kept", "yes"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    let reply = world
        .call(
            Some(TOKEN),
            FetchCall {
                headers,
                ..call_of(&world.web.url("/echo"))
            },
        )
        .await
        .unwrap();
    let seen: Value = serde_json::from_slice(&reply.body).unwrap();
    for gone in ["authorization", "cookie", "proxy-authorization", "x-hop"] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the server: {seen}"
        );
    }
    assert_eq!(seen["x-kept"], "yes");
    assert_eq!(seen["host"], world.web.address.to_string());
    let answered = world.fetch(&world.web.url("/cookie")).await;
    let names: Vec<&str> = answered.headers.iter().map(|h| h.name.as_str()).collect();
    assert!(!names.contains(&"set-cookie"), "{names:?}");
    assert!(names.contains(&"x-kept"), "{names:?}");
}

/// TLS is always verified, against the system's roots: a local server
/// with a certificate of its own CA is refused at the handshake.
#[tokio::test]
async fn tls_to_a_server_no_root_vouches_for_fails() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use wopr_operator::tls::issue::{CA_LIFETIME, LEAF_LIFETIME, issue_ca, issue_leaf};

    let world = World::start().await;
    let now = k8s_openapi::jiff::Timestamp::now();
    let ca = issue_ca(now, CA_LIFETIME).unwrap();
    let leaf = issue_leaf(&ca, &[ALLOWED.to_owned()], now, LEAF_LIFETIME).unwrap();
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        wopr_operator::tls::server::provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((ALLOWED, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = acceptor.accept(stream).await;
        }
    });
    let reply = world.fetch(&format!("https://{address}/")).await;
    assert_eq!(
        failed(&reply),
        format!("TLS with {ALLOWED} failed: invalid peer certificate: UnknownIssuer")
    );
}

/// The egress service decides again itself: a caller holding a sidecar's
/// token and bypassing the sidecar is refused what its policy refuses.
#[tokio::test]
async fn the_egress_service_refuses_what_the_policy_refuses_without_the_sidecar() {
    let world = World::start().await;
    let url = world.web.url("/hello");
    world.policy(&[], Some(&["*", ALLOWED]), &[], "enforce");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        refused(&world.fetch(&url).await),
        "refused by the egress service: capability inject.network not granted"
    );
    world.policy(&["inject.network"], Some(&["only.test"]), &[], "enforce");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        refused(&world.fetch(&url).await),
        "refused by tools.rules.http_fetch.allowHosts: host 127.0.0.2 matches none of [\"only.test\"]"
    );
    world.policy(
        &["inject.network"],
        Some(&["*", ALLOWED]),
        &[ALLOWED],
        "enforce",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        refused(&world.fetch(&url).await),
        "refused by tools.rules.http_fetch.denyHosts: host 127.0.0.2 matches \"127.0.0.2\""
    );
    assert_eq!(world.web.hits(), 0, "nothing reached the server");
    // Warn mode: a rule's refusal goes ahead, recorded as would_deny...
    world.resolver.answer("warned.test", &[&[ALLOWED]]);
    world.policy(
        &["inject.network"],
        Some(&["*", ALLOWED]),
        &["warned.test"],
        "warn",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let port = world.web.address.port();
    let warned = world
        .fetch(&format!("http://warned.test:{port}/hello"))
        .await;
    assert_eq!(warned.result(), FetchResult::Fetched, "{warned:?}");
    assert_eq!(warned.decision, "would_deny");
    assert_eq!(
        warned.reason,
        "fetched: HTTP 200, 5 bytes; warn mode let through: refused by tools.rules.http_fetch.denyHosts: host warned.test matches \"warned.test\""
    );
    // ...but the guard is no rule: it refuses in every mode, a denyHosts
    // address too.
    let trap = format!("http://{}/", world.trap.address);
    assert_eq!(
        refused(&world.fetch(&trap).await),
        "SSRF guard: 127.0.0.1 is loopback (127.0.0.0/8)"
    );
    world.policy(
        &["inject.network"],
        Some(&["*", ALLOWED]),
        &[ALLOWED],
        "warn",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        refused(&world.fetch(&url).await),
        "SSRF guard: 127.0.0.2 is refused by tools.rules.http_fetch.denyHosts: address 127.0.0.2 matches \"127.0.0.2\""
    );
    // Who calls is the token's session, never the arguments'.
    let unauthenticated = world.call(None, call_of(&url)).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    let other = world
        .call(Some("token-of-other"), call_of(&url))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let events = world.egress.audit.take();
    assert!(
        events
            .iter()
            .all(|event| event.tool.as_deref() == Some("http_fetch")),
        "{events:#?}"
    );
    assert!(events.iter().any(|e| e.decision == Outcome::WouldDeny));
}

/// The property: whatever the URL's spelling and whatever a name resolves
/// to, no address `targets` hands the client (the only addresses it ever
/// dials) is one of the refused ranges, written here independently of
/// the guard as CIDRs, IPv4 ranges embedded in IPv6 included.
mod property {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;
    use wopr_operator::policy::tools::argument_rules::ArgumentRulesInForce;
    use wopr_operator::policy::tools::arguments::fetchable_url;

    const REFUSED_V4: [&str; 17] = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "44.0.0.0/8", // the cluster's, by flag
        "100.64.0.0/10",
        "127.0.0.0/8",
        "168.63.129.16/32",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ];
    const REFUSED_V6: [&str; 9] = [
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001:db8::/32",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
        "fd00:ec2::254/128",
    ];

    /// The IPv6 networks an IPv4 network hides in: mapped, compatible,
    /// NAT64 (at bit 96) and 6to4 (at bit 16).
    fn embedded(net: &str) -> Vec<IpNet> {
        let net: ipnet::Ipv4Net = net.parse().unwrap();
        let bits = u128::from(u32::from(net.network()));
        let len = net.prefix_len();
        let at96 = |prefix: u128| {
            IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(prefix | bits), 96 + len).unwrap())
        };
        vec![
            at96(0xffff << 32),
            at96(0),
            at96(0x64_ff9b << 96),
            IpNet::V6(
                ipnet::Ipv6Net::new(Ipv6Addr::from((0x2002 << 112) | (bits << 80)), 16 + len)
                    .unwrap(),
            ),
        ]
    }

    fn oracle_refuses(ip: IpAddr) -> bool {
        let named: [IpAddr; 2] = [
            "127.0.0.2".parse().unwrap(),
            "::ffff:127.0.0.2".parse().unwrap(),
        ];
        if named.contains(&ip) {
            return false;
        }
        let mut nets: Vec<IpNet> = REFUSED_V4.iter().map(|n| n.parse().unwrap()).collect();
        nets.extend(REFUSED_V6.iter().map(|n| n.parse::<IpNet>().unwrap()));
        nets.extend(REFUSED_V4.iter().flat_map(|n| embedded(n)));
        nets.iter().any(|net| net.contains(&ip))
    }

    /// Names the resolver answers by decoding them: `x<8 hex>.test` is an
    /// IPv4 address, `y<32 hex>.test` an IPv6 one.
    struct Encoded;

    impl Resolver for Encoded {
        fn resolve<'a>(
            &'a self,
            host: &'a str,
            port: u16,
        ) -> BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
            let label = host.trim_end_matches(".test");
            let ip: IpAddr = match label.split_at(1) {
                ("x", hex) => Ipv4Addr::from(u32::from_str_radix(hex, 16).unwrap()).into(),
                (_, hex) => Ipv6Addr::from(u128::from_str_radix(hex, 16).unwrap()).into(),
            };
            Box::pin(async move { Ok(vec![SocketAddr::new(ip, port)]) })
        }
    }

    /// An address in one of the refused IPv4 ranges.
    fn special_v4() -> impl Strategy<Value = Ipv4Addr> {
        (0..REFUSED_V4.len(), any::<u32>()).prop_map(|(index, offset)| {
            let net: ipnet::Ipv4Net = REFUSED_V4[index].parse().unwrap();
            let host_bits = 32 - u32::from(net.prefix_len());
            let mask = if host_bits == 32 {
                u32::MAX
            } else {
                (1u32 << host_bits) - 1
            };
            Ipv4Addr::from(u32::from(net.network()) | (offset & mask))
        })
    }

    /// The ways a URL may name an IPv4 address.
    fn v4_spellings(v4: Ipv4Addr) -> Vec<String> {
        let [a, b, c, d] = v4.octets();
        let n = u32::from(v4);
        let mut forms = vec![
            v4.to_string(),
            n.to_string(),
            format!("0x{n:x}"),
            format!("0{a:o}.0{b:o}.0{c:o}.0{d:o}"),
            format!("{a}.{}", n & 0xff_ffff),
            format!("{a}.{b}.{}", n & 0xffff),
            format!("[::ffff:{v4}]"),
            format!("[64:ff9b::{v4}]"),
            format!("[2002:{:x}:{:x}::1]", n >> 16, n & 0xffff),
            format!("x{n:08x}.test"),
        ];
        if n > 1 {
            forms.push(format!("[::{v4}]"));
        }
        forms
    }

    /// The fetcher and the runtime the property runs on, made once.
    fn fetcher() -> &'static (Fetcher, tokio::runtime::Runtime) {
        static FETCHER: std::sync::OnceLock<(Fetcher, tokio::runtime::Runtime)> =
            std::sync::OnceLock::new();
        FETCHER.get_or_init(|| {
            let settings = FetchSettings {
                deny_cidrs: vec!["44.0.0.0/8".parse().unwrap()],
                ..FetchSettings::default()
            };
            let roots = rustls::RootCertStore::empty();
            let fetcher = Fetcher::new(settings, Arc::new(Encoded), roots).unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            (fetcher, runtime)
        })
    }

    fn targets(host: &str) -> Result<Vec<SocketAddr>, String> {
        let url = fetchable_url(&format!("http://{host}/"))?;
        let rules = ArgumentRulesInForce {
            allow_hosts: Some(vec!["*".into(), "127.0.0.2".into()]),
            ..Default::default()
        };
        let (fetcher, runtime) = fetcher();
        runtime
            .block_on(fetcher.targets(&url, &rules))
            .map_err(|stopped| format!("{stopped:?}"))
    }

    proptest! {
        #[test]
        fn no_admitted_url_leads_to_a_refused_address(
            special in special_v4(),
            any_v4 in any::<u32>(),
            any_v6 in any::<u128>(),
        ) {
            let mut hosts = v4_spellings(special);
            hosts.extend(v4_spellings(Ipv4Addr::from(any_v4)));
            hosts.push(format!("[{}]", Ipv6Addr::from(any_v6)));
            hosts.push(format!("y{any_v6:032x}.test"));
            for host in hosts {
                if let Ok(addresses) = targets(&host) {
                    for address in addresses {
                        prop_assert!(
                            !oracle_refuses(address.ip()),
                            "{host} admitted, leading to {address}"
                        );
                    }
                }
            }
            // Every spelling of a special address is refused (127.0.0.2
            // aside, which the rules name, as itself or IPv4-mapped).
            if special != Ipv4Addr::new(127, 0, 0, 2) {
                for host in v4_spellings(special) {
                    prop_assert!(targets(&host).is_err(), "{host} ({special}) admitted");
                }
            }
        }
    }
}

/// The whole path: the agent's call on the sidecar's socket, the sidecar's
/// own checks, the egress service's, a local server, and the sidecar's
/// audit event with the fetch's figures.
mod through_the_sidecar {
    use serde_json::json;
    use wopr_operator::api::Enforcement;
    use wopr_operator::proto::v1alpha1::CallToolRequest;

    use super::*;
    use common::sidecar::Sidecar;
    use common::stack::FetchingAgent;

    async fn call(sidecar: &Sidecar, arguments: Value) -> Result<Value, tonic::Status> {
        let request = CallToolRequest {
            name: "http_fetch".into(),
            arguments_json: arguments.to_string(),
        };
        let response = sidecar.tools().await.call_tool(request).await?;
        Ok(serde_json::from_str(&response.into_inner().result_json).unwrap())
    }

    #[tokio::test]
    async fn an_agents_fetch_is_made_by_the_egress_service_and_audited_with_its_figures() {
        let (web, trap) = servers().await;
        let FetchingAgent {
            mut control_plane,
            egress: _egress,
            sidecar,
        } = FetchingAgent::start(SESSION, &[ALLOWED, "localhost"]).await;

        let hello = call(&sidecar, json!({"url": web.url("/hello")}))
            .await
            .unwrap();
        assert_eq!(hello["status"], 200);
        assert_eq!(hello["body"], "hello");
        assert_eq!(hello["bytes"], 5);
        assert_eq!(hello["url"], web.url("/hello"));
        assert_eq!(hello["address"], web.address.to_string());
        let binary = call(&sidecar, json!({"url": web.url("/binary")}))
            .await
            .unwrap();
        assert_eq!(binary["bodyBase64"], "//4A");
        assert!(binary.get("body").is_none());
        // The sidecar's rules pass `localhost`; the egress service's guard
        // resolves it and refuses.
        let port = trap.address.port();
        let refused = call(
            &sidecar,
            json!({"url": format!("http://localhost:{port}/")}),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
        assert!(
            refused
                .message()
                .starts_with("SSRF guard: localhost resolves to ")
                && refused.message().contains("is loopback"),
            "{}",
            refused.message()
        );
        // The sidecar's own rules refuse before the egress service is asked.
        let elsewhere = call(
            &sidecar,
            json!({"url": format!("http://{}/", trap.address)}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            elsewhere.message(),
            "refused by tools.rules.http_fetch.allowHosts: host 127.0.0.1 matches none of [\"127.0.0.2\", \"localhost\"]"
        );
        assert_eq!(trap.connections(), 0);
        assert_eq!(web.hits(), 2);

        let events: Vec<_> = sidecar
            .audit
            .take()
            .into_iter()
            .filter(|event| event.tool.as_deref() == Some("http_fetch"))
            .collect();
        assert_eq!(events.len(), 4, "{events:#?}");
        assert_eq!(events[0].decision, Outcome::Allowed);
        assert_eq!(
            events[0].fetch,
            Some(FetchRecord {
                method: "GET".into(),
                host: ALLOWED.into(),
                address: Some(web.address.to_string()),
                status: Some(200),
                bytes: 5,
                redirects: 0,
            })
        );
        assert_eq!(events[1].fetch.as_ref().unwrap().bytes, 3);
        assert_eq!(events[2].decision, Outcome::Denied);
        assert_eq!(events[2].reason, refused.message());
        let record = events[2].fetch.as_ref().unwrap();
        assert_eq!((record.host.as_str(), record.status), ("localhost", None));
        assert_eq!(events[3].decision, Outcome::Denied);
        assert!(events[3].fetch.is_none(), "never sent: nothing fetched");

        // Warn mode lets the rule's refusal through to the egress service,
        // whose guard still refuses: the event is a denial, not would_deny.
        control_plane.put_policy(common::security_policy(json!({"enforcement": "warn"})));
        sidecar
            .wait_for_policy(|policy| {
                policy.is_some_and(|p| p.context.enforcement == Enforcement::Warn)
            })
            .await;
        let warned = call(
            &sidecar,
            json!({"url": format!("http://{}/", trap.address)}),
        )
        .await
        .unwrap_err();
        assert_eq!(warned.code(), Code::PermissionDenied);
        assert_eq!(
            warned.message(),
            "SSRF guard: 127.0.0.1 is loopback (127.0.0.0/8)"
        );
        let event = sidecar
            .audit
            .take()
            .into_iter()
            .rfind(|event| event.tool.as_deref() == Some("http_fetch"))
            .unwrap();
        assert_eq!(event.decision, Outcome::Denied);
        assert!(
            event.reason.starts_with("SSRF guard: 127.0.0.1 is loopback (127.0.0.0/8); would be refused by tools.rules.http_fetch.allowHosts"),
            "{}",
            event.reason
        );
        assert_eq!(trap.connections(), 0);
    }
}
