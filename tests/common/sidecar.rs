//! An in-process control plane fed from fixtures, and real sidecars wired
//! to it, for the sidecar tests and benchmarks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::PodCondition;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;
use wopr_operator::api::{Gateway, Grant, RateLimit, SecurityPolicy, Session, TrustLevel};
use wopr_operator::audit::{AuditEvent, AuditSink, MemorySink};
use wopr_operator::cache::Stores;
use wopr_operator::clock::Clock;
use wopr_operator::controlplane::audit::{AuditMetrics, AuditSetup};
use wopr_operator::controlplane::auth::{Identity, StaticTokens};
use wopr_operator::controlplane::denials::{SessionEvent, SessionEvents};
use wopr_operator::controlplane::index::ContextIndex;
use wopr_operator::controlplane::isolation::IsolationRecorder;
use wopr_operator::controlplane::refusals::RefusalMetrics;
use wopr_operator::controlplane::writes::{KubeWriter, WriteError};
use wopr_operator::controlplane::{Settings, serve};
use wopr_operator::policy::ToolId;
use wopr_operator::proto::v1alpha1::IngestRequest;
use wopr_operator::proto::v1alpha1::audit_client::AuditClient;
use wopr_operator::proto::v1alpha1::inbox_client::InboxClient;
use wopr_operator::proto::v1alpha1::tools_client::ToolsClient;
use wopr_operator::sidecar::broker::BrokerLink;
use wopr_operator::sidecar::client::{WatchTarget, watch_forever};
use wopr_operator::sidecar::engine::{Limits, ToolEngine};
use wopr_operator::sidecar::inbox::{Inbox, follow_forever as follow_inbox};
use wopr_operator::sidecar::models::{Egress, MAX_BODY_BYTES, ModelsOptions};
use wopr_operator::sidecar::policy_state::PolicyState;
use wopr_operator::sidecar::run::{Listeners, ServeOptions, SidecarError, serve as serve_sidecar};
use wopr_operator::sidecar::workspace::Workspace;
use wopr_operator::store::Store;
use wopr_operator::tls::server::Transport;

use super::fake_api::FakeApi;
use super::{NAMESPACE, now};

/// People's tokens for reading the audit trail: [`READER`] may read
/// [`NAMESPACE`], [`AUDITOR`] every namespace, [`OUTSIDER`] only another.
fn readers() -> HashMap<String, (String, Option<String>)> {
    [
        (READER, "alice", Some(NAMESPACE)),
        (AUDITOR, "auditor", None),
        (OUTSIDER, "mallory", Some("elsewhere")),
    ]
    .into_iter()
    .map(|(token, user, namespace)| (token.into(), (user.into(), namespace.map(Into::into))))
    .collect()
}

/// Tokens that may send sessions messages (RBAC's `create sessions/inject`):
/// [`READER`] and [`OPERATOR`] (people) and [`WORKLOAD`] (a service
/// account) to [`NAMESPACE`]'s sessions, [`OUTSIDER`] only to another
/// namespace's.
fn injectors() -> HashMap<String, (String, String)> {
    [
        (READER, "alice", NAMESPACE),
        (OPERATOR, "olivia", NAMESPACE),
        (WORKLOAD, "system:serviceaccount:ci:task-bot", NAMESPACE),
        (OUTSIDER, "mallory", "elsewhere"),
    ]
    .into_iter()
    .map(|(token, user, namespace)| (token.into(), (user.into(), namespace.into())))
    .collect()
}

/// The trust levels people may use (RBAC's `use` on
/// `trustlevels.wopr.dev`), which their messages to sessions at those
/// levels need: [`READER`] up to semi-trusted (as `edit` gives),
/// [`OPERATOR`] up to owner, [`OUTSIDER`] up to owner (elsewhere).
/// [`WORKLOAD`] none: its Grants place it.
fn trust_levels() -> HashMap<String, TrustLevel> {
    [
        (READER, TrustLevel::SemiTrusted),
        (OPERATOR, TrustLevel::Owner),
        (OUTSIDER, TrustLevel::Owner),
    ]
    .into_iter()
    .map(|(token, level)| (token.into(), level))
    .collect()
}

/// Tokens that may create Grants (RBAC's `create grants.wopr.dev`), and so
/// invite peers, conferring up to their [`trust_levels`] entry: [`READER`]
/// (semi-trusted) and [`OPERATOR`] (owner) in [`NAMESPACE`], [`OUTSIDER`]
/// only in another namespace.
fn granters() -> HashMap<String, (String, String)> {
    [
        (READER, "alice", NAMESPACE),
        (OPERATOR, "olivia", NAMESPACE),
        (OUTSIDER, "mallory", "elsewhere"),
    ]
    .into_iter()
    .map(|(token, user, namespace)| (token.into(), (user.into(), namespace.into())))
    .collect()
}

/// The token of the workload `ci/task-bot` (a service account), which RBAC
/// lets send [`NAMESPACE`]'s sessions messages.
pub const WORKLOAD: &str = "token-of-the-task-bot";

/// A person's token that may read [`NAMESPACE`]'s trail, and send its
/// sessions up to semi-trusted messages.
pub const READER: &str = "token-of-alice";
/// A person's token that may send every session of [`NAMESPACE`] messages,
/// owner sessions included.
pub const OPERATOR: &str = "token-of-olivia";
/// A person's token that may read every namespace's trail.
pub const AUDITOR: &str = "token-of-the-auditor";
/// A person's token that may read another namespace's trail only.
pub const OUTSIDER: &str = "token-of-mallory";

/// The token of the session `name`'s service account, as the fake authenticator knows it.
pub fn token_for(session: &str) -> String {
    format!("token-{session}")
}

/// Keeps the sandbox checks sidecars report, for tests to read.
#[derive(Default)]
pub struct MemoryRecorder(pub std::sync::Mutex<Vec<(String, String, Vec<PodCondition>)>>);

impl IsolationRecorder for MemoryRecorder {
    async fn record(
        &self,
        namespace: &str,
        session: &str,
        _reporter: Option<std::net::IpAddr>,
        conditions: Vec<PodCondition>,
    ) -> Result<(), WriteError> {
        self.0
            .lock()
            .unwrap()
            .push((namespace.to_owned(), session.to_owned(), conditions));
        Ok(())
    }
}

/// Session Events, kept for the test to read.
#[derive(Default)]
pub struct MemoryEvents(pub Mutex<Vec<SessionEvent>>);

impl SessionEvents for MemoryEvents {
    async fn warn(&self, event: SessionEvent) -> Result<(), kube::Error> {
        self.0.lock().unwrap().push(event);
        Ok(())
    }
}

/// A control plane on 127.0.0.1 whose caches the test fills.
pub struct ControlPlane {
    pub index: Arc<ContextIndex>,
    /// The caches the index reads (and the controller would).
    pub stores: Stores,
    /// The sandbox checks sidecars reported.
    pub reports: Arc<MemoryRecorder>,
    pub address: SocketAddr,
    /// Starts its shutdown (dropping it does too).
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server, until it has drained.
    pub server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// Where it stores the audit trail (SQLite in `_store_dir`), and its
    /// URL (for a second connection that tampers with it).
    pub store: Store,
    pub store_url: String,
    /// The Events it published on Sessions.
    pub events: Arc<MemoryEvents>,
    /// Its Audit service's metrics.
    pub audit_metrics: AuditMetrics,
    /// Its counts of refused calls.
    pub refusal_metrics: RefusalMetrics,
    /// The API server its broker files ApprovalRequests with, and a client
    /// of it (for the controller's side of approvals).
    pub api: FakeApi,
    pub client: kube::Client,
    /// The controller's metrics, for its ApprovalRequest reconciler, and
    /// where they are registered.
    pub controller_metrics: wopr_operator::controller::metrics::Metrics,
    pub controller_registry: prometheus_client::registry::Registry,
    _store_dir: tempfile::TempDir,
    sessions: Writer<DeserializeGuard<Session>>,
    policies: Writer<DeserializeGuard<SecurityPolicy>>,
    grants: Writer<DeserializeGuard<Grant>>,
    gateways: Writer<DeserializeGuard<Gateway>>,
}

impl ControlPlane {
    /// Starts a control plane that accepts the tokens of `sessions` (their
    /// own service accounts and pods).
    pub async fn start(sessions: &[&str]) -> ControlPlane {
        ControlPlane::start_with(sessions, Settings::default()).await
    }

    /// [`ControlPlane::start`], set up as `settings` say.
    pub async fn start_with(sessions: &[&str], settings: Settings) -> ControlPlane {
        ControlPlane::start_serving(sessions, settings, super::tls::transport()).await
    }

    /// [`ControlPlane::start_with`], secured as `transport` says.
    pub async fn start_serving(
        sessions: &[&str],
        settings: Settings,
        transport: Transport,
    ) -> ControlPlane {
        ControlPlane::start_on(FakeApi::default(), sessions, settings, transport).await
    }

    /// [`ControlPlane::start_serving`], its API server `api`.
    pub async fn start_on(
        api: FakeApi,
        sessions: &[&str],
        settings: Settings,
        transport: Transport,
    ) -> ControlPlane {
        let (session_store, session_writer) = reflector::store();
        let (policy_store, policies) = reflector::store();
        let (grant_store, grants) = reflector::store();
        let (gateway_store, gateways) = reflector::store();
        let stores = Stores {
            policies: policy_store,
            grants: grant_store,
            gateways: gateway_store,
        };
        let index = Arc::new(ContextIndex::new(
            session_store,
            stores.clone(),
            Clock::starting_at(now()),
        ));
        let tokens: HashMap<String, Identity> = sessions
            .iter()
            .map(|session| {
                let account = format!("wopr-{session}");
                (
                    token_for(session),
                    Identity {
                        namespace: NAMESPACE.into(),
                        service_account: account.clone(),
                        pod_name: Some(account),
                    },
                )
            })
            .collect();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let reports = Arc::new(MemoryRecorder::default());
        let store_dir = tempfile::tempdir().unwrap();
        let store_url = format!("sqlite://{}/wopr.db", store_dir.path().display());
        let store = Store::open(&store_url).await.unwrap();
        let events = Arc::new(MemoryEvents::default());
        let audit_metrics = AuditMetrics::default();
        let client = api.client();
        let mut controller_registry = prometheus_client::registry::Registry::default();
        let controller_metrics =
            wopr_operator::controller::metrics::Metrics::new(&mut controller_registry);
        let server = tokio::spawn(serve(
            listener,
            transport,
            index.clone(),
            Arc::new(StaticTokens {
                sidecars: tokens,
                readers: readers(),
                injectors: injectors(),
                trust_levels: trust_levels(),
                granters: granters(),
            }),
            reports.clone(),
            AuditSetup {
                store: store.clone(),
                events: events.clone(),
                metrics: audit_metrics.clone(),
            },
            Arc::new(KubeWriter(client.clone())),
            settings.clone(),
            wopr_operator::shutdown::on(async move {
                let _ = stopped.await;
            }),
        ));
        ControlPlane {
            index,
            stores,
            reports,
            address,
            shutdown: Some(shutdown),
            server,
            store,
            store_url,
            events,
            audit_metrics,
            refusal_metrics: settings.refusal_metrics,
            api,
            client,
            controller_metrics,
            controller_registry,
            _store_dir: store_dir,
            sessions: session_writer,
            policies,
            grants,
            gateways,
        }
    }

    /// A channel to it, verified against the test CA as sidecars and the
    /// CLI verify the real one.
    pub async fn channel(&self) -> Channel {
        super::tls::channel(self.address).await
    }

    pub fn put_session(&mut self, session: Session) {
        self.sessions
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(session))));
        self.index.refresh(NAMESPACE);
    }
}

/// A channel to a sidecar's unix socket that connects on first use and
/// again whenever the socket went away (a restarted sidecar).
pub fn socket_channel(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:0")
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
}

/// One message of a shipped batch: `lines` (events as JSON) of `session`
/// in [`NAMESPACE`].
pub fn ingest_message(session: &str, lines: Vec<String>) -> IngestRequest {
    IngestRequest {
        namespace: NAMESPACE.into(),
        session: session.into(),
        events: lines,
        spool_depth: 0,
    }
}

/// Ships `messages` as one batch of `session`'s sidecar: how many events
/// were stored, and how many were duplicates.
pub async fn ship(
    client: &mut AuditClient<Channel>,
    session: &str,
    messages: Vec<IngestRequest>,
) -> Result<(u32, u32), tonic::Status> {
    let request = as_sidecar(session, futures::stream::iter(messages));
    let ack = client.ingest(request).await?.into_inner();
    Ok((ack.stored, ack.duplicates))
}

/// `message` with `session`'s sidecar token.
pub fn as_sidecar<T>(session: &str, message: T) -> tonic::Request<T> {
    with_token(&token_for(session), message)
}

/// `message` with the bearer token `token`.
pub fn with_token<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

impl ControlPlane {
    /// The Events published for what was shipped so far, all of them:
    /// ships `marker`, a denial whose key no earlier one has (so it makes
    /// an Event at once), waits for its Event and returns those before
    /// it. Events are published in tasks spawned in order on the test's
    /// (current-thread) runtime, so none called for earlier comes after
    /// the marker's.
    pub async fn events_before(
        &self,
        client: &mut AuditClient<Channel>,
        marker: &AuditEvent,
    ) -> Vec<SessionEvent> {
        let line = serde_json::to_string(marker).unwrap();
        let message = ingest_message(&marker.session, vec![line]);
        ship(client, &marker.session, vec![message]).await.unwrap();
        let note = format!(": {}", marker.reason);
        for _ in 0..500 {
            {
                let published = self.events.0.lock().unwrap();
                let marker = published
                    .iter()
                    .position(|event| event.note.ends_with(&note));
                if let Some(at) = marker {
                    return published[..at].to_vec();
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "no Event of the marker: {:?}",
            self.events.0.lock().unwrap()
        );
    }

    pub fn put_policy(&mut self, policy: SecurityPolicy) {
        self.policies
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(policy))));
        self.index.refresh(NAMESPACE);
    }

    pub fn put_grant(&mut self, grant: Grant) {
        self.grants
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(grant))));
        self.index.refresh(NAMESPACE);
    }

    pub fn put_gateway(&mut self, gateway: Gateway) {
        self.gateways
            .apply_watcher_event(&watcher::Event::Apply(DeserializeGuard(Ok(gateway))));
        self.index.refresh(NAMESPACE);
    }

    /// The reference Sessions and Gateway (`examples/sessions.yaml`,
    /// `examples/gateway.yaml`) in the test namespace, each Session as
    /// `change` leaves it.
    pub fn put_reference(&mut self, change: impl Fn(&mut Session)) {
        for object in super::reference_objects() {
            match object {
                wopr_operator::api::WoprObject::Session(mut session) => {
                    session.metadata.namespace = Some(NAMESPACE.into());
                    change(&mut session);
                    self.put_session(*session);
                }
                wopr_operator::api::WoprObject::Gateway(mut gateway) => {
                    gateway.metadata.namespace = Some(NAMESPACE.into());
                    self.put_gateway(gateway);
                }
                other => panic!("unexpected {other:?} in the reference examples"),
            }
        }
    }

    pub fn delete_grant(&mut self, grant: Grant) {
        self.grants
            .apply_watcher_event(&watcher::Event::Delete(DeserializeGuard(Ok(grant))));
        self.index.refresh(NAMESPACE);
    }
}

/// Rate limits for the whole session and for each tool, elevation requests
/// included (`per_tool` a minute, not the sidecar's default of 3).
pub fn calls_per_minute(per_session: u32, per_tool: u32) -> Limits {
    let per_tool = RateLimit {
        per_minute: per_tool,
    };
    Limits::new(
        RateLimit {
            per_minute: per_session,
        },
        per_tool.clone(),
    )
    .with_tool_limit(ToolId::SecurityRequest, per_tool)
}

/// How a test sidecar is set up.
pub struct SidecarOptions {
    /// Its rate limits.
    pub limits: Limits,
    /// Where it audits.
    pub sink: Arc<dyn AuditSink>,
    /// What the test reads (the same sink, or an empty one).
    pub audit: Arc<MemorySink>,
    /// How long its policy outlives the control plane's silence.
    pub max_policy_age: Duration,
    /// The agent's prompt, as its pod would give it.
    pub prompt: Option<String>,
    /// The egress service its model proxy relays to (verified against
    /// the test CA), if any.
    pub egress: Option<String>,
}

impl SidecarOptions {
    /// Generous rate limits and the default staleness bound, auditing into
    /// memory for the test to read.
    pub fn in_memory() -> SidecarOptions {
        let audit = Arc::new(MemorySink::default());
        SidecarOptions {
            limits: calls_per_minute(100_000, 100_000),
            sink: audit.clone(),
            audit,
            max_policy_age: Duration::from_secs(30),
            prompt: None,
            egress: None,
        }
    }
}

/// A real sidecar serving one session, watching `control_plane`.
pub struct Sidecar {
    pub state: Arc<PolicyState>,
    pub audit: Arc<MemorySink>,
    pub engine: Arc<ToolEngine>,
    pub socket: PathBuf,
    pub mcp: SocketAddr,
    /// Its model proxy (what the agent's SDKs are pointed at).
    pub models: SocketAddr,
    pub workspace: PathBuf,
    /// Starts its shutdown.
    pub shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// Its servers, until they return.
    pub server: tokio::task::JoinHandle<Result<(), SidecarError>>,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts a sidecar for `session`, presenting `token`, with generous rate limits.
    pub async fn start(control_plane: &str, session: &str, token: &str) -> Sidecar {
        Sidecar::start_with(control_plane, session, token, SidecarOptions::in_memory()).await
    }

    /// Starts a sidecar for `session` presenting `token`, set up by `options`.
    pub async fn start_with(
        control_plane: &str,
        session: &str,
        token: &str,
        options: SidecarOptions,
    ) -> Sidecar {
        let SidecarOptions {
            limits,
            sink,
            audit,
            max_policy_age,
            prompt,
            egress,
        } = options;
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, token).unwrap();
        let workspace = dir.path().join("workspace");
        std::fs::create_dir(&workspace).unwrap();
        let state = Arc::new(PolicyState::new(max_policy_age));
        let inbox = Arc::new(Inbox::default());
        let target = WatchTarget {
            address: control_plane.to_owned(),
            tls: super::tls::client_tls(),
            namespace: NAMESPACE.into(),
            session: session.into(),
            token_path,
        };
        let models_options = ModelsOptions {
            egress: egress.map(|address| WatchTarget {
                address,
                ..target.clone()
            }),
            max_body_bytes: MAX_BODY_BYTES,
        };
        let engine = ToolEngine::new(
            NAMESPACE,
            session,
            state.clone(),
            sink,
            Workspace::new(&workspace),
            limits,
            now,
        )
        .with_prompt(prompt)
        .with_broker(Arc::new(BrokerLink::new(target.clone())), inbox.clone());
        // http_fetch goes to the egress service the model proxy relays to.
        let engine = Arc::new(match models_options.egress.clone() {
            Some(egress) => engine.with_egress(Arc::new(Egress::new(egress))),
            None => engine,
        });
        tokio::spawn(follow_inbox(target.clone(), inbox));
        tokio::spawn(watch_forever(target, state.clone()));
        let socket = dir.path().join("a2a.sock");
        let listeners = Listeners {
            socket: UnixListener::bind(&socket).unwrap(),
            mcp: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            health: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            models: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let mcp = listeners.mcp.local_addr().unwrap();
        let models = listeners.models.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_sidecar(
            engine.clone(),
            listeners,
            ServeOptions {
                max_request_bytes: 1024 * 1024,
                health: tonic_health::server::HealthReporter::new(),
                models: models_options,
            },
            async move {
                let _ = stopped.await;
            },
        ));
        Sidecar {
            state,
            audit,
            engine,
            socket,
            mcp,
            models,
            workspace,
            shutdown: Some(shutdown),
            server,
            _dir: dir,
        }
    }

    /// A gRPC client on the sidecar's unix socket, as the agent would use.
    pub async fn tools(&self) -> ToolsClient<Channel> {
        ToolsClient::new(self.socket_channel().await)
    }

    /// The agent's inbox on the socket.
    pub async fn inbox(&self) -> InboxClient<Channel> {
        InboxClient::new(self.socket_channel().await)
    }

    async fn socket_channel(&self) -> Channel {
        socket_channel(self.socket.clone())
    }

    /// Waits until the sidecar's policy satisfies `ready` (at most 5 s).
    pub async fn wait_for_policy(
        &self,
        ready: impl Fn(Option<&wopr_operator::sidecar::policy_state::Served>) -> bool,
    ) {
        for _ in 0..500 {
            if ready(self.state.current().ok().as_deref()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the sidecar's policy never became ready: {:?}",
            self.state.current()
        );
    }
}
