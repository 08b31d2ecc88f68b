//! The control plane (served by every controller replica): a gRPC API that
//! streams each sidecar the effective policy of its session.

pub mod auth;
pub mod index;
pub mod isolation;
pub mod service;

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use auth::Authenticator;
use index::ContextIndex;
use isolation::IsolationRecorder;
use service::PolicyService;

use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::v1alpha1::policy_server::PolicyServer;

/// Completes when the replica starts shutting down: open streams end then.
pub type Shutdown = Shared<BoxFuture<'static, ()>>;

/// Serves the Policy service, gRPC health and server reflection on
/// `listener` until `shutdown` completes; then ends every open policy
/// stream (their sidecars reconnect to another replica) and returns once
/// the connections have closed.
pub async fn serve<A: Authenticator, R: IsolationRecorder>(
    listener: TcpListener,
    index: Arc<ContextIndex>,
    authenticator: Arc<A>,
    recorder: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let shutdown: Shutdown = shutdown.boxed().shared();
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyServer<PolicyService<A, R>>>()
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
            index,
            authenticator,
            recorder,
            shutdown.clone(),
        )))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
