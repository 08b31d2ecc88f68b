//! The Pod Security Standards "restricted" profile (Kubernetes 1.33), rule
//! by rule, as a checker over a Pod: it returns every violation it finds.
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/>

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile, SecurityContext};

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// Every container of the pod: init, regular and ephemeral, with its kind.
fn containers(pod: &Pod) -> Vec<(String, Container)> {
    let spec = pod.spec.as_ref().expect("a pod spec");
    let mut all: Vec<(String, Container)> = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        all.push((format!("initContainers[{}]", c.name), c.clone()));
    }
    for c in &spec.containers {
        all.push((format!("containers[{}]", c.name), c.clone()));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        let container = Container {
            name: c.name.clone(),
            security_context: c.security_context.clone(),
            ports: c.ports.clone(),
            ..Container::default()
        };
        all.push((format!("ephemeralContainers[{}]", c.name), container));
    }
    all
}

fn seccomp_allowed(profile: &SeccompProfile) -> bool {
    profile.type_ == "RuntimeDefault" || profile.type_ == "Localhost"
}

/// Every violation of the "restricted" profile (which includes "baseline").
pub fn restricted_violations(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().expect("a pod spec");
    let pod_security = spec.security_context.clone().unwrap_or_default();
    let mut violations = Vec::new();
    let mut flag = |condition: bool, message: String| {
        if condition {
            violations.push(message);
        }
    };

    // Baseline: host namespaces.
    flag(spec.host_network == Some(true), "hostNetwork".into());
    flag(spec.host_pid == Some(true), "hostPID".into());
    flag(spec.host_ipc == Some(true), "hostIPC".into());
    // Baseline: HostProcess.
    flag(
        pod_security
            .windows_options
            .as_ref()
            .and_then(|w| w.host_process)
            == Some(true),
        "pod hostProcess".into(),
    );
    // Baseline: host paths. Restricted: volume types.
    for volume in spec.volumes.iter().flatten() {
        let allowed = volume.config_map.is_some()
            || volume.csi.is_some()
            || volume.downward_api.is_some()
            || volume.empty_dir.is_some()
            || volume.ephemeral.is_some()
            || volume.persistent_volume_claim.is_some()
            || volume.projected.is_some()
            || volume.secret.is_some();
        flag(
            volume.host_path.is_some(),
            format!("volume {} is a hostPath", volume.name),
        );
        flag(
            !allowed,
            format!(
                "volume {} has a type restricted does not allow",
                volume.name
            ),
        );
    }
    // Baseline: sysctls.
    for sysctl in pod_security.sysctls.iter().flatten() {
        flag(
            !SAFE_SYSCTLS.contains(&sysctl.name.as_str()),
            format!("unsafe sysctl {}", sysctl.name),
        );
    }
    // Baseline: AppArmor (fields and the deprecated annotations).
    if let Some(profile) = &pod_security.app_armor_profile {
        flag(
            profile.type_ == "Unconfined",
            "pod appArmorProfile Unconfined".into(),
        );
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            flag(
                value != "runtime/default" && !value.starts_with("localhost/"),
                format!("annotation {key}={value}"),
            );
        }
    }
    // Baseline: SELinux, seccomp at pod level.
    if let Some(selinux) = &pod_security.se_linux_options {
        flag(
            !SELINUX_TYPES.contains(&selinux.type_.as_deref().unwrap_or("")),
            "pod seLinuxOptions.type".into(),
        );
        flag(
            selinux.user.is_some() || selinux.role.is_some(),
            "pod seLinuxOptions user/role".into(),
        );
    }
    let pod_seccomp_ok = pod_security
        .seccomp_profile
        .as_ref()
        .is_some_and(seccomp_allowed);
    flag(
        pod_security
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "Unconfined"),
        "pod seccompProfile Unconfined".into(),
    );
    // Restricted: running as non-root, at pod level.
    flag(
        pod_security.run_as_user == Some(0),
        "pod runAsUser 0".into(),
    );
    let pod_non_root = pod_security.run_as_non_root == Some(true);

    for (name, container) in containers(pod) {
        let security: SecurityContext = container.security_context.clone().unwrap_or_default();
        flag(
            security.privileged == Some(true),
            format!("{name} privileged"),
        );
        flag(
            security
                .windows_options
                .as_ref()
                .and_then(|w| w.host_process)
                == Some(true),
            format!("{name} hostProcess"),
        );
        flag(
            security
                .proc_mount
                .as_deref()
                .is_some_and(|m| m != "Default"),
            format!("{name} procMount"),
        );
        for port in container.ports.iter().flatten() {
            flag(
                port.host_port.is_some_and(|p| p != 0),
                format!("{name} hostPort"),
            );
        }
        if let Some(profile) = &security.app_armor_profile {
            flag(
                profile.type_ == "Unconfined",
                format!("{name} appArmorProfile Unconfined"),
            );
        }
        if let Some(selinux) = &security.se_linux_options {
            flag(
                !SELINUX_TYPES.contains(&selinux.type_.as_deref().unwrap_or("")),
                format!("{name} seLinuxOptions.type"),
            );
            flag(
                selinux.user.is_some() || selinux.role.is_some(),
                format!("{name} seLinuxOptions user/role"),
            );
        }
        // Baseline + restricted: capabilities.
        let capabilities = security.capabilities.clone().unwrap_or_default();
        for added in capabilities.add.iter().flatten() {
            flag(
                !BASELINE_CAPABILITIES.contains(&added.as_str()),
                format!("{name} adds {added}"),
            );
            flag(
                added != "NET_BIND_SERVICE",
                format!("{name} adds {added} (restricted)"),
            );
        }
        flag(
            !capabilities.drop.iter().flatten().any(|d| d == "ALL"),
            format!("{name} does not drop ALL capabilities"),
        );
        // Restricted: privilege escalation.
        flag(
            security.allow_privilege_escalation != Some(false),
            format!("{name} allowPrivilegeEscalation is not false"),
        );
        // Restricted: non-root.
        flag(
            security.run_as_non_root == Some(false),
            format!("{name} runAsNonRoot false"),
        );
        flag(
            !pod_non_root && security.run_as_non_root != Some(true),
            format!("{name} runAsNonRoot not set at pod or container level"),
        );
        flag(
            security.run_as_user == Some(0),
            format!("{name} runAsUser 0"),
        );
        // Restricted: seccomp.
        match &security.seccomp_profile {
            Some(profile) => flag(
                !seccomp_allowed(profile),
                format!("{name} seccompProfile {}", profile.type_),
            ),
            None => flag(
                !pod_seccomp_ok,
                format!("{name} has no seccompProfile at pod or container level"),
            ),
        }
    }
    violations
}
