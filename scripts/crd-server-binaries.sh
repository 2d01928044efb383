#!/usr/bin/env bash
# Ensures the binaries of the modern CRD test server exist: the standalone
# apiextensions-apiserver (Kubernetes 1.36 series) and etcd 3.5, both from Debian unstable.
#
# Debian has no newer kube-apiserver, but unstable carries the CRD server's source as Go library
# packages (golang-k8s-apiextensions-apiserver-dev and ~315 golang-*-dev dependencies). They are
# fetched with `apt-get download` through a private apt configuration (own source list, own
# package lists, own cache) and unpacked with `dpkg-deb -x`: nothing is installed and the
# machine's own apt sources are never touched (adding unstable there would upgrade libc). Go
# comes the same way from trixie-backports. The build runs in GOPATH mode over the unpacked
# /usr/share/gocode.
#
# Everything goes into a cache directory outside the clone, guarded by a lock; a second run
# returns at once. The versions built from are recorded in versions.txt next to the binaries.
#
# Prints the directory that holds `apiextensions-apiserver` and `etcd` on its last line of stdout.
#
# Exit status: 0 ready; 2 the build is impossible on this machine (the reason is printed: no
# route to the Debian archive, unsupported architecture, too little memory); 1 anything else,
# including a package that vanished from the archive (its name is printed).
#
# Environment:
#   STREAMSPACE_CP_CACHE  cache root (default: ${XDG_CACHE_HOME:-$HOME/.cache}/streamspace-controller)
#   DEBIAN_MIRROR         archive URL (default: http://deb.debian.org/debian)
set -euo pipefail

# The pinned series: Kubernetes 1.36 (apiextensions-apiserver 0.36.x) built with Go 1.27, on
# etcd 3.5. A patch release within a series is accepted; a different series fails clearly.
APIEXT_PACKAGE=golang-k8s-apiextensions-apiserver-dev
APIEXT_SERIES=0.36
GO_PACKAGE=golang-1.27-go
GO_SUITE=trixie-backports
ETCD_PACKAGE=etcd-server
ETCD_SERIES=3.5
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

cache_root=${STREAMSPACE_CP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamspace-controller}
prefix="$cache_root/apiextensions-apiserver-$APIEXT_SERIES"
bin="$prefix/bin"

log() { echo "crd-server-binaries: $*" >&2; }
fail() {
  log "ERROR: $*"
  exit 1
}
impossible() {
  log "cannot build the modern CRD server on this machine: $*"
  exit 2
}

have_all() { [ -x "$bin/apiextensions-apiserver" ] && [ -x "$bin/etcd" ] && [ -s "$bin/versions.txt" ]; }

if have_all; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.crd-server.lock"
# Parallel callers may all ask at once: one builds, the others wait for it.
flock 9
if have_all; then
  echo "$bin"
  exit 0
fi

case "$(uname -m)" in
  x86_64 | aarch64) ;;
  *) impossible "architecture $(uname -m) is not supported" ;;
esac
[ -r "$KEYRING" ] || impossible "$KEYRING is missing (package debian-archive-keyring)"
for tool in apt-get apt-cache dpkg-deb flock; do
  command -v "$tool" >/dev/null || impossible "$tool is not available (not a Debian system)"
done
mem_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
[ "${mem_kb:-0}" -ge 1600000 ] || impossible "the Go build needs about 1.5 GB of free memory, ${mem_kb:-0} kB available"

work="$prefix/work"
rm -rf "$work"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root" \
  "$work/preferences.d"
cat >"$work/sources.list" <<SRC
deb [signed-by=$KEYRING] $MIRROR sid main
deb [signed-by=$KEYRING] $MIRROR $GO_SUITE main
SRC
# A private apt: its own sources, lists, cache and an empty dpkg status, so nothing of the
# machine's apt state is read or written.
: >"$work/status"
apt_opts=(
  -o "Dir::Etc::sourcelist=$work/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::lists=$work/lists"
  -o "Dir::State::status=$work/status"
  -o "Dir::Cache=$work/cache"
  -o "Dir::Etc::preferences=$work/preferences"
  -o "Dir::Etc::preferencesparts=$work/preferences.d"
  -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
  -o "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"
  -o "APT::Sandbox::User=root"
)

log "reading the package lists of sid and $GO_SUITE (private apt configuration)"
# apt-get update only warns about unreachable sources; the lists it fetched tell.
apt-get "${apt_opts[@]}" -qq update >&2 || true
for suite in sid "$GO_SUITE"; do
  compgen -G "$work/lists/*_dists_${suite}_main_binary-*_Packages*" >/dev/null ||
    impossible "the package list of $suite could not be fetched from $MIRROR"
done

# The candidate version of a package in a suite ("" when absent).
candidate() {
  local pkg=$1 suite=${2:-}
  { apt-cache "${apt_opts[@]}" show "$pkg${suite:+/$suite}" 2>/dev/null || true; } |
    awk '/^Version:/ {print $2; exit}'
}

# The golang-*-dev packages `pkg…` depend on directly; a virtual package resolves to its first
# provider, an alternative to its first member.
direct_go_deps() {
  { apt-cache "${apt_opts[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null || true; } | awk '
      /^[^ ]/ { alt = 0; virtual = 0; next }
      /^ *\|?(Pre)?Depends: / {
        if (alt) { alt = ($1 ~ /^\|/); next }
        alt = ($1 ~ /^\|/)
        name = $2
        if (name ~ /^</) { virtual = 1; next }
        virtual = 0
        print name
        next
      }
      /^    [^ ]/ { if (virtual) { print $1; virtual = 0 } }
    ' | grep -E '^golang-.*-dev$' | sort -u || true
}

apiext_version=$(candidate "$APIEXT_PACKAGE")
[ -n "$apiext_version" ] || fail "$APIEXT_PACKAGE vanished from sid; pick the package that now carries the standalone CRD server"
case "$apiext_version" in
  "$APIEXT_SERIES".*) ;;
  *) fail "$APIEXT_PACKAGE in sid is $apiext_version, not the pinned $APIEXT_SERIES series; update APIEXT_SERIES in scripts/crd-server-binaries.sh and rerun the CRD conformance suite" ;;
esac
go_version=$(candidate "$GO_PACKAGE" "$GO_SUITE")
[ -n "$go_version" ] || fail "$GO_PACKAGE vanished from $GO_SUITE"
etcd_version=$(candidate "$ETCD_PACKAGE")
[ -n "$etcd_version" ] || fail "$ETCD_PACKAGE vanished from sid"
case "$etcd_version" in
  "$ETCD_SERIES".*) ;;
  *) fail "$ETCD_PACKAGE in sid is $etcd_version, not the pinned $ETCD_SERIES series; update ETCD_SERIES in scripts/crd-server-binaries.sh" ;;
esac

log "resolving the Go library closure of $APIEXT_PACKAGE $apiext_version"
declare -A seen=([$APIEXT_PACKAGE]=1)
frontier=("$APIEXT_PACKAGE")
while [ "${#frontier[@]}" -gt 0 ]; do
  next=()
  while read -r dep; do
    [ -n "$dep" ] && [ -z "${seen[$dep]:-}" ] || continue
    seen[$dep]=1
    next+=("$dep")
  done < <(direct_go_deps "${frontier[@]}")
  frontier=("${next[@]}")
done
mapfile -t go_libs < <(printf '%s\n' "${!seen[@]}" | sort)
log "${#go_libs[@]} Go library packages"

# Candidate versions of many packages at once: "package=version" lines.
candidates() {
  { apt-cache "${apt_opts[@]}" show --no-all-versions "$@" 2>/dev/null || true; } |
    awk '/^Package:/ {p = $2} /^Version:/ {print p "=" $2}'
}

versions="$work/versions.txt"
{
  echo "# Built $(date -u +%Y-%m-%dT%H:%M:%SZ) from Debian sid ($GO_SUITE for Go)"
  echo "$GO_PACKAGE=$go_version"
  echo "golang-1.27-src=$(candidate golang-1.27-src "$GO_SUITE")"
  echo "$ETCD_PACKAGE=$etcd_version"
  candidates "${go_libs[@]}" | sort -u
} >"$versions"
for pkg in "${go_libs[@]}"; do
  grep -q "^$pkg=" "$versions" || fail "$pkg (needed by $APIEXT_PACKAGE) vanished from sid"
done

log "downloading $(($(wc -l <"$versions") - 1)) packages"
mapfile -t wanted < <(grep -v '^#' "$versions")
(
  cd "$work/debs"
  # Exact versions, so that what is recorded is what is built.
  if ! apt-get "${apt_opts[@]}" -qq download "${wanted[@]}" >&2 2>"$work/download.err"; then
    cat "$work/download.err" >&2
    missing=$(grep -oE "(Unable to locate package|Version '[^']*' for '[^']*' was not found|Failed to fetch [^ ]*)[^\n]*" "$work/download.err" | head -n 5 || true)
    fail "downloading failed; vanished or unreachable: ${missing:-see above}"
  fi
)

log "unpacking"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
# Debian links some import paths to others with absolute symlinks; point them into the tree.
find "$work/root/usr" -type l -lname '/usr/*' | while read -r link; do
  ln -sfn "$work/root$(readlink "$link")" "$link"
done

goroot="$work/root/usr/lib/go-1.27"
[ -x "$goroot/bin/go" ] || fail "$GO_PACKAGE did not contain usr/lib/go-1.27/bin/go"
gopath="$work/root/usr/share/gocode"
main_pkg=k8s.io/apiextensions-apiserver
[ -f "$gopath/src/$main_pkg/main.go" ] || fail "$APIEXT_PACKAGE no longer has its main package at $main_pkg"

log "building $main_pkg with Go $go_version (takes several minutes, ~1.5 GB of memory)"
started=$(date +%s)
(
  export GOROOT="$goroot" GOPATH="$gopath" GO111MODULE=off CGO_ENABLED=0 \
    GOCACHE="$work/gocache" GOTOOLCHAIN=local GOFLAGS= GOPROXY=off
  cd "$gopath/src/$main_pkg"
  nice "$goroot/bin/go" build -trimpath -o "$work/apiextensions-apiserver" "$main_pkg" >&2
)
log "built in $(($(date +%s) - started)) s"

mkdir -p "$bin.tmp"
cp "$work/apiextensions-apiserver" "$bin.tmp/"
cp "$work/root/usr/bin/etcd" "$bin.tmp/etcd"
"$bin.tmp/etcd" --version >/dev/null || fail "the etcd of $ETCD_PACKAGE $etcd_version does not run on this machine"
"$bin.tmp/apiextensions-apiserver" --help >/dev/null 2>&1 || fail "the built apiextensions-apiserver does not run"
cp "$versions" "$bin.tmp/versions.txt"
rm -rf "$bin"
mv "$bin.tmp" "$bin"
rm -rf "$work"
log "done; versions recorded in $bin/versions.txt"
echo "$bin"
