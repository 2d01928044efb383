#!/usr/bin/env bash
# Installs what a new machine lacks to build and lint the crate: the native build dependencies
# of the Rust crates (libgit2/libssh2 are built from bundled source) and the rustfmt and clippy
# components that minimal Rust installations (the rust container images) leave out.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! dpkg -s pkg-config libssl-dev zlib1g-dev >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    pkg-config libssl-dev zlib1g-dev
fi

if command -v rustup >/dev/null 2>&1 && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi

# The chart tests' tooling (scripts/helm.sh) needs Python with its venv module.
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    python3 python3-venv
fi

# The console test drives a real headless browser over WebDriver (tests/e2e/console.rs).
if ! dpkg -s chromium chromium-driver >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver
fi

# The documentation test (tests/docs.rs) runs the docs' shell examples: kubectl (Debian's
# kubernetes-client is 1.20, the same as the test control plane), jq, curl and openssl.
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
