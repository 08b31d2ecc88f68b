//! The chart, as rendered into `manifests/install.yaml`, fits the code: the
//! controller accepts the flags it is given, its pod passes Pod Security
//! "restricted", the Service and ports line up, and the NetworkPolicies of
//! session pods and of the controller let sidecars reach the control plane.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use clap::Parser;
use common::pod_security::restricted_violations;
use common::{INSTALL_NAMESPACE, install_yaml, now, session};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};
use wopr_operator::api::{TrustLevel, UpdatePolicy, UpdateType};
use wopr_operator::controller::session::build::{
    CONTROL_PLANE_POD_LABELS, build_network_policy, child_labels,
};
use wopr_operator::controller::session::config::SandboxConfig;
use wopr_operator::operator::args::ControllerArgs;
use wopr_operator::policy::resolve;

fn object<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str) -> T {
    let found: Vec<_> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The one object of `kind` named `name`.
fn named<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str, name: &str) -> T {
    let found: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name}");
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind} {name}: {e}"))
}

/// The controller's objects and the egress service's, by their names.
const CONTROLLER: &str = "wopr-operator";
const EGRESS: &str = "wopr-operator-egress";

fn controller() -> (Deployment, Service, NetworkPolicy) {
    let objects = install_yaml();
    (
        named(&objects, "Deployment", CONTROLLER),
        named(&objects, "Service", CONTROLLER),
        named(&objects, "NetworkPolicy", CONTROLLER),
    )
}

fn egress() -> (Deployment, Service, NetworkPolicy) {
    let objects = install_yaml();
    (
        named(&objects, "Deployment", EGRESS),
        named(&objects, "Service", EGRESS),
        named(&objects, "NetworkPolicy", EGRESS),
    )
}

/// The controller container of the Deployment's pod template.
fn controller_container(deployment: &Deployment) -> &Container {
    let template = &deployment.spec.as_ref().unwrap().template;
    &template.spec.as_ref().unwrap().containers[0]
}

fn container_args(deployment: &Deployment) -> Vec<String> {
    controller_container(deployment).args.clone().unwrap()
}

/// The controller's flags, as the binary's `controller` subcommand parses them.
#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    args: ControllerArgs,
}

/// The chart's flags parsed by the real parser (the global `--log-format`
/// aside), with the namespace the pod's `POD_INSTALL_NAMESPACE` will hold.
fn parsed_args(deployment: &Deployment) -> ControllerArgs {
    let args = container_args(deployment);
    assert_eq!(args[0], "controller");
    let flags = args[1..]
        .iter()
        .filter(|a| !a.starts_with("--log-format="))
        .cloned();
    let argv = [
        "controller".to_owned(),
        format!("--operator-namespace={INSTALL_NAMESPACE}"),
    ]
    .into_iter()
    .chain(flags);
    Flags::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("the chart's flags: {e}"))
        .args
}

#[test]
fn the_binary_accepts_every_flag_the_chart_passes() {
    let (deployment, _, _) = controller();
    let output = Command::new(env!("CARGO_BIN_EXE_wopr-operator"))
        .args(container_args(&deployment))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let args = parsed_args(&deployment);
    SandboxConfig::from_args(&args).expect("flags the builders accept");
    assert!(args.leader_election);
    assert_eq!(
        args.default_update_policy(),
        UpdatePolicy {
            type_: UpdateType::Rolling,
            max_unavailable: Some(1)
        }
    );
    assert_eq!(args.shutdown_drain_seconds, 5);
    let pod_spec = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert!(
        pod_spec.termination_grace_period_seconds.unwrap() > 5,
        "the controller drains before the kubelet kills it"
    );
}

#[test]
fn the_controller_pod_passes_pod_security_restricted() {
    let (deployment, _, _) = controller();
    assert_hardened(deployment);
}

/// The egress service's pod gets every check the controller's does.
#[test]
fn the_egress_pod_passes_pod_security_restricted() {
    let (deployment, _, _) = egress();
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2), "two replicas by default");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some(EGRESS));
    assert_hardened(deployment);
}

fn assert_hardened(deployment: Deployment) {
    let template = deployment.spec.unwrap().template;
    let pod = Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        ..Pod::default()
    };
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    let container = &pod.spec.as_ref().unwrap().containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let resources = container.resources.as_ref().unwrap();
    assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
    for probe in [&container.liveness_probe, &container.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.port, IntOrString::String("admin".into()));
    }
}

/// The labels of the controller's pods.
fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    let template = &deployment.spec.as_ref().unwrap().template;
    template.metadata.as_ref().unwrap().labels.clone().unwrap()
}

/// Container port number of `name`.
fn container_port(deployment: &Deployment, name: &str) -> i32 {
    controller_container(deployment)
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no container port {name}"))
        .container_port
}

#[test]
fn sidecars_dial_the_service_that_selects_the_controller() {
    let (deployment, service, _) = controller();
    let args = parsed_args(&deployment);
    let control_plane = SandboxConfig::from_args(&args).unwrap().control_plane;
    let service_name = service.metadata.name.clone().unwrap();
    assert_eq!(
        control_plane.host,
        format!("{service_name}.{INSTALL_NAMESPACE}.svc")
    );
    let spec = service.spec.unwrap();
    let grpc = spec
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap();
    assert_eq!(i32::from(control_plane.port), grpc.port);
    assert_eq!(grpc.target_port, Some(IntOrString::String("grpc".into())));
    assert_eq!(control_plane.port, args.control_plane_listen.port());
    assert_eq!(
        i32::from(args.control_plane_listen.port()),
        container_port(&deployment, "grpc")
    );
    assert_eq!(
        i32::from(args.admin_address.port()),
        container_port(&deployment, "admin")
    );

    let pod_labels = pod_labels(&deployment);
    for (key, value) in spec.selector.unwrap() {
        assert_eq!(
            pod_labels.get(&key),
            Some(&value),
            "the Service selects {key}"
        );
    }
}

fn matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.get(key).map(String::as_str) == value.as_str())
}

#[test]
fn a_session_without_network_still_reaches_the_control_plane() {
    let (deployment, _, _) = controller();
    let control_plane = SandboxConfig::from_args(&parsed_args(&deployment))
        .unwrap()
        .control_plane;
    let untrusted = session("probe", TrustLevel::Untrusted);
    let context = resolve(&untrusted, None, &[], &[], now()).unwrap();
    let policy = serde_json::to_value(build_network_policy(
        &untrusted,
        &context,
        &control_plane,
        None,
    ))
    .unwrap();
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 1, "network: none has the control plane only");

    let pod_labels = pod_labels(&deployment);
    let namespace_labels = BTreeMap::from([(
        "kubernetes.io/metadata.name".to_owned(),
        INSTALL_NAMESPACE.to_owned(),
    )]);
    let peer = &egress[0]["to"][0];
    assert!(matches(&peer["namespaceSelector"], &namespace_labels));
    assert!(matches(&peer["podSelector"], &pod_labels));
    for (key, value) in CONTROL_PLANE_POD_LABELS {
        assert_eq!(pod_labels.get(key).map(String::as_str), Some(value));
    }
    // NetworkPolicy ports are the pod's ports (after the Service's DNAT).
    assert_eq!(
        egress[0]["ports"][0]["port"],
        container_port(&deployment, "grpc")
    );
}

#[test]
fn the_controllers_network_policy_admits_session_pods_to_grpc() {
    let (deployment, _, network_policy) = controller();
    let policy = serde_json::to_value(network_policy).unwrap();
    let pod_labels = pod_labels(&deployment);
    assert!(matches(&policy["spec"]["podSelector"], &pod_labels));
    let session_pod = child_labels("probe", TrustLevel::Untrusted);
    let admitting: Vec<_> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["from"].as_array().unwrap().iter().any(|peer| {
                peer.get("podSelector")
                    .is_some_and(|s| matches(s, &session_pod))
            })
        })
        .collect();
    assert_eq!(admitting.len(), 1);
    assert_eq!(
        admitting[0]["ports"],
        json!([{"port": "grpc", "protocol": "TCP"}])
    );
}

#[test]
fn the_default_install_keeps_the_audit_store_on_a_claim_with_one_writer() {
    let objects = install_yaml();
    let deployment: Deployment = named(&objects, "Deployment", CONTROLLER);
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(1));
    let strategy = spec.strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
    let store = parsed_args(&deployment).store;
    let path = store.strip_prefix("sqlite://").expect("SQLite by default");
    let container = controller_container(&deployment);
    let mount = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m.mount_path)))
        .expect("the store's directory is a volume");
    let pod = spec.template.spec.as_ref().unwrap();
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    let claim = volume.persistent_volume_claim.as_ref().unwrap();
    let pvc: k8s_openapi::api::core::v1::PersistentVolumeClaim =
        object(&objects, "PersistentVolumeClaim");
    assert_eq!(
        pvc.metadata.name.as_deref(),
        Some(claim.claim_name.as_str())
    );
    assert_eq!(
        pvc.metadata.annotations.unwrap()["helm.sh/resource-policy"],
        "keep"
    );
    // The controller (65532) can write it.
    assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(65532));
}

/// The default install serves TLS: the controller issues itself a
/// certificate for the Service's names from its CA Secret (which its RBAC
/// lets it keep), sidecars dial https:// and verify it against the bundle
/// mounted from the namespace's ConfigMap, and nothing is plaintext.
#[test]
fn the_default_install_serves_tls_and_session_pods_mount_the_bundle() {
    use wopr_operator::contract::{CA_BUNDLE_CONFIGMAP, CA_BUNDLE_KEY, CA_DIR, CA_PATH, env};
    use wopr_operator::operator::tls::{leaf_names, served_services};

    let (deployment, service, _) = controller();
    let args = parsed_args(&deployment);
    assert!(!args.tls.insecure_plaintext);
    assert_eq!(args.tls.tls_cert_file, None, "no cert-manager by default");
    assert!(args.control_plane_address.starts_with("https://"));
    let config = SandboxConfig::from_args(&args).unwrap();
    let service_name = service.metadata.name.clone().unwrap();
    assert_eq!(args.tls.tls_service_name, service_name);
    assert_eq!(served_services(&args), std::slice::from_ref(&service_name));
    let names = leaf_names(
        &served_services(&args),
        &args.operator_namespace,
        &config.control_plane.host,
        &args.tls.tls_server_name,
    );
    assert!(names.contains(&config.control_plane.host), "{names:?}");

    let pod: Pod = {
        let probe = session("probe", TrustLevel::Untrusted);
        let context = resolve(&probe, None, &[], &[], now()).unwrap();
        wopr_operator::controller::session::build::build_pod(&probe, &context, &config)
    };
    let spec = pod.spec.unwrap();
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|volume| volume.config_map.is_some())
        .expect("the bundle volume");
    let source = volume.config_map.as_ref().unwrap();
    assert_eq!(source.name, CA_BUNDLE_CONFIGMAP);
    assert_eq!(source.optional, Some(false));
    assert_eq!(source.items.as_ref().unwrap()[0].key, CA_BUNDLE_KEY);
    let sidecar = &spec.init_containers.unwrap()[0];
    let mount = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| mount.name == volume.name)
        .expect("the sidecar mounts the bundle");
    assert_eq!(mount.mount_path, CA_DIR);
    assert_eq!(mount.read_only, Some(true));
    let sidecar_env = sidecar.env.clone().unwrap();
    let value = |name: &str| {
        sidecar_env
            .iter()
            .find(|var| var.name == name)
            .and_then(|var| var.value.clone())
    };
    assert_eq!(value(env::CONTROL_PLANE_CA).as_deref(), Some(CA_PATH));
    assert_eq!(value(env::INSECURE_PLAINTEXT), None);
    let agent_mounts = spec.containers[0].volume_mounts.clone().unwrap_or_default();
    assert!(
        agent_mounts.iter().all(|mount| mount.name != volume.name),
        "the agent has no use for it"
    );
}

/// The optional monitoring objects (`manifests/monitoring.yaml`, rendered
/// with `serviceMonitor.enabled` and `grafanaDashboard.enabled`).
fn monitoring_yaml() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/monitoring.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/monitoring.yaml");
    serde_saphyr::from_multiple(&text).expect("monitoring.yaml parses")
}

#[test]
fn the_service_monitor_scrapes_the_controllers_metrics_port() {
    let (deployment, service, _) = controller();
    let monitoring = monitoring_yaml();
    let monitor: Value = object(&monitoring, "ServiceMonitor");
    let service_labels = service.metadata.labels.clone().unwrap();
    assert!(
        matches(&monitor["spec"]["selector"], &service_labels),
        "the ServiceMonitor selects the controller's Service: {}",
        monitor["spec"]["selector"]
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["path"], "/metrics");
    let port_name = endpoints[0]["port"].as_str().unwrap();
    let port = service
        .spec
        .unwrap()
        .ports
        .into_iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(port_name))
        .unwrap_or_else(|| panic!("the Service has no port {port_name}"));
    // The Service port leads to the container port of the admin server,
    // which serves /metrics.
    let target = match port.target_port.unwrap() {
        IntOrString::String(name) => container_port(&deployment, &name),
        IntOrString::Int(number) => number,
    };
    let args = parsed_args(&deployment);
    assert_eq!(target, i32::from(args.admin_address.port()));
}

/// The dashboard as the chart ships it in its ConfigMap.
fn dashboard() -> (Value, Value) {
    let monitoring = monitoring_yaml();
    let config_map: Value = object(&monitoring, "ConfigMap");
    let json = config_map["data"]["wopr-operator.json"].as_str().unwrap();
    let dashboard = serde_json::from_str(json).expect("the dashboard is JSON");
    (config_map, dashboard)
}

#[test]
fn the_grafana_dashboard_is_a_config_map_grafana_picks_up() {
    let (config_map, dashboard) = dashboard();
    assert_eq!(
        config_map["metadata"]["labels"]["grafana_dashboard"], "1",
        "Grafana's dashboard sidecar selects this label"
    );
    assert_eq!(config_map["metadata"]["namespace"], INSTALL_NAMESPACE);
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|panel| panel["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Denials",
        "Approvals",
        "spool depth",
        "Shipping lag",
        "SIEM export",
    ] {
        assert!(
            titles.iter().any(|title| title.contains(wanted)),
            "no panel about {wanted}: {titles:?}"
        );
    }
    let shipped = include_str!("../charts/wopr-operator/files/grafana-dashboard.json");
    assert_eq!(
        serde_json::from_str::<Value>(shipped).unwrap(),
        dashboard,
        "manifests/monitoring.yaml is the chart's dashboard (hack/render-manifests.sh)"
    );
}

/// The `wopr_...` metric names in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("wopr_")
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_metric_the_dashboard_uses_is_registered_by_the_operator() {
    let (_, dashboard) = dashboard();
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    let used = metric_names(&expressions);
    assert!(used.len() >= 8, "the dashboard uses {used:?}");
    let metrics = wopr_operator::operator::OperatorMetrics::new();
    touch_every_family(&metrics);
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &metrics.registry).unwrap();
    // The families as /metrics declares them (`# TYPE name kind`).
    let families: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(!families.contains("wopr_no_such_metric"));
    for name in &used {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| families.contains(family))
            .unwrap_or(name);
        assert!(
            families.contains(family),
            "the dashboard uses {name}, which the operator does not register; registered: {families:?}"
        );
    }
}

/// One series in each labelled family of `metrics`: /metrics leaves out a
/// family with none. (A family missed here fails the test above, never
/// passes it.)
fn touch_every_family(metrics: &wopr_operator::operator::OperatorMetrics) {
    use wopr_operator::controller::metrics::{CheckLabels, ErrorLabels, PhaseLabels};
    use wopr_operator::controlplane::audit::{DecisionLabels, SessionLabels};
    use wopr_operator::controlplane::refusals::ReasonLabels;
    use wopr_operator::export::ExporterLabels;
    let text = String::new;
    let decision = DecisionLabels {
        r#type: text(),
        decision: text(),
    };
    let session = SessionLabels {
        namespace: text(),
        session: text(),
    };
    let _ = metrics.audit.spool_depth.get_or_create(&session);
    let _ = metrics.audit.broker_decisions.get_or_create(&decision);
    let _ = metrics.audit.denials.get_or_create(&decision);
    let _ = metrics
        .controller
        .errors
        .get_or_create(&ErrorLabels { reason: text() });
    let _ = metrics
        .controller
        .sessions
        .get_or_create(&PhaseLabels { phase: text() });
    let _ = metrics
        .controller
        .sandbox_checks
        .get_or_create(&CheckLabels {
            check: text(),
            status: text(),
        });
    let _ = metrics
        .refusals
        .refusals
        .get_or_create(&ReasonLabels { reason: text() });
    let exporter = ExporterLabels { exporter: text() };
    let _ = metrics.export.exported.get_or_create(&exporter);
    let _ = metrics.export.failed.get_or_create(&exporter);
    let _ = metrics.export.lag.get_or_create(&exporter);
}

/// The value of the environment variable `name` of the Deployment's first
/// container.
fn env_value(deployment: &Deployment, name: &str) -> Option<String> {
    controller_container(deployment)
        .env
        .iter()
        .flatten()
        .find(|var| var.name == name)
        .and_then(|var| var.value.clone())
}

/// The egress pods carry the labels the sessions' NetworkPolicy selects
/// them by; each Service selects its own pods and not the other's.
#[test]
fn each_service_selects_its_own_pods_only() {
    let (controller, controller_service, _) = controller();
    let (egress, egress_service, _) = egress();
    let (controller_pods, egress_pods) = (pod_labels(&controller), pod_labels(&egress));
    assert_eq!(
        egress_pods
            .get("app.kubernetes.io/name")
            .map(String::as_str),
        Some("wopr-operator")
    );
    assert_eq!(
        egress_pods
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("egress")
    );
    let selects = |service: &Service, labels: &BTreeMap<String, String>| {
        let selector = service.spec.as_ref().unwrap().selector.clone().unwrap();
        selector
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    };
    assert!(selects(&controller_service, &controller_pods));
    assert!(!selects(&controller_service, &egress_pods));
    assert!(selects(&egress_service, &egress_pods));
    assert!(!selects(&egress_service, &controller_pods));

    let grpc = egress_service
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap();
    assert_eq!(grpc.port, 8443);
    assert_eq!(grpc.target_port, Some(IntOrString::String("grpc".into())));
    assert_eq!(container_port(&egress, "grpc"), 8443);
}

/// The controller tells sidecars the egress service's address (its
/// Service, TLS) and names its ServiceAccount; the egress service reaches
/// the control plane where sidecars do, with the bundle they trust, and
/// serves the certificate Secret the controller issues.
#[test]
fn the_controller_and_the_egress_service_are_told_each_other() {
    let (controller, _, _) = controller();
    let (egress, _, _) = egress();
    assert_eq!(
        env_value(&controller, "WOPR_EGRESS_ADDRESS").as_deref(),
        Some(format!("https://{EGRESS}.{INSTALL_NAMESPACE}.svc:8443").as_str())
    );
    assert_eq!(
        env_value(&controller, "WOPR_EGRESS_SERVICE").as_deref(),
        Some(EGRESS)
    );
    assert_eq!(
        env_value(&egress, "WOPR_CONTROL_PLANE_ADDRESS"),
        Some(parsed_args(&controller).control_plane_address)
    );
    assert_eq!(
        env_value(&egress, "WOPR_CONTROL_PLANE_CA").as_deref(),
        Some(wopr_operator::contract::CA_PATH)
    );
    let pod = egress.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let secret = pod
        .volumes
        .iter()
        .flatten()
        .find_map(|volume| volume.secret.as_ref()?.secret_name.clone());
    assert_eq!(secret.as_deref(), Some("wopr-operator-egress-tls"));
    assert_eq!(
        env_value(&egress, "WOPR_TLS_CERT_FILE").as_deref(),
        Some("/var/run/wopr/tls/tls.crt")
    );
}

/// Whether a NetworkPolicy's egress rules let its pods reach any address
/// outside the cluster by an `ipBlock`.
fn reaches_the_internet(policy: &Value) -> bool {
    policy["spec"]["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["to"].as_array().into_iter().flatten())
        .any(|peer| peer.get("ipBlock").is_some())
}

/// The egress service is the only WOPR component whose NetworkPolicy
/// reaches the internet (443 and 80 anywhere); it admits session pods to
/// its gRPC port only.
#[test]
fn only_the_egress_service_reaches_the_internet() {
    let objects = install_yaml();
    let internet: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy" && reaches_the_internet(o))
        .map(|o| o["metadata"]["name"].clone())
        .collect();
    assert_eq!(internet, [json!(EGRESS)]);

    let (egress, _, network_policy) = egress();
    let policy = serde_json::to_value(network_policy).unwrap();
    assert!(matches(
        &policy["spec"]["podSelector"],
        &pod_labels(&egress)
    ));
    let (controller, _, _) = controller();
    assert!(!matches(
        &policy["spec"]["podSelector"],
        &pod_labels(&controller)
    ));
    let session_pod = child_labels("probe", TrustLevel::Untrusted);
    let admitting: Vec<_> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["from"].as_array().unwrap().iter().any(|peer| {
                peer.get("podSelector")
                    .is_some_and(|s| matches(s, &session_pod))
            })
        })
        .collect();
    assert_eq!(admitting.len(), 1);
    assert_eq!(
        admitting[0]["ports"],
        json!([{"port": "grpc", "protocol": "TCP"}])
    );
    let internet_rule = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["to"][0].get("ipBlock").is_some())
        .unwrap();
    assert_eq!(
        internet_rule["ports"],
        json!([{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}])
    );
}

/// The controller's own NetworkPolicy has no rule for the internet: only
/// the API server's ports, DNS and the control plane's ingress.
#[test]
fn the_controllers_network_policy_gains_no_internet_egress() {
    let (_, _, network_policy) = controller();
    let policy = serde_json::to_value(network_policy).unwrap();
    assert!(!reaches_the_internet(&policy));
    let ports: Vec<_> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().clone())
        .map(|port| port["port"].clone())
        .collect();
    assert_eq!(ports, [json!(443), json!(6443), json!(53), json!(53)]);
}

/// The egress service has a ServiceAccount of its own and a
/// PodDisruptionBudget over its pods only.
#[test]
fn the_egress_service_has_its_own_account_and_disruption_budget() {
    let objects = install_yaml();
    let _: Value = named(&objects, "ServiceAccount", EGRESS);
    let budget: Value = named(&objects, "PodDisruptionBudget", EGRESS);
    let (egress, _, _) = egress();
    let (controller, _, _) = controller();
    assert!(matches(&budget["spec"]["selector"], &pod_labels(&egress)));
    assert!(!matches(
        &budget["spec"]["selector"],
        &pod_labels(&controller)
    ));
    let controller_budget: Value = named(&objects, "PodDisruptionBudget", CONTROLLER);
    assert!(!matches(
        &controller_budget["spec"]["selector"],
        &pod_labels(&egress)
    ));
}
