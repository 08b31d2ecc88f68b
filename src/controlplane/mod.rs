//! The control plane (served by every operator replica): a gRPC API that
//! streams each sidecar the effective policy of its session, takes its
//! reports on its sandbox, brokers messages between sessions, stores and
//! serves the audit trail, and records when Grants are used.

pub mod audit;
pub mod auth;
pub mod broker;
pub mod denials;
pub mod discover;
pub mod grant_use;
pub mod index;
pub mod isolation;
pub mod service;
pub mod writes;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use audit::{AuditService, AuditSetup};
use auth::Authenticator;
use broker::{BrokerService, Recording};
use denials::{DenialEvents, SessionEvents};
use discover::DiscoverPolicy;
use grant_use::GrantUses;
use isolation::IsolationRecorder;
use service::PolicyService;
use writes::ClusterWriter;

use crate::clock::Clock;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::v1alpha1::audit_server::AuditServer;
use crate::proto::v1alpha1::broker_server::BrokerServer;
use crate::proto::v1alpha1::policy_server::PolicyServer;
use crate::shutdown::Shutdown;

/// Serves the Policy, Broker and Audit services, gRPC health and server reflection on
/// `listener` (writing ApprovalRequests, spawned Sessions and Grants' use
/// with `writer`) until `shutdown` completes; then ends every open policy
/// stream (their sidecars reconnect to another replica) and returns once
/// the connections have closed.
pub async fn serve<D, A, R, E>(
    listener: TcpListener,
    discover: Arc<D>,
    authenticator: Arc<A>,
    recorder: Arc<R>,
    audit: AuditSetup<E>,
    writer: Arc<dyn ClusterWriter>,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error>
where
    D: DiscoverPolicy,
    A: Authenticator,
    R: IsolationRecorder,
    E: SessionEvents,
{
    let denials = DenialEvents::new(audit.events.clone());
    let uses = Arc::new(GrantUses::new(
        discover.clone(),
        writer.clone(),
        Clock::System,
    ));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyServer<PolicyService<D, A, R>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(PolicyServer::new(PolicyService::new(
            discover.clone(),
            authenticator.clone(),
            recorder,
            shutdown.clone(),
        )))
        .add_service(BrokerServer::new(BrokerService::new(
            discover.clone(),
            authenticator.clone(),
            Recording {
                store: audit.store.clone(),
                metrics: audit.metrics.clone(),
                denials: denials.clone(),
                uses: uses.clone(),
            },
            writer,
            shutdown.clone(),
        )))
        .add_service(AuditServer::new(AuditService::new(
            audit.store,
            discover,
            audit.metrics,
            denials,
            uses,
            authenticator,
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
