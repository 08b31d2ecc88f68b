#!/usr/bin/env bash
# The test command (every tier but the cluster one): the official MCP, OpenAI
# and Anthropic Python SDKs for the interop tests, a PostgreSQL server for the
# store's tests (hack/postgres.sh, unless WOPR_TEST_POSTGRES_URL names one), then
# `cargo test` with any arguments given here.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/mcp/requirements.txt
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/models/requirements.txt
if [ -z "${WOPR_TEST_POSTGRES_URL:-}" ]; then
  eval "$(bash hack/postgres.sh)"
  export WOPR_TEST_POSTGRES_URL
fi
cargo test "$@"
