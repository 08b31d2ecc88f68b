//! The session pod: the agent container and the `a2a` sidecar (a native
//! sidecar: an init container that keeps running), hardened as SPEC §3 says.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ExecAction, GRPCAction, HostAlias, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    Pod, PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;

use super::meta::{POD_TEMPLATE_HASH_ANNOTATION, SESSION_HASH_ANNOTATION, child_meta};
use crate::api::{NetworkMode, PortProtocol, SandboxSpec, Session, WorkspaceVolume};
use crate::contract::{
    AGENT_CONTAINER, ANTHROPIC_BASE_URL, CA_BUNDLE_CONFIGMAP, CA_BUNDLE_KEY, CA_DIR, CA_PATH,
    HEALTH_ADDRESS, HEALTH_PORT, LOOPBACK_HEALTH_ADDRESS, MCP_ADDRESS, MCP_URL, MODELS_ADDRESS,
    OPENAI_BASE_URL, PLACEHOLDER_API_KEY, SIDECAR_BINARY, SIDECAR_CONTAINER, SOCKET_DIR,
    SOCKET_PATH, SPOOL_DIR, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_EXPIRATION_SECONDS, TOKEN_PATH,
    WORKSPACE_DIR, env,
};
use crate::controller::session::config::SandboxConfig;
use crate::policy::{EffectiveContext, stable_hash};
use crate::proto::v1alpha1::tools_server;

/// User and group every container runs as.
pub const SANDBOX_UID: i64 = 65532;

const TOKEN_VOLUME: &str = "wopr-token";
const SOCKET_VOLUME: &str = "a2a-socket";
const WORKSPACE_VOLUME: &str = "workspace";
const SPOOL_VOLUME: &str = "audit-spool";
const CA_VOLUME: &str = "wopr-ca";
/// The size of the workspace of a Session that names no volume.
pub const WORKSPACE_SIZE_LIMIT: &str = "256Mi";
/// tmpfs mounts giving a read-only root somewhere to write.
const TMPFS_MOUNTS: [(&str, &str); 3] = [("tmp", "/tmp"), ("var-tmp", "/var/tmp"), ("run", "/run")];

/// The pod of `session` under its effective `context`, with its
/// pod-template hash and session hash annotations.
pub fn build_pod(session: &Session, context: &EffectiveContext, config: &SandboxConfig) -> Pod {
    let mut pod = pod_template(session, context, config);
    let session_hash = stable_hash(&pod_template(session, context, &SandboxConfig::reference()));
    pod.metadata.annotations = Some(BTreeMap::from([
        (POD_TEMPLATE_HASH_ANNOTATION.to_owned(), stable_hash(&pod)),
        (SESSION_HASH_ANNOTATION.to_owned(), session_hash),
    ]));
    pod
}

/// The pod without its hash annotations.
fn pod_template(session: &Session, context: &EffectiveContext, config: &SandboxConfig) -> Pod {
    let name = session.name_any();
    let sandbox = session.spec.sandbox.clone().unwrap_or_default();
    let sandboxed = context.sandbox.enabled;

    let mut volumes: Vec<Volume> = TMPFS_MOUNTS
        .iter()
        .map(|(volume, _)| memory_volume(volume))
        .collect();
    volumes.push(memory_volume(SOCKET_VOLUME));
    volumes.push(token_volume());
    volumes.push(spool_volume());
    let mut agent_mounts: Vec<VolumeMount> = TMPFS_MOUNTS
        .iter()
        .map(|(volume, path)| mount(volume, path, false))
        .collect();
    agent_mounts.push(mount(SOCKET_VOLUME, SOCKET_DIR, false));
    let mut sidecar_mounts = vec![
        mount(SOCKET_VOLUME, SOCKET_DIR, false),
        mount(TOKEN_VOLUME, TOKEN_DIR, true),
        mount(SPOOL_VOLUME, SPOOL_DIR, false),
    ];
    // The CA bundle the sidecar verifies the control plane against.
    if !config.insecure_plaintext {
        volumes.push(ca_volume());
        sidecar_mounts.push(mount(CA_VOLUME, CA_DIR, true));
    }
    // The sidecar writes the workspace (memory_write), the agent reads it:
    // as in the seed, where the agent's workspace is mounted read-only and
    // the host that serves the tools writes it.
    volumes.push(workspace_volume(sandbox.workspace.as_ref()));
    agent_mounts.push(mount(WORKSPACE_VOLUME, WORKSPACE_DIR, true));
    sidecar_mounts.push(mount(WORKSPACE_VOLUME, WORKSPACE_DIR, false));
    let prompt = session.spec.prompt.as_deref();

    let agent_security = SecurityContext {
        read_only_root_filesystem: Some(sandboxed),
        seccomp_profile: Some(agent_seccomp(
            sandbox.seccomp_profile.as_ref(),
            sandboxed,
            config,
        )),
        app_armor_profile: sandbox.app_armor_profile.clone(),
        ..hardened_security_context()
    };
    // The official OpenAI and Anthropic SDKs (and what is built on them)
    // read these: they call the sidecar's model proxy, with a placeholder
    // key, since the real one never enters the pod.
    let mut agent_env = vec![
        var(env::AGENT_SESSION, &name),
        var(env::AGENT_MCP_URL, MCP_URL),
        var(env::AGENT_A2A_SOCKET, SOCKET_PATH),
        var(env::AGENT_OPENAI_BASE_URL, OPENAI_BASE_URL),
        var(env::AGENT_OPENAI_API_KEY, PLACEHOLDER_API_KEY),
        var(env::AGENT_ANTHROPIC_BASE_URL, ANTHROPIC_BASE_URL),
        var(env::AGENT_ANTHROPIC_API_KEY, PLACEHOLDER_API_KEY),
    ];
    agent_env.extend(prompt.map(|prompt| var(env::PROMPT, prompt)));
    agent_env.extend(sandbox.env.iter().cloned());
    // A Session that names no image, command or arguments runs the default
    // agent as configured (the demo agent, unless the operator says otherwise).
    let default_agent =
        sandbox.image.is_none() && sandbox.command.is_empty() && sandbox.args.is_empty();
    let agent = Container {
        name: AGENT_CONTAINER.to_owned(),
        image: Some(
            sandbox
                .image
                .clone()
                .unwrap_or_else(|| config.default_agent_image.clone()),
        ),
        command: non_empty(sandbox.command.clone()),
        args: non_empty(if default_agent {
            config.default_agent_args.clone()
        } else {
            sandbox.args.clone()
        }),
        env: Some(agent_env),
        resources: agent_resources(context.sandbox.resources.as_ref(), sandboxed, config),
        security_context: Some(agent_security),
        volume_mounts: Some(agent_mounts),
        ..Container::default()
    };

    let metadata = child_meta(session);
    Pod {
        metadata: metadata.clone(),
        spec: Some(PodSpec {
            service_account_name: metadata.name.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            restart_policy: Some("Always".to_owned()),
            runtime_class_name: sandbox.runtime_class_name.clone(),
            host_aliases: host_aliases(config),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(SANDBOX_UID),
                run_as_group: Some(SANDBOX_UID),
                fs_group: Some(SANDBOX_UID),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..PodSecurityContext::default()
            }),
            init_containers: Some(vec![sidecar(
                &name,
                prompt,
                context,
                &sandbox,
                config,
                sidecar_mounts,
            )]),
            containers: vec![agent],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The `/etc/hosts` entries of the services the sidecar dials by name
/// (the control plane, the egress service), so that sandboxes without DNS
/// reach them; `None` when there is none.
fn host_aliases(config: &SandboxConfig) -> Option<Vec<HostAlias>> {
    let aliases: Vec<HostAlias> = std::iter::once(&config.control_plane)
        .chain(config.egress.as_ref())
        .filter_map(|service| {
            service.resolved_ip.map(|ip| HostAlias {
                ip: ip.to_string(),
                hostnames: Some(vec![service.host.clone()]),
            })
        })
        .collect();
    (!aliases.is_empty()).then_some(aliases)
}

/// The `a2a` sidecar: a native sidecar (restartPolicy Always) that runs as
/// long as the pod and alone mounts the token.
///
/// Ordering without probe ticks: the sidecar has no startup probe, so the
/// kubelet counts it started, and starts the agent, the moment its postStart
/// hook returns (KEP-753), and the hook (`wopr-operator sidecar-ready`)
/// returns the moment the sidecar lets the agent start. No readiness probe
/// either: the pod is Ready as soon as the agent runs, instead of at the
/// next readiness tick. Liveness is a native gRPC probe of the Tools service.
///
/// It is also told what the sandbox promises (network mode, egress
/// allow-list, whether the agent waits for verified isolation) and what to
/// probe, to verify the promise from inside the pod; and the prompt the
/// agent is given, which `security_whoami` answers.
fn sidecar(
    session: &str,
    prompt: Option<&str>,
    context: &EffectiveContext,
    sandbox: &SandboxSpec,
    config: &SandboxConfig,
    volume_mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: SIDECAR_CONTAINER.to_owned(),
        image: Some(config.sidecar_image.clone()),
        args: Some(vec![
            "sidecar".to_owned(),
            "--session".to_owned(),
            session.to_owned(),
        ]),
        restart_policy: Some("Always".to_owned()),
        env: Some(sidecar_env(context, sandbox, config, prompt)),
        resources: Some(limits_equal_requests(
            Quantity("64Mi".into()),
            Quantity("100m".into()),
        )),
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(true),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..hardened_security_context()
        }),
        volume_mounts: Some(volume_mounts),
        lifecycle: Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        SIDECAR_BINARY.to_owned(),
                        "sidecar-ready".to_owned(),
                        format!("--health-address={LOOPBACK_HEALTH_ADDRESS}"),
                    ]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        liveness_probe: Some(Probe {
            grpc: Some(GRPCAction {
                port: i32::from(HEALTH_PORT),
                service: Some(tools_server::SERVICE_NAME.to_owned()),
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        ..Container::default()
    }
}

/// The sidecar's environment: where it serves (tools, the model proxy)
/// and reaches the control plane and the egress service, what to verify,
/// and the agent's prompt.
fn sidecar_env(
    context: &EffectiveContext,
    sandbox: &SandboxSpec,
    config: &SandboxConfig,
    prompt: Option<&str>,
) -> Vec<EnvVar> {
    let mut vars = vec![
        var(env::CONTROL_PLANE_ADDRESS, &config.control_plane.address),
        var(env::SOCKET_PATH, SOCKET_PATH),
        var(env::MCP_ADDRESS, MCP_ADDRESS),
        var(env::MODELS_ADDRESS, MODELS_ADDRESS),
        var(env::HEALTH_ADDRESS, HEALTH_ADDRESS),
        var(env::TOKEN_PATH, TOKEN_PATH),
        var(env::WORKSPACE, WORKSPACE_DIR),
        var(env::SPOOL_DIR, SPOOL_DIR),
        var(env::NETWORK_MODE, &context.network.to_string()),
        var(env::EGRESS_ALLOWED, &egress_allowed(context, sandbox)),
        var(env::ISOLATION_PROBES, &config.isolation_probes()),
        var(
            env::REQUIRE_VERIFIED_ISOLATION,
            &context.sandbox.require_verified_isolation.to_string(),
        ),
        field_env(env::NAMESPACE, "metadata.namespace"),
        field_env(env::NODE_IP, "status.hostIP"),
    ];
    vars.extend(
        config
            .egress
            .as_ref()
            .map(|egress| var(env::EGRESS_ADDRESS, &egress.address)),
    );
    vars.push(if config.insecure_plaintext {
        var(env::INSECURE_PLAINTEXT, "true")
    } else {
        var(env::CONTROL_PLANE_CA, CA_PATH)
    });
    vars.extend(prompt.map(|prompt| var(env::PROMPT, prompt)));
    vars
}

/// What every container gets: non-root, no privilege escalation, no capabilities.
fn hardened_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// The agent's seccomp profile: the Session's (or policy's); else, for a
/// sandbox, the operator's default Localhost profile when it has one (the
/// shipped `wopr-sandbox.json`, where the chart installs it on the nodes);
/// else RuntimeDefault.
fn agent_seccomp(
    configured: Option<&SeccompProfile>,
    sandboxed: bool,
    config: &SandboxConfig,
) -> SeccompProfile {
    match (configured, &config.default_seccomp_profile) {
        (Some(profile), _) => profile.clone(),
        (None, Some(path)) if sandboxed => SeccompProfile {
            type_: "Localhost".to_owned(),
            localhost_profile: Some(path.clone()),
        },
        (None, _) => runtime_default_seccomp(),
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// The agent's resources: the session's or policy's when set (memory
/// request raised to the limit when sandboxed: no swap), else for a sandbox
/// the defaults as limits and requests.
fn agent_resources(
    configured: Option<&ResourceRequirements>,
    sandboxed: bool,
    config: &SandboxConfig,
) -> Option<ResourceRequirements> {
    match configured {
        None if sandboxed => Some(limits_equal_requests(
            config.default_memory.clone(),
            config.default_cpu.clone(),
        )),
        None => None,
        Some(resources) if !sandboxed => Some(resources.clone()),
        Some(resources) => {
            let mut resources = resources.clone();
            let limits = resources.limits.get_or_insert_with(BTreeMap::new);
            limits
                .entry("memory".to_owned())
                .or_insert_with(|| config.default_memory.clone());
            limits
                .entry("cpu".to_owned())
                .or_insert_with(|| config.default_cpu.clone());
            let memory = limits["memory"].clone();
            let cpu = limits["cpu"].clone();
            let requests = resources.requests.get_or_insert_with(BTreeMap::new);
            requests.insert("memory".to_owned(), memory);
            requests.entry("cpu".to_owned()).or_insert(cpu);
            Some(resources)
        }
    }
}

fn limits_equal_requests(memory: Quantity, cpu: Quantity) -> ResourceRequirements {
    let values = BTreeMap::from([("memory".to_owned(), memory), ("cpu".to_owned(), cpu)]);
    ResourceRequirements {
        limits: Some(values.clone()),
        requests: Some(values),
        ..ResourceRequirements::default()
    }
}

fn memory_volume(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity("64Mi".to_owned())),
        }),
        ..Volume::default()
    }
}

/// The sidecar's audit spool: on disk, not in memory (it must not count
/// against the sidecar's memory limit), and kept across restarts of the
/// sidecar container, which is what it is for.
fn spool_volume() -> Volume {
    Volume {
        name: SPOOL_VOLUME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity("256Mi".to_owned())),
        }),
        ..Volume::default()
    }
}

fn token_volume() -> Volume {
    Volume {
        name: TOKEN_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o440),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".to_owned(),
                }),
                ..VolumeProjection::default()
            }]),
        }),
        ..Volume::default()
    }
}

/// The namespace's CA bundle, published there by the controller; the pod
/// waits for it (the kubelet retries the mount) rather than start unable
/// to verify the control plane.
fn ca_volume() -> Volume {
    Volume {
        name: CA_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: CA_BUNDLE_CONFIGMAP.to_owned(),
            items: Some(vec![KeyToPath {
                key: CA_BUNDLE_KEY.to_owned(),
                path: CA_BUNDLE_KEY.to_owned(),
                mode: None,
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

/// The workspace: the Session's volume, else an empty one for the pod's
/// life (on disk, so it does not count against a container's memory).
/// The Session's `readOnly` on a claim or CSI volume stands (ConfigMaps and
/// Secrets are read-only anyway): then `memory_write` says the workspace is
/// read-only.
fn workspace_volume(workspace: Option<&WorkspaceVolume>) -> Volume {
    let Some(workspace) = workspace else {
        return Volume {
            name: WORKSPACE_VOLUME.to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(Quantity(WORKSPACE_SIZE_LIMIT.to_owned())),
            }),
            ..Volume::default()
        };
    };
    Volume {
        name: WORKSPACE_VOLUME.to_owned(),
        persistent_volume_claim: workspace.persistent_volume_claim.clone(),
        config_map: workspace.config_map.clone(),
        secret: workspace.secret.clone(),
        csi: workspace.csi.clone(),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// What the egress allow-list of a `restricted` sandbox admits for TCP,
/// as the sidecar reads it (`cidr` or `cidr#port`, comma-separated).
fn egress_allowed(context: &EffectiveContext, sandbox: &SandboxSpec) -> String {
    if context.network != NetworkMode::Restricted {
        return String::new();
    }
    let mut entries = Vec::new();
    for rule in &sandbox.egress {
        if rule.ports.is_empty() {
            entries.push(rule.cidr.clone());
        }
        for port in &rule.ports {
            if matches!(port.protocol, None | Some(PortProtocol::Tcp)) {
                entries.push(format!("{}#{}", rule.cidr, port.port));
            }
        }
    }
    entries.join(",")
}

/// A variable the kubelet fills from the pod (`fieldPath`).
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        value: None,
    }
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn non_empty(values: Vec<String>) -> Option<Vec<String>> {
    (!values.is_empty()).then_some(values)
}
