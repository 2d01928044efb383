{{/* Names and labels shared by every template. */}}

{{- define "streamspace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-wide name prefix: the release name when it already names the chart. */}}
{{- define "streamspace.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streamspace.controllerName" -}}{{ include "streamspace.fullname" . | trunc 52 | trimSuffix "-" }}-controller{{- end -}}
{{- define "streamspace.apiName" -}}{{ include "streamspace.fullname" . | trunc 56 | trimSuffix "-" }}-api{{- end -}}
{{- define "streamspace.apiIdleLease" -}}{{ default (printf "%s-idle" (include "streamspace.apiName" .)) .Values.api.legacyIdle.leaseName }}{{- end -}}
{{- define "streamspace.webhookService" -}}{{ include "streamspace.fullname" . | trunc 55 | trimSuffix "-" }}-webhook{{- end -}}
{{- define "streamspace.hooksService" -}}{{ include "streamspace.fullname" . | trunc 57 | trimSuffix "-" }}-hooks{{- end -}}
{{- define "streamspace.webhookSecret" -}}{{ include "streamspace.fullname" . | trunc 51 | trimSuffix "-" }}-webhook-tls{{- end -}}
{{- define "streamspace.eventTokenSecret" -}}{{ include "streamspace.fullname" . | trunc 48 | trimSuffix "-" }}-connection-token{{- end -}}

{{/* Namespace of the Sessions, Templates, GitSyncs and QuotaPolicies. */}}
{{- define "streamspace.sessionNamespace" -}}
{{- default .Release.Namespace .Values.sessions.namespace -}}
{{- end -}}

{{- define "streamspace.controllerServiceAccount" -}}
{{- default (include "streamspace.controllerName" .) .Values.controller.serviceAccount.name -}}
{{- end -}}

{{- define "streamspace.apiServiceAccount" -}}
{{- default (include "streamspace.apiName" .) .Values.api.serviceAccount.name -}}
{{- end -}}

{{- define "streamspace.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "streamspace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "root" $ "component" "api"). */}}
{{- define "streamspace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamspace.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "streamspace.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Webhook configurations' names: the self-managed certificate code patches their caBundle. */}}
{{- define "streamspace.webhookConfigName" -}}{{ include "streamspace.fullname" . }}{{- end -}}

{{/* The policy/v1 PodDisruptionBudget where the cluster serves it (1.21+), else v1beta1.
Offline rendering (helm template/lint) knows group versions only, so the Kubernetes version
decides there. */}}
{{- define "streamspace.pdbApiVersion" -}}
{{- if .Capabilities.APIVersions.Has "policy/v1/PodDisruptionBudget" -}}
policy/v1
{{- else if and (.Capabilities.APIVersions.Has "policy/v1") (semverCompare ">=1.21.0-0" .Capabilities.KubeVersion.Version) -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end -}}
{{- end -}}

{{/* Namespaces a Session may live in for the webhooks: by name where the API server labels
namespaces with kubernetes.io/metadata.name (1.21+), else by the label the chart documents. */}}
{{- define "streamspace.webhookNamespaceSelector" -}}
{{- if .Values.webhook.namespaceSelector -}}
{{ toYaml .Values.webhook.namespaceSelector }}
{{- else if semverCompare ">=1.21.0-0" .Capabilities.KubeVersion.Version -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values: [{{ include "streamspace.sessionNamespace" . | quote }}]
{{- else -}}
matchLabels:
  stream.space/sessions: {{ include "streamspace.fullname" . | quote }}
{{- end -}}
{{- end -}}

{{/* Pod and container security settings shared by both Deployments. */}}
{{- define "streamspace.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "streamspace.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Topology spread of one component over nodes and zones. */}}
{{- define "streamspace.topologySpread" -}}
{{- $root := .root -}}
{{- range $root.Values.topologySpread.topologyKeys }}
- maxSkew: {{ $root.Values.topologySpread.maxSkew }}
  topologyKey: {{ . }}
  whenUnsatisfiable: {{ $root.Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "streamspace.selectorLabels" (dict "root" $root "component" $.component) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* Ownership flag settings both processes share. */}}
{{- define "streamspace.flagArgs" -}}
- --flag-default-mode={{ .Values.flags.defaultMode }}
{{- if .Values.flags.namePrefix }}
- --flag-name-prefix={{ .Values.flags.namePrefix }}
{{- end }}
{{- end -}}

{{/* Settings of the session objects both processes build. */}}
{{- define "streamspace.sessionObjectArgs" -}}
- --ingress-domain={{ .Values.sessions.ingress.domain }}
{{- if .Values.sessions.ingress.enabled }}
- --ingress-class={{ .Values.sessions.ingress.className }}
{{- else }}
- --no-ingress
{{- end }}
- --home-size={{ .Values.sessions.home.size }}
{{- if .Values.sessions.home.storageClass }}
- --home-storage-class={{ .Values.sessions.home.storageClass }}
{{- end }}
{{- end -}}
