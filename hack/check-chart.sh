#!/usr/bin/env bash
# Checks the chart and manifests/ (run hack/install-tools.sh first):
#   helm lint; the chart's CRDs equal crds/; manifests/ equals a fresh render;
#   every rendered object (default, all options on, one watched namespace) and
#   every example validates against the Kubernetes 1.33 / CRD schemas;
#   each file of tests/chart/bad-values/ fails `helm template` with the
#   message its `# expect:` line names; the kustomization builds; the sandbox
#   profiles load and work (hack/check-profiles.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools/bin:$PATH"
chart=charts/wopr-operator
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
all_options=(--set replicaCount=3 --set audit.postgres.existingSecret=wopr-store --set profileInstaller.enabled=true --set serviceMonitor.enabled=true --set grafanaDashboard.enabled=true --set p2p.enabled=true --set audit.export.otlp.endpoint=http://collector.observability:4317 --set audit.export.ocsf=- --set 'sandbox.isolationProbes={metadata=169.254.169.254:80}')

echo "== helm lint"
helm lint --strict "$chart"
helm lint --strict "$chart" "${all_options[@]}" --set watchNamespace=team-a

echo "== chart CRDs and manifests/ up to date"
if ! diff -ru crds "$chart/crds"; then
  echo "drift: $chart/crds differs from crds/. Run hack/render-manifests.sh and commit." >&2
  exit 1
fi
cp -r manifests "$work/committed"
bash hack/render-manifests.sh >/dev/null
if ! diff -ru "$work/committed" manifests; then
  rm -rf manifests && cp -r "$work/committed" manifests
  echo "drift: manifests/ is not what the chart renders. Run hack/render-manifests.sh and commit." >&2
  exit 1
fi
echo "up to date."

echo "== rendered objects and examples against the schemas"
helm template wopr-operator "$chart" -n wopr-system "${all_options[@]}" > "$work/all-options.yaml"
helm template wopr-operator "$chart" -n wopr-system --set watchNamespace=team-a > "$work/one-namespace.yaml"
echo "== TLS: plaintext is off by default; with cert-manager the controller reads the Certificate's Secret"
if grep -q -- "--insecure-plaintext" manifests/install.yaml; then echo "the default install must not serve plaintext" >&2; exit 1; fi
helm template wopr-operator "$chart" -n wopr-system --set tls.certManager.enabled=true > "$work/cert-manager.yaml"
for expected in "--tls-cert-file=/var/run/wopr/tls/tls.crt" "--tls-ca-file=/var/run/wopr/tls/ca.crt" "secretName: wopr-operator-tls" "selfSigned: {}" "secretName: wopr-operator-cert-manager-ca"; do
  grep -qF -- "$expected" "$work/cert-manager.yaml" || { echo "with tls.certManager.enabled the render lacks: $expected" >&2; exit 1; }
done
[ "$(grep -cF "secretName: wopr-operator-tls" "$work/cert-manager.yaml")" -ge 2 ] || { echo "the Certificate's Secret must be the one the controller mounts" >&2; exit 1; }
if grep -qF -- "--tls-ca-secret" "$work/cert-manager.yaml"; then echo "with cert-manager the operator must not issue its own certificate" >&2; exit 1; fi
helm template wopr-operator "$chart" -n wopr-system --set tls.certManager.enabled=true --set tls.certManager.issuerRef.name=corp-ca --set tls.certManager.issuerRef.kind=ClusterIssuer > "$work/cert-manager-issuer.yaml"
if grep -qF -- "-p2p.wopr-system.svc" "$work/cert-manager.yaml"; then echo "without p2p.enabled the Certificate names no peer ingress" >&2; exit 1; fi
helm template wopr-operator "$chart" -n wopr-system --set tls.certManager.enabled=true --set p2p.enabled=true > "$work/cert-manager-p2p.yaml"
grep -qF -- "- wopr-operator-p2p.wopr-system.svc" "$work/cert-manager-p2p.yaml" || { echo "with p2p.enabled the Certificate must name the peer ingress's Service" >&2; exit 1; }
grep -qF "name: corp-ca" "$work/cert-manager-issuer.yaml" || { echo "a named issuer must sign the Certificate" >&2; exit 1; }
if grep -qF "selfSigned" "$work/cert-manager-issuer.yaml"; then echo "a named issuer needs no bootstrap CA" >&2; exit 1; fi
echo "== the profile installer makes the shipped seccomp profile the sandboxes' default"
grep -q -- "--sandbox-seccomp-profile=profiles/wopr-sandbox.json" "$work/all-options.yaml" || { echo "with profileInstaller.enabled the controller must get --sandbox-seccomp-profile" >&2; exit 1; }
if grep -q -- "--sandbox-seccomp-profile" manifests/install.yaml; then echo "without the profile installer no seccomp default may be set" >&2; exit 1; fi
echo "ok"
python3 hack/validate-manifests.py manifests/install.yaml manifests/profile-installer.yaml manifests/monitoring.yaml "$work/all-options.yaml" "$work/one-namespace.yaml" examples/*.yaml examples/quickstart/*.yaml

echo "== egress.enabled=false renders no egress service, no provider-keys role and no right to bind it"
off=$(helm template wopr-operator "$chart" --namespace wopr-system --set egress.enabled=false)
if grep -E 'name: (wopr-operator-egress|wopr-egress-provider-keys)|WOPR_EGRESS_|component: egress|resources: \[(clusterroles|rolebindings)\]' <<<"$off"; then
  echo "egress.enabled=false still renders the above" >&2
  exit 1
fi
grep -q 'name: wopr-operator-egress$' <<<"$(helm template wopr-operator "$chart" --namespace wopr-system)" || { echo "the default install lacks the egress service" >&2; exit 1; }

echo "== watchNamespace moves the namespaced rules into a Role there"
python3 - manifests/install.yaml "$work/one-namespace.yaml" <<'PY'
import sys, yaml
def roles(path):
    return {(d["kind"], d["metadata"].get("namespace")): d["rules"]
            for d in yaml.safe_load_all(open(path))
            if d and d["kind"] in ("ClusterRole", "Role") and d["metadata"]["name"].startswith("wopr-operator")}
default, scoped = roles(sys.argv[1]), roles(sys.argv[2])
reviews = ["tokenreviews", "subjectaccessreviews", "validatingadmissionpolicies"]
cluster = [r for r in default[("ClusterRole", None)] if r["resources"][0] in reviews]
namespaced = [r for r in default[("ClusterRole", None)] if r["resources"][0] not in reviews]
assert scoped[("ClusterRole", None)] == cluster, scoped[("ClusterRole", None)]
assert scoped[("Role", "team-a")] == namespaced, scoped[("Role", "team-a")]
assert scoped[("Role", "wopr-system")] == default[("Role", "wopr-system")]
print("ok   with watchNamespace=team-a the ClusterRole keeps only the reviews and the escalation policies")
PY

echo "== bad values fail with the schema's message"
failed=0
for values in tests/chart/bad-values/*.yaml; do
  expected=$(sed -n 's/^# expect: //p' "$values")
  if output=$(helm template x "$chart" -f "$values" 2>&1 >/dev/null); then
    echo "FAIL $values: helm template accepted it" >&2; failed=1
  elif [[ "$output" != *"$expected"* ]]; then
    echo "FAIL $values: expected \"$expected\", got: $output" >&2; failed=1
  else
    echo "ok   $values: $expected"
  fi
done
[ "$failed" -eq 0 ]

echo "== kustomization"
kubectl kustomize manifests/ > /dev/null && echo "manifests/kustomization.yaml builds."

echo "== sandbox profiles"
/usr/bin/python3 hack/check-profiles.py
