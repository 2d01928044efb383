#!/usr/bin/env bash
# Release steps, called by .github/workflows/release.yml on a tag `vX.Y.Z` and runnable by hand.
#
#   scripts/release.sh check [TAG]             tag = v<crate version> = v<chart version and
#                                              appVersion>, and CHANGELOG.md has a section for it
#   scripts/release.sh binaries [TAG]          release build into dist/ (tar.gz + sha256)
#   scripts/release.sh publish-binaries [TAG]  GitHub release with dist/* attached (gh, GH_TOKEN)
#   scripts/release.sh image [TAG]             build and push the image from the Dockerfile
#   scripts/release.sh chart [TAG]             package the chart and push it to an OCI registry
#
# TAG defaults to $GITHUB_REF_NAME (set by GitHub Actions). Environment:
#   IMAGE_REPOSITORY  image name (default ghcr.io/$GITHUB_REPOSITORY_OWNER/streamspace-controller)
#   IMAGE_PLATFORMS   platforms of the image (default linux/amd64)
#   CHART_REPOSITORY  OCI repository of the chart (default oci://ghcr.io/$GITHUB_REPOSITORY_OWNER/charts)
#   REGISTRY_USER, REGISTRY_TOKEN  credentials for `helm registry login` (skipped when unset)
#   STREAMSPACE_COMMIT  commit recorded in the binaries (default: git rev-parse HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."

readonly BIN=streamspace-controller
readonly CHART_DIR=charts/streamspace-controller
readonly TARGET=x86_64-unknown-linux-gnu

die() { echo "release: $*" >&2; exit 1; }

crate_version() { sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1; }
chart_field() { sed -n "s/^$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\} *$/\1/p" "$CHART_DIR/Chart.yaml" | head -n 1; }

# The version of the tag, after checking that everything that carries it agrees.
checked_version() {
  local tag=${1:-${GITHUB_REF_NAME:-}}
  [ -n "$tag" ] || die "no tag given (argument or GITHUB_REF_NAME)"
  local version=${tag#v} crate app chart
  crate=$(crate_version)
  app=$(chart_field appVersion)
  chart=$(chart_field version)
  [ "$tag" = "v$version" ] || die "tag $tag does not start with v"
  [ "$version" = "$crate" ] || die "tag $tag does not match the crate version $crate (Cargo.toml)"
  [ "$version" = "$app" ] || die "tag $tag does not match the chart appVersion $app ($CHART_DIR/Chart.yaml)"
  # One chart version per release: a release never overwrites an earlier release's chart.
  [ "$version" = "$chart" ] || die "tag $tag does not match the chart version $chart ($CHART_DIR/Chart.yaml)"
  grep -q "^## \[$version\]" CHANGELOG.md || die "CHANGELOG.md has no section '## [$version]'"
  echo "$version"
}

commit() { echo "${STREAMSPACE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"; }

binaries() {
  local version name
  version=$(checked_version "$@")
  STREAMSPACE_COMMIT=$(commit) cargo build --release --locked --bin "$BIN"
  name="$BIN-$version-$TARGET"
  rm -rf dist && mkdir -p "dist/$name"
  cp "target/release/$BIN" README.md CHANGELOG.md "dist/$name/"
  [ -f LICENSE ] && cp LICENSE "dist/$name/"
  tar -C dist -czf "dist/$name.tar.gz" "$name"
  rm -rf "dist/${name:?}"
  (cd dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
  "target/release/$BIN" --version
}

publish_binaries() {
  local version
  version=$(checked_version "$@")
  compgen -G "dist/*.tar.gz" >/dev/null || die "no binaries in dist/ (run 'binaries' first)"
  # The release notes are the version's section of the changelog.
  awk -v v="$version" '$0 ~ "^## \\[" v "\\]" {on=1; next} /^## \[/ {on=0} on' CHANGELOG.md >dist/notes.md
  gh release create "v$version" --title "v$version" --notes-file dist/notes.md --verify-tag dist/*.tar.gz dist/*.sha256
}

image() {
  local version repo
  version=$(checked_version "$@")
  repo=${IMAGE_REPOSITORY:-ghcr.io/${GITHUB_REPOSITORY_OWNER:?set IMAGE_REPOSITORY or GITHUB_REPOSITORY_OWNER}/$BIN}
  repo=${repo,,}
  docker buildx build --push \
    --platform "${IMAGE_PLATFORMS:-linux/amd64}" \
    --build-arg "STREAMSPACE_COMMIT=$(commit)" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$(commit)" \
    --tag "$repo:$version" --tag "$repo:v$version" \
    .
}

chart() {
  local repo
  checked_version "$@" >/dev/null
  repo=${CHART_REPOSITORY:-oci://ghcr.io/${GITHUB_REPOSITORY_OWNER:?set CHART_REPOSITORY or GITHUB_REPOSITORY_OWNER}/charts}
  repo=${repo,,}
  mkdir -p dist/chart
  helm package "$CHART_DIR" --destination dist/chart
  if [ -n "${REGISTRY_TOKEN:-}" ]; then
    local host=${repo#oci://}
    echo "$REGISTRY_TOKEN" | helm registry login "${host%%/*}" --username "${REGISTRY_USER:-token}" --password-stdin
  fi
  helm push dist/chart/*.tgz "$repo"
}

step=${1:-}
shift || true
case "$step" in
  check) checked_version "$@" ;;
  binaries) binaries "$@" ;;
  publish-binaries) publish_binaries "$@" ;;
  image) image "$@" ;;
  chart) chart "$@" ;;
  *) die "usage: scripts/release.sh check|binaries|publish-binaries|image|chart [TAG]" ;;
esac
