//! Start-up checks that turn the usual misconfigurations into one line
//! saying what is missing and how to fix it: no Kubernetes configuration,
//! an API server that cannot be reached, CRDs that are not installed, RBAC
//! rights the controller lacks, and a missing namespace for the Lease.
//!
//! [`REQUIRED_RIGHTS`] is the one list of what the controller calls; the
//! chart's RBAC is tested against it, and the controller checks it at
//! start-up with SelfSubjectAccessReviews (which every authenticated
//! identity may create), as `kubectl auth can-i` does.

use std::time::Duration;

use futures::future::join_all;
use kube::{Client, Config};

use super::access::Access;
use super::describe;
use crate::api;

/// Where a right is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// In the watched namespaces: all of them, or `--watch-namespace`.
    Watched,
    /// Cluster-scoped resources.
    Cluster,
    /// In the operator's own namespace (the Lease, the CA Secret), checked
    /// at start-up with leader election only.
    OperatorNamespace,
}

/// Verbs on resources of one API group, needed in one scope.
#[derive(Debug)]
pub struct Rights {
    /// Where.
    pub scope: Scope,
    /// The API group (`""` for the core group).
    pub group: &'static str,
    /// Resources, with subresources as `sessions/status`.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// The only objects the right is needed on (RBAC's `resourceNames`);
    /// every object when empty.
    pub names: &'static [&'static str],
}

/// Everything the controller calls, and where.
pub const REQUIRED_RIGHTS: &[Rights] = &[
    // run.rs: reflectors and controllers watch the four kinds a Session's
    // effective policy depends on, and the ApprovalRequests people decide.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &[
            "securitypolicies",
            "sessions",
            "grants",
            "gateways",
            "approvalrequests",
        ],
        verbs: &["list", "watch"],
        names: &[],
    },
    // controlplane/writes.rs: the broker files the forwards and
    // elevations that wait for a person and creates the sessions agents
    // spawn; controller/approvals/ makes the Grant of an approved
    // elevation.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &["approvalrequests", "grants", "sessions"],
        verbs: &["create"],
        names: &[],
    },
    // controlplane/peers/claims.rs: a peer's key rotation moves its
    // Grants to the new key.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &["grants"],
        verbs: &["patch"],
        names: &[],
    },
    // apply.rs: status by server-side apply; controlplane/grant_use.rs:
    // a Grant's `lastUsedAt`.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &[
            "sessions/status",
            "securitypolicies/status",
            "gateways/status",
            "approvalrequests/status",
            "grants/status",
        ],
        verbs: &["patch"],
        names: &[],
    },
    // Children carry owner references with blockOwnerDeletion, which the
    // OwnerReferencesPermissionEnforcement admission plugin allows only to
    // whoever may update the owner's finalizers.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &["sessions/finalizers"],
        verbs: &["update"],
        names: &[],
    },
    // reconcile.rs: read, apply, watch (owns) and replace pods. An apply
    // that creates an object is authorized as `create` too.
    Rights {
        scope: Scope::Watched,
        group: "",
        resources: &["pods"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        names: &[],
    },
    // controlplane/isolation.rs: each sidecar's sandbox checks, recorded as
    // conditions of its pod.
    Rights {
        scope: Scope::Watched,
        group: "",
        resources: &["pods/status"],
        verbs: &["patch"],
        names: &[],
    },
    // The control plane runs exec_command in the caller's own agent
    // container: `create` on pods/exec, and `get`, which the WebSocket
    // upgrade (a GET) is authorized as on API servers before 1.31.
    Rights {
        scope: Scope::Watched,
        group: "",
        resources: &["pods/exec"],
        verbs: &["create", "get"],
        names: &[],
    },
    Rights {
        scope: Scope::Watched,
        group: "",
        resources: &["serviceaccounts"],
        verbs: &["get", "list", "watch", "create", "patch"],
        names: &[],
    },
    Rights {
        scope: Scope::Watched,
        group: "networking.k8s.io",
        resources: &["networkpolicies"],
        verbs: &["get", "list", "watch", "create", "patch"],
        names: &[],
    },
    // controller/ca_bundle.rs: the control plane's CA bundle, applied
    // into each namespace with Sessions for their pods to mount.
    Rights {
        scope: Scope::Watched,
        group: "",
        resources: &["configmaps"],
        verbs: &["create", "patch"],
        names: &[crate::contract::CA_BUNDLE_CONFIGMAP],
    },
    // ... and into the operator's own, where the CLI reads it.
    Rights {
        scope: Scope::OperatorNamespace,
        group: "",
        resources: &["configmaps"],
        verbs: &["create", "patch"],
        names: &[crate::contract::CA_BUNDLE_CONFIGMAP],
    },
    // controller/provider_keys.rs: the egress service's RoleBinding to the
    // provider keys, applied (create, patch) and deleted by name; binding
    // a ClusterRole needs `bind` on it. Nothing on Secrets.
    Rights {
        scope: Scope::Watched,
        group: "rbac.authorization.k8s.io",
        resources: &["rolebindings"],
        verbs: &["patch", "delete"],
        names: &[crate::contract::PROVIDER_KEYS_ROLE],
    },
    // RBAC cannot restrict `create` by name.
    Rights {
        scope: Scope::Watched,
        group: "rbac.authorization.k8s.io",
        resources: &["rolebindings"],
        verbs: &["create"],
        names: &[],
    },
    Rights {
        scope: Scope::Watched,
        group: "rbac.authorization.k8s.io",
        resources: &["clusterroles"],
        verbs: &["bind"],
        names: &[crate::contract::PROVIDER_KEYS_ROLE],
    },
    // kube's Recorder creates events and patches their series.
    Rights {
        scope: Scope::Watched,
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
        names: &[],
    },
    // controlplane/auth.rs: TokenReview of every sidecar's token.
    Rights {
        scope: Scope::Cluster,
        group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        verbs: &["create"],
        names: &[],
    },
    // controlplane/auth.rs: whether a reader of the audit trail may read it,
    // and whether a sender may send a session a message (and, for a
    // person, use on the session's trust level).
    Rights {
        scope: Scope::Cluster,
        group: "authorization.k8s.io",
        resources: &["subjectaccessreviews"],
        verbs: &["create"],
        names: &[],
    },
    // The control plane's own writes pass the escalation admission
    // policies (charts/.../escalation.yaml) as the operator: an agent may
    // spawn a child at its own level, owner included, which inherits the
    // parent's sandbox settings; an approved elevation grants whatever
    // capabilities a person approved.
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &[api::TRUST_LEVELS_RESOURCE],
        verbs: &["use"],
        names: &api::TRUST_LEVEL_NAMES,
    },
    Rights {
        scope: Scope::Watched,
        group: api::GROUP,
        resources: &[api::SANDBOX_OVERRIDES_RESOURCE],
        verbs: &["use"],
        names: &[],
    },
    // cluster/escalation.rs: whether the escalation policies are
    // installed and enforced (the SecurityPolicy condition EscalationGuarded).
    Rights {
        scope: Scope::Cluster,
        group: "admissionregistration.k8s.io",
        resources: &[
            "validatingadmissionpolicies",
            "validatingadmissionpolicybindings",
        ],
        verbs: &["get"],
        names: &api::ESCALATION_POLICIES,
    },
    // tls/ca_secret.rs: the operator's own CA, read, created when missing
    // and replaced when rotated.
    Rights {
        scope: Scope::OperatorNamespace,
        group: "",
        resources: &["secrets"],
        verbs: &["get", "create", "update"],
        names: &[],
    },
    // lease.rs through kube-lease-manager: get, create, patch.
    Rights {
        scope: Scope::OperatorNamespace,
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "patch"],
        names: &[],
    },
];

/// Why the controller cannot start. Each message is one line: what is
/// wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// No kubeconfig and not in a cluster.
    #[error(
        "no Kubernetes configuration ({0}): set KUBECONFIG to a kubeconfig file, or run the controller in a cluster"
    )]
    NoConfig(String),
    /// The API server does not answer.
    #[error(
        "cannot reach the Kubernetes API server at {url} ({cause}): check that the cluster is running and that KUBECONFIG and its current context point at it"
    )]
    Unreachable {
        /// The API server's URL.
        url: String,
        /// What went wrong.
        cause: String,
    },
    /// The wopr.dev CRDs are not installed.
    #[error(
        "the wopr.dev CRDs are not installed (missing: {missing}); install them with `kubectl apply -f crds/` or the Helm chart, then start the controller again"
    )]
    CrdsMissing {
        /// The missing resources.
        missing: String,
    },
    /// The controller's identity lacks RBAC rights.
    #[error(
        "the controller's identity may not {missing}; grant the chart's RBAC (`helm upgrade --install wopr-operator charts/wopr-operator -n wopr-system` or `kubectl apply --server-side -f manifests/install.yaml`), or bind these rights to the identity it runs as"
    )]
    Forbidden {
        /// The missing rights, as `verb resource in namespace`.
        missing: String,
    },
    /// The API server answered 403 Forbidden.
    #[error(
        "the Kubernetes API server refused the controller ({message}); grant the chart's RBAC (`helm upgrade --install wopr-operator charts/wopr-operator -n wopr-system` or `kubectl apply --server-side -f manifests/install.yaml`), or bind the rights it names to the identity the controller runs as"
    )]
    Refused {
        /// The API server's message.
        message: String,
    },
    /// The namespace of the leader-election Lease does not exist.
    #[error(
        "leader election keeps its Lease in the namespace {namespace}, which does not exist: create it (`kubectl create namespace {namespace}`), choose another with --operator-namespace, or run a single replica with --leader-election=false"
    )]
    NamespaceMissing {
        /// The namespace.
        namespace: String,
    },
    /// Any other answer of the API server.
    #[error("the Kubernetes API server refused a start-up call: {0}")]
    Api(String),
}

/// The API server the controller talks to.
#[derive(Clone)]
pub struct ApiServer {
    /// The client.
    pub client: Client,
    /// Its URL, for messages.
    pub url: String,
}

/// How long to wait for freshly installed CRDs to be served before giving up.
const CRD_WAIT: Duration = Duration::from_secs(15);

impl ApiServer {
    /// The API server of the kubeconfig (or the cluster the process runs in).
    pub async fn infer() -> Result<ApiServer, PreflightError> {
        let config = Config::infer()
            .await
            .map_err(|error| PreflightError::NoConfig(error.to_string()))?;
        let url = config.cluster_url.to_string();
        let client =
            Client::try_from(config).map_err(|error| PreflightError::NoConfig(describe(&error)))?;
        Ok(ApiServer { client, url })
    }

    /// What `error`, from a start-up call, means for the user.
    pub fn explain(&self, error: &kube::Error) -> PreflightError {
        match error {
            kube::Error::Api(status)
                if status.code == 404
                    && status
                        .details
                        .as_ref()
                        .is_some_and(|details| details.kind == "namespaces") =>
            {
                PreflightError::NamespaceMissing {
                    namespace: status
                        .details
                        .as_ref()
                        .map(|details| details.name.clone())
                        .unwrap_or_default(),
                }
            }
            kube::Error::Api(status) if status.code == 403 => PreflightError::Refused {
                message: status.message.clone(),
            },
            kube::Error::Api(_) => PreflightError::Api(describe(error)),
            other => PreflightError::Unreachable {
                url: self.url.clone(),
                cause: describe(other),
            },
        }
    }

    /// Fails with a clear message when any wopr.dev resource is not served,
    /// after waiting up to 15 s for CRDs that were just installed.
    pub async fn ensure_crds_installed(&self) -> Result<(), PreflightError> {
        let deadline = tokio::time::Instant::now() + CRD_WAIT;
        loop {
            match self.missing_crds().await? {
                None => return Ok(()),
                Some(missing) if tokio::time::Instant::now() >= deadline => {
                    return Err(PreflightError::CrdsMissing { missing });
                }
                Some(missing) => {
                    tracing::info!(%missing, "waiting for the wopr.dev CRDs to be served");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The wopr.dev resources the API server does not serve, if any.
    async fn missing_crds(&self) -> Result<Option<String>, PreflightError> {
        let group_version = format!("{}/{}", api::GROUP, api::VERSION);
        let served: Vec<String> = match self.client.list_api_group_resources(&group_version).await {
            Ok(list) => list
                .resources
                .into_iter()
                .map(|resource| resource.name)
                .collect(),
            Err(kube::Error::Api(status)) if status.is_not_found() => Vec::new(),
            Err(error) => return Err(self.explain(&error)),
        };
        let missing: Vec<String> = api::crds()
            .into_iter()
            .map(|crd| crd.spec.names.plural)
            .filter(|plural| !served.contains(plural))
            .map(|plural| format!("{plural}.{}", api::GROUP))
            .collect();
        Ok((!missing.is_empty()).then(|| missing.join(", ")))
    }

    /// Fails with the list of [`REQUIRED_RIGHTS`] the controller's identity
    /// lacks. `watched`: the watched namespace (all when `None`);
    /// `lease_namespace`: where the Lease lives, with leader election.
    pub async fn ensure_rights(
        &self,
        watched: Option<&str>,
        lease_namespace: Option<&str>,
    ) -> Result<(), PreflightError> {
        let checks: Vec<Access> = REQUIRED_RIGHTS
            .iter()
            .filter_map(|rights| {
                let namespace = match rights.scope {
                    Scope::Watched => watched,
                    Scope::Cluster => None,
                    Scope::OperatorNamespace => Some(lease_namespace?),
                };
                Some((namespace, rights))
            })
            .flat_map(|(namespace, rights)| {
                let names: Vec<Option<&str>> = if rights.names.is_empty() {
                    vec![None]
                } else {
                    rights.names.iter().copied().map(Some).collect()
                };
                rights.resources.iter().flat_map(move |resource| {
                    let names = names.clone();
                    rights.verbs.iter().flat_map(move |verb| {
                        names.clone().into_iter().map(move |name| Access {
                            namespace,
                            group: rights.group,
                            resource,
                            verb,
                            name,
                        })
                    })
                })
            })
            .collect();
        let answers = join_all(checks.iter().map(|check| check.allowed(&self.client))).await;
        let mut missing = Vec::new();
        for (check, answer) in checks.iter().zip(answers) {
            match answer {
                Ok(true) => {}
                Ok(false) => missing.push(check.to_string()),
                Err(kube::Error::Api(status)) if status.code == 403 || status.code == 404 => {
                    tracing::warn!(message = %status.message, "cannot check the controller's RBAC rights; starting without the check");
                    return Ok(());
                }
                Err(error) => return Err(self.explain(&error)),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(PreflightError::Forbidden {
                missing: missing.join(", "),
            })
        }
    }
}
