//! The control plane without `--control-plane`: through the API server's
//! `pods/portforward` to a ready controller pod, as `kubectl port-forward`
//! does, in process. The person's RBAC decides: `list` on pods, and `get`
//! and `create` on `pods/portforward` in the operator's namespace (the
//! chart's Role [`CLIENT_ROLE`]; the WebSocket upgrade is a GET, which API
//! servers before 1.35 authorize as `get` and later ones also as
//! `create`), then, at the control plane, the rights each call needs, as on
//! the direct path.

use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::io::DuplexStream;

use super::CliError;
use crate::contract::{CA_BUNDLE_CONFIGMAP, CA_BUNDLE_KEY};
use crate::tls::client::Bundle;

/// `--operator-namespace`'s default: where the chart's manifests install
/// the controller.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "wopr-system";

/// The label the chart gives every controller pod (session pods are
/// `wopr-session`, the profile installer `wopr-profile-installer`), and the
/// egress service's pods too, told apart by [`EGRESS_COMPONENT`].
const CONTROLLER_LABEL: (&str, &str) = ("app.kubernetes.io/name", "wopr-operator");
/// The component label of the egress service's pods, which serve no control
/// plane. Selecting "not egress" rather than `component=controller` also
/// finds the controller pods of a release older than the label.
const EGRESS_COMPONENT: (&str, &str) = ("app.kubernetes.io/component", "egress");

/// The label selector of the controller pods.
fn controller_selector() -> String {
    let ((label, value), (component, egress)) = (CONTROLLER_LABEL, EGRESS_COMPONENT);
    format!("{label}={value},{component}!={egress}")
}

/// The controller container's port the chart names for the control plane's
/// gRPC API.
const GRPC_PORT_NAME: &str = "grpc";

/// The controller's flag naming the address sidecars dial (and so the name
/// its server certificate is for).
const ADDRESS_FLAG: &str = "--control-plane-address";

/// The chart's Role, in the operator's namespace, that holds what this path
/// needs.
pub const CLIENT_ROLE: &str = "wopr-control-plane-client";

/// Where the control plane is reached through the API server.
#[derive(Clone)]
pub struct PortForward {
    /// The API server, as the person running the command.
    pub client: Client,
    /// The operator's namespace (`--operator-namespace`).
    pub namespace: String,
}

impl std::fmt::Debug for PortForward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortForward")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The error channels of a channel's port-forwards (one per connection
/// tonic makes): the kubelet writes why a port cannot be reached there (a
/// connection refused in the pod) before it ends the stream, so a call
/// that fails after it can say why. Best effort: kube delivers the message
/// only if its loop reads it before a write to the closed socket fails;
/// without it the call's own error stands (unreachable either way).
#[derive(Clone, Default)]
pub struct Said(Arc<Mutex<Vec<ErrorChannel>>>);

/// What one port-forward's error channel says, once it has: its message,
/// or nothing when it closed silently.
type ErrorChannel = Shared<BoxFuture<'static, Option<String>>>;

impl std::fmt::Debug for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Said").finish_non_exhaustive()
    }
}

impl Said {
    /// `error`, or, when it is unreachable and a kubelet has said why,
    /// that (`named` names the control plane).
    pub fn instead(&self, named: &str, error: CliError) -> CliError {
        match (error, self.now()) {
            (CliError::Unreachable(_), Some(why)) => {
                CliError::Unreachable(format!("{named} failed: {why}"))
            }
            (error, _) => error,
        }
    }

    /// The first thing a kubelet has said by now, if anything.
    pub fn now(&self) -> Option<String> {
        let errors = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        errors
            .iter()
            .find_map(|error| error.clone().now_or_never().flatten())
    }
}

/// The controller pod a port-forward goes to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    /// The container port named `grpc`.
    pub port: u16,
    /// The address the pod tells sidecars to dial: the URI (scheme and
    /// server name) of the channel, whatever carries its bytes.
    pub uri: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "port-forward to pod {}/{} port {}",
            self.namespace, self.pod, self.port
        )
    }
}

impl PortForward {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// A ready controller pod of the operator's namespace, and its port.
    pub async fn target(&self) -> Result<Target, CliError> {
        let listed = self
            .pods()
            .list(&ListParams::default().labels(&controller_selector()))
            .await
            .map_err(|error| match &error {
                kube::Error::Api(status) if status.code == 403 => CliError::Refused(format!(
                    "cannot list the controller's pods in namespace {}: {} ({})",
                    self.namespace,
                    self.needed(),
                    crate::cluster::describe(&error)
                )),
                _ => CliError::from_kube(&format!("pods in namespace {}", self.namespace), error),
            })?;
        select(&listed.items, &self.namespace)
    }

    /// A new stream to `target`'s port, through the API server; what the
    /// kubelet says on its error channel goes to `said`.
    pub async fn open(&self, target: &Target, said: &Said) -> Result<DuplexStream, CliError> {
        let mut forwarder = self
            .pods()
            .portforward(&target.pod, &[target.port])
            .await
            .map_err(|error| match &error {
                kube::Error::Api(status) if status.code == 403 => CliError::Refused(format!(
                    "{target} refused: {} ({})",
                    self.needed(),
                    crate::cluster::describe(&error)
                )),
                _ => CliError::Unreachable(format!(
                    "cannot open a {target}: {}",
                    crate::cluster::describe(&error)
                )),
            })?;
        if let Some(error) = forwarder.take_error(target.port) {
            let mut errors = said.0.lock().unwrap_or_else(PoisonError::into_inner);
            errors.push(error.boxed().shared());
        }
        forwarder.take_stream(target.port).ok_or_else(|| {
            CliError::Unreachable(format!("the {target} carries no stream for its port"))
        })
    }

    /// The control plane's CA bundle, as the operator publishes it in its
    /// own namespace (the ConfigMap [`CA_BUNDLE_CONFIGMAP`]), to verify the
    /// server the port-forward reaches.
    pub async fn bundle(&self) -> Result<Bundle, CliError> {
        let config_maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let from = format!("ConfigMap {}/{CA_BUNDLE_CONFIGMAP}", self.namespace);
        let found =
            config_maps
                .get_opt(CA_BUNDLE_CONFIGMAP)
                .await
                .map_err(|error| match &error {
                    kube::Error::Api(status) if status.code == 403 => CliError::Refused(format!(
                        "cannot read the control plane's CA bundle, {from}: {} ({})",
                        self.needed(),
                        crate::cluster::describe(&error)
                    )),
                    _ => CliError::from_kube(&from, error),
                })?;
        let pem = found
            .and_then(|config_map| config_map.data?.remove(CA_BUNDLE_KEY))
            .ok_or_else(|| {
                CliError::Unreachable(format!(
                    "no CA bundle to verify the control plane with: {from} has no {CA_BUNDLE_KEY} (the operator publishes it when it serves TLS); pass --control-plane-ca FILE, or --insecure-plaintext for a development control plane"
                ))
            })?;
        Ok(Bundle::Published { pem, from })
    }

    /// The rights this path needs, and the alternatives.
    fn needed(&self) -> String {
        format!(
            "reaching the control plane without --control-plane needs list on pods, get and create on pods/portforward, and get on the ConfigMap {CA_BUNDLE_CONFIGMAP}, in namespace {} (bind the Role {CLIENT_ROLE} there), or pass --control-plane HOST:PORT",
            self.namespace
        )
    }
}

/// Of `pods`, the controller pod to forward to: one carrying the chart's
/// label, not being deleted, Ready; the first by name of those (every
/// replica serves the control plane). `namespace` is for the errors.
pub fn select(pods: &[Pod], namespace: &str) -> Result<Target, CliError> {
    let (label, value) = CONTROLLER_LABEL;
    let (component, egress) = EGRESS_COMPONENT;
    let controllers: Vec<&Pod> = pods
        .iter()
        .filter(|pod| pod.labels().get(label).map(String::as_str) == Some(value))
        .filter(|pod| pod.labels().get(component).map(String::as_str) != Some(egress))
        .collect();
    let selector = controller_selector();
    if controllers.is_empty() {
        return Err(CliError::Unreachable(format!(
            "no controller pod ({selector}) in namespace {namespace}: is the operator installed there? Pass --operator-namespace, or --control-plane HOST:PORT"
        )));
    }
    let mut ready: Vec<&Pod> = controllers
        .iter()
        .copied()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && is_ready(pod))
        .collect();
    ready.sort_by_key(|pod| pod.name_any());
    let Some(pod) = ready.first() else {
        return Err(CliError::Unreachable(format!(
            "no ready controller pod in namespace {namespace} ({} found, none Ready and not terminating): see kubectl get pods -n {namespace} -l {selector}",
            controllers.len()
        )));
    };
    let name = pod.name_any();
    let containers = pod.spec.iter().flat_map(|spec| &spec.containers);
    let found = containers
        .flat_map(|container| {
            container
                .ports
                .iter()
                .flatten()
                .map(move |port| (container, port))
        })
        .find(|(_, port)| port.name.as_deref() == Some(GRPC_PORT_NAME));
    let Some((container, port)) = found else {
        return Err(CliError::Unreachable(format!(
            "controller pod {namespace}/{name} has no container port named {GRPC_PORT_NAME}"
        )));
    };
    let port = u16::try_from(port.container_port).map_err(|_| {
        CliError::Unreachable(format!(
            "controller pod {namespace}/{name}: port {GRPC_PORT_NAME} is {}, not a port",
            port.container_port
        ))
    })?;
    let uri = advertised_address(container.args.iter().flatten())
        .unwrap_or_else(|| format!("http://localhost:{port}"));
    Ok(Target {
        namespace: namespace.to_owned(),
        pod: name,
        port,
        uri,
    })
}

/// The value of `--control-plane-address` in `args`
/// (`--control-plane-address=URL` or `--control-plane-address URL`).
fn advertised_address<'a>(mut args: impl Iterator<Item = &'a String>) -> Option<String> {
    let flag = format!("{ADDRESS_FLAG}=");
    while let Some(arg) = args.next() {
        if let Some(value) = arg.strip_prefix(&flag) {
            return Some(value.to_owned());
        }
        if arg == ADDRESS_FLAG {
            return args.next().cloned();
        }
    }
    None
}

/// Whether the pod's Ready condition is True.
fn is_ready(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, labels: serde_json::Value, ready: &str, deleting: bool) -> Pod {
        let mut pod = json!({
            "metadata": {"name": name, "namespace": "wopr-system", "labels": labels},
            "spec": {"containers": [{
                "name": "controller",
                "args": ["controller", "--control-plane-address=http://wopr-operator.wopr-system.svc:9443"],
                "ports": [
                    {"name": "admin", "containerPort": 8080},
                    {"name": "grpc", "containerPort": 9443},
                ],
            }]},
            "status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": ready},
            ]},
        });
        if deleting {
            pod["metadata"]["deletionTimestamp"] = json!("2026-11-24T12:00:00Z");
        }
        serde_json::from_value(pod).unwrap()
    }

    fn controller() -> serde_json::Value {
        json!({"app.kubernetes.io/name": "wopr-operator", "app.kubernetes.io/instance": "wopr-operator"})
    }

    fn chosen(pods: &[Pod]) -> Result<String, String> {
        select(pods, "wopr-system")
            .map(|target| target.pod)
            .map_err(|error| error.to_string())
    }

    #[test]
    fn a_ready_controller_pod_not_being_deleted_is_chosen() {
        let target = select(&[pod("c-1", controller(), "True", false)], "wopr-system").unwrap();
        assert_eq!(
            target,
            Target {
                namespace: "wopr-system".into(),
                pod: "c-1".into(),
                port: 9443,
                uri: "http://wopr-operator.wopr-system.svc:9443".into(),
            }
        );
        assert_eq!(
            chosen(&[
                pod("c-0", controller(), "False", false),
                pod("c-1", controller(), "True", true),
                pod("c-3", controller(), "True", false),
                pod("c-2", controller(), "True", false),
            ]),
            Ok("c-2".into()),
            "not the unready one, not the terminating one, the first by name of the rest"
        );
    }

    /// The egress service's pods share the operator's name label but serve
    /// no control plane: never chosen, also when they sort first.
    #[test]
    fn an_egress_pod_is_never_chosen() {
        let egress = json!({"app.kubernetes.io/name": "wopr-operator", "app.kubernetes.io/component": "egress"});
        let mut labelled = controller();
        labelled["app.kubernetes.io/component"] = json!("controller");
        assert_eq!(
            chosen(&[
                pod("a-egress", egress.clone(), "True", false),
                pod("c-1", labelled, "True", false),
            ]),
            Ok("c-1".into())
        );
        let only_egress = chosen(&[pod("a-egress", egress, "True", false)]).unwrap_err();
        assert!(only_egress.contains("component!=egress"), "{only_egress}");
        assert_eq!(
            controller_selector(),
            "app.kubernetes.io/name=wopr-operator,app.kubernetes.io/component!=egress"
        );
    }

    #[test]
    fn only_pods_with_the_controller_label_count() {
        let session = json!({"app.kubernetes.io/name": "wopr-session"});
        let installer = json!({"app.kubernetes.io/name": "wopr-profile-installer"});
        let unlabelled = json!({});
        let others = [
            pod("a-session", session, "True", false),
            pod("b-installer", installer, "True", false),
            pod("c-bare", unlabelled, "True", false),
        ];
        let error = chosen(&others).unwrap_err();
        assert!(
            error.starts_with(
                "no controller pod (app.kubernetes.io/name=wopr-operator,app.kubernetes.io/component!=egress) in namespace wopr-system"
            ),
            "{error}"
        );
        let mut with_controller = others.to_vec();
        with_controller.push(pod("z-controller", controller(), "True", false));
        assert_eq!(chosen(&with_controller), Ok("z-controller".into()));
    }

    #[test]
    fn no_ready_pod_is_unreachable_and_says_so() {
        let pods = [
            pod("c-0", controller(), "False", false),
            pod("c-1", controller(), "True", true),
        ];
        let error = select(&pods, "wopr-system").unwrap_err();
        assert!(matches!(error, CliError::Unreachable(_)), "{error:?}");
        assert!(
            error
                .to_string()
                .starts_with("no ready controller pod in namespace wopr-system (2 found"),
            "{error}"
        );
        let mut no_conditions = pod("c-2", controller(), "True", false);
        no_conditions.status = None;
        assert!(select(&[no_conditions], "wopr-system").is_err());
    }

    #[test]
    fn the_port_is_the_one_named_grpc() {
        let mut moved = pod("c-0", controller(), "True", false);
        let container = &mut moved.spec.as_mut().unwrap().containers[0];
        container.ports.as_mut().unwrap()[1].container_port = 10443;
        container.args = Some(vec![
            "--control-plane-address".into(),
            "https://cp.example:10443".into(),
        ]);
        let target = select(&[moved.clone()], "wopr-system").unwrap();
        assert_eq!(
            (target.port, target.uri.as_str()),
            (10443, "https://cp.example:10443")
        );

        moved.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[1]
            .name = Some("h2c".into());
        let error = select(&[moved], "wopr-system").unwrap_err().to_string();
        assert_eq!(
            error,
            "controller pod wopr-system/c-0 has no container port named grpc"
        );
    }
}
