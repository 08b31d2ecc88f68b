//! The calls to model providers: one HTTP client (rustls on the ring
//! provider, verifying against the system's roots), the endpoint and the
//! key header of each provider type, and the timeouts that turn a
//! provider that does not answer into a failure the chain moves past.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};

use super::policy::Provider;
use crate::api::ProviderType;
use crate::tls::server::provider as crypto_provider;

/// The Anthropic API version sent when the agent names none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// How long the egress service waits on a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For the connection (TCP and TLS).
    pub connect: Duration,
    /// From the request sent to the response's head.
    pub first_byte: Duration,
    /// Between two chunks of the body.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
        }
    }
}

/// Why a provider gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection, or the request could not be sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No head within the first-byte timeout.
    #[error("no answer within {0:?}")]
    FirstByte(Duration),
    /// No chunk within the idle timeout.
    #[error("silent for {0:?} mid-answer")]
    Idle(Duration),
    /// The body broke off.
    #[error("the answer broke off: {0}")]
    Body(String),
}

/// The HTTP client of the model providers.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    timeouts: Timeouts,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("the model providers' HTTP client: {0}")]
pub struct ClientError(String);

impl Upstream {
    /// A client verifying providers against the system's roots.
    pub fn new(timeouts: Timeouts) -> Result<Upstream, ClientError> {
        let roots = system_roots();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(crypto_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| ClientError(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // reqwest leaves a preconfigured client's ALPN as it is given.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(timeouts.connect)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| ClientError(error.to_string()))?;
        Ok(Upstream { client, timeouts })
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends `body` (JSON, in the provider's dialect) to `provider` with
    /// `key`, and the agent's `headers` the provider's API defines; the
    /// response once its head arrived.
    pub async fn send(
        &self,
        provider: &Provider,
        key: &SecretString,
        body: Vec<u8>,
        headers: &HashMap<String, String>,
    ) -> Result<reqwest::Response, Failure> {
        let request = match provider.kind {
            ProviderType::Openai | ProviderType::OpenaiCompatible => self
                .client
                .post(format!("{}/chat/completions", provider.base_url))
                .bearer_auth(key.expose_secret()),
            ProviderType::Anthropic => {
                let version = headers
                    .get("anthropic-version")
                    .map_or(ANTHROPIC_VERSION, String::as_str);
                let request = self
                    .client
                    .post(format!("{}/v1/messages", provider.base_url))
                    .header("x-api-key", key.expose_secret())
                    .header("anthropic-version", version);
                match headers.get("anthropic-beta") {
                    Some(beta) => request.header("anthropic-beta", beta),
                    None => request,
                }
            }
        };
        let sent = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        match tokio::time::timeout(self.timeouts.first_byte, sent).await {
            Err(_) => Err(Failure::FirstByte(self.timeouts.first_byte)),
            Ok(Err(error)) => Err(Failure::Connect(cause(&error))),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// The next chunk of `response`'s body (`None` at its end), within the
    /// idle timeout.
    pub async fn chunk(&self, response: &mut reqwest::Response) -> Result<Option<Bytes>, Failure> {
        match tokio::time::timeout(self.timeouts.idle, response.chunk()).await {
            Err(_) => Err(Failure::Idle(self.timeouts.idle)),
            Ok(Err(error)) => Err(Failure::Body(cause(&error))),
            Ok(Ok(chunk)) => Ok(chunk),
        }
    }
}

/// The system's root certificates: what model providers and `http_fetch`
/// servers are verified against.
pub fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "a system root certificate cannot be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    tracing::debug!(
        added,
        ignored,
        "system roots for the egress service's clients"
    );
    roots
}

/// A reqwest error's innermost cause (which names no URL).
fn cause(error: &reqwest::Error) -> String {
    crate::cluster::root_cause(error)
}
