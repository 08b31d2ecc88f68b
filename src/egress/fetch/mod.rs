//! `http_fetch`, made by the egress service (issue 26) behind an SSRF
//! guard that cannot be talked around: each hop's host is resolved once
//! ([`resolver`]), every address judged ([`guard`]: a host with any
//! refused address is refused, naming it), and the client dials exactly
//! an admitted address ([`client`]), so a second DNS answer can never
//! switch it. Redirects are followed here, each hop judged like the first
//! ([`redirect`]); credentials and hop-by-hop headers are dropped both
//! ways ([`headers`]); the body has a size limit and the whole fetch a
//! time limit. The RPC that serves it is [`service`].

pub mod client;
pub mod guard;
pub mod headers;
pub mod redirect;
pub mod resolver;
pub mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use hyper::http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use url::{Host, Url};

use crate::api::Enforcement;
use crate::policy::tools::argument_rules::ArgumentRulesInForce;
use crate::policy::tools::arguments::{
    FetchRequest, MAX_FETCH_HEADERS, MAX_HEADER_BYTES, MAX_SENT_BYTES, MAX_URL_BYTES, fetchable_url,
};
use client::{Answer, Client, ClientError, Exchange, Failure};
use guard::Guard;
use redirect::MAX_REDIRECTS;
use resolver::Resolver;

/// The default largest answer body: 1 MiB.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The most `--fetch-max-response-bytes` may say: the answer travels in
/// one gRPC message to the sidecar.
pub const MAX_RESPONSE_LIMIT: usize = crate::contract::MAX_FETCH_RESPONSE_BYTES;
/// The largest call the arguments' limits allow: URL, headers and body.
pub const MAX_CALL_BYTES: usize =
    MAX_URL_BYTES + MAX_FETCH_HEADERS * 2 * MAX_HEADER_BYTES + MAX_SENT_BYTES;
/// The default time limit of a whole fetch, redirects included.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// How fetches are limited.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The largest answer body read.
    pub max_response_bytes: usize,
    /// From the first resolution to the last byte of the last hop.
    pub timeout: Duration,
    /// The cluster's pod and service networks, refused like private ones.
    pub deny_cidrs: Vec<IpNet>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_response_bytes: MAX_RESPONSE_BYTES,
            timeout: TIMEOUT,
            deny_cidrs: Vec::new(),
        }
    }
}

/// Why a fetch got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// A rule or the guard refused it: the hop was not sent.
    Refused(String),
    /// The network or a limit failed it.
    Failed(String),
}

impl Stopped {
    /// The same, said of redirect `hop` to `url`.
    fn on_redirect(self, hop: usize, url: &Url) -> Stopped {
        match self {
            Stopped::Refused(why) => Stopped::Refused(format!("redirect {hop} to {url}: {why}")),
            Stopped::Failed(why) => Stopped::Failed(format!("redirect {hop} to {url}: {why}")),
        }
    }
}

/// What a fetch came to, whether it got an answer or not.
#[derive(Debug)]
pub struct Fetched {
    pub result: Result<Answer, Stopped>,
    /// The URL of the last hop tried.
    pub final_url: String,
    /// The socket address of the last connection made.
    pub address: Option<SocketAddr>,
    /// The redirect hops followed.
    pub redirects: Vec<String>,
    /// Rule breaches of redirect hops warn mode let through.
    pub would_deny: Vec<String>,
}

/// Makes fetches.
#[derive(Clone)]
pub struct Fetcher {
    guard: Guard,
    client: Client,
    resolver: Arc<dyn Resolver>,
    timeout: Duration,
}

impl Fetcher {
    /// A fetcher resolving with `resolver`, verifying TLS against `roots`.
    pub fn new(
        settings: Settings,
        resolver: Arc<dyn Resolver>,
        roots: rustls::RootCertStore,
    ) -> Result<Fetcher, ClientError> {
        Ok(Fetcher {
            guard: Guard {
                cluster: settings.deny_cidrs,
            },
            client: Client::new(roots, settings.max_response_bytes)?,
            resolver,
            timeout: settings.timeout,
        })
    }

    /// Fetches `request` (validated, its first host passed by the rules)
    /// for a session held to `rules` in `enforcement`.
    pub async fn fetch(
        &self,
        request: &FetchRequest,
        rules: &ArgumentRulesInForce,
        enforcement: Enforcement,
    ) -> Fetched {
        let mut fetched = Fetched {
            result: Err(Stopped::Failed("not started".into())),
            final_url: request.url.clone(),
            address: None,
            redirects: Vec::new(),
            would_deny: Vec::new(),
        };
        let hops = self.hops(request, rules, enforcement, &mut fetched);
        fetched.result = match tokio::time::timeout(self.timeout, hops).await {
            Ok(result) => result,
            Err(_) => Err(Stopped::Failed(format!(
                "no complete answer within {:?} (--fetch-timeout-seconds): cut",
                self.timeout
            ))),
        };
        fetched
    }

    async fn hops(
        &self,
        request: &FetchRequest,
        rules: &ArgumentRulesInForce,
        enforcement: Enforcement,
        fetched: &mut Fetched,
    ) -> Result<Answer, Stopped> {
        let mut url = fetchable_url(&request.url).map_err(Stopped::Refused)?;
        let mut method = Method::from_bytes(request.method().as_bytes())
            .map_err(|error| Stopped::Refused(format!("method: {error}")))?;
        let mut sent = HeaderMap::new();
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes());
            let value = HeaderValue::from_str(value);
            if let (Ok(name), Ok(value)) = (name, value) {
                sent.append(name, value);
            }
        }
        headers::request(&mut sent);
        let mut body = Bytes::from(request.body.clone().unwrap_or_default());
        loop {
            fetched.final_url = url.to_string();
            let targets = self.targets(&url, rules).await.map_err(|stopped| {
                match fetched.redirects.len() {
                    0 => stopped,
                    hop => stopped.on_redirect(hop, &url),
                }
            })?;
            let answer = self
                .send(&targets, &url, &method, &sent, &body, fetched)
                .await?;
            let Some(hop) = redirect::next(answer.status, &answer.headers, &url, &method, &body)
            else {
                let mut answer = answer;
                headers::response(&mut answer.headers);
                return Ok(answer);
            };
            let number = fetched.redirects.len() + 1;
            let hop = hop.map_err(|why| Stopped::Refused(format!("redirect {number} {why}")))?;
            if number > MAX_REDIRECTS {
                return Err(Stopped::Refused(format!(
                    "more than {MAX_REDIRECTS} redirects (the next to {})",
                    hop.url
                )));
            }
            if let Some(host) = hop.url.host()
                && let Err(breach) = rules.check_host(&host)
            {
                let why = format!("redirect {number} to {}: {breach}", hop.url);
                match enforcement {
                    Enforcement::Enforce => return Err(Stopped::Refused(why)),
                    Enforcement::Warn => fetched.would_deny.push(why),
                }
            }
            fetched.redirects.push(hop.url.to_string());
            (url, method, body) = (hop.url, hop.method, hop.body);
        }
    }

    /// The addresses `url` may be connected to: its host's, each admitted
    /// by the guard; refused when any is not (a name whose answers mix
    /// public and private addresses is refused, not half-trusted).
    pub async fn targets(
        &self,
        url: &Url,
        rules: &ArgumentRulesInForce,
    ) -> Result<Vec<SocketAddr>, Stopped> {
        let port = url.port_or_known_default().unwrap_or(80);
        let (name, addresses) = match url.host() {
            Some(Host::Ipv4(address)) => (None, vec![SocketAddr::new(address.into(), port)]),
            Some(Host::Ipv6(address)) => (None, vec![SocketAddr::new(address.into(), port)]),
            Some(Host::Domain(name)) => {
                let resolved =
                    self.resolver.resolve(name, port).await.map_err(|error| {
                        Stopped::Failed(format!("cannot resolve {name}: {error}"))
                    })?;
                (Some(name), resolved)
            }
            None => return Err(Stopped::Refused(format!("{url} has no host"))),
        };
        if addresses.is_empty() {
            return Err(Stopped::Failed(format!(
                "{} resolves to no address",
                name.unwrap_or_default()
            )));
        }
        for address in &addresses {
            if let Err(refused) = self.guard.judge(address.ip(), rules) {
                return Err(Stopped::Refused(match name {
                    Some(name) => {
                        let all: Vec<String> =
                            addresses.iter().map(|a| a.ip().to_string()).collect();
                        format!(
                            "SSRF guard: {name} resolves to {}; {refused}",
                            all.join(", ")
                        )
                    }
                    None => format!("SSRF guard: {refused}"),
                }));
            }
        }
        Ok(addresses)
    }

    /// Sends one hop to the first of `targets` that takes the connection.
    async fn send(
        &self,
        targets: &[SocketAddr],
        url: &Url,
        method: &Method,
        headers: &HeaderMap,
        body: &Bytes,
        fetched: &mut Fetched,
    ) -> Result<Answer, Stopped> {
        let mut refused = Vec::new();
        for address in targets {
            let exchange = Exchange {
                address: *address,
                url,
                method: method.clone(),
                headers: headers.clone(),
                body: body.clone(),
            };
            match self.client.send(exchange).await {
                Err(failure @ Failure::Connect(..)) => refused.push(failure.to_string()),
                sent => {
                    fetched.address = Some(*address);
                    return sent.map_err(|failure| Stopped::Failed(failure.to_string()));
                }
            }
        }
        Err(Stopped::Failed(refused.join("; ")))
    }
}
