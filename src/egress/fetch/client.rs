//! One HTTP/1.1 exchange with exactly the address the guard admitted: a
//! TCP connection to that socket address, TLS (for `https`) verified
//! against the system's roots with the URL's host as SNI and as the name
//! the certificate must carry, then hyper's client connection. Nothing
//! here resolves a name. The answer's body is read up to a limit.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::http::{HeaderMap, HeaderValue, Method, Request, header};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::{Host, Position, Url};

use crate::cluster::root_cause;
use crate::tls::server::provider as crypto_provider;

/// What one hop sends.
pub struct Exchange<'a> {
    /// The address the guard admitted, and the only one dialled.
    pub address: SocketAddr,
    /// The hop's URL (its host is the TLS name and the `Host` header).
    pub url: &'a Url,
    pub method: Method,
    /// Headers already stripped of credentials and hop-by-hop ones.
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What one hop got.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// Why a hop got no answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("the HTTP exchange failed: {0}")]
    Http(String),
    #[error("the response body is over the limit of {0} bytes (--fetch-max-response-bytes): cut")]
    TooLarge(usize),
}

/// The client: its TLS settings and the body limit.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
    max_response: usize,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the http_fetch client: {0}")]
pub struct ClientError(String);

impl Client {
    /// A client verifying servers against `roots`, reading at most
    /// `max_response` bytes of a body.
    pub fn new(roots: rustls::RootCertStore, max_response: usize) -> Result<Client, ClientError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Client {
            tls: TlsConnector::from(Arc::new(tls)),
            max_response,
        })
    }

    /// Sends `exchange` and reads its answer.
    pub async fn send(&self, exchange: Exchange<'_>) -> Result<Answer, Failure> {
        let tcp = TcpStream::connect(exchange.address)
            .await
            .map_err(|error| Failure::Connect(exchange.address, error.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if exchange.url.scheme() == "https" {
            let name = tls_name(exchange.url);
            let server_name = ServerName::try_from(name.clone())
                .map_err(|error| Failure::Tls(name.clone(), error.to_string()))?;
            let tls = self
                .tls
                .connect(server_name, tcp)
                .await
                .map_err(|error| Failure::Tls(name, root_cause(&error)))?;
            self.over(tls, exchange).await
        } else {
            self.over(tcp, exchange).await
        }
    }

    /// The exchange over a connection made.
    async fn over<S>(&self, io: S, exchange: Exchange<'_>) -> Result<Answer, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let http = |error: hyper::Error| Failure::Http(root_cause(&error));
        let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(http)?;
        let _driver = Driver(tokio::spawn(connection));
        let head = exchange.method == Method::HEAD;
        let mut request = Request::builder()
            .method(exchange.method)
            .uri(&exchange.url[Position::BeforePath..Position::AfterQuery])
            .body(Full::new(exchange.body))
            .map_err(|error| Failure::Http(error.to_string()))?;
        *request.headers_mut() = exchange.headers;
        let authority = &exchange.url[Position::BeforeHost..Position::AfterPort];
        let host =
            HeaderValue::from_str(authority).map_err(|error| Failure::Http(error.to_string()))?;
        request.headers_mut().insert(header::HOST, host);
        let response = sender.send_request(request).await.map_err(http)?;
        let (parts, mut incoming) = response.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if !head && declared.is_some_and(|length| length > self.max_response as u64) {
            return Err(Failure::TooLarge(self.max_response));
        }
        let mut body = Vec::new();
        while let Some(frame) = incoming.frame().await {
            if let Ok(data) = frame.map_err(http)?.into_data() {
                if body.len() + data.len() > self.max_response {
                    return Err(Failure::TooLarge(self.max_response));
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// The name a server's certificate must carry: the URL's host (an
/// address without its brackets).
fn tls_name(url: &Url) -> String {
    match url.host() {
        Some(Host::Domain(name)) => name.to_owned(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Ipv6(address)) => address.to_string(),
        None => String::new(),
    }
}

/// Drives a connection; stops it when the exchange is over or dropped.
struct Driver<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Driver<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
