#!/usr/bin/env bash
# The test command (every tier but the cluster one): the official MCP, OpenAI
# and Anthropic Python SDKs and the WOPR peers (Node.js, Python's
# cryptography) for the interop tests, a PostgreSQL server for the
# store's tests (hack/postgres.sh, unless WOPR_TEST_POSTGRES_URL names one), then
# `cargo test` with any arguments given here.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/mcp/requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/models/requirements.txt
# The WOPR peers of the P2P interop tests: Python's `cryptography`, and Node.js
# (its built-in crypto signs as WOPR's plugin does; Debian's nodejs has Ed25519).
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/peers/requirements.txt
if ! command -v node >/dev/null; then
  echo "hack/test.sh: installing Debian's nodejs package" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs >/dev/null
fi
if [ -z "${WOPR_TEST_POSTGRES_URL:-}" ]; then
  eval "$(bash hack/postgres.sh)"
  export WOPR_TEST_POSTGRES_URL
fi
cargo test "$@"
