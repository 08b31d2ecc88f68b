//! Audit export (issue 24): a real OTLP/gRPC receiver (the official protos'
//! generated `LogsService` server, on 127.0.0.1:0) receives every stored
//! event exactly once across a graceful restart of the exporter, and loses
//! none when it fails batches; the OCSF JSON-lines sink writes each event
//! once, in chain order. On both store backends.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::store::{TestStore, event, on_both_backends};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use wopr_operator::cluster::lease::Leadership;
use wopr_operator::export::ocsf::OcsfSink;
use wopr_operator::export::otlp::{OtlpSink, event_id};
use wopr_operator::export::{ExportMetrics, Exporter, ExporterLabels, Sink};
use wopr_operator::policy::Outcome;
use wopr_operator::shutdown;
use wopr_operator::store::Store;

/// What a receiver got: each record's (namespace, chain position, id), in
/// arrival order.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(String, i64, String)>>>);

impl Received {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn all(&self) -> Vec<(String, i64, String)> {
        self.0.lock().unwrap().clone()
    }
}

/// Fails the requests whose number (from 1) `fails` picks: some with an
/// error status, some with a partial success that rejected records.
#[derive(Clone)]
struct Receiver {
    received: Received,
    requests: Arc<Mutex<u64>>,
    fails: fn(u64) -> Option<Failure>,
}

impl Receiver {
    /// A receiver that accepts every batch into `received`.
    fn accepting(received: &Received) -> Receiver {
        Receiver {
            received: received.clone(),
            requests: Arc::default(),
            fails: |_| None,
        }
    }
}

#[derive(Clone, Copy)]
enum Failure {
    Unavailable,
    Rejected,
}

fn attribute<'a>(record: &'a LogRecord, key: &str) -> Option<&'a Value> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let number = {
            let mut requests = self.requests.lock().unwrap();
            *requests += 1;
            *requests
        };
        let records = request
            .into_inner()
            .resource_logs
            .into_iter()
            .flat_map(|resource| resource.scope_logs)
            .flat_map(|scope| scope.log_records);
        let mut accepted = Vec::new();
        for record in records {
            let Some(Value::StringValue(namespace)) = attribute(&record, "wopr.namespace") else {
                return Err(Status::invalid_argument("a record without wopr.namespace"));
            };
            let Some(Value::IntValue(seq)) = attribute(&record, "wopr.chain.seq") else {
                return Err(Status::invalid_argument("a record without wopr.chain.seq"));
            };
            let id = event_id(&record).ok_or_else(|| Status::invalid_argument("no event id"))?;
            accepted.push((namespace.clone(), *seq, id.to_owned()));
        }
        match (self.fails)(number) {
            Some(Failure::Unavailable) => Err(Status::unavailable("receiver overloaded")),
            Some(Failure::Rejected) => Ok(Response::new(ExportLogsServiceResponse {
                partial_success: Some(ExportLogsPartialSuccess {
                    rejected_log_records: 1,
                    error_message: "one record rejected".into(),
                }),
            })),
            None => {
                self.received.0.lock().unwrap().extend(accepted);
                Ok(Response::new(ExportLogsServiceResponse::default()))
            }
        }
    }
}

/// Serves `receiver` on 127.0.0.1:0; its endpoint URL.
async fn serve(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(receiver))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{address}")
}

/// Serves `receiver` over TLS with the test PKI's leaf (it names
/// 127.0.0.1) on 127.0.0.1:0; its endpoint URL.
async fn serve_tls(receiver: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let incoming = wopr_operator::tls::server::incoming(listener, common::tls::server_cert());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LogsServiceServer::new(receiver))
            .serve_with_incoming(incoming),
    );
    format!("https://{address}")
}

/// An exporter running until the sender is used or dropped.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops it gracefully and waits until it has.
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

fn start<S: Sink + 'static>(
    store: &Store,
    name: &str,
    sink: S,
    metrics: &ExportMetrics,
) -> Running {
    start_led(store, name, sink, metrics, Leadership::always())
}

/// An exporter on a replica whose leadership the test sets.
fn start_led<S: Sink + 'static>(
    store: &Store,
    name: &str,
    sink: S,
    metrics: &ExportMetrics,
    leadership: Leadership,
) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let exporter = Exporter {
        name: name.to_owned(),
        sink,
        store: store.clone(),
        metrics: metrics.clone(),
    };
    let task = tokio::spawn(exporter.run(
        leadership,
        shutdown::on(async {
            let _ = stopped.await;
        }),
    ));
    Running { stop, task }
}

/// Stores `total` events over three namespaces, 100 per batch, in the
/// background (as sidecars ship them while the exporter runs).
fn write_events(store: &Store, total: usize) -> tokio::task::JoinHandle<HashSet<String>> {
    let store = store.clone();
    tokio::spawn(async move {
        let mut ids = HashSet::new();
        for batch in 0..total / 100 {
            let events: Vec<_> = (0..100)
                .map(|n| {
                    let namespace = ["team-a", "team-b", "team-c"][(batch + n) % 3];
                    let decision = if n % 7 == 0 {
                        Outcome::Denied
                    } else {
                        Outcome::Allowed
                    };
                    event(namespace, "agent", decision, (batch * 100 + n) as i64)
                })
                .collect();
            ids.extend(events.iter().map(|event| event.id.clone()));
            store.insert_events(&events).await.unwrap();
        }
        ids
    })
}

/// Waits until `received` holds `count` records (or a minute passes).
async fn until_received(received: &Received, count: usize) {
    for _ in 0..1200 {
        if received.len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the receiver got {} of {count} events", received.len());
}

/// Every stored event once, and each namespace's in chain order.
fn assert_exactly_once_in_order(received: &[(String, i64, String)], stored: &HashSet<String>) {
    let ids: Vec<&String> = received.iter().map(|(_, _, id)| id).collect();
    let unique: HashSet<String> = ids.iter().map(|id| (*id).clone()).collect();
    assert_eq!(ids.len(), unique.len(), "the receiver got duplicates");
    assert_eq!(&unique, stored, "the receiver's events are not the store's");
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (namespace, seq, _) in received {
        let previous = last.insert(namespace, *seq).unwrap_or(0);
        assert_eq!(*seq, previous + 1, "{namespace}: {seq} after {previous}");
    }
}

/// The batches exporter `name` counted as failed.
fn failed_batches(metrics: &ExportMetrics, name: &str) -> u64 {
    metrics
        .failed
        .get_or_create(&ExporterLabels {
            exporter: name.to_owned(),
        })
        .get()
}

fn lag(metrics: &ExportMetrics, name: &str) -> i64 {
    metrics
        .lag
        .get_or_create(&ExporterLabels {
            exporter: name.to_owned(),
        })
        .get()
}

/// 10,000 events, the exporter stopped gracefully mid-run and started
/// again from the stored cursor: every event exactly once.
async fn every_event_exactly_once_across_a_restart(test: TestStore) {
    let received = Received::default();
    let endpoint = serve(Receiver::accepting(&received)).await;
    let metrics = ExportMetrics::default();
    let writer = write_events(&test.store, 10_000);
    let first = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, None).unwrap(),
        &metrics,
    );
    until_received(&received, 3_000).await;
    first.stop().await;
    let at_stop = received.len();
    assert!(at_stop < 10_000, "stopped after the run, not mid-run");
    let stored = writer.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(received.len(), at_stop, "a stopped exporter sent more");
    let second = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, None).unwrap(),
        &metrics,
    );
    until_received(&received, 10_000).await;
    // Time for a duplicate, if one were coming, to arrive.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    second.stop().await;
    assert_exactly_once_in_order(&received.all(), &stored);
    assert_eq!(test.store.export_lag("otlp").await.unwrap(), 0);
    assert_eq!(lag(&metrics, "otlp"), 0);
}

/// A receiver that fails every third batch (an error, or a partial
/// success) gets every event anyway, none skipped.
async fn a_failing_receiver_loses_nothing(test: TestStore) {
    let received = Received::default();
    let endpoint = serve(Receiver {
        received: received.clone(),
        requests: Arc::default(),
        fails: |number| match number % 6 {
            1 => Some(Failure::Unavailable),
            4 => Some(Failure::Rejected),
            _ => None,
        },
    })
    .await;
    let metrics = ExportMetrics::default();
    let stored = write_events(&test.store, 3_000).await.unwrap();
    let exporter = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, None).unwrap(),
        &metrics,
    );
    until_received(&received, 3_000).await;
    exporter.stop().await;
    assert_exactly_once_in_order(&received.all(), &stored);
    let failed = failed_batches(&metrics, "otlp");
    assert!(failed >= 2, "the receiver failed batches: {failed} counted");
}

/// An unreachable receiver moves no cursor; once it is there, it gets
/// everything.
async fn an_unreachable_receiver_moves_no_cursor(test: TestStore) {
    let stored = write_events(&test.store, 1_000).await.unwrap();
    let metrics = ExportMetrics::default();
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let exporter = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, None).unwrap(),
        &metrics,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    exporter.stop().await;
    assert_eq!(test.store.export_lag("otlp").await.unwrap(), 1_000);
    let received = Received::default();
    let endpoint = serve(Receiver::accepting(&received)).await;
    let exporter = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, None).unwrap(),
        &metrics,
    );
    until_received(&received, 1_000).await;
    exporter.stop().await;
    assert_exactly_once_in_order(&received.all(), &stored);
}

/// The OCSF sink writes each event once, as one JSON line, in chain order,
/// and its cursor is its own (the OTLP exporter's does not move it).
async fn the_ocsf_sink_writes_every_event_once(test: TestStore) {
    let stored = write_events(&test.store, 1_200).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.ocsf.jsonl");
    let metrics = ExportMetrics::default();
    let exporter = start(
        &test.store,
        "ocsf",
        OcsfSink::open(path.to_str().unwrap()).unwrap(),
        &metrics,
    );
    for _ in 0..600 {
        if test.store.export_lag("ocsf").await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exporter.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<(String, i64, String)> = text
        .lines()
        .map(|line| {
            let object: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(object["class_uid"], 6003);
            (
                object["unmapped"]["namespace"].as_str().unwrap().to_owned(),
                object["metadata"]["sequence"].as_i64().unwrap(),
                object["metadata"]["uid"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_exactly_once_in_order(&lines, &stored);
    assert_eq!(test.store.export_lag("otlp").await.unwrap(), 1_200);
}

/// A replica that does not hold the Lease exports nothing; once it does,
/// everything.
async fn only_the_lease_holder_exports(test: TestStore) {
    let received = Received::default();
    let endpoint = serve(Receiver::accepting(&received)).await;
    let stored = write_events(&test.store, 600).await.unwrap();
    let metrics = ExportMetrics::default();
    let leadership = Leadership::default();
    let sink = OtlpSink::new(&endpoint, None).unwrap();
    let exporter = start_led(&test.store, "otlp", sink, &metrics, leadership.clone());
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(received.len(), 0, "a replica without the Lease exported");
    leadership.set(true);
    until_received(&received, 600).await;
    exporter.stop().await;
    assert_exactly_once_in_order(&received.all(), &stored);
}

/// An `https://` receiver is verified against the CA given: one of
/// another CA gets nothing and the cursor stays (the batches count as
/// failed); against its own CA it gets every event once.
async fn an_https_receiver_is_verified_against_its_ca(test: TestStore) {
    let received = Received::default();
    let endpoint = serve_tls(Receiver::accepting(&received)).await;
    let stored = write_events(&test.store, 500).await.unwrap();
    let metrics = ExportMetrics::default();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.crt");
    let other = wopr_operator::tls::issue::issue_ca(
        k8s_openapi::jiff::Timestamp::now(),
        wopr_operator::tls::issue::CA_LIFETIME,
    )
    .unwrap();
    std::fs::write(&other_ca, other.cert_pem).unwrap();
    let untrusted = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, Some(&other_ca)).unwrap(),
        &metrics,
    );
    for _ in 0..1200 {
        if failed_batches(&metrics, "otlp") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    untrusted.stop().await;
    assert!(
        failed_batches(&metrics, "otlp") > 0,
        "a receiver of another CA failed no batch"
    );
    assert_eq!(received.len(), 0, "a receiver of another CA got events");
    assert_eq!(test.store.export_lag("otlp").await.unwrap(), 500);

    let trusted = start(
        &test.store,
        "otlp",
        OtlpSink::new(&endpoint, Some(&common::tls::pki().ca_file)).unwrap(),
        &metrics,
    );
    until_received(&received, 500).await;
    trusted.stop().await;
    assert_exactly_once_in_order(&received.all(), &stored);
}

/// A CA bundle for a plaintext endpoint is a mistake, said at start-up.
#[test]
fn a_ca_for_a_plaintext_receiver_is_refused() {
    let error = OtlpSink::new(
        "http://collector:4317",
        Some(std::path::Path::new("ca.crt")),
    )
    .err()
    .expect("refused");
    assert!(error.to_string().contains("use https://"), "{error}");
}

on_both_backends!(
    only_the_lease_holder_exports,
    every_event_exactly_once_across_a_restart,
    a_failing_receiver_loses_nothing,
    an_unreachable_receiver_moves_no_cursor,
    an_https_receiver_is_verified_against_its_ca,
    the_ocsf_sink_writes_every_event_once,
);
