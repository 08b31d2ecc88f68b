//! The real `wopr-operator` processes, as a cluster runs them: a controller
//! and sidecars, each its own process, against a fake API server over HTTP.
//! What only whole processes show: a control plane that dies and stays
//! dead, SIGTERM with watchers connected, start-up errors.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, control_plane_port};
use common::harness::{pod_path, session_path};
use common::mcp;
use common::process::{Process, free_port};
use common::session;
use http::StatusCode;
use serde_json::{Value, json};
use wopr_operator::api::TrustLevel;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/wopr-system/leases/wopr-operator";

async fn tool_names(mcp_address: &str) -> Vec<String> {
    let listed = mcp::call(mcp_address, "tools/list", json!({})).await;
    listed["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A tool call's result, or the JSON-RPC error message.
async fn call(mcp_address: &str, tool: &str, arguments: Value) -> Result<Value, String> {
    let answer = mcp::call(
        mcp_address,
        "tools/call",
        json!({"name": tool, "arguments": arguments}),
    )
    .await;
    match answer.get("error") {
        Some(error) => Err(error["message"].as_str().unwrap().to_owned()),
        None => Ok(answer["result"].clone()),
    }
}

fn memory_write() -> Value {
    json!({"path": "notes.txt", "content": "hello"})
}

/// The audit event a sidecar printed for a denied call of `tool`.
async fn denial(sidecar: &Process, tool: &str) -> Value {
    let line = sidecar
        .wait_for_stdout(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|event| event["tool"] == tool && event["decision"] == "denied")
        })
        .await;
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn a_sidecar_fails_closed_while_the_control_plane_stays_down() {
    let cluster = Cluster::start(&[("agent", TrustLevel::SemiTrusted)]).await;
    let mut controller = cluster.controller(0, &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    let (sidecar, agent) = cluster.sidecar("agent", port, 2).await;
    sidecar
        .wait_for("policy received", 1, Duration::from_secs(30))
        .await;
    assert!(
        tool_names(&agent)
            .await
            .contains(&"memory_write".to_owned())
    );
    call(&agent, "memory_write", memory_write()).await.unwrap();
    call(&agent, "config_get", json!({})).await.unwrap();

    // The control plane dies and stays dead; the sidecar keeps retrying.
    controller.signal(libc::SIGKILL);
    controller
        .exited_within(Duration::from_secs(5))
        .await
        .expect("SIGKILL ends it");
    sidecar
        .wait_for("policy watch failed", 4, Duration::from_secs(30))
        .await;
    sidecar
        .wait_for(
            "denying every tool but security_whoami",
            1,
            Duration::from_secs(10),
        )
        .await;
    let attempts = sidecar.count("policy watch failed");

    assert_eq!(tool_names(&agent).await, ["security_whoami"]);
    for (tool, arguments) in [("memory_write", memory_write()), ("config_get", json!({}))] {
        let refused = call(&agent, tool, arguments).await.unwrap_err();
        assert_eq!(refused, format!("tool not available: {tool}"));
        let denial = denial(&sidecar, tool).await;
        let reason = denial["reason"].as_str().unwrap();
        assert!(
            reason.contains("longer than the 2s bound (fail closed)"),
            "{reason}"
        );
    }
    let whoami = call(&agent, "security_whoami", json!({})).await.unwrap();
    assert!(whoami["structuredContent"]["policy"].is_null(), "{whoami}");

    // More failed reconnects change nothing.
    sidecar
        .wait_for("policy watch failed", attempts + 1, Duration::from_secs(30))
        .await;
    call(&agent, "config_get", json!({})).await.unwrap_err();

    // A control plane comes back: the next policy it sends restores the tools.
    let _controller = cluster.controller(port, &["--leader-election=false"]);
    sidecar
        .wait_for("policy received", 2, Duration::from_secs(30))
        .await;
    call(&agent, "config_get", json!({})).await.unwrap();
    call(&agent, "memory_write", memory_write()).await.unwrap();
    // Tool calls are the audit log's to record, not the logs'.
    let per_request: Vec<String> = sidecar
        .stderr()
        .into_iter()
        .filter(|line| line.contains("rmcp"))
        .collect();
    assert!(per_request.is_empty(), "{per_request:?}");
}

#[tokio::test]
async fn sigterm_releases_the_lease_ends_the_watches_and_exits_promptly() {
    let cluster = Cluster::start(&[
        ("first", TrustLevel::Trusted),
        ("second", TrustLevel::SemiTrusted),
    ])
    .await;
    let mut controller = cluster.controller(0, &["--leader-election=true"]);
    let port = control_plane_port(&controller).await;
    let (first, _) = cluster.sidecar("first", port, 30).await;
    let (second, _) = cluster.sidecar("second", port, 30).await;
    for sidecar in [&first, &second] {
        sidecar
            .wait_for("policy received", 1, Duration::from_secs(30))
            .await;
    }
    controller
        .wait_for("leadership changed leader=true", 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        cluster.api.get(LEASE).unwrap()["spec"]["holderIdentity"],
        "replica-1"
    );

    let signalled = Instant::now();
    controller.signal(libc::SIGTERM);
    let status = controller
        .exited_within(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running 5 s after SIGTERM:\n{}",
                controller.stderr().join("\n")
            )
        });
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(3), "exited after {took:?}");

    let lease = cluster.api.get(LEASE).unwrap();
    assert!(
        lease["spec"].get("holderIdentity").is_none(),
        "the Lease is released at once: {lease}"
    );
    assert_eq!(controller.count("released the lease"), 1);
    for sidecar in [&first, &second] {
        sidecar
            .wait_for(
                "policy stream ended; reconnecting",
                1,
                Duration::from_secs(5),
            )
            .await;
    }
}

#[tokio::test]
async fn a_stuck_shutdown_ends_at_the_drain_time() {
    let cluster = Cluster::start(&[("agent", TrustLevel::Trusted)]).await;
    let mut controller =
        cluster.controller(0, &["--leader-election=true", "--shutdown-drain-seconds=2"]);
    controller
        .wait_for("leadership changed leader=true", 1, Duration::from_secs(30))
        .await;
    // From now on the API server never answers about the Lease: releasing it hangs.
    cluster.api.stall(LEASE);

    let signalled = Instant::now();
    controller.signal(libc::SIGTERM);
    controller
        .exited_within(Duration::from_secs(6))
        .await
        .expect("the drain time bounds the shutdown");
    let took = signalled.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(4)).contains(&took),
        "exited after {took:?}"
    );
    assert_eq!(controller.count("the drain time is over"), 1);
}

/// Runs a controller that cannot start; returns its stderr.
async fn failed_start(cluster: &Cluster, extra: &[&str]) -> Vec<String> {
    let mut controller = cluster.controller(0, extra);
    let status = controller
        .exited_within(Duration::from_secs(20))
        .await
        .expect("it gives up");
    assert_eq!(status.code(), Some(1));
    controller.stderr()
}

/// The last stderr line: the error, alone on its line.
fn error_line(stderr: &[String]) -> &str {
    let last = stderr.last().expect("an error line");
    assert!(last.starts_with("error: "), "{stderr:?}");
    last
}

#[tokio::test]
async fn start_up_errors_are_one_line_that_names_the_fix() {
    // No namespace for the Lease.
    let cluster = Cluster::start(&[]).await;
    cluster.api.refuse_missing_namespace("wopr-system");
    let stderr = failed_start(&cluster, &["--leader-election=true"]).await;
    let line = error_line(&stderr);
    for fix in [
        "wopr-system, which does not exist",
        "kubectl create namespace wopr-system",
        "--operator-namespace",
        "--leader-election=false",
    ] {
        assert!(line.contains(fix), "{line}");
    }
    assert!(
        !stderr
            .iter()
            .any(|l| l.contains("Status {") || l.contains("Some(")),
        "no debug dump: {stderr:?}"
    );

    // A missing RBAC right.
    let cluster = Cluster::start(&[]).await;
    cluster.api.respond_to(
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        |review| {
            let attributes = &review["spec"]["resourceAttributes"];
            let allowed = !(attributes["resource"] == "sessions" && attributes["verb"] == "watch");
            json!({"spec": review["spec"], "status": {"allowed": allowed}})
        },
    );
    let line = failed_start(&cluster, &["--leader-election=false"]).await;
    let line = error_line(&line);
    assert!(line.contains("may not watch sessions.wopr.dev;"), "{line}");
    assert!(line.contains("manifests/install.yaml"), "{line}");

    // An API server that does not answer.
    let cluster = Cluster::start(&[]).await;
    let closed = free_port();
    std::fs::write(
        &cluster.kubeconfig,
        std::fs::read_to_string(&cluster.kubeconfig)
            .unwrap()
            .replace(&cluster.address.to_string(), &format!("127.0.0.1:{closed}")),
    )
    .unwrap();
    let stderr = failed_start(&cluster, &["--leader-election=false"]).await;
    let line = error_line(&stderr);
    assert!(
        line.contains(&format!(
            "cannot reach the Kubernetes API server at http://127.0.0.1:{closed}/"
        )),
        "{line}"
    );
    assert!(line.contains("KUBECONFIG"), "{line}");
    assert_eq!(stderr.len(), 1, "nothing but the error: {stderr:?}");

    // A forbidden answer in the middle of start-up (the Lease).
    let cluster = Cluster::start(&[]).await;
    cluster.api.refuse(
        "/apis/coordination.k8s.io/",
        StatusCode::FORBIDDEN,
        "leases.coordination.k8s.io \"wopr-operator\" is forbidden: User \"system:serviceaccount:wopr-system:wopr-operator\" cannot get resource \"leases\"",
    );
    let stderr = failed_start(&cluster, &["--leader-election=true"]).await;
    let line = error_line(&stderr);
    assert!(line.contains("cannot get resource \"leases\""), "{line}");
    assert!(line.contains("charts/wopr-operator"), "{line}");
}

/// The sidecar container's postStart hook, as the pod builder writes it,
/// pointed at `health_address` and the binary under test.
fn post_start_hook(health_address: &str, extra: &[&str]) -> Process {
    let pod = common::pod_of(&session("agent", TrustLevel::SemiTrusted));
    let sidecar = &pod.spec.unwrap().init_containers.unwrap()[0];
    let command = sidecar
        .lifecycle
        .as_ref()
        .unwrap()
        .post_start
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap()
        .command
        .clone()
        .unwrap();
    assert_eq!(command[0], wopr_operator::contract::SIDECAR_BINARY);
    let mut args: Vec<String> = command[1..]
        .iter()
        .map(|arg| match arg.strip_prefix("--health-address=") {
            Some(_) => format!("--health-address={health_address}"),
            None => arg.clone(),
        })
        .collect();
    args.extend(extra.iter().map(|flag| flag.to_string()));
    Process::start("postStart hook", &args, &[])
}

#[tokio::test]
async fn the_post_start_hook_returns_as_soon_as_the_sidecar_serves() {
    let cluster = Cluster::start(&[("agent", TrustLevel::SemiTrusted)]).await;
    let health_address = format!("127.0.0.1:{}", free_port());
    // Started before the sidecar: it waits for it. Something that is no
    // sidecar's health service takes the port first and turns each try
    // away: each try shows the hook did not return after the one before
    // (twenty of them, however long they take).
    let mut hook = post_start_hook(&health_address, &[]);
    let impostor = tokio::net::TcpListener::bind(&health_address)
        .await
        .unwrap();
    for _ in 0..20 {
        tokio::select! {
            accepted = impostor.accept() => drop(accepted.unwrap()),
            status = hook.exited_within(Duration::from_secs(30)) => {
                panic!("the hook tried no more with no sidecar: {status:?}")
            }
        }
    }
    assert!(
        hook.exited_within(Duration::ZERO).await.is_none(),
        "no sidecar yet"
    );
    drop(impostor);
    let _sidecar = cluster.sidecar_with("agent", free_port(), 30, &health_address);
    let status = hook
        .exited_within(Duration::from_secs(10))
        .await
        .expect("the hook returns once the sidecar serves");
    assert!(status.success(), "{:?}", hook.stderr());

    // Nothing ever serves: the hook gives up with a message for the event.
    let mut hook = post_start_hook(
        &format!("127.0.0.1:{}", free_port()),
        &["--timeout-seconds=1"],
    );
    let status = hook.exited_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1));
    let line = hook.stderr().join("\n");
    assert!(
        line.contains("did not let the agent start within 1s"),
        "{line}"
    );
}

/// The condition `type_` of the Session `name` in the fake API, as (status, reason).
fn session_condition(cluster: &Cluster, name: &str, type_: &str) -> Option<(String, String)> {
    let session = cluster.api.get(&session_path(name))?;
    let condition = session["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["reason"].as_str()?.to_owned(),
    ))
}

async fn wait_for_condition(cluster: &Cluster, name: &str, type_: &str, wanted: (&str, &str)) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = session_condition(cluster, name, type_);
        if now.as_ref().map(|(s, r)| (s.as_str(), r.as_str())) == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} {type_}: {now:?}, not {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_unverified_sandbox_keeps_the_agent_from_starting_until_it_holds() {
    let cluster = Cluster::start(&[("guarded", TrustLevel::Untrusted)]).await;
    let controller = cluster.controller(0, &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    cluster.pod_started_at("guarded", "127.0.0.1").await;
    // The "API server" answers from inside the sandbox: the NetworkPolicy
    // is not enforced.
    let api_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cgroup = tempfile::tempdir().unwrap();
    std::fs::write(cgroup.path().join("membership"), "0::/\n").unwrap();
    std::fs::write(cgroup.path().join("pids.max"), "100\n").unwrap();
    let health_address = format!("127.0.0.1:{}", free_port());
    let sidecar = cluster.sidecar_with_flags(
        "guarded",
        port,
        &health_address,
        &[
            "--network-mode=none".to_owned(),
            format!(
                "--isolation-probes=apiserver={}",
                api_server.local_addr().unwrap()
            ),
            "--isolation-probe-timeout-millis=300".to_owned(),
            "--require-verified-isolation=true".to_owned(),
            format!("--cgroup-mount={}", cgroup.path().display()),
            format!(
                "--cgroup-membership={}",
                cgroup.path().join("membership").display()
            ),
        ],
    );
    sidecar
        .wait_for("sandbox check", 2, Duration::from_secs(30))
        .await;

    let mut hook = post_start_hook(&health_address, &["--timeout-seconds=3"]);
    let status = hook.exited_within(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(1), "the agent must not start");
    assert!(
        hook.stderr().join("\n").contains("NOT_SERVING"),
        "{:?}",
        hook.stderr()
    );
    wait_for_condition(
        &cluster,
        "guarded",
        "NetworkIsolated",
        ("False", "Reachable"),
    )
    .await;
    wait_for_condition(&cluster, "guarded", "PidsLimited", ("True", "Limited")).await;
    let pod = cluster.api.get(&pod_path("guarded")).unwrap();
    let recorded = pod["status"]["conditions"].to_string();
    assert!(recorded.contains("wopr.dev/NetworkIsolated"), "{recorded}");

    // The network plugin starts enforcing: the next check passes.
    drop(api_server);
    wait_for_condition(&cluster, "guarded", "NetworkIsolated", ("True", "Blocked")).await;
    let mut hook = post_start_hook(&health_address, &["--timeout-seconds=10"]);
    let status = hook.exited_within(Duration::from_secs(15)).await.unwrap();
    assert!(status.success(), "{:?}", hook.stderr());
}

#[tokio::test]
async fn a_watch_that_fails_after_start_up_is_logged() {
    let cluster = Cluster::start(&[]).await;
    cluster.api.refuse(
        "/api/v1/pods",
        StatusCode::FORBIDDEN,
        "pods is forbidden: User \"system:serviceaccount:wopr-system:wopr-operator\" cannot list resource \"pods\"",
    );
    let controller = cluster.controller(0, &["--leader-election=false"]);
    controller
        .wait_for("watching the cluster failed", 1, Duration::from_secs(30))
        .await;
    let line = controller
        .stderr()
        .into_iter()
        .find(|line| line.contains("watching the cluster failed"))
        .unwrap();
    assert!(line.contains("cannot list resource"), "{line}");
}

/// With no certificate files, as a default install: the controller makes
/// its CA in a Secret of its namespace and serves a certificate of it; a
/// sidecar trusting that CA's bundle gets its policy, one trusting another
/// CA (the test PKI's) gets none and says why.
#[tokio::test]
async fn a_controller_issues_itself_a_certificate_that_sidecars_verify() {
    let cluster = Cluster::start(&[
        ("agent", TrustLevel::SemiTrusted),
        ("stranger", TrustLevel::SemiTrusted),
    ])
    .await;
    let controller = cluster.controller_with_tls(0, Vec::new(), &["--leader-election=false"]);
    let port = control_plane_port(&controller).await;
    let secret = cluster
        .api
        .get("/api/v1/namespaces/wopr-system/secrets/wopr-operator-ca")
        .expect("the CA Secret, made before the control plane serves");
    let bundle = {
        use base64::Engine;
        let encoded = secret["data"]["ca.crt"].as_str().unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap()
    };
    let ca_file = cluster.dir.path().join("operator-ca.crt");
    std::fs::write(&ca_file, bundle).unwrap();

    let trusting = cluster.sidecar_with_flags(
        "agent",
        port,
        "127.0.0.1:0",
        &[format!("--control-plane-ca={}", ca_file.display())],
    );
    trusting
        .wait_for("policy received", 1, Duration::from_secs(30))
        .await;
    // The test PKI's CA is not the operator's.
    let (stranger, _) = cluster.sidecar("stranger", port, 30).await;
    stranger
        .wait_for("invalid peer certificate", 1, Duration::from_secs(30))
        .await;
    assert_eq!(stranger.count("policy received"), 0);
}
