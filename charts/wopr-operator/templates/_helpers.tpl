{{/*
The name of every object: fullnameOverride, else the release name when it
contains "wopr-operator", else <release>-wopr-operator.
*/}}
{{- define "wopr-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Selector labels. `app.kubernetes.io/name: wopr-operator` is fixed: the
NetworkPolicy of every session pod selects the control plane by it.
*/}}
{{- define "wopr-operator.selectorLabels" -}}
app.kubernetes.io/name: wopr-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
The controller's pods: the selector labels and `component: controller`, so
that the Service, the NetworkPolicy and the PodDisruptionBudget of the
controller do not also select the egress service's pods (which share
`name: wopr-operator`). The Deployment's own selector stays the selector
labels: a Deployment's selector cannot change on upgrade.
*/}}
{{- define "wopr-operator.controllerSelectorLabels" -}}
{{ include "wopr-operator.selectorLabels" . }}
app.kubernetes.io/component: controller
{{- end -}}

{{/*
The egress service's pods. `name: wopr-operator` and `component: egress`
are fixed: the NetworkPolicy of every session pod lets its sidecar reach
the egress service by them.
*/}}
{{- define "wopr-operator.egressSelectorLabels" -}}
{{ include "wopr-operator.selectorLabels" . }}
app.kubernetes.io/component: egress
{{- end -}}

{{/* The egress service's Service, ServiceAccount and certificate Secret prefix. */}}
{{- define "wopr-operator.egressName" -}}
{{- printf "%s-egress" (include "wopr-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The address sidecars dial the egress service at. */}}
{{- define "wopr-operator.egressAddress" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "http" "https" .Values.tls.insecurePlaintext) (include "wopr-operator.egressName" .) .Release.Namespace (int .Values.egress.port) -}}
{{- end -}}

{{/* The Secret holding the egress service's certificate. */}}
{{- define "wopr-operator.egressTlsSecret" -}}
{{- printf "%s-tls" (include "wopr-operator.egressName" .) -}}
{{- end -}}

{{- define "wopr-operator.labels" -}}
{{ include "wopr-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: wopr
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* repository[:tag][@digest] of an image block, defaults from .Values.image. */}}
{{- define "wopr-operator.imageRef" -}}
{{- $root := index . 0 -}}
{{- $image := index . 1 -}}
{{- $repository := $image.repository | default $root.Values.image.repository -}}
{{- $digest := $image.digest | default $root.Values.image.digest -}}
{{- if $digest -}}
{{- printf "%s@%s" $repository $digest -}}
{{- else -}}
{{- printf "%s:%s" $repository ($image.tag | default $root.Values.image.tag | default $root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The address sidecars dial: the Service of this release. */}}
{{- define "wopr-operator.controlPlaneAddress" -}}
{{- printf "%s://%s.%s.svc:%d" (ternary "http" "https" .Values.tls.insecurePlaintext) (include "wopr-operator.fullname" .) .Release.Namespace (int .Values.controlPlane.port) -}}
{{- end -}}

{{/*
What the controller does in the namespaces it watches. tests/rbac.rs checks
these rules are exactly what the code needs.
*/}}
{{- define "wopr-operator.namespacedRules" -}}
- apiGroups: [wopr.dev]
  resources: [securitypolicies, sessions, grants, gateways, approvalrequests]
  verbs: [list, watch]
# The control plane files the forwards and elevations that wait for a
# person and creates the sessions agents spawn; the controller makes the
# Grant of an approved elevation.
- apiGroups: [wopr.dev]
  resources: [approvalrequests, grants, sessions]
  verbs: [create]
# The peer ingress moves a peer's Grants to its new key when it rotates
# (subject.peer.publicKey and previousKeys, under the Grant's resource
# version).
- apiGroups: [wopr.dev]
  resources: [grants]
  verbs: [patch]
- apiGroups: [wopr.dev]
  resources: [securitypolicies/status, sessions/status, gateways/status, approvalrequests/status, grants/status]
  verbs: [patch]
# The control plane's own writes pass the escalation policies
# (escalation.yaml) as the operator: an agent may spawn a child at its own
# level, owner included, with its parent's sandbox settings; an approved
# elevation grants the capabilities a person approved.
- apiGroups: [wopr.dev]
  resources: [trustlevels]
  resourceNames: [untrusted, semi-trusted, trusted, owner]
  verbs: [use]
- apiGroups: [wopr.dev]
  resources: [sandboxoverrides]
  verbs: [use]
# Owner references with blockOwnerDeletion on the children of a Session.
# The children are server-side applied: an apply that creates an object is
# authorized as `create` as well as `patch`.
- apiGroups: [wopr.dev]
  resources: [sessions/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# The control plane records each sidecar's sandbox checks as pod conditions.
- apiGroups: [""]
  resources: [pods/status]
  verbs: [patch]
# The control plane runs exec_command in the caller's own agent container:
# create on pods/exec, and get, which the WebSocket upgrade (a GET) is
# authorized as on some API server versions. Not attach, not portforward.
- apiGroups: [""]
  resources: [pods/exec]
  verbs: [create, get]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch]
# The control plane's CA bundle, which session pods mount, in each
# namespace with Sessions.
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [wopr-ca-bundle]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.egress.enabled }}
# The egress service reads a namespace's provider keys through a
# RoleBinding to wopr-egress-provider-keys that the controller applies where
# the namespace's default SecurityPolicy configures providers (and deletes
# when it configures none): the right to bind that one ClusterRole, and to
# write the bindings. Nothing on Secrets.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  resourceNames: [wopr-egress-provider-keys]
  verbs: [bind]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  resourceNames: [wopr-egress-provider-keys]
  verbs: [patch, delete]
# An apply that creates the binding is authorized as `create`, which RBAC
# cannot restrict by name (the name is not in the request's URL).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [create]
{{- end }}
{{- end -}}

{{/*
The Secret holding the control plane's server certificate from cert-manager.
*/}}
{{- define "wopr-operator.tlsSecret" -}}
{{- printf "%s-tls" (include "wopr-operator.fullname" .) -}}
{{- end -}}

{{/*
The [old, new] pairs at level i of argument-rule lists (each [tool, field,
variable name]), for the escalation policy's widerRules.
*/}}
{{- define "wopr-operator.rulePairs" -}}
{{- $pairs := list -}}
{{- range $list := . -}}
{{- $pairs = append $pairs (printf "[variables.old%s[i], variables.new%s[i]]" (index $list 2) (index $list 2)) -}}
{{- end -}}
{{- join ", " $pairs -}}
{{- end -}}
