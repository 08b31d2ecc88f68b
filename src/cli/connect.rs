//! Connecting as kubectl does: the kubeconfig (`--kubeconfig`, else
//! `$KUBECONFIG`, else `~/.kube/config`, else in-cluster), its context,
//! cluster, user and namespace, each overridable by flag; and the control
//! plane, reached at `--control-plane` with the person's own bearer token,
//! which it has the API server review.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use secrecy::ExposeSecret;
use tonic::transport::{Channel, Endpoint};

use super::CliError;
use super::args::ClusterFlags;
use crate::proto::v1alpha1::audit_client::AuditClient;
use crate::proto::v1alpha1::broker_client::BrokerClient;

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
    /// `host:port` or `http://host:port`.
    pub address: String,
    /// The bearer token (a person's or a workload's Kubernetes credential).
    pub token: Option<String>,
}

impl ControlPlane {
    /// The control plane the flags name, presenting `--token` or else the
    /// kubeconfig user's token.
    pub fn from_flags(flags: &ClusterFlags, config: &Config) -> Option<ControlPlane> {
        let address = flags.control_plane.clone()?;
        let token = flags.token.clone().or_else(|| kubeconfig_token(config));
        Some(ControlPlane { address, token })
    }

    /// An Audit client, and the token to put on each request.
    pub async fn audit(&self) -> Result<(AuditClient<Channel>, String), CliError> {
        let (channel, token) = self.connect().await?;
        Ok((AuditClient::new(channel), token))
    }

    /// A Broker client, and the token to put on each request.
    pub async fn broker(&self) -> Result<(BrokerClient<Channel>, String), CliError> {
        let (channel, token) = self.connect().await?;
        Ok((BrokerClient::new(channel), token))
    }

    /// A channel to the control plane, and the token to present on it.
    async fn connect(&self) -> Result<(Channel, String), CliError> {
        let token = self.token.clone().ok_or_else(|| {
            CliError::Usage(
                "the control plane needs a bearer token and the kubeconfig user has none (client certificates or an exec plugin): pass --token or set WOPR_TOKEN"
                    .into(),
            )
        })?;
        let uri = if self.address.contains("://") {
            self.address.clone()
        } else {
            format!("http://{}", self.address)
        };
        let endpoint = Endpoint::from_shared(uri).map_err(|error| {
            CliError::Usage(format!(
                "--control-plane {:?} is not an address: {error}",
                self.address
            ))
        })?;
        let channel = endpoint.connect().await.map_err(|error| {
            CliError::Unreachable(format!(
                "cannot reach the control plane at {}: {}",
                self.address,
                root_cause(&error)
            ))
        })?;
        Ok((channel, token))
    }
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

fn root_cause(error: &dyn std::error::Error) -> String {
    let mut root = error;
    while let Some(cause) = root.source() {
        root = cause;
    }
    root.to_string()
}

/// `request` with `token` as its bearer credential.
pub fn bearer<T>(request: T, token: &str) -> Result<tonic::Request<T>, CliError> {
    let mut request = tonic::Request::new(request);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| CliError::Usage("the token is not a valid header value".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}
