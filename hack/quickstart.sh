#!/usr/bin/env bash
# From a fresh machine to a running, visibly enforced sandbox:
#
#   hack/quickstart.sh          # kind cluster, image, operator, demo sessions
#   hack/quickstart.sh --down   # remove what it made
#
# It creates a kind cluster unless there is one of its name (or uses the
# current kubectl context with --use-current-context), builds the operator
# image from the Dockerfile with Docker or Podman (without either, with
# hack/build-image.sh) or takes one with --image-archive, loads it into the
# cluster, installs the chart with that image, creates the namespace
# wopr-demo (Pod Security "restricted"), applies examples/quickstart/ (one
# Session per trust level, each running the demo agent) and waits until
# every Session is Ready. Running it again changes nothing that is in place.
#
# Options:
#   --use-current-context   use kubectl's current context instead of kind
#   --image-archive PATH    an image archive to use instead of building one
#                           (hack/build-image.sh --output PATH writes one)
#   --load-command CMD      how to make an archive available to the nodes,
#                           run as `CMD ARCHIVE`: for example
#                           "ctr -n k8s.io images import" on a single-node
#                           cluster, or a script that pushes to a registry
#   --namespace NS          the demo namespace (default wopr-demo)
#   --operator-namespace NS where the operator runs (default wopr-system)
#   --release NAME          the Helm release (default wopr-operator)
#   --cluster-name NAME     the kind cluster (default wopr-quickstart)
#   --helm-set KEY=VALUE    passed to helm as --set (repeatable)
#   --down                  uninstall the release and delete the namespaces
#                           it created, and the kind cluster if it made one
set -euo pipefail
cd "$(dirname "$0")/.."

use_current_context=false
image_archive=""
load_command=""
namespace=wopr-demo
operator_namespace=wopr-system
release=wopr-operator
cluster_name=wopr-quickstart
helm_sets=()
down=false
while [ $# -gt 0 ]; do
  case "$1" in
    --use-current-context) use_current_context=true; shift ;;
    --image-archive) image_archive=$2; shift 2 ;;
    --load-command) load_command=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --operator-namespace) operator_namespace=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    --cluster-name) cluster_name=$2; shift 2 ;;
    --helm-set) helm_sets+=(--set "$2"); shift 2 ;;
    --down) down=true; shift ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "quickstart: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Namespaces this script creates carry this label; --down deletes only those.
readonly MADE_BY=app.kubernetes.io/created-by=wopr-quickstart

current_step=""
fix=""
# Announces a step, and what to do should it fail.
step() {
  current_step=$1
  fix=$2
  echo "==> $current_step"
}
work=""
# On the way out: the scratch directory goes; a failure names its step.
on_exit() {
  local status=$?
  [ -z "$work" ] || rm -rf "$work"
  if [ "$status" -ne 0 ] && [ -n "$current_step" ]; then
    echo "quickstart: step \"$current_step\" failed (exit $status). Fix: $fix" >&2
  fi
}
trap on_exit EXIT

# helm and kubectl: on the PATH, else the ones hack/install-tools.sh installs.
tool() {
  if command -v "$1" >/dev/null; then
    command -v "$1"
  elif [ -x ".tools/bin/$1" ]; then
    echo ".tools/bin/$1"
  else
    echo "quickstart: needs $1: install it, or run bash hack/install-tools.sh (helm and kubectl into .tools/bin)" >&2
    exit 1
  fi
}

step "checking the tools" "install what is named above"
kubectl_bin=$(tool kubectl)
helm_bin=$(tool helm)
engine=""
for candidate in docker podman; do
  if command -v "$candidate" >/dev/null && "$candidate" info >/dev/null 2>&1; then
    engine=$candidate
    break
  fi
done
if ! $use_current_context; then
  command -v kind >/dev/null || { echo "quickstart: needs kind (https://kind.sigs.k8s.io), or --use-current-context" >&2; exit 1; }
  [ -n "$engine" ] || { echo "quickstart: kind needs a running Docker or Podman, or use --use-current-context" >&2; exit 1; }
  if [ "$engine" = podman ]; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
fi

if $use_current_context; then
  step "finding the current context" "set KUBECONFIG, or kubectl config use-context NAME"
  context=$("$kubectl_bin" config current-context)
else
  context=kind-$cluster_name
fi
kubectl() { "$kubectl_bin" --context "$context" "$@"; }
helm() { "$helm_bin" --kube-context "$context" "$@"; }

# Deletes namespace $1 if this script created it.
delete_namespace_if_made() {
  if kubectl get namespace "$1" -o name -l "$MADE_BY" 2>/dev/null | grep -q .; then
    kubectl delete namespace "$1" --wait=true
  else
    echo "    namespace $1: not created by the quickstart (or gone), left alone"
  fi
}

if $down; then
  if ! $use_current_context; then
    step "deleting the kind cluster $cluster_name" "kind delete cluster --name $cluster_name"
    if kind get clusters 2>/dev/null | grep -qx "$cluster_name"; then
      kind delete cluster --name "$cluster_name"
    else
      echo "    no kind cluster $cluster_name"
    fi
    exit 0
  fi
  step "deleting the demo namespace $namespace (context $context)" "kubectl delete namespace $namespace"
  delete_namespace_if_made "$namespace"
  step "uninstalling the release $release" "helm uninstall $release -n $operator_namespace"
  if helm status "$release" -n "$operator_namespace" >/dev/null 2>&1; then
    helm uninstall "$release" -n "$operator_namespace" --wait
  else
    echo "    no release $release in $operator_namespace"
  fi
  step "deleting the operator namespace $operator_namespace" "kubectl delete namespace $operator_namespace"
  delete_namespace_if_made "$operator_namespace"
  echo "The CRDs stay, as with helm uninstall (they hold every wopr.dev object of the cluster):"
  echo "  kubectl get crd -o name | grep wopr.dev | xargs kubectl delete"
  exit 0
fi

if $use_current_context; then
  step "using the current context $context" "kubectl config use-context NAME, or drop --use-current-context"
  kubectl cluster-info >/dev/null
else
  step "creating the kind cluster $cluster_name" "kind create cluster --name $cluster_name; see kind's own message above"
  if kind get clusters 2>/dev/null | grep -qx "$cluster_name"; then
    echo "    kind cluster $cluster_name exists"
  else
    kind create cluster --name "$cluster_name" --wait 120s
  fi
fi

work=$(mktemp -d)
if [ -n "$image_archive" ]; then
  step "reading the image archive $image_archive" "pass an archive from hack/build-image.sh --output PATH"
  [ -f "$image_archive" ] || { echo "quickstart: no file $image_archive" >&2; false; }
  # Its name: containerd's annotation in an OCI archive, else Docker's tag.
  image=$(python3 - "$image_archive" <<'PY'
import json, sys, tarfile
with tarfile.open(sys.argv[1]) as archive:
    names = archive.getnames()
    if "index.json" in names:
        index = json.load(archive.extractfile("index.json"))
        name = index["manifests"][0].get("annotations", {}).get("io.containerd.image.name")
        if name:
            sys.exit(print(name))
    if "manifest.json" in names:
        sys.exit(print(json.load(archive.extractfile("manifest.json"))[0]["RepoTags"][0]))
sys.exit("the archive names no image (no io.containerd.image.name, no RepoTags)")
PY
)
else
  image=ghcr.io/wopr-network/wopr-operator:dev
  if [ -n "$engine" ]; then
    step "building $image with $engine (the Dockerfile; the first build takes minutes)" "$engine build -t $image ."
    "$engine" build -t "$image" .
    "$engine" save -o "$work/image.tar" "$image"
  else
    step "building $image without a container engine (hack/build-image.sh)" "bash hack/build-image.sh --output $work/image.tar"
    bash hack/build-image.sh --name "$image" --output "$work/image.tar"
  fi
  image_archive=$work/image.tar
fi
echo "    image: $image"

if [ -n "$load_command" ]; then
  step "loading the image with: $load_command" "check that \"$load_command ARCHIVE\" makes an image archive available to every node"
  bash -c "$load_command \"\$1\"" load-command "$image_archive"
elif [[ "$context" == kind-* ]]; then
  kind_cluster=${context#kind-}
  step "loading the image into the kind cluster $kind_cluster" "kind load image-archive ARCHIVE --name $kind_cluster"
  kind load image-archive "$image_archive" --name "$kind_cluster"
else
  step "leaving the image to the nodes" "the nodes must be able to pull $image; or pass --load-command"
  echo "    not a kind cluster and no --load-command: the nodes pull $image themselves"
fi

# Creates namespace $1 (labelled as ours) unless it exists, with the labels $2...
ensure_namespace() {
  local name=$1
  shift
  if kubectl get namespace "$name" >/dev/null 2>&1; then
    echo "    namespace $name exists"
  else
    kubectl create namespace "$name"
    kubectl label namespace "$name" "$MADE_BY"
  fi
  if [ $# -gt 0 ]; then
    kubectl label namespace "$name" --overwrite "$@"
  fi
}

step "creating the namespaces $operator_namespace and $namespace (Pod Security restricted)" "kubectl create namespace NAME needs rights to create namespaces"
ensure_namespace "$operator_namespace"
ensure_namespace "$namespace" \
  pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted \
  pod-security.kubernetes.io/audit=restricted

# The audit trail wants a PersistentVolumeClaim; a cluster with no default
# StorageClass would leave it Pending, and the controller with it.
default_class=$(kubectl get storageclass -o jsonpath='{.items[?(@.metadata.annotations.storageclass\.kubernetes\.io/is-default-class=="true")].metadata.name}' 2>/dev/null || true)
if [ -z "$default_class" ]; then
  echo "    no default StorageClass: the audit trail goes to an emptyDir (lost with the controller's pod)"
  helm_sets+=(--set audit.persistence.enabled=false)
fi

step "installing the chart as $release in $operator_namespace" "helm status $release -n $operator_namespace; kubectl describe deployment -n $operator_namespace"
helm upgrade --install "$release" charts/wopr-operator \
  --namespace "$operator_namespace" \
  --set "image.repository=${image%:*}" --set "image.tag=${image##*:}" \
  "${helm_sets[@]}" \
  --wait --timeout 5m

step "applying examples/quickstart/ to $namespace" "kubectl apply -n $namespace -f examples/quickstart/ and read its errors"
kubectl apply -n "$namespace" -f examples/quickstart/

step "waiting until every Session in $namespace is Ready" "kubectl get wopr -n $namespace; kubectl describe session -n $namespace; kubectl get pods -n $namespace"
kubectl wait --for=condition=Ready session --all -n "$namespace" --timeout=5m

cat <<EOF

The quickstart is running (context $context). Look at:

  kubectl get wopr -n $namespace                        # every Session, Ready
  kubectl logs -n $namespace wopr-demo-untrusted -c agent  # the untrusted agent: config_get DENIED
  kubectl logs -n $namespace wopr-demo-trusted -c agent    # the trusted agent: config_get ALLOWED
  kubectl logs -n $namespace wopr-demo-trusted -c a2a      # its sidecar's audit lines
  kubectl get session demo-untrusted -n $namespace -o jsonpath='{.status.effective}'

Remove it all: hack/quickstart.sh --down$($use_current_context && echo " --use-current-context")
EOF
