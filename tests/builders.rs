//! Pure builder tests: each trust level, workspace, runtimeClassName,
//! egress allow-list, custom seccomp/AppArmor, and the Pod Security
//! "restricted" profile checked rule by rule (with broken pods to show the
//! check fails).

mod common;

use common::pod_security::restricted_violations;
use common::*;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, SecurityContext};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wopr_operator::api::{Capability, Session, TrustLevel, WoprObject, parse_manifests};
use wopr_operator::contract::*;
use wopr_operator::controller::session::build::*;
use wopr_operator::controller::session::config::{ControlPlane, SandboxConfig};
use wopr_operator::policy::{EffectiveContext, resolve};

/// A Session from YAML (its spec only), in the test namespace.
fn session_yaml(name: &str, spec: &str) -> Session {
    let spec = spec.replace('\n', "\n  ");
    let yaml = format!(
        "apiVersion: wopr.dev/v1alpha1\nkind: Session\nmetadata: {{name: {name}}}\nspec:\n  {spec}"
    );
    let Ok(mut objects) = parse_manifests(&yaml) else {
        panic!("bad fixture {yaml}")
    };
    let Some(WoprObject::Session(session)) = objects.pop() else {
        panic!("not a session")
    };
    let mut session = *session;
    session.metadata = meta(name);
    session
}

fn context(session: &Session) -> EffectiveContext {
    resolve(session, None, &[], &[], now()).unwrap()
}

fn agent(pod: &Pod) -> &Container {
    &pod.spec.as_ref().unwrap().containers[0]
}

fn sidecar(pod: &Pod) -> &Container {
    &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
}

fn mount_at<'a>(
    container: &'a Container,
    path: &str,
) -> &'a k8s_openapi::api::core::v1::VolumeMount {
    let mounts = container.volume_mounts.as_ref().unwrap();
    mounts
        .iter()
        .find(|m| m.mount_path == path)
        .unwrap_or_else(|| panic!("nothing mounted at {path}"))
}

fn volume_named<'a>(pod: &'a Pod, name: &str) -> &'a k8s_openapi::api::core::v1::Volume {
    let volumes = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    volumes
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn security(container: &Container) -> &SecurityContext {
    container.security_context.as_ref().unwrap()
}

fn egress_rules(policy: &NetworkPolicy) -> usize {
    policy
        .spec
        .as_ref()
        .unwrap()
        .egress
        .as_ref()
        .map_or(0, Vec::len)
}

fn policy_types(policy: &NetworkPolicy) -> Vec<String> {
    policy.spec.as_ref().unwrap().policy_types.clone().unwrap()
}

#[test]
fn every_trust_level_passes_pod_security_restricted() {
    for level in TrustLevel::ALL {
        let session = session(&format!("s-{}", level.as_str()), level);
        let pod = pod_of(&session);
        assert_eq!(restricted_violations(&pod), Vec::<String>::new(), "{level}");
        let sandboxed = sandboxed(session.clone());
        assert_eq!(
            restricted_violations(&pod_of(&sandboxed)),
            Vec::<String>::new(),
            "{level}"
        );
    }
}

#[test]
fn sandboxed_agent_container_follows_every_sandbox_rule() {
    let session = session("research", TrustLevel::SemiTrusted);
    let pod = pod_of(&session);
    let spec = pod.spec.as_ref().unwrap();
    let agent = agent(&pod);
    let security = security(agent);
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.privileged, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".into()])
    );
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(security.app_armor_profile, None);
    // tmpfs at /tmp, /var/tmp, /run.
    let mounts = agent.volume_mounts.as_ref().unwrap();
    for path in ["/tmp", "/var/tmp", "/run"] {
        let volume = volume_named(&pod, &mount_at(agent, path).name);
        assert_eq!(
            volume.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory"),
            "{path}"
        );
    }
    // Limits by default, memory request = limit.
    let resources = agent.resources.as_ref().unwrap();
    let limits = resources.limits.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert_eq!(limits["memory"], Quantity("512Mi".into()));
    assert_eq!(limits["cpu"], Quantity("500m".into()));
    assert_eq!(requests["memory"], limits["memory"]);
    // No service-account token for the agent, no service links.
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.service_account_name.as_deref(), Some("wopr-research"));
    assert!(!mounts.iter().any(|m| m.mount_path.contains("secrets")));
    // The agent knows where the sidecar is.
    let env = agent.env.as_ref().unwrap();
    assert!(env.iter().any(
        |e| e.name == "WOPR_MCP_URL" && e.value.as_deref() == Some("http://127.0.0.1:7780/mcp")
    ));
    assert!(
        env.iter()
            .any(|e| e.name == "WOPR_A2A_SOCKET" && e.value.as_deref() == Some(SOCKET_PATH))
    );
}

#[test]
fn the_sidecar_alone_gets_the_projected_token() {
    let pod = pod_of(&session("research", TrustLevel::SemiTrusted));
    let sidecar = sidecar(&pod);
    assert_eq!(sidecar.name, SIDECAR_CONTAINER);
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        Some("Always"),
        "a native sidecar"
    );
    assert_eq!(
        sidecar.args.as_ref().unwrap(),
        &["sidecar", "--session", "research"]
    );
    let token_mount = mount_at(sidecar, TOKEN_DIR);
    assert_eq!(token_mount.read_only, Some(true));
    let volume = volume_named(&pod, &token_mount.name);
    let projection = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("wopr.dev"));
    assert_eq!(projection.expiration_seconds, Some(600));
    assert!(
        !agent(&pod)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.name == token_mount.name)
    );
    // The agent starts when the sidecar lets it (postStart hook), not at
    // a probe tick: no startup or readiness probe to wait for.
    assert_eq!(sidecar.startup_probe, None);
    assert_eq!(sidecar.readiness_probe, None);
    let hook = sidecar
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &[
            SIDECAR_BINARY,
            "sidecar-ready",
            &format!("--health-address={LOOPBACK_HEALTH_ADDRESS}")
        ]
    );
    // Liveness: a native gRPC probe of the Tools service.
    let liveness = sidecar
        .liveness_probe
        .as_ref()
        .unwrap()
        .grpc
        .as_ref()
        .unwrap();
    assert_eq!(liveness.port, i32::from(HEALTH_PORT));
    assert_eq!(liveness.service.as_deref(), Some("wopr.v1alpha1.Tools"));
    // Both containers share the socket directory.
    for container in [agent(&pod), sidecar] {
        assert!(
            container
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == SOCKET_DIR)
        );
    }
    assert!(
        sidecar
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "WOPR_CONTROL_PLANE_ADDRESS"
                && e.value.as_deref() == Some("https://wopr-operator.wopr-system.svc:9443"))
    );
}

#[test]
fn unsandboxed_sessions_have_a_writable_root_and_no_default_limits() {
    for level in [TrustLevel::Owner, TrustLevel::Trusted] {
        let pod = pod_of(&session("s", level));
        assert_eq!(
            security(agent(&pod)).read_only_root_filesystem,
            Some(false),
            "{level}"
        );
        assert_eq!(agent(&pod).resources, None, "{level}");
    }
}

#[test]
fn a_session_that_names_no_agent_runs_the_default_agent_with_its_arguments() {
    let default = agent(&pod_of(&session_yaml("demo", "trustLevel: untrusted"))).clone();
    assert_eq!(
        default.image.as_deref(),
        Some("ghcr.io/wopr-network/wopr-operator:test")
    );
    assert_eq!(default.command, None);
    assert_eq!(
        default.args.as_deref(),
        Some(&["demo-agent".to_owned()][..])
    );
    // An image of its own runs as that image says; so does a command or
    // arguments of its own in the default image.
    for (spec, args) in [
        ("sandbox: {image: example.com/agent:1}", None),
        ("sandbox: {command: [sleep, infinity]}", None),
        (
            "sandbox: {args: [--serve]}",
            Some(vec!["--serve".to_owned()]),
        ),
    ] {
        let session = session_yaml("own", &format!("trustLevel: trusted\n{spec}"));
        assert_eq!(agent(&pod_of(&session)).args, args, "{spec}");
    }
}

#[test]
fn workspace_runtime_class_seccomp_and_apparmor() {
    let session = session_yaml(
        "code",
        "trustLevel: trusted
sandbox:
  enabled: true
  image: example.com/agent:1
  command: [agent]
  args: [--serve]
  env: [{name: MODE, value: strict}]
  runtimeClassName: gvisor
  seccompProfile: {type: Localhost, localhostProfile: profiles/wopr-sandbox.json}
  appArmorProfile: {type: Localhost, localhostProfile: wopr-sandbox}
  workspace: {persistentVolumeClaim: {claimName: code-ws}}
  resources: {limits: {memory: 1Gi}, requests: {memory: 256Mi, cpu: 100m}}",
    );
    let pod = pod_of(&session);
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("gvisor"));
    let agent = agent(&pod);
    assert_eq!(agent.image.as_deref(), Some("example.com/agent:1"));
    assert_eq!(agent.command.as_ref().unwrap(), &["agent"]);
    assert_eq!(agent.args.as_ref().unwrap(), &["--serve"]);
    assert!(agent.env.as_ref().unwrap().iter().any(|e| e.name == "MODE"));
    let security = security(agent);
    let seccomp = security.seccomp_profile.as_ref().unwrap();
    assert_eq!(
        (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
        ("Localhost", Some("profiles/wopr-sandbox.json"))
    );
    let apparmor = security.app_armor_profile.as_ref().unwrap();
    assert_eq!(
        (
            apparmor.type_.as_str(),
            apparmor.localhost_profile.as_deref()
        ),
        ("Localhost", Some("wopr-sandbox"))
    );
    // The sidecar writes the claim (memory_write), the agent only reads it.
    let sidecar_mount = mount_at(sidecar(&pod), WORKSPACE_DIR);
    assert_eq!(sidecar_mount.read_only, None);
    let mount = mount_at(agent, "/workspace");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(sidecar_mount.name, mount.name);
    let volume = volume_named(&pod, &mount.name);
    let claim = volume.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("code-ws", None)
    );
    // Memory request raised to the limit (no swap); CPU limit defaulted.
    let resources = agent.resources.as_ref().unwrap();
    assert_eq!(
        resources.requests.as_ref().unwrap()["memory"],
        Quantity("1Gi".into())
    );
    assert_eq!(
        resources.requests.as_ref().unwrap()["cpu"],
        Quantity("100m".into())
    );
    assert_eq!(
        resources.limits.as_ref().unwrap()["cpu"],
        Quantity("500m".into())
    );
}

#[test]
fn network_policies_by_mode() {
    // untrusted: none → control plane only.
    let none = build_network_policy(
        &session("u", TrustLevel::Untrusted),
        &context(&session("u", TrustLevel::Untrusted)),
        &sandbox_config().control_plane,
        None,
    );
    assert_eq!(policy_types(&none), ["Ingress", "Egress"]);
    assert_eq!(
        none.spec.as_ref().unwrap().ingress,
        Some(vec![]),
        "all ingress denied"
    );
    assert_eq!(egress_rules(&none), 1);
    let rule = &none.spec.as_ref().unwrap().egress.as_ref().unwrap()[0];
    let peer = &rule.to.as_ref().unwrap()[0];
    assert_eq!(
        peer.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "wopr-system"
    );
    assert_eq!(
        peer.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/name"],
        "wopr-operator"
    );
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9443))
    );

    // semi-trusted with an allow-list: control plane, DNS, then each entry.
    let restricted = session_yaml(
        "research",
        "trustLevel: semi-trusted
sandbox:
  network: restricted
  egress:
  - {cidr: 0.0.0.0/0, ports: [{port: 443}, {port: 53, protocol: UDP}]}
  - {cidr: 10.0.0.0/8}",
    );
    let policy = build_network_policy(
        &restricted,
        &context(&restricted),
        &sandbox_config().control_plane,
        None,
    );
    assert_eq!(egress_rules(&policy), 4);
    let rules = policy.spec.as_ref().unwrap().egress.clone().unwrap();
    assert_eq!(
        rules[2].to.as_ref().unwrap()[0]
            .ip_block
            .as_ref()
            .unwrap()
            .cidr,
        "0.0.0.0/0"
    );
    let ports = rules[2].ports.as_ref().unwrap();
    assert_eq!(
        (ports[0].protocol.as_deref(), ports[1].protocol.as_deref()),
        (Some("TCP"), Some("UDP"))
    );
    assert_eq!(rules[3].ports, None, "no ports: every port");
    assert_eq!(
        policy
            .spec
            .as_ref()
            .unwrap()
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[SESSION_LABEL],
        "research"
    );

    // trusted: full → ingress denied, egress unrestricted.
    let full_session = session("t", TrustLevel::Trusted);
    let full = build_network_policy(
        &full_session,
        &context(&full_session),
        &sandbox_config().control_plane,
        None,
    );
    assert_eq!(policy_types(&full), ["Ingress"]);
    assert_eq!(egress_rules(&full), 0);
}

#[test]
fn a_control_plane_outside_the_cluster_is_reached_by_ip() {
    let mut config = sandbox_config();
    config.control_plane = ControlPlane::parse("192.0.2.10:9443", "wopr-system").unwrap();
    let session = session("u", TrustLevel::Untrusted);
    let policy = build_network_policy(&session, &context(&session), &config.control_plane, None);
    let peers = policy.spec.unwrap().egress.unwrap()[0].to.clone().unwrap();
    assert_eq!(peers[1].ip_block.as_ref().unwrap().cidr, "192.0.2.10/32");
    let pod = build_pod(&session, &context(&session), &config);
    assert_eq!(
        pod.spec.unwrap().host_aliases,
        None,
        "an IP needs no /etc/hosts entry"
    );
}

#[test]
fn a_resolved_control_plane_name_goes_into_etc_hosts() {
    let mut config = sandbox_config();
    config.control_plane.resolved_ip = Some("10.96.0.42".parse().unwrap());
    let session = session("u", TrustLevel::Untrusted);
    let aliases = build_pod(&session, &context(&session), &config)
        .spec
        .unwrap()
        .host_aliases
        .unwrap();
    assert_eq!(aliases[0].ip, "10.96.0.42");
    assert_eq!(
        aliases[0].hostnames.as_deref(),
        Some(&["wopr-operator.wopr-system.svc".to_string()][..])
    );
}

#[test]
fn children_are_owned_and_labelled() {
    let session = session("research", TrustLevel::SemiTrusted);
    let account = build_service_account(&session);
    assert_eq!(account.automount_service_account_token, Some(false));
    let pod = pod_of(&session);
    let policy = build_network_policy(
        &session,
        &context(&session),
        &sandbox_config().control_plane,
        None,
    );
    for metadata in [&account.metadata, &pod.metadata, &policy.metadata] {
        assert_eq!(metadata.name.as_deref(), Some("wopr-research"));
        assert_eq!(metadata.namespace.as_deref(), Some(NAMESPACE));
        let owner = &metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Session", "research", "uid-research")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "wopr-operator");
        assert_eq!(labels["app.kubernetes.io/instance"], "research");
        assert_eq!(labels[SESSION_LABEL], "research");
        assert_eq!(labels[TRUST_LEVEL_LABEL], "semi-trusted");
    }
}

#[test]
fn the_pod_template_hash_tracks_the_pod_but_not_grants() {
    let session = session("research", TrustLevel::SemiTrusted);
    let hash = |pod: &Pod| {
        pod.metadata.annotations.as_ref().unwrap()[POD_TEMPLATE_HASH_ANNOTATION].clone()
    };
    let base = pod_of(&session);
    assert_eq!(hash(&base), hash(&pod_of(&session)), "stable");
    let grant = session_grant("net", "research", &[Capability::InjectNetwork]);
    let with_grant = resolve(&session, None, &[grant], &[], now()).unwrap();
    assert_ne!(with_grant.policy_hash, context(&session).policy_hash);
    assert_eq!(
        hash(&build_pod(&session, &with_grant, &sandbox_config())),
        hash(&base),
        "grants do not touch the pod"
    );
    let mut new_image = session.clone();
    new_image.spec.sandbox = Some(wopr_operator::api::SandboxSpec {
        image: Some("example.com/other:2".into()),
        ..Default::default()
    });
    assert_ne!(hash(&pod_of(&new_image)), hash(&base));
}

#[test]
fn the_restricted_check_catches_each_broken_rule() {
    let pod = pod_of(&session("research", TrustLevel::SemiTrusted));
    assert!(restricted_violations(&pod).is_empty());
    type Breaker = fn(&mut Pod);
    let breakers: Vec<(&str, Breaker)> = vec![
        ("hostNetwork", |p| {
            p.spec.as_mut().unwrap().host_network = Some(true)
        }),
        ("hostPID", |p| {
            p.spec.as_mut().unwrap().host_pid = Some(true)
        }),
        ("hostIPC", |p| {
            p.spec.as_mut().unwrap().host_ipc = Some(true)
        }),
        ("privileged", |p| agent_security(p).privileged = Some(true)),
        ("adds SYS_ADMIN", |p| {
            agent_security(p).capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()])
        }),
        ("adds CHOWN (restricted)", |p| {
            agent_security(p).capabilities.as_mut().unwrap().add = Some(vec!["CHOWN".into()])
        }),
        ("does not drop ALL", |p| {
            agent_security(p).capabilities = None
        }),
        ("allowPrivilegeEscalation", |p| {
            agent_security(p).allow_privilege_escalation = None
        }),
        ("runAsNonRoot false", |p| {
            agent_security(p).run_as_non_root = Some(false)
        }),
        ("runAsNonRoot not set", |p| {
            pod_security(p).run_as_non_root = None;
            agent_security(p).run_as_non_root = None;
        }),
        ("runAsUser 0", |p| agent_security(p).run_as_user = Some(0)),
        ("seccompProfile Unconfined", |p| {
            agent_security(p).seccomp_profile.as_mut().unwrap().type_ = "Unconfined".into()
        }),
        ("no seccompProfile", |p| {
            pod_security(p).seccomp_profile = None;
            agent_security(p).seccomp_profile = None;
        }),
        ("appArmorProfile Unconfined", |p| {
            agent_security(p).app_armor_profile =
                Some(k8s_openapi::api::core::v1::AppArmorProfile {
                    type_: "Unconfined".into(),
                    localhost_profile: None,
                })
        }),
        ("procMount", |p| {
            agent_security(p).proc_mount = Some("Unmasked".into())
        }),
        ("seLinuxOptions", |p| {
            agent_security(p).se_linux_options = Some(k8s_openapi::api::core::v1::SELinuxOptions {
                user: Some("root".into()),
                ..Default::default()
            })
        }),
        ("hostPort", |p| {
            p.spec.as_mut().unwrap().containers[0].ports =
                Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                    container_port: 80,
                    host_port: Some(80),
                    ..Default::default()
                }])
        }),
        ("hostPath", |p| {
            p.spec.as_mut().unwrap().volumes.as_mut().unwrap().push(
                k8s_openapi::api::core::v1::Volume {
                    name: "host".into(),
                    host_path: Some(k8s_openapi::api::core::v1::HostPathVolumeSource {
                        path: "/".into(),
                        type_: None,
                    }),
                    ..Default::default()
                },
            )
        }),
        ("unsafe sysctl", |p| {
            pod_security(p).sysctls = Some(vec![k8s_openapi::api::core::v1::Sysctl {
                name: "kernel.msgmax".into(),
                value: "1".into(),
            }])
        }),
        ("sidecar allowPrivilegeEscalation", |p| {
            p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0]
                .security_context
                .as_mut()
                .unwrap()
                .allow_privilege_escalation = Some(true)
        }),
    ];
    for (name, breaker) in breakers {
        let mut broken = pod.clone();
        breaker(&mut broken);
        assert!(
            !restricted_violations(&broken).is_empty(),
            "the check missed: {name}"
        );
    }
}

fn pod_security(pod: &mut Pod) -> &mut k8s_openapi::api::core::v1::PodSecurityContext {
    pod.spec
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
}

fn agent_security(pod: &mut Pod) -> &mut SecurityContext {
    pod.spec.as_mut().unwrap().containers[0]
        .security_context
        .as_mut()
        .unwrap()
}

#[test]
fn every_example_session_builds_a_restricted_pod() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/sessions.yaml"
    ))
    .unwrap();
    for object in parse_manifests(&text).unwrap() {
        let WoprObject::Session(mut session) = object else {
            continue;
        };
        session.metadata.namespace = Some(NAMESPACE.into());
        session.metadata.uid = Some("uid".into());
        let pod = pod_of(&session);
        assert_eq!(
            restricted_violations(&pod),
            Vec::<String>::new(),
            "{:?}",
            session.metadata.name
        );
    }
}

/// A container's environment, by name.
fn env_of(container: &Container) -> BTreeMap<String, EnvVar> {
    container
        .env
        .clone()
        .unwrap()
        .into_iter()
        .map(|var| (var.name.clone(), var))
        .collect()
}

#[test]
fn the_sidecar_is_told_what_to_verify() {
    let env_of = |session: &Session| env_of(sidecar(&pod_of(session)));
    let value = |env: &BTreeMap<String, EnvVar>, name: &str| env[name].value.clone().unwrap();
    let restricted = session_yaml(
        "research",
        "trustLevel: semi-trusted
sandbox:
  network: restricted
  requireVerifiedIsolation: true
  egress:
  - {cidr: 0.0.0.0/0, ports: [{port: 443}, {port: 53, protocol: UDP}]}
  - {cidr: 10.0.0.0/8}",
    );
    let env = env_of(&restricted);
    assert_eq!(value(&env, "WOPR_NETWORK_MODE"), "restricted");
    assert_eq!(
        value(&env, "WOPR_EGRESS_ALLOWED"),
        "0.0.0.0/0#443,10.0.0.0/8",
        "TCP only: the probes are TCP"
    );
    assert_eq!(
        value(&env, "WOPR_ISOLATION_PROBES"),
        "apiserver=10.96.0.1:443"
    );
    assert_eq!(value(&env, "WOPR_REQUIRE_VERIFIED_ISOLATION"), "true");
    let node = env["WOPR_NODE_IP"].value_from.as_ref().unwrap();
    assert_eq!(node.field_ref.as_ref().unwrap().field_path, "status.hostIP");

    let none = env_of(&session("quiet", TrustLevel::Untrusted));
    assert_eq!(value(&none, "WOPR_NETWORK_MODE"), "none");
    assert_eq!(value(&none, "WOPR_EGRESS_ALLOWED"), "");
    assert_eq!(value(&none, "WOPR_REQUIRE_VERIFIED_ISOLATION"), "false");
}

#[test]
fn a_policy_can_require_verified_isolation_for_a_level() {
    let session = session("s", TrustLevel::Untrusted);
    let policy = security_policy(serde_json::json!({
        "trustLevels": {"untrusted": {"sandbox": {"requireVerifiedIsolation": true}}}
    }));
    let context = resolve(&session, Some(&policy), &[], &[], now()).unwrap();
    assert!(context.sandbox.require_verified_isolation);
    let mut opting_out = session.clone();
    opting_out.spec.sandbox = Some(wopr_operator::api::SandboxSpec {
        require_verified_isolation: Some(false),
        ..Default::default()
    });
    let context = resolve(&opting_out, Some(&policy), &[], &[], now()).unwrap();
    assert!(
        context.sandbox.require_verified_isolation,
        "a Session cannot turn it off"
    );
}

#[test]
fn a_session_without_a_volume_gets_a_workspace_only_its_sidecar_writes() {
    for level in TrustLevel::ALL {
        let pod = pod_of(&session("scratch", level));
        let agent_mount = mount_at(agent(&pod), WORKSPACE_DIR);
        let sidecar_mount = mount_at(sidecar(&pod), WORKSPACE_DIR);
        assert_eq!(agent_mount.read_only, Some(true), "{level}");
        assert_eq!(sidecar_mount.read_only, None, "{level}");
        assert_eq!(agent_mount.name, sidecar_mount.name);
        let volume = volume_named(&pod, &agent_mount.name);
        let empty_dir = volume.empty_dir.as_ref().expect("an emptyDir");
        assert_eq!(empty_dir.medium, None, "on disk, not in a memory limit");
        assert_eq!(
            empty_dir.size_limit,
            Some(Quantity(WORKSPACE_SIZE_LIMIT.into()))
        );
        assert_eq!(
            env_of(sidecar(&pod))[env::WORKSPACE].value.as_deref(),
            Some(WORKSPACE_DIR),
            "the sidecar serves the directory it mounts"
        );
    }
}

#[test]
fn a_workspace_the_session_keeps_read_only_stays_read_only() {
    let pod = pod_of(&session_yaml(
        "reader",
        "trustLevel: trusted
sandbox:
  workspace: {persistentVolumeClaim: {claimName: docs, readOnly: true}}",
    ));
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    let volume = volume_named(&pod, &mount_at(agent(&pod), WORKSPACE_DIR).name);
    assert_eq!(
        volume.persistent_volume_claim.as_ref().unwrap().read_only,
        Some(true)
    );
    let csi = pod_of(&session_yaml(
        "csi",
        "trustLevel: trusted
sandbox:
  workspace: {csi: {driver: example.com/ws, readOnly: true}}",
    ));
    let volume = volume_named(&csi, &mount_at(agent(&csi), WORKSPACE_DIR).name);
    assert_eq!(volume.csi.as_ref().unwrap().read_only, Some(true));
}

#[test]
fn the_agent_and_its_sidecar_are_given_the_prompt() {
    let hash =
        |pod: &Pod| pod.metadata.annotations.as_ref().unwrap()[SESSION_HASH_ANNOTATION].clone();
    let quiet = session("reviewer", TrustLevel::SemiTrusted);
    let pod = pod_of(&quiet);
    assert!(!env_of(agent(&pod)).contains_key(env::PROMPT));
    assert!(!env_of(sidecar(&pod)).contains_key(env::PROMPT));

    let mut prompted = quiet.clone();
    let prompt = "You review code.\nSay \"LGTM\" only when it is.";
    prompted.spec.prompt = Some(prompt.into());
    let with_prompt = pod_of(&prompted);
    assert_eq!(restricted_violations(&with_prompt), Vec::<String>::new());
    for container in [agent(&with_prompt), sidecar(&with_prompt)] {
        assert_eq!(
            env_of(container)[env::PROMPT].value.as_deref(),
            Some(prompt),
            "{}",
            container.name
        );
    }
    assert_ne!(
        hash(&with_prompt),
        hash(&pod),
        "a new prompt is a change of the Session: a new pod"
    );
}

#[test]
fn the_operators_seccomp_default_is_for_sandboxes_that_name_none() {
    let config = SandboxConfig {
        default_seccomp_profile: Some("profiles/wopr-sandbox.json".into()),
        ..sandbox_config()
    };
    let seccomp = |session: &Session, config: &SandboxConfig| {
        let pod = build_pod(session, &context(session), config);
        let profile = agent(&pod)
            .security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .clone()
            .unwrap();
        (profile.type_, profile.localhost_profile)
    };
    let sandboxed = common::session("research", TrustLevel::Untrusted);
    assert_eq!(
        seccomp(&sandboxed, &config),
        (
            "Localhost".into(),
            Some("profiles/wopr-sandbox.json".into())
        )
    );
    assert_eq!(
        seccomp(&sandboxed, &sandbox_config()),
        ("RuntimeDefault".into(), None),
        "without the installer, RuntimeDefault"
    );
    let unsandboxed = common::session("lead", TrustLevel::Owner);
    assert_eq!(
        seccomp(&unsandboxed, &config),
        ("RuntimeDefault".into(), None),
        "an unsandboxed agent keeps RuntimeDefault"
    );
    let own = session_yaml(
        "own",
        "trustLevel: untrusted\nsandbox:\n  seccompProfile: {type: RuntimeDefault}",
    );
    assert_eq!(
        seccomp(&own, &config),
        ("RuntimeDefault".into(), None),
        "the Session's own choice wins"
    );
}

/// The test settings with an egress service at `address`.
fn with_egress(address: &str) -> SandboxConfig {
    SandboxConfig {
        egress: Some(ControlPlane::parse(address, "wopr-system").unwrap()),
        ..sandbox_config()
    }
}

const EGRESS: &str = "https://wopr-operator-egress.wopr-system.svc:8443";

#[test]
fn the_agents_sdks_call_the_sidecar_with_a_placeholder_key_and_the_sidecar_the_egress_service() {
    let session = session("research", TrustLevel::SemiTrusted);
    let pod = build_pod(&session, &context(&session), &with_egress(EGRESS));
    let agent_env = env_of(agent(&pod));
    let value = |env: &BTreeMap<String, EnvVar>, name: &str| env[name].value.clone().unwrap();
    assert_eq!(
        value(&agent_env, "OPENAI_BASE_URL"),
        "http://127.0.0.1:7782/v1"
    );
    assert_eq!(
        value(&agent_env, "ANTHROPIC_BASE_URL"),
        "http://127.0.0.1:7782"
    );
    assert_eq!(value(&agent_env, "OPENAI_API_KEY"), PLACEHOLDER_API_KEY);
    assert_eq!(value(&agent_env, "ANTHROPIC_API_KEY"), PLACEHOLDER_API_KEY);
    let sidecar_env = env_of(sidecar(&pod));
    assert_eq!(value(&sidecar_env, env::MODELS_ADDRESS), MODELS_ADDRESS);
    assert_eq!(value(&sidecar_env, env::EGRESS_ADDRESS), EGRESS);
    assert!(
        !agent_env.contains_key(env::EGRESS_ADDRESS),
        "only the sidecar dials the egress service"
    );

    // Without an egress service the sidecar is told none; the agent's SDKs
    // still call the sidecar, which answers in their format.
    let without = pod_of(&session);
    assert!(!env_of(sidecar(&without)).contains_key(env::EGRESS_ADDRESS));
    assert_eq!(
        value(&env_of(agent(&without)), "OPENAI_API_KEY"),
        PLACEHOLDER_API_KEY
    );
}

#[test]
fn no_container_of_the_pod_carries_a_provider_key() {
    // A namespace whose providers' keys are in a Secret: nothing of it
    // reaches the pod, for any level, whether or not a provider is named.
    let policy = security_policy(serde_json::json!({"providers": [
        {"name": "openai", "type": "openai", "secretRef": {"name": "model-keys", "key": "openai-key"}},
        {"name": "anthropic", "type": "anthropic", "secretRef": {"name": "model-keys", "key": "anthropic-key"}},
    ]}));
    for level in TrustLevel::ALL {
        let mut session = session("s", level);
        session.spec.provider =
            Some(serde_json::from_value(serde_json::json!({"name": "openai"})).unwrap());
        let context = resolve(&session, Some(&policy), &[], &[], now()).unwrap();
        assert_eq!(context.models.providers.len(), 2, "the policy is in force");
        let pod = build_pod(&session, &context, &with_egress(EGRESS));
        let spec = pod.spec.as_ref().unwrap();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            for var in container.env.iter().flatten() {
                assert!(
                    var.value_from
                        .as_ref()
                        .is_none_or(|from| from.secret_key_ref.is_none()),
                    "{}: {} reads a Secret",
                    container.name,
                    var.name
                );
                if var.name.ends_with("API_KEY") {
                    assert_eq!(
                        var.value.as_deref(),
                        Some(PLACEHOLDER_API_KEY),
                        "{}",
                        var.name
                    );
                }
            }
            assert!(container.env_from.is_none(), "{}", container.name);
        }
        for volume in spec.volumes.iter().flatten() {
            assert!(
                volume.secret.is_none(),
                "volume {} is a Secret",
                volume.name
            );
            for source in volume
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
            {
                assert!(
                    source.secret.is_none(),
                    "volume {} projects a Secret",
                    volume.name
                );
            }
        }
        let text = serde_json::to_string(&pod).unwrap();
        for needle in ["model-keys", "openai-key", "anthropic-key"] {
            assert!(!text.contains(needle), "{level}: the pod names {needle}");
        }
    }
}

#[test]
fn a_resolved_egress_name_goes_into_etc_hosts_too() {
    let mut config = with_egress(EGRESS);
    config.control_plane.resolved_ip = Some("10.96.0.42".parse().unwrap());
    config.egress.as_mut().unwrap().resolved_ip = Some("10.96.0.43".parse().unwrap());
    let session = session("u", TrustLevel::Untrusted);
    let aliases = build_pod(&session, &context(&session), &config)
        .spec
        .unwrap()
        .host_aliases
        .unwrap();
    let pairs: Vec<(String, Vec<String>)> = aliases
        .into_iter()
        .map(|alias| (alias.ip, alias.hostnames.unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            (
                "10.96.0.42".into(),
                vec!["wopr-operator.wopr-system.svc".into()]
            ),
            (
                "10.96.0.43".into(),
                vec!["wopr-operator-egress.wopr-system.svc".into()]
            ),
        ]
    );
}

#[test]
fn every_network_mode_reaches_the_egress_service() {
    let config = with_egress(EGRESS);
    let egress_rule = |session: &Session, config: &SandboxConfig| {
        let policy = build_network_policy(
            session,
            &context(session),
            &config.control_plane,
            config.egress.as_ref(),
        );
        serde_json::to_value(policy).unwrap()["spec"]["egress"].clone()
    };
    let untrusted = session("u", TrustLevel::Untrusted);
    let restricted = session("r", TrustLevel::SemiTrusted);
    for session in [&untrusted, &restricted] {
        let rules = egress_rule(session, &config);
        let rule = &rules[1];
        assert_eq!(
            rule["to"],
            serde_json::json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "wopr-system"}},
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/name": "wopr-operator",
                    "app.kubernetes.io/component": "egress",
                }},
            }]),
            "{rules}"
        );
        assert_eq!(
            rule["ports"],
            serde_json::json!([{"port": 8443, "protocol": "TCP"}])
        );
        // Without an egress service, no such rule.
        let without = egress_rule(session, &sandbox_config());
        assert!(
            without
                .as_array()
                .unwrap()
                .iter()
                .all(|rule| rule["ports"][0]["port"] != 8443),
            "{without}"
        );
    }
    assert_eq!(
        egress_rule(&untrusted, &config).as_array().unwrap().len(),
        2
    );
    // full: egress is not restricted at all.
    let trusted = session("t", TrustLevel::Trusted);
    assert_eq!(egress_rule(&trusted, &config), serde_json::Value::Null);

    // An egress service outside the cluster is also reached by its IP.
    let outside = with_egress("192.0.2.20:8443");
    let rules = egress_rule(&untrusted, &outside);
    assert_eq!(rules[1]["to"][1]["ipBlock"]["cidr"], "192.0.2.20/32");
}
