#!/usr/bin/env bash
# Ensures the binaries of the local test control plane exist: etcd (Debian's etcd-server) and
# kube-apiserver + kube-controller-manager built from Debian bookworm's `kubernetes` source
# package (Kubernetes 1.20.2). Everything goes into a cache directory outside the clone, so a
# second run on the same machine returns in well under a second.
#
# Prints the directory that holds the three binaries on its last line of stdout.
#
# Environment:
#   STREAMSPACE_CP_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace-controller)
set -euo pipefail

K8S_VERSION=1.20.2
cache_root=${STREAMSPACE_CP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace-controller}
prefix="$cache_root/kubernetes-$K8S_VERSION"
bin="$prefix/bin"

log() { echo "control-plane-binaries: $*" >&2; }

have_all() {
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/etcd" ]
}

if have_all; then
  echo "$bin"
  exit 0
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian's source packages are reachable once a deb-src line exists; add one that mirrors the
# binary sources instead of editing the machine's own file.
ensure_deb_src() {
  local src=/etc/apt/sources.list.d/streamspace-deb-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding deb-src sources"
    as_root tee "$src" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
}

lock="$cache_root/.build.lock"
mkdir -p "$cache_root"
exec 9>"$lock"
# Parallel test binaries may all ask at once: one builds, the others wait for it.
flock 9
if have_all; then
  echo "$bin"
  exit 0
fi

ensure_deb_src
log "installing build dependencies (golang-go, etcd-server, rsync, reflect2 sources)"
as_root apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  golang-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev >&2

work="$prefix/src"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
log "downloading the kubernetes source package"
apt-get source --download-only kubernetes >&2
orig=$(ls kubernetes_*.orig.tar.* | head -n 1)
mkdir tree
tar -xf "$orig" -C tree --strip-components=1
cd tree

# Kubernetes 1.20 vendors modern-go/reflect2 1.0.1, whose unsafe map iteration crashes under
# Go 1.18+ (SIGSEGV as soon as objects are watched). Debian ships 1.0.2, which fixes it.
reflect2_src=$(dpkg -L golang-github-modern-go-reflect2-dev | grep '/reflect2/reflect2.go$' | xargs dirname)
log "replacing vendored reflect2 with $reflect2_src"
find vendor/github.com/modern-go/reflect2 -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
find "$reflect2_src" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp {} vendor/github.com/modern-go/reflect2/ \;

export GOPATH="$PWD/.go" CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on
mkdir -p .go/src/k8s.io
ln -sfn ../../.. .go/src/k8s.io/kubernetes
log "building kube-apiserver and kube-controller-manager (takes several minutes)"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2

mkdir -p "$bin.tmp"
cp _output/local/bin/linux/amd64/kube-apiserver _output/local/bin/linux/amd64/kube-controller-manager "$bin.tmp/"
ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$bin.tmp/etcd"
rm -rf "$bin"
mv "$bin.tmp" "$bin"
cd /
rm -rf "$work"
log "done"
echo "$bin"
