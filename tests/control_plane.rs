//! The Policy service over a fake discovery (the trait the operator's index
//! implements): what a sidecar's stream says for a session that does not
//! exist, one whose policy cannot be served, and one deleted while watched.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::NAMESPACE;
use common::sidecar::{MemoryEvents, MemoryRecorder};
use tokio::sync::watch;
use tonic::Code;
use wopr_operator::api::{InboxPolicy, Session, SpawnPolicy};
use wopr_operator::controlplane::audit::{AuditMetrics, AuditSetup};
use wopr_operator::controlplane::auth::{Identity, StaticTokens};
use wopr_operator::controlplane::discover::{DiscoverPolicy, NoContext, Snapshot};
use wopr_operator::controlplane::writes::KubeWriter;
use wopr_operator::policy::EffectiveContext;
use wopr_operator::proto::v1alpha1::policy_client::PolicyClient;
use wopr_operator::proto::v1alpha1::policy_update::Update;
use wopr_operator::proto::v1alpha1::{PolicyUpdate, WatchRequest};
use wopr_operator::store::InboxLimits;

/// Sessions and their snapshots, as the test sets them.
#[derive(Default)]
struct FakeDiscovery(Mutex<HashMap<String, watch::Sender<Snapshot>>>);

impl FakeDiscovery {
    fn set(&self, session: &str, snapshot: Snapshot) {
        let mut sessions = self.0.lock().unwrap();
        match sessions.get(session) {
            Some(sender) => {
                sender.send_replace(snapshot);
            }
            None => {
                sessions.insert(session.to_owned(), watch::Sender::new(snapshot));
            }
        }
    }
}

impl DiscoverPolicy for FakeDiscovery {
    fn watch(&self, _namespace: &str, session: &str) -> Option<watch::Receiver<Snapshot>> {
        self.0
            .lock()
            .unwrap()
            .get(session)
            .map(watch::Sender::subscribe)
    }

    fn context(&self, _namespace: &str, session: &str) -> Result<EffectiveContext, NoContext> {
        Err(NoContext::Unavailable(format!(
            "{session}: the fake serves snapshots only"
        )))
    }

    fn sessions(&self, _namespace: &str) -> Vec<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }

    fn inbox_limits(&self, _namespace: &str) -> InboxLimits {
        InboxPolicy::default().into()
    }

    fn session(&self, _namespace: &str, _name: &str) -> Option<Session> {
        None
    }

    fn spawn_policy(&self, _namespace: &str) -> SpawnPolicy {
        SpawnPolicy::default()
    }

    fn workload(
        &self,
        _namespace: &str,
        _session: &str,
        _account: (&str, &str),
    ) -> Result<Option<wopr_operator::policy::Standing>, String> {
        Ok(None)
    }
}

/// A control plane serving `discovery`; every session's own token works.
async fn serve(discovery: Arc<FakeDiscovery>) -> PolicyClient<tonic::transport::Channel> {
    let store = common::store::sqlite().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tokens: HashMap<String, Identity> = ["a", "b"]
        .iter()
        .map(|session| {
            let account = format!("wopr-{session}");
            let identity = Identity {
                namespace: NAMESPACE.into(),
                service_account: account.clone(),
                pod_name: Some(account),
            };
            (format!("token-{session}"), identity)
        })
        .collect();
    tokio::spawn(async move {
        wopr_operator::controlplane::serve(
            listener,
            common::tls::transport(),
            discovery,
            Arc::new(StaticTokens {
                sidecars: tokens,
                ..StaticTokens::default()
            }),
            Arc::new(MemoryRecorder::default()),
            AuditSetup {
                store: store.store.clone(),
                events: Arc::new(MemoryEvents::default()),
                metrics: AuditMetrics::default(),
            },
            Arc::new(KubeWriter(common::fake_api::FakeApi::start().0)),
            wopr_operator::controlplane::Settings::default(),
            wopr_operator::shutdown::on(std::future::pending()),
        )
        .await
    });
    PolicyClient::new(common::tls::channel(address).await)
}

async fn watch_session(
    client: &mut PolicyClient<tonic::transport::Channel>,
    session: &str,
) -> Result<tonic::Streaming<PolicyUpdate>, tonic::Status> {
    let mut request = tonic::Request::new(WatchRequest {
        namespace: NAMESPACE.into(),
        session: session.into(),
        heartbeat_seconds: 0,
    });
    let bearer = format!("Bearer token-{session}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    client.watch(request).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_unknown_session_is_not_found() {
    let mut client = serve(Arc::default()).await;
    let refused = watch_session(&mut client, "a").await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert!(refused.message().contains("does not exist"), "{refused:?}");
}

#[tokio::test]
async fn unavailable_is_served_and_a_deleted_session_ends_its_stream() {
    let discovery = Arc::new(FakeDiscovery::default());
    discovery.set(
        "a",
        Snapshot::Unavailable("the policy cannot be read".into()),
    );
    let mut client = serve(discovery.clone()).await;
    let mut stream = watch_session(&mut client, "a").await.unwrap();
    let first = stream.message().await.unwrap().unwrap().update;
    assert_eq!(
        first,
        Some(Update::Unavailable("the policy cannot be read".into()))
    );

    discovery.set("a", Snapshot::Gone("Session team-a/a was deleted".into()));
    let ended = stream.message().await.unwrap_err();
    assert_eq!(ended.code(), Code::NotFound);
    assert_eq!(ended.message(), "Session team-a/a was deleted");
}
