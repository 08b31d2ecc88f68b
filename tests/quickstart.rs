//! `hack/quickstart.sh` with `--use-current-context`, against stand-ins for
//! kubectl and helm that keep namespaces and releases as files and write
//! down every call: the order of the steps, the image it installs (named
//! by the archive), the load command it runs, that a second run creates
//! nothing, that `--down` deletes only the namespaces it created, and that
//! a failure names its step and the fix. The real run is
//! tests/e2e_quickstart.rs, against a cluster.

use std::path::Path;
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// kubectl's stand-in: namespaces are files under $STATE/ns holding their labels.
const KUBECTL: &str = r#"#!/usr/bin/env bash
echo "kubectl $*" >> "$STATE/calls"
[ "$1" = --context ] && shift 2
case "$1 $2" in
  "config current-context") echo fake-cluster ;;
  "get storageclass") [ -z "$NO_STORAGE_CLASS" ] && echo standard ;;
  "cluster-info "*|"cluster-info") ;;
  "get namespace")
    [ -f "$STATE/ns/$3" ] || exit 1
    if [ "$4" = -o ] && [ "$6" = -l ]; then grep -qx "$7" "$STATE/ns/$3" && echo "namespace/$3"; fi ;;
  "create namespace") mkdir -p "$STATE/ns"; : > "$STATE/ns/$3" ;;
  "label namespace") for label in "${@:4}"; do [ "$label" = --overwrite ] || echo "$label" >> "$STATE/ns/$3"; done ;;
  "delete namespace") rm "$STATE/ns/$3" ;;
  "apply -n"|"wait --for=condition=Ready") [ -z "$FAIL_WAIT" ] || [ "$1" != wait ] || exit 1 ;;
  *) echo "unexpected kubectl $*" >&2; exit 3 ;;
esac
"#;

/// helm's stand-in: a release is a file under $STATE/releases.
const HELM: &str = r#"#!/usr/bin/env bash
echo "helm $*" >> "$STATE/calls"
[ "$1" = --kube-context ] && shift 2
mkdir -p "$STATE/releases"
case "$1" in
  upgrade) : > "$STATE/releases/$3" ;;
  status) [ -f "$STATE/releases/$2" ] ;;
  uninstall) rm "$STATE/releases/$2" ;;
  *) echo "unexpected helm $*" >&2; exit 3 ;;
esac
"#;

/// A load command: writes down the archive it was given.
const LOAD: &str = r#"#!/usr/bin/env bash
echo "load $*" >> "$STATE/calls"
"#;

struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        for (name, script) in [("kubectl", KUBECTL), ("helm", HELM), ("load-image", LOAD)] {
            let path = dir.path().join("bin").join(name);
            std::fs::write(&path, script).unwrap();
            Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        }
        Fake { dir }
    }

    fn state(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the quickstart with `args`, the stand-ins first on the PATH, and
    /// `env` (`FAIL_WAIT`: the wait for Sessions fails; `NO_STORAGE_CLASS`:
    /// the cluster has no default StorageClass).
    fn quickstart(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.state().join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        Command::new("bash")
            .arg(format!("{ROOT}/hack/quickstart.sh"))
            .args(args)
            .env("PATH", path)
            .env("STATE", self.state())
            .env("FAIL_WAIT", "")
            .env("NO_STORAGE_CLASS", "")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    /// The calls so far, and forgets them.
    fn take_calls(&self) -> Vec<String> {
        let path = self.state().join("calls");
        let calls = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(path);
        calls.lines().map(str::to_owned).collect()
    }

    fn namespaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.state().join("ns")) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// An image archive as hack/oci-image.py writes one, naming `name`.
fn archive(dir: &Path, name: &str) -> String {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/hostname"), "demo\n").unwrap();
    let output = dir.join("image.tar");
    let status = Command::new("python3")
        .arg(format!("{ROOT}/hack/oci-image.py"))
        .arg("--rootfs")
        .arg(&rootfs)
        .arg("--output")
        .arg(&output)
        .args([
            "--name",
            name,
            "--entrypoint",
            "/bin/true",
            "--user",
            "65532",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    output.display().to_string()
}

fn assert_ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The position of the first call that starts with `prefix`.
fn position(calls: &[String], prefix: &str) -> usize {
    calls
        .iter()
        .position(|call| call.starts_with(prefix))
        .unwrap_or_else(|| panic!("no call {prefix:?} in {calls:#?}"))
}

#[test]
fn the_quickstart_installs_the_archive_s_image_and_the_demo_then_removes_only_what_it_made() {
    let fake = Fake::new();
    let image = archive(fake.state(), "registry.example/wopr-operator:qs");
    let load = fake.state().join("bin/load-image").display().to_string();
    let up = [
        "--use-current-context",
        "--image-archive",
        &image,
        "--load-command",
        &load,
        "--helm-set",
        "watchNamespace=wopr-demo",
    ];

    let said = assert_ok(&fake.quickstart(&up, &[]));
    assert!(
        said.contains("image: registry.example/wopr-operator:qs"),
        "{said}"
    );
    assert!(said.contains("kubectl logs -n wopr-demo wopr-demo-untrusted -c agent"));
    let calls = fake.take_calls();
    let steps = [
        "kubectl config current-context".to_owned(),
        "kubectl --context fake-cluster cluster-info".to_owned(),
        format!("load {image}"),
        "kubectl --context fake-cluster create namespace wopr-system".to_owned(),
        "kubectl --context fake-cluster create namespace wopr-demo".to_owned(),
        "helm --kube-context fake-cluster upgrade --install wopr-operator charts/wopr-operator --namespace wopr-system --set image.repository=registry.example/wopr-operator --set image.tag=qs --set watchNamespace=wopr-demo --wait".to_owned(),
        "kubectl --context fake-cluster apply -n wopr-demo -f examples/quickstart/".to_owned(),
        "kubectl --context fake-cluster wait --for=condition=Ready session --all -n wopr-demo".to_owned(),
    ];
    let positions: Vec<usize> = steps.iter().map(|s| position(&calls, s)).collect();
    assert!(positions.is_sorted(), "{calls:#?}");
    let demo = std::fs::read_to_string(fake.state().join("ns/wopr-demo")).unwrap();
    assert!(
        demo.contains("pod-security.kubernetes.io/enforce=restricted"),
        "{demo}"
    );
    assert_eq!(fake.namespaces(), ["wopr-demo", "wopr-system"]);

    // Again: nothing is created twice; the release is upgraded in place.
    assert_ok(&fake.quickstart(&up, &[]));
    let calls = fake.take_calls();
    assert!(
        !calls.iter().any(|call| call.contains("create namespace")),
        "{calls:#?}"
    );
    position(
        &calls,
        "helm --kube-context fake-cluster upgrade --install wopr-operator",
    );

    // A namespace it did not create stays on --down.
    std::fs::write(fake.state().join("ns/wopr-system"), "").unwrap();
    let said = assert_ok(&fake.quickstart(&["--use-current-context", "--down"], &[]));
    assert!(said.contains("namespace wopr-system: not created by the quickstart"));
    assert_eq!(fake.namespaces(), ["wopr-system"]);
    assert!(!fake.state().join("releases/wopr-operator").exists());
}

#[test]
fn a_failed_step_is_named_with_its_fix() {
    let fake = Fake::new();
    let image = archive(fake.state(), "registry.example/wopr-operator:qs");
    let output = fake.quickstart(
        &[
            "--use-current-context",
            "--image-archive",
            &image,
            "--load-command",
            "true",
        ],
        &[("FAIL_WAIT", "1")],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "quickstart: step \"waiting until every Session in wopr-demo is Ready\" failed (exit 1). Fix: kubectl get wopr -n wopr-demo;"
        ),
        "{stderr}"
    );
}

#[test]
fn an_archive_that_is_not_there_is_named() {
    let fake = Fake::new();
    let output = fake.quickstart(
        &[
            "--use-current-context",
            "--image-archive",
            "/nonexistent.tar",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("quickstart: no file /nonexistent.tar"),
        "{stderr}"
    );
    assert!(
        stderr.contains("step \"reading the image archive /nonexistent.tar\" failed"),
        "{stderr}"
    );
}

#[test]
fn without_a_default_storage_class_the_audit_trail_goes_to_an_empty_dir() {
    let fake = Fake::new();
    let image = archive(fake.state(), "registry.example/wopr-operator:qs");
    let up = [
        "--use-current-context",
        "--image-archive",
        &image,
        "--load-command",
        "true",
    ];
    let said = assert_ok(&fake.quickstart(&up, &[("NO_STORAGE_CLASS", "1")]));
    assert!(said.contains("no default StorageClass"), "{said}");
    let calls = fake.take_calls();
    let install = &calls[position(&calls, "helm --kube-context fake-cluster upgrade")];
    assert!(
        install.contains("--set audit.persistence.enabled=false"),
        "{install}"
    );
}
