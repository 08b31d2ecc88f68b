//! Connecting as kubectl does: the kubeconfig (`--kubeconfig`, else
//! `$KUBECONFIG`, else `~/.kube/config`, else in-cluster), its context,
//! cluster, user and namespace, each overridable by flag; and the control
//! plane, reached at `--control-plane` or, without it, through the API
//! server's port-forward to a controller pod ([`super::portforward`]),
//! with the person's own bearer token, which it has the API server review.
//! Every connection (a port-forward's setup included) and every answer, of
//! either, is waited for at most `--request-timeout`: a server that accepts
//! and never answers is unreachable (exit 4), not a hang.

use std::future::Future;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kube::config::{ExecConfig, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint, Uri};

use super::CliError;
use super::args::ClusterFlags;
use super::portforward::{PortForward, Said, Target};
use crate::cluster::root_cause;
use crate::proto::v1alpha1::audit_client::AuditClient;
use crate::proto::v1alpha1::broker_client::BrokerClient;
use crate::proto::v1alpha1::peer_admin_client::PeerAdminClient;
use crate::tls::client::{Bundle, ClientTls};

/// A client for the cluster the flags name, and the namespace to act in.
pub async fn cluster(flags: &ClusterFlags) -> Result<(Client, Config), CliError> {
    let unreachable = |error: &dyn std::fmt::Display| {
        CliError::Unreachable(format!("no cluster to talk to: {error}"))
    };
    let options = KubeConfigOptions {
        context: flags.context.clone(),
        cluster: flags.cluster.clone(),
        user: flags.user.clone(),
    };
    let config = match &flags.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| unreachable(&e))?;
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| unreachable(&e))?
        }
        None => match Config::from_kubeconfig(&options).await {
            Ok(config) => config,
            Err(from_file) => Config::incluster().map_err(|_| unreachable(&from_file))?,
        },
    };
    // The read timeout bounds each wait for the API server's answer.
    let mut config = config;
    config.connect_timeout = Some(flags.request_timeout);
    config.read_timeout = Some(flags.request_timeout);
    config.write_timeout = Some(flags.request_timeout);
    let client = Client::try_from(config.clone()).map_err(|e| unreachable(&e))?;
    Ok((client, config))
}

/// The namespace the flags or the kubeconfig's context name.
pub fn namespace(flags: &ClusterFlags, config: &Config) -> String {
    flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone())
}

/// The control plane's gRPC API and the credential to present to it.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    /// How its bytes travel.
    pub route: Route,
    /// How the connection is secured: `None` when TLS was asked for but
    /// no CA bundle given (through a port-forward, the bundle the operator
    /// publishes is read; dialed directly, connecting says how to get it).
    pub tls: Option<ClientTls>,
    /// Where the bearer token (a person's or a workload's Kubernetes
    /// credential) comes from.
    pub credential: Credential,
    /// How long to wait for a connection and for each answer.
    pub timeout: Duration,
}

/// How the CLI reaches the control plane.
#[derive(Clone, Debug)]
pub enum Route {
    /// `--control-plane`: `host:port` or `http://host:port`, dialed directly.
    Address(String),
    /// No `--control-plane`: the API server's `pods/portforward` to a ready
    /// controller pod.
    PortForward(PortForward),
}

/// Which path `whoami` reports, as data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Path {
    /// `--control-plane`, dialed directly.
    Address(String),
    /// Through the API server, to this pod.
    PortForward(Target),
    /// Through the API server, but not now: why.
    Unavailable(String),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Address(address) => write!(f, "{address} (--control-plane, direct)"),
            Path::PortForward(target) => write!(f, "{target} (through the API server)"),
            Path::Unavailable(why) => write!(f, "port-forward, unavailable: {why}"),
        }
    }
}

/// `--request-timeout`'s default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How to make one call to the control plane: the credential to present
/// and how long to wait for the answer.
#[derive(Clone, Debug)]
pub struct Caller {
    token: String,
    timeout: Duration,
    /// The control plane, as the errors name it.
    named: String,
    /// What the port-forward's error channels said, for a failed call.
    said: Option<Said>,
}

impl Caller {
    /// `message` with the bearer token. It carries no `grpc-timeout`:
    /// tonic's client enforces that header itself and reports its expiry
    /// as `Cancelled` (a refusal), racing [`Caller::answer`]'s deadline.
    pub fn request<T>(&self, message: T) -> Result<tonic::Request<T>, CliError> {
        bearer(message, &self.token)
    }

    /// What `call` answers, or, when no answer comes within the timeout,
    /// unreachable (exit 4), whatever the server is doing.
    pub async fn answer<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CliError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(answer) => {
                answer
                    .map(tonic::Response::into_inner)
                    .map_err(|status| match &self.said {
                        Some(said) => said.instead(&self.named, CliError::from_status(status)),
                        None => CliError::from_status(status),
                    })
            }
            Err(_) => Err(no_answer(&self.named, self.timeout)),
        }
    }
}

/// The control plane (`named` as [`ControlPlane::named`] says) did not
/// answer within `timeout`.
fn no_answer(named: &str, timeout: Duration) -> CliError {
    CliError::Unreachable(format!(
        "{named} did not answer within {} (--request-timeout)",
        duration_text(timeout)
    ))
}

/// `timeout` as `--request-timeout` takes it.
fn duration_text(timeout: Duration) -> String {
    match timeout.as_secs() {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Where the control plane's bearer token comes from.
#[derive(Clone, Debug)]
pub enum Credential {
    /// This token (`--token`, or the kubeconfig user's token or token file).
    Token(String),
    /// The kubeconfig user's exec credential plugin (as on EKS, GKE, AKS),
    /// run only when a command talks to the control plane.
    Exec(Box<ExecConfig>),
    /// None: client certificates, say.
    Missing,
}

impl ControlPlane {
    /// The control plane the flags name, else the one port-forwarded to
    /// through `client` in `--operator-namespace`, presenting `--token` or
    /// else the kubeconfig user's token.
    pub fn from_flags(flags: &ClusterFlags, config: &Config, client: &Client) -> ControlPlane {
        let route = match &flags.control_plane {
            Some(address) => Route::Address(address.clone()),
            None => Route::PortForward(PortForward {
                client: client.clone(),
                namespace: flags.operator_namespace.clone(),
            }),
        };
        let auth = &config.auth_info;
        let token = flags.token.clone().or_else(|| kubeconfig_token(config));
        let credential = match (token, &auth.exec) {
            (Some(token), _) => Credential::Token(token),
            (None, Some(exec)) => Credential::Exec(Box::new(exec.clone())),
            (None, None) => Credential::Missing,
        };
        let tls = if flags.insecure_plaintext {
            Some(ClientTls::Plaintext)
        } else {
            flags
                .control_plane_ca
                .clone()
                .map(|ca_file| ClientTls::Verify {
                    bundle: Bundle::File(ca_file),
                    server_name: flags.control_plane_server_name.clone(),
                })
        };
        ControlPlane {
            route,
            tls,
            credential,
            timeout: flags.request_timeout,
        }
    }

    /// The control plane at `address`, secured as `tls` says, presenting
    /// `token`, with the default timeout.
    pub fn with_token(address: &str, tls: ClientTls, token: Option<&str>) -> ControlPlane {
        ControlPlane::on_route(Route::Address(address.to_owned()), Some(tls), token)
    }

    /// The control plane on `route`, secured as `tls` says, presenting
    /// `token`, with the default timeout.
    pub fn on_route(route: Route, tls: Option<ClientTls>, token: Option<&str>) -> ControlPlane {
        ControlPlane {
            route,
            tls,
            credential: token.map_or(Credential::Missing, |token| {
                Credential::Token(token.to_owned())
            }),
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// An Audit client, and how to call it.
    pub async fn audit(&self) -> Result<(AuditClient<Channel>, Caller), CliError> {
        let (channel, caller) = self.connect().await?;
        Ok((AuditClient::new(channel), caller))
    }

    /// A Broker client, and how to call it.
    pub async fn broker(&self) -> Result<(BrokerClient<Channel>, Caller), CliError> {
        let (channel, caller) = self.connect().await?;
        Ok((BrokerClient::new(channel), caller))
    }

    /// A PeerAdmin client, and how to call it.
    pub async fn peer_admin(&self) -> Result<(PeerAdminClient<Channel>, Caller), CliError> {
        let (channel, caller) = self.connect().await?;
        Ok((PeerAdminClient::new(channel), caller))
    }

    /// The path a command would take to the control plane now: the
    /// address, or the pod a port-forward would go to (or why none).
    pub async fn path(&self) -> Path {
        match &self.route {
            Route::Address(address) => Path::Address(address.clone()),
            Route::PortForward(forward) => {
                match tokio::time::timeout(self.timeout, forward.target()).await {
                    Ok(Ok(target)) => Path::PortForward(target),
                    Ok(Err(error)) => Path::Unavailable(error.to_string()),
                    Err(_) => {
                        Path::Unavailable(no_answer(&self.named(None), self.timeout).to_string())
                    }
                }
            }
        }
    }

    /// The control plane as errors name it: at its address, or through the
    /// port-forward to `target` (before one is found, in the namespace).
    fn named(&self, target: Option<&Target>) -> String {
        match (&self.route, target) {
            (Route::Address(address), _) => format!("the control plane at {address}"),
            (Route::PortForward(_), Some(target)) => {
                format!("the control plane through the {target}")
            }
            (Route::PortForward(forward), None) => format!(
                "the control plane through a port-forward in namespace {}",
                forward.namespace
            ),
        }
    }

    /// A channel to the control plane, and how to call it. The whole of
    /// it (a port-forward's pod lookup and upgrade included) is bounded by
    /// the timeout.
    async fn connect(&self) -> Result<(Channel, Caller), CliError> {
        let token = match &self.credential {
            Credential::Token(token) => token.clone(),
            Credential::Exec(exec) => exec_token(exec)?,
            Credential::Missing => {
                return Err(CliError::Usage(
                    "the control plane needs a bearer token and the kubeconfig user has none (client certificates): pass --token or set WOPR_TOKEN"
                        .into(),
                ));
            }
        };
        let (channel, named, said) = tokio::time::timeout(self.timeout, self.channel())
            .await
            .map_err(|_| no_answer(&self.named(None), self.timeout))??;
        let caller = Caller {
            token,
            timeout: self.timeout,
            named,
            said,
        };
        Ok((channel, caller))
    }

    /// The channel on this route, the control plane as errors name it, and
    /// for a port-forward what its error channels say.
    async fn channel(&self) -> Result<(Channel, String, Option<Said>), CliError> {
        match &self.route {
            Route::Address(address) => {
                let tls = self.tls.as_ref().ok_or_else(|| {
                    CliError::Usage(
                        "verifying the control plane needs its CA bundle: pass --control-plane-ca FILE (kubectl get configmap wopr-ca-bundle -o jsonpath='{.data.ca\\.crt}' > ca.crt)"
                            .into(),
                    )
                })?;
                let endpoint =
                    self.endpoint(address, tls, || format!("--control-plane {address:?}"))?;
                let named = self.named(None);
                let channel = endpoint
                    .connect()
                    .await
                    .map_err(|error| unreachable(&named, &error))?;
                Ok((channel, named, None))
            }
            Route::PortForward(forward) => {
                let target = forward.target().await?;
                let named = self.named(Some(&target));
                // Verified against the bundle the operator publishes beside
                // its pods, unless the flags name one (or plaintext).
                let tls = match &self.tls {
                    Some(tls) => tls.clone(),
                    None => ClientTls::Verify {
                        bundle: forward.bundle().await?,
                        server_name: None,
                    },
                };
                let endpoint = self.endpoint(&target.uri, &tls, || {
                    format!(
                        "the address pod {}/{} advertises",
                        target.namespace, target.pod
                    )
                })?;
                // Each connection tonic makes is a port-forward of its own.
                let forward = forward.clone();
                let said = Said::default();
                let heard = said.clone();
                let connector = tower::service_fn(move |_: Uri| {
                    let (forward, target, heard) = (forward.clone(), target.clone(), heard.clone());
                    async move { forward.open(&target, &heard).await.map(TokioIo::new) }
                });
                let channel =
                    endpoint
                        .connect_with_connector(connector)
                        .await
                        .map_err(|error| {
                            forward_error(&error).unwrap_or_else(|| {
                                said.instead(&named, unreachable(&named, &error))
                            })
                        })?;
                Ok((channel, named, Some(said)))
            }
        }
    }

    /// The endpoint at `address`, secured as `tls` says (`what` names
    /// where the address came from). It has no connect timeout of its
    /// own: [`ControlPlane::connect`] bounds the whole connection by the
    /// request timeout, and a second deadline at the same instant would
    /// race it and name the failure differently from run to run.
    fn endpoint(
        &self,
        address: &str,
        tls: &ClientTls,
        what: impl Fn() -> String,
    ) -> Result<Endpoint, CliError> {
        crate::tls::client::endpoint(address, tls)
            .map_err(|error| CliError::Usage(format!("{}: {error}", what())))
    }
}

/// `named` could not be connected to.
fn unreachable(named: &str, error: &dyn std::error::Error) -> CliError {
    CliError::Unreachable(format!("cannot reach {named}: {}", root_cause(error)))
}

/// The port-forward's own error (a refusal naming the right, an unready
/// pod) under tonic's transport error, as the connector made it.
fn forward_error(error: &(dyn std::error::Error + 'static)) -> Option<CliError> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<CliError>() {
            return Some(error.clone());
        }
        cause = error.source();
    }
    None
}

/// The token the exec credential plugin `exec` prints, as kubectl runs it:
/// its command, arguments and environment, `KUBERNETES_EXEC_INFO` set, the
/// `ExecCredential` on stdout (stderr is the person's, for prompts).
fn exec_token(exec: &ExecConfig) -> Result<String, CliError> {
    let failed = |why: String| {
        CliError::Unreachable(format!(
            "the kubeconfig's exec credential plugin gave no token ({why}): pass --token"
        ))
    };
    let command = exec
        .command
        .as_deref()
        .ok_or_else(|| failed("it names no command".into()))?;
    let api_version = exec
        .api_version
        .clone()
        .unwrap_or_else(|| "client.authentication.k8s.io/v1".into());
    let info = serde_json::json!({
        "apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": false},
    });
    let mut plugin = std::process::Command::new(command);
    plugin
        .args(exec.args.iter().flatten())
        .env("KUBERNETES_EXEC_INFO", info.to_string())
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for variable in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (variable.get("name"), variable.get("value")) {
            plugin.env(name, value);
        }
    }
    let output = plugin
        .output()
        .map_err(|error| failed(format!("{command}: {error}")))?;
    if !output.status.success() {
        return Err(failed(format!("{command} exited with {}", output.status)));
    }
    let credential: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|error| failed(format!("its output is not an ExecCredential: {error}")))?;
    credential["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| failed("its ExecCredential has no status.token".into()))
}

/// The kubeconfig user's bearer token, inline or from its file.
fn kubeconfig_token(config: &Config) -> Option<String> {
    let auth = &config.auth_info;
    if let Some(token) = &auth.token {
        return Some(token.expose_secret().to_owned());
    }
    let file = auth.token_file.as_ref()?;
    std::fs::read_to_string(file)
        .ok()
        .map(|token| token.trim().to_owned())
}

/// `request` with `token` as its bearer credential.
fn bearer<T>(request: T, token: &str) -> Result<tonic::Request<T>, CliError> {
    let mut request = tonic::Request::new(request);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| CliError::Usage("the token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn request_timeout_defaults_to_30s_and_reads_durations() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["kubectl-wopr"]
                    .iter()
                    .chain(args)
                    .chain(&["session", "list"]),
            )
        };
        assert_eq!(
            parse(&[]).unwrap().cluster.request_timeout,
            DEFAULT_REQUEST_TIMEOUT
        );
        assert_eq!(
            parse(&["--request-timeout", "2m"])
                .unwrap()
                .cluster
                .request_timeout,
            Duration::from_secs(120)
        );
        for bad in ["0s", "1", "soon"] {
            let error = parse(&["--request-timeout", bad]).unwrap_err().to_string();
            assert!(error.contains("is not a duration"), "{bad}: {error}");
        }
        assert_eq!(duration_text(Duration::from_secs(1)), "1s");
        assert_eq!(duration_text(Duration::from_secs(90)), "90s");
        assert_eq!(duration_text(Duration::from_secs(120)), "2m");
    }

    fn plugin(script: &str) -> ExecConfig {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "sh",
            "args": ["-c", script],
            "env": [{"name": "WOPR_TEST_TOKEN", "value": "from-the-plugin"}],
        }))
        .unwrap()
    }

    #[test]
    fn an_exec_plugin_gives_the_token_it_prints() {
        let printed = plugin(
            r#"echo "$KUBERNETES_EXEC_INFO" | grep -q ExecCredential && printf '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"%s"}}' "$WOPR_TEST_TOKEN""#,
        );
        assert_eq!(exec_token(&printed).unwrap(), "from-the-plugin");
        for broken in ["exit 3", "echo not-json", r#"echo '{"status":{}}'"#] {
            let error = exec_token(&plugin(broken)).unwrap_err();
            assert!(
                matches!(error, CliError::Unreachable(_)),
                "{broken}: {error}"
            );
            assert!(error.to_string().ends_with("pass --token"), "{error}");
        }
    }
}
