#!/usr/bin/env bash
# Fails when the committed crds/ differ from what the code generates.
set -euo pipefail
cd "$(dirname "$0")/.."
generated=$(mktemp -d)
trap 'rm -rf "$generated"' EXIT
cargo run --quiet --locked -- crd --output-dir "$generated"
if ! diff -ru crds "$generated"; then
  echo "CRD drift: crds/ differs from the code. Run hack/update-crds.sh and commit." >&2
  exit 1
fi
echo "crds/ is up to date."
