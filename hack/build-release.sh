#!/usr/bin/env bash
# Builds the release binaries (profile `dist`: thin LTO, one codegen unit,
# stripped) and copies them to ${1:-target/dist/bin}. The Dockerfile runs
# this; it works the same on a workstation.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/dist/bin}
cargo build --locked --profile dist --bins
mkdir -p "$out"
for binary in $(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json,sys; print(" ".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))'); do
  cp "target/dist/$binary" "$out/"
  echo "$out/$binary: $(du -h "$out/$binary" | cut -f1)"
done
