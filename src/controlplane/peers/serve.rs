//! The ingress's front: HTTPS with JSON bodies and gRPC (`Peers`) on one
//! listener of its own, HTTP/1.1 and HTTP/2 (by ALPN over TLS). A body is
//! refused by its declared length before it is read, and read no further
//! than the largest message plus one byte otherwise, so an oversized
//! message costs at most that much memory; and at most
//! `max_in_flight` messages are taken at once (the rest refused at once,
//! 503), so a flood of connections costs at most that many bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures::StreamExt;
use http_body_util::{BodyExt, Limited};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as GrpcRequest, Response as GrpcResponse, Status};

use super::{Ingress, RefusalKind, Refused, Reply};
use crate::controlplane::discover::DiscoverPolicy;
use crate::p2p::MAX_MESSAGE_BYTES;
use crate::proto::v1alpha1::peers_server::{Peers, PeersServer};
use crate::proto::v1alpha1::{PeerMessage, PeerReply};
use crate::shutdown::Shutdown;
use crate::tls;
use crate::tls::server::Transport;

/// The header of a `GET /v1alpha1/outbox`: the signed `outbox` message,
/// base64url.
pub const MESSAGE_HEADER: &str = "wopr-message";

/// How long a peer may take to send its message's body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `ingress` on `listener` until `shutdown`, over TLS unless
/// `transport` asks for plaintext by name (behind a proxy that ends TLS).
pub async fn serve<D: DiscoverPolicy>(
    listener: TcpListener,
    transport: Transport,
    ingress: Arc<Ingress<D>>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let grpc = tonic::service::Routes::new(
        PeersServer::new(PeersService(ingress.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES + 64),
    )
    .into_axum_router();
    let in_flight = Arc::new(Semaphore::new(ingress.settings.max_in_flight as usize));
    let app = Router::new()
        .route("/v1alpha1/messages", post(http_message::<D>))
        .route("/v1alpha1/outbox", get(http_outbox::<D>))
        .with_state(ingress.clone())
        .merge(grpc)
        .layer(middleware::from_fn_with_state(
            (ingress, in_flight),
            admit::<D>,
        ));
    match transport {
        Transport::Tls(cert) => {
            let connections = tls::server::incoming_speaking(listener, cert, &[b"h2", b"http/1.1"]);
            axum::serve(TlsConnections(connections), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Transport::InsecurePlaintext => {
            tracing::warn!(
                "the peer ingress serves plaintext (--insecure-plaintext): end TLS in front of it"
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

/// The TLS connections of [`tls::server::incoming_speaking`], as axum
/// takes connections.
struct TlsConnections(ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>>);

impl axum::serve::Listener for TlsConnections {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.next().await {
                Some(Ok(connection)) => {
                    let Ok(address) = connection.get_ref().0.peer_addr() else {
                        continue;
                    };
                    return (connection, address);
                }
                Some(Err(_)) => continue,
                // The acceptor is gone: no more connections, ever.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Err(std::io::Error::other("the TLS acceptor owns the listener"))
    }
}

/// Takes a request (HTTPS or gRPC) while fewer than `max_in_flight` are
/// being served, before its body is read; refuses it at once otherwise.
async fn admit<D: DiscoverPolicy>(
    State((ingress, in_flight)): State<(Arc<Ingress<D>>, Arc<Semaphore>)>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(_serving) = in_flight.try_acquire_owned() else {
        let busy = Refused::new(
            RefusalKind::Unavailable,
            format!(
                "the ingress is taking its limit of {} messages at once: try again shortly",
                ingress.settings.max_in_flight
            ),
        );
        return respond(Err(ingress.refuse_unattributed(busy).await));
    };
    next.run(request).await
}

/// The HTTP answer to `outcome`.
fn respond(outcome: Result<Reply, Refused>) -> Response {
    let (status, body) = match outcome {
        Ok(reply) => (reply.status, reply.body),
        Err(refused) => (refused.kind.http_status(), refused.body()),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn too_large(bytes: impl std::fmt::Display) -> Refused {
    Refused::new(
        RefusalKind::TooLarge,
        format!("the message is {bytes} bytes, over the limit of {MAX_MESSAGE_BYTES}"),
    )
}

/// The body of a request, read no further than the largest message.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, Refused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(declared) = declared
        && declared > MAX_MESSAGE_BYTES as u64
    {
        return Err(too_large(declared));
    }
    let limited = Limited::new(body, MAX_MESSAGE_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(too_large("more than that"))
        }
        Ok(Err(error)) => Err(Refused::new(
            RefusalKind::Malformed,
            format!("cannot read the message: {error}"),
        )),
        Err(_) => Err(Refused::new(
            RefusalKind::Malformed,
            format!(
                "the message took over {} s to arrive",
                BODY_TIMEOUT.as_secs()
            ),
        )),
    }
}

async fn http_message<D: DiscoverPolicy>(
    State(ingress): State<Arc<Ingress<D>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match read_body(&headers, body).await {
        Ok(raw) => respond(ingress.receive(&raw).await),
        Err(refused) => respond(Err(ingress.refuse_unattributed(refused).await)),
    }
}

async fn http_outbox<D: DiscoverPolicy>(
    State(ingress): State<Arc<Ingress<D>>>,
    headers: HeaderMap,
) -> Response {
    let encoded = headers
        .get(MESSAGE_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if encoded.len() > MAX_MESSAGE_BYTES {
        return respond(Err(ingress
            .refuse_unattributed(too_large(encoded.len()))
            .await));
    }
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    match engine.decode(encoded.trim_end_matches('=')) {
        Ok(raw) if !raw.is_empty() => respond(ingress.receive(&raw).await),
        _ => {
            let unreadable = Refused::new(
                RefusalKind::Malformed,
                format!(
                    "send the signed outbox message, base64url, in the {MESSAGE_HEADER} header"
                ),
            );
            respond(Err(ingress.refuse_unattributed(unreadable).await))
        }
    }
}

/// The gRPC form.
struct PeersService<D>(Arc<Ingress<D>>);

#[tonic::async_trait]
impl<D: DiscoverPolicy> Peers for PeersService<D> {
    async fn deliver(
        &self,
        request: GrpcRequest<PeerMessage>,
    ) -> Result<GrpcResponse<PeerReply>, Status> {
        let raw = request.into_inner().message;
        match self.0.receive(&raw).await {
            Ok(reply) => Ok(GrpcResponse::new(PeerReply {
                reply_json: reply.body.to_string(),
            })),
            Err(refused) => Err(Status::new(refused.kind.grpc_code(), refused.reason)),
        }
    }
}
