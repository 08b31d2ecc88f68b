#!/usr/bin/env python3
"""Packs a directory into a one-layer container image, written as an OCI
image layout in a tar archive, without a container daemon.

    hack/oci-image.py --rootfs DIR --output PATH --name REF \\
        --entrypoint /usr/local/bin/wopr-operator --user 65532:65532 \\
        [--label KEY=VALUE ...] [--arch amd64]

The archive loads with `ctr -n k8s.io images import`, `kind load
image-archive`, `podman load` and `docker load`: it holds the OCI layout
(`oci-layout`, `index.json`, `blobs/sha256/...`) and, for Docker's loader,
a `manifest.json` naming the same blobs. The image is named REF by the
annotations `io.containerd.image.name` (containerd) and
`org.opencontainers.image.ref.name`.

The layer is reproducible: entries sorted, owned by root, mtime 0, gzip
without a timestamp. What goes in is exactly the tree under DIR (file
modes kept); hack/build-image.sh stages it.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile


def reproducible(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_of(rootfs: str) -> bytes:
    """The tree under rootfs as an uncompressed tar, parents before children."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for parent, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                path = os.path.join(parent, name)
                tar.add(path, arcname=os.path.relpath(path, rootfs),
                        recursive=False, filter=reproducible)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rootfs", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--name", required=True, help="image reference, e.g. ghcr.io/o/n:tag")
    parser.add_argument("--entrypoint", required=True, action="append")
    parser.add_argument("--user", required=True)
    parser.add_argument("--label", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--arch", default="amd64")
    args = parser.parse_args()

    labels = dict(label.split("=", 1) for label in args.label)
    layer = layer_of(args.rootfs)
    compressed = gzip.compress(layer, compresslevel=6, mtime=0)
    config = {
        "created": "1970-01-01T00:00:00Z",
        "architecture": args.arch,
        "os": "linux",
        "config": {
            "Entrypoint": args.entrypoint,
            "User": args.user,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]},
        "history": [{"created_by": "hack/build-image.sh"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(compressed),
            "size": len(compressed),
        }],
        "annotations": labels,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": args.arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": args.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }
    blob = lambda data: "blobs/sha256/" + sha256(data).split(":", 1)[1]
    docker_manifest = [{
        "Config": blob(config_bytes),
        "RepoTags": [args.name],
        "Layers": [blob(compressed)],
    }]
    entries = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
        ("manifest.json", json.dumps(docker_manifest).encode()),
        (blob(config_bytes), config_bytes),
        (blob(manifest_bytes), manifest_bytes),
        (blob(compressed), compressed),
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with tarfile.open(args.output, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = reproducible(tarfile.TarInfo(directory))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in entries:
            info = reproducible(tarfile.TarInfo(name))
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    print(f"{args.output}: {args.name} {sha256(manifest_bytes)} "
          f"({len(compressed) / 1e6:.1f} MB compressed)")


if __name__ == "__main__":
    main()
