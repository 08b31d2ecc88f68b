#!/usr/bin/env bash
# Builds the operator's container image without a container daemon: the
# release binaries (wopr-operator, and the kubectl-wopr plugin beside it),
# the shared libraries they need (found with ldd), CA
# certificates and a passwd file with the unprivileged user 65532, packed by
# hack/oci-image.py into an OCI archive that `ctr -n k8s.io images import`,
# `kind load image-archive`, `podman load` and `docker load` accept.
#
#   hack/build-image.sh [--output PATH] [--name REF] [--binary PATH]
#
#   --output PATH  where the archive goes (default target/image/wopr-operator.tar)
#   --name REF     the image's name (default ghcr.io/wopr-network/wopr-operator:dev)
#   --binary PATH  pack this binary instead of building the release one
#                  (hack/build-release.sh), with the kubectl-wopr in its
#                  directory; both are stripped of debug info
#
# With a daemon, `docker build .` (the Dockerfile, on distroless) gives the
# same entrypoint, user and binary.
set -euo pipefail
cd "$(dirname "$0")/.."

output=target/image/wopr-operator.tar
name=ghcr.io/wopr-network/wopr-operator:dev
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --output) output=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -h|--help) sed -n '2,16s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

for tool in ldd python3 strip; do
  command -v "$tool" >/dev/null || { echo "build-image: needs $tool (apt-get install binutils libc-bin python3)" >&2; exit 1; }
done

if [ -z "$binary" ]; then
  echo "build-image: building the release binary (hack/build-release.sh)"
  hack/build-release.sh target/dist/bin >/dev/null
  binary=target/dist/bin/wopr-operator
fi
plugin=$(dirname "$binary")/kubectl-wopr
for executable in "$binary" "$plugin"; do
  [ -x "$executable" ] || { echo "build-image: $executable is not an executable" >&2; exit 1; }
done

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "build-image: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "build-image: staging $binary, $plugin and their libraries"
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/wopr-operator"
install -D -m 0755 "$plugin" "$rootfs/usr/local/bin/kubectl-wopr"
strip --strip-debug "$rootfs/usr/local/bin/wopr-operator" "$rootfs/usr/local/bin/kubectl-wopr"
# Each library at the path the dynamic loader looks for it (the loader
# itself included), as a file rather than a symlink.
{ ldd "$binary"; ldd "$plugin"; } | grep -o '/[^ ]*' | sort -u | while read -r library; do
  install -D -m 0755 "$(readlink -f "$library")" "$rootfs$library"
done
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"

version=$("$binary" --version | cut -d' ' -f2)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "build-image: packing $name"
python3 hack/oci-image.py --rootfs "$rootfs" --output "$output" --name "$name" \
  --arch "$arch" --entrypoint /usr/local/bin/wopr-operator --user 65532:65532 \
  --label "org.opencontainers.image.title=wopr-operator" \
  --label "org.opencontainers.image.description=Kubernetes operator for the WOPR agent-security model" \
  --label "org.opencontainers.image.source=https://github.com/wopr-network/wopr-operator" \
  --label "org.opencontainers.image.licenses=Apache-2.0" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision"
