{{/* Chart name, truncated to the 63-character DNS label limit. */}}
{{- define "agentmesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of one daemon's resources: <release>-<daemon>. */}}
{{- define "agentmesh.daemonName" -}}
{{- printf "%s-%s" .root.Release.Name .daemon | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every resource. */}}
{{- define "agentmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/part-of: agentmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one daemon. */}}
{{- define "agentmesh.selector" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .daemon }}
{{- end -}}
