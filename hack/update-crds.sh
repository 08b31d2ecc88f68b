#!/usr/bin/env bash
# Regenerates crds/ from the Rust types, and the copies in the chart and
# manifests/ (needs helm: hack/install-tools.sh). Run after changing src/api/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f crds/*.yaml
cargo run --quiet --locked -- crd --output-dir crds
bash hack/render-manifests.sh
echo "crds/ regenerated; commit the result."
