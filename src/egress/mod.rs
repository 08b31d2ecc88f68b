//! The egress service (`wopr-operator egress`, SPEC §3; issue 25): the only
//! WOPR component with internet egress. It holds the model providers'
//! credentials, read from the Secrets a namespace's SecurityPolicy names
//! ([`credentials`]), and makes the model calls that sessions' sidecars
//! relay to it over gRPC ([`service`]), so no credential ever enters a
//! session pod. A call is authenticated by passing its token on to the
//! control plane's Policy watch ([`sessions`]), decided and budgeted
//! against the Session's effective policy ([`decide`], [`budget`]), and
//! walked down the session's chain of providers ([`upstream`]). It also
//! makes sessions' `http_fetch` calls behind its SSRF guard ([`fetch`],
//! issue 26), deciding them again itself. Stateless
//! but for its caches and ledger: any number of replicas.
//!
//! A role: it imports the layers below it and never another role
//! (`tests/layers.rs` checks it).

pub mod admin;
pub mod budget;
pub mod credentials;
pub mod decide;
pub mod fetch;
pub mod metrics;
pub mod policy;
pub mod provider_error;
pub mod redact;
pub mod run;
pub mod service;
pub mod sessions;
pub mod translate;
pub mod upstream;

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::proto::v1alpha1::fetch_server::FetchServer;
use crate::proto::v1alpha1::models_server::ModelsServer;
use crate::shutdown::Shutdown;
use crate::tls::server::{Transport, incoming};
use credentials::Credentials;
use fetch::service::FetchService;
use service::ModelsService;
use sessions::PolicySource;

/// How often an idle connection is pinged, and how long a ping may wait:
/// a sidecar that went away without closing holds no stream open.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a request message may carry beyond its body (names, headers).
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// Serves `service` and `fetch` (and gRPC health) on `listener`, over TLS
/// unless `transport` asks for plaintext by name, until `shutdown`
/// completes.
pub async fn serve<P: PolicySource, C: Credentials>(
    listener: TcpListener,
    transport: Transport,
    service: ModelsService<P, C>,
    fetch: FetchService<P>,
    max_body: usize,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ModelsServer<ModelsService<P, C>>>()
        .await;
    health_reporter
        .set_serving::<FetchServer<FetchService<P>>>()
        .await;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health)
        .add_service(
            ModelsServer::new(service).max_decoding_message_size(max_body + MESSAGE_OVERHEAD),
        )
        .add_service(
            FetchServer::new(fetch)
                .max_decoding_message_size(fetch::MAX_CALL_BYTES + MESSAGE_OVERHEAD)
                .max_encoding_message_size(fetch::MAX_RESPONSE_LIMIT + MESSAGE_OVERHEAD),
        );
    match transport {
        Transport::Tls(cert) => {
            router
                .serve_with_incoming_shutdown(incoming(listener, cert), shutdown)
                .await
        }
        Transport::InsecurePlaintext => {
            tracing::warn!(
                "the egress service serves plaintext (--insecure-plaintext): tokens cross the network readable"
            );
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
    }
}
