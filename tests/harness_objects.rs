//! The e2e helpers' transformations, checked without a cluster: what
//! `tests/common/e2e.rs` sends to a real API server must be the shipped
//! objects of `manifests/install.yaml`, changed only where the helper says.
//! (A helper once indexed a missing `spec.variables`, which inserted `null`
//! into every binding it sent, and three e2e tests could never pass.)

mod common;

use serde_json::Value;

use common::e2e::admission_objects;
use common::install_yaml;

/// The paths at which `sent` differs from `shipped`, a key added or removed
/// included (`spec.variables[1].expression`).
fn differences(path: &str, shipped: &Value, sent: &Value) -> Vec<String> {
    match (shipped, sent) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|key| {
                    let child = format!("{path}.{key}");
                    match (a.get(key), b.get(key)) {
                        (Some(x), Some(y)) => differences(&child, x, y),
                        _ => vec![child],
                    }
                })
                .collect()
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .flat_map(|(i, (x, y))| differences(&format!("{path}[{i}]"), x, y))
            .collect(),
        _ if shipped == sent => Vec::new(),
        _ => vec![path.to_owned()],
    }
}

fn key(object: &Value) -> (String, String) {
    (
        object["kind"].as_str().unwrap_or_default().to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[test]
fn install_admission_sends_the_shipped_objects_with_only_the_operator_replaced() {
    let roles = ["wopr-approver", "wopr-trust-owner"];
    let sent = admission_objects("alice@example.com", &roles);
    let shipped: Vec<Value> = install_yaml()
        .into_iter()
        .filter(|o| match o["kind"].as_str() {
            Some("ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding") => true,
            Some("ClusterRole") => roles.contains(&key(o).1.as_str()),
            _ => false,
        })
        .collect();
    let mut sent_keys: Vec<_> = sent.iter().map(key).collect();
    let mut shipped_keys: Vec<_> = shipped.iter().map(key).collect();
    sent_keys.sort();
    shipped_keys.sort();
    assert_eq!(
        sent_keys, shipped_keys,
        "every shipped object, nothing else"
    );
    assert!(
        sent_keys
            .iter()
            .any(|(kind, _)| kind == "ValidatingAdmissionPolicyBinding"),
        "the bindings are among them"
    );

    let mut replaced = 0;
    for object in &sent {
        let original = shipped.iter().find(|o| key(o) == key(object)).unwrap();
        let changed = differences("", original, object);
        let operator_expressions: Vec<(usize, String)> = original["spec"]["variables"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, variable)| variable["name"] == "byOperator")
            .map(|(i, _)| (i, format!(".spec.variables[{i}].expression")))
            .collect();
        assert!(
            changed
                .iter()
                .all(|path| operator_expressions.iter().any(|(_, p)| p == path)),
            "{:?} changed {changed:?}; only the byOperator expression may change",
            key(object)
        );
        for (index, _) in operator_expressions {
            replaced += 1;
            assert_eq!(
                object["spec"]["variables"][index]["expression"],
                "request.userInfo.username == 'alice@example.com'"
            );
        }
    }
    assert!(replaced > 0, "the approval policy's operator is replaced");
}

#[test]
fn differences_sees_an_inserted_null() {
    let shipped = serde_json::json!({"spec": {"policyName": "p"}});
    let sent = serde_json::json!({"spec": {"policyName": "p", "variables": null}});
    assert_eq!(differences("", &shipped, &sent), [".spec.variables"]);
    assert!(differences("", &shipped, &shipped).is_empty());
}

#[test]
fn start_up_milestones_are_read_off_the_pod_as_the_kubelet_reports_them() {
    use common::startup::milestones;
    use k8s_openapi::api::core::v1::Pod;
    let pod = |status: Value, node: bool| -> Pod {
        let mut pod = json_pod();
        if node {
            pod["spec"]["nodeName"] = "node-1".into();
        }
        pod["status"] = status;
        serde_json::from_value(pod).unwrap()
    };
    let running = serde_json::json!({"running": {"startedAt": "2026-12-06T00:00:00Z"}});
    let waiting = serde_json::json!({"waiting": {"reason": "PodInitializing"}});
    let status = |sidecar: &Value, agent: &Value, ready: &str| {
        serde_json::json!({
            "initContainerStatuses": [{"name": "a2a", "state": sidecar, "ready": false,
                                       "restartCount": 0, "image": "i", "imageID": ""}],
            "containerStatuses": [{"name": "agent", "state": agent, "ready": false,
                                   "restartCount": 0, "image": "i", "imageID": ""}],
            "conditions": [{"type": "Ready", "status": ready}],
        })
    };
    assert_eq!(milestones(&pod(Value::Null, false)), ["pod seen"]);
    assert_eq!(
        milestones(&pod(status(&waiting, &waiting, "False"), true)),
        ["pod seen", "scheduled"]
    );
    assert_eq!(
        milestones(&pod(status(&running, &waiting, "False"), true)),
        ["pod seen", "scheduled", "sidecar running"]
    );
    assert_eq!(
        milestones(&pod(status(&running, &running, "True"), true)),
        common::startup::MILESTONES
    );
}

fn json_pod() -> Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wopr-s", "namespace": "team-a"},
        "spec": {"containers": [{"name": "agent"}]},
    })
}

#[test]
fn start_up_phases_are_the_medians_of_the_gaps_between_milestones() {
    use common::startup::phases;
    use std::time::Duration;
    let ms = Duration::from_millis;
    let run = |seen: &[(&'static str, u64)], ready: u64| {
        (
            seen.iter().map(|(m, at)| (*m, ms(*at))).collect(),
            ms(ready),
        )
    };
    let runs = [
        run(
            &[
                ("pod seen", 50),
                ("scheduled", 60),
                ("sidecar running", 400),
                ("agent running", 1300),
                ("pod Ready", 1400),
            ],
            1500,
        ),
        run(
            &[
                ("pod seen", 40),
                ("scheduled", 50),
                ("sidecar running", 500),
                ("agent running", 1100),
                ("pod Ready", 1200),
            ],
            1350,
        ),
        // A milestone the watch missed counts in neither phase beside it.
        run(
            &[
                ("pod seen", 60),
                ("scheduled", 70),
                ("agent running", 1200),
                ("pod Ready", 1300),
            ],
            1400,
        ),
    ];
    let phases = phases(&runs);
    let names: Vec<&str> = phases.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "Session created → pod seen",
            "pod seen → scheduled",
            "scheduled → sidecar running",
            "sidecar running → agent running",
            "agent running → pod Ready",
            "pod Ready → Session Ready",
        ]
    );
    assert_eq!(phases[0].1, ms(50));
    assert_eq!((phases[2].1, phases[2].2), (ms(450), 2));
    assert_eq!((phases[3].1, phases[3].2), (ms(900), 2));
    assert_eq!((phases[5].1, phases[5].2), (ms(100), 3));
}
