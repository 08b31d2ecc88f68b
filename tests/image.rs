//! `hack/build-image.sh` packs a binary into an OCI archive without a
//! container daemon: the archive's index, manifest and config say what the
//! image runs (entrypoint, non-root user, labels), every blob matches its
//! digest, and the binary runs from the unpacked layer with the libraries
//! the archive carries. `hack/krew-manifest.sh` packs the kubectl plugin
//! for Krew.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const NAME: &str = "example.com/wopr-operator:test";

fn run(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The blob of `digest` in the layout at `dir`, checked against its digest.
fn blob(dir: &Path, digest: &Value) -> PathBuf {
    let digest = digest.as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let path = dir.join("blobs/sha256").join(hex);
    let sum = run(Command::new("sha256sum").arg(&path));
    assert_eq!(sum.split_whitespace().next(), Some(hex), "{digest}");
    path
}

#[test]
fn the_image_archive_runs_the_binary_as_an_unprivileged_user() {
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("image.tar");
    run(Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/build-image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_wopr-operator")])
        .args(["--name", NAME])
        .arg("--output")
        .arg(&archive));

    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    assert_eq!(
        json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"], NAME,
        "{index}"
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "test"
    );
    let manifest = json(&blob(&layout, &entry["digest"]));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = json(&blob(&layout, &manifest["config"]["digest"]));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/wopr-operator"])
    );
    assert_eq!(config["config"]["User"], "65532:65532");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "wopr-operator");
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(labels["org.opencontainers.image.source"].is_string());
    // Docker's loader reads manifest.json: the same blobs, under the name.
    let docker = json(&layout.join("manifest.json"));
    assert_eq!(docker[0]["RepoTags"][0], NAME);

    // One layer: its diff id is the digest of its uncompressed tar.
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    let layer = blob(&layout, &layers[0]["digest"]);
    let diff_id = run(Command::new("sh")
        .arg("-c")
        .arg(r#"gzip -dc "$0" | sha256sum"#)
        .arg(&layer));
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", diff_id.split_whitespace().next().unwrap())
    );
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&rootfs));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("nonroot:x:65532:65532:"), "{passwd}");

    // The binary runs with the archive's own loader and libraries, none of
    // this machine's.
    let loader = std::fs::read_dir(rootfs.join("lib64"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().contains("ld-linux"))
        .expect("the dynamic loader is in the image");
    let library_dirs: Vec<String> = ["lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu", "lib64"]
        .iter()
        .map(|dir| rootfs.join(dir))
        .filter(|dir| dir.is_dir())
        .map(|dir| dir.display().to_string())
        .collect();
    // Both binaries run from the image's own libraries: the operator and
    // the kubectl plugin, for `kubectl exec ... -- kubectl-wopr`.
    for binary in ["wopr-operator", "kubectl-wopr"] {
        let version = run(Command::new(&loader)
            .arg("--inhibit-cache")
            .args(["--library-path", &library_dirs.join(":")])
            .arg(rootfs.join("usr/local/bin").join(binary))
            .arg("--version"));
        assert_eq!(
            version.trim(),
            format!("{binary} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// `hack/krew-manifest.sh` packs kubectl-wopr for `kubectl krew install
/// --manifest --archive`: a Krew plugin manifest whose sha256 is the
/// archive's, and an archive holding the binary the manifest names.
#[test]
fn the_krew_manifest_names_the_archive_it_packs() {
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/hack/krew-manifest.sh"
        ))
        .args(["--binary", env!("CARGO_BIN_EXE_kubectl-wopr")])
        .arg("--output")
        .arg(dir.path()));
    let manifest: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir.path().join("wopr.yaml")).unwrap())
            .unwrap();
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(manifest["metadata"]["name"], "wopr");
    assert_eq!(
        manifest["spec"]["version"],
        format!("v{}", env!("CARGO_PKG_VERSION"))
    );
    let platform = &manifest["spec"]["platforms"][0];
    assert_eq!(platform["bin"], "kubectl-wopr");
    let archive = dir.path().join("kubectl-wopr.tar.gz");
    let sum = run(Command::new("sha256sum").arg(&archive));
    assert_eq!(
        Some(platform["sha256"].as_str().unwrap()),
        sum.split_whitespace().next()
    );
    let listing = run(Command::new("tar").arg("-tzf").arg(&archive));
    assert_eq!(listing.trim(), "kubectl-wopr");
}
