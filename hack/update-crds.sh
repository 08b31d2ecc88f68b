#!/usr/bin/env bash
# Regenerates crds/ from the Rust types. Run after changing anything in src/api/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f crds/*.yaml
cargo run --quiet --locked -- crd --output-dir crds
echo "crds/ regenerated; commit the result."
