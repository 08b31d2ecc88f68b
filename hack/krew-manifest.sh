#!/usr/bin/env bash
# Packs kubectl-wopr for Krew: an archive with the binary and a plugin
# manifest naming its sha256, so that
#
#   kubectl krew install --manifest=target/krew/wopr.yaml \
#     --archive=target/krew/kubectl-wopr.tar.gz
#
# installs it as `kubectl wopr` without a plugin index. The manifest's URI
# is where the release workflow would publish the archive.
#
#   hack/krew-manifest.sh [--binary PATH] [--output DIR]
#
#   --binary PATH  pack this kubectl-wopr instead of building the release one
#   --output DIR   where the archive and manifest go (default target/krew)
set -euo pipefail
cd "$(dirname "$0")/.."

binary=""
output=target/krew
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h|--help) sed -n '2,14s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "krew-manifest: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ]; then
  hack/build-release.sh target/dist/bin >/dev/null
  binary=target/dist/bin/kubectl-wopr
fi
[ -x "$binary" ] || { echo "krew-manifest: $binary is not an executable" >&2; exit 1; }

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "krew-manifest: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
version=$("$binary" --version | cut -d' ' -f2)
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
install -m 0755 "$binary" "$staging/kubectl-wopr"
mkdir -p "$output"
archive="$output/kubectl-wopr.tar.gz"
tar --sort=name --owner=0 --group=0 --mtime=@0 -czf "$archive" -C "$staging" kubectl-wopr
sha256=$(sha256sum "$archive" | cut -d' ' -f1)
cat > "$output/wopr.yaml" <<MANIFEST
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: wopr
spec:
  version: v$version
  homepage: https://github.com/wopr-network/wopr-operator
  shortDescription: Trust levels, grants, gateways and approvals of AI agent sessions
  description: |
    The WOPR security CLI for wopr-operator: sessions, trust levels,
    grants, gateways, human approvals and the audit trail.
  platforms:
  - selector:
      matchLabels:
        os: linux
        arch: $arch
    uri: https://github.com/wopr-network/wopr-operator/releases/download/v$version/kubectl-wopr-linux-$arch.tar.gz
    sha256: $sha256
    bin: kubectl-wopr
MANIFEST
echo "$archive"
echo "$output/wopr.yaml"
