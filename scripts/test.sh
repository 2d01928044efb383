#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and the end-to-end tests against a real
# local control plane (built on first use into ~/.cache/streamspace-controller; root or sudo is
# needed once, to install its build dependencies with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== control plane binaries"
scripts/control-plane-binaries.sh >/dev/null

echo "== chart tooling (helm, kubernetes-validate)"
scripts/helm.sh >/dev/null

echo "== cargo fmt --check"
cargo fmt --check

echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo test"
# End-to-end tests mostly wait on the API server; more threads than cores keeps them busy.
cargo test --locked -- --test-threads="${TEST_THREADS:-4}"
