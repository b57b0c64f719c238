{{/*
Names and labels follow the prometheus-community charts: app.kubernetes.io/*
labels on every object, the daemon in app.kubernetes.io/component.
*/}}

{{/* The five daemons, in the order objects are rendered. */}}
{{- define "agentmesh.daemons" -}}
bus router registry saga swarm
{{- end -}}

{{/* Chart name, truncated to the 63-character DNS label limit. */}}
{{- define "agentmesh.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <chart>-<version> for the helm.sh/chart label. */}}
{{- define "agentmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of one daemon's objects: <release>-<daemon>. Context: dict root daemon. */}}
{{- define "agentmesh.daemonName" -}}
{{- printf "%s-%s" .root.Release.Name .daemon | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object of the release. */}}
{{- define "agentmesh.labels" -}}
helm.sh/chart: {{ include "agentmesh.chart" . }}
app.kubernetes.io/part-of: agentmesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one daemon. Context: dict root daemon. */}}
{{- define "agentmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .daemon }}
{{- end -}}

{{/* All labels of one daemon's objects. Context: dict root daemon. */}}
{{- define "agentmesh.daemonLabels" -}}
{{ include "agentmesh.labels" .root }}
{{ include "agentmesh.selectorLabels" . }}
{{- end -}}

{{/* Labels that select every daemon of the release (NetworkPolicy peers). */}}
{{- define "agentmesh.releaseSelector" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The image reference: registry/repository:tag[@digest], tag defaulting to appVersion. */}}
{{- define "agentmesh.image" -}}
{{- $img := .Values.global.image -}}
{{- $ref := printf "%s:%s" $img.repository ($img.tag | default .Chart.AppVersion) -}}
{{- if $img.registry }}{{ $ref = printf "%s/%s" $img.registry $ref }}{{ end -}}
{{- if $img.digest }}{{ $ref = printf "%s@%s" $ref $img.digest }}{{ end -}}
{{- $ref -}}
{{- end -}}

{{/* ServiceAccount name. */}}
{{- define "agentmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (printf "%s-agentmesh" .Release.Name | trunc 63 | trimSuffix "-") -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* In-cluster DNS name of a daemon's Service (the TLS server name). Context: dict root daemon. */}}
{{- define "agentmesh.host" -}}
{{- printf "%s.%s.svc" (include "agentmesh.daemonName" .) .root.Release.Namespace -}}
{{- end -}}

{{/* In-cluster address of a daemon's gRPC port. Context: dict root daemon. */}}
{{- define "agentmesh.target" -}}
{{- $cfg := index .root.Values .daemon -}}
{{- printf "%s:%d" (include "agentmesh.host" .) (int $cfg.ports.grpc) -}}
{{- end -}}

{{/* Kafka TLS is in use (SSL or SASL_SSL). */}}
{{- define "agentmesh.kafkaTLS" -}}
{{- if has .Values.global.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/*
The non-secret AGENTMESH_* settings of one daemon, rendered into its
ConfigMap. Context: dict root daemon. Precedence inside the daemon is flags >
AGENTMESH_<DAEMON>_<KEY> > AGENTMESH_<KEY>; the chart sets AGENTMESH_<KEY>.
*/}}
{{- define "agentmesh.config" -}}
{{- $root := .root -}}
{{- $g := $root.Values.global -}}
{{- $cfg := index $root.Values .daemon -}}
AGENTMESH_HOST: "0.0.0.0"
AGENTMESH_PORT: {{ $cfg.ports.grpc | quote }}
AGENTMESH_METRICS_PORT: {{ $cfg.ports.metrics | quote }}
AGENTMESH_LOG_LEVEL: {{ $g.logLevel | quote }}
AGENTMESH_LOG_FORMAT: {{ $g.logFormat | quote }}
{{- if $g.tracing.otlpEndpoint }}
AGENTMESH_OTLP_ENDPOINT: {{ $g.tracing.otlpEndpoint | quote }}
AGENTMESH_TRACE_SAMPLE_RATIO: {{ $g.tracing.sampleRatio | quote }}
{{- end }}
AGENTMESH_GRACE_PERIOD_S: {{ $g.gracePeriodSeconds | quote }}
AGENTMESH_REDIS_URL: {{ $g.redis.url | quote }}
{{- if $g.redis.sentinel.enabled }}
AGENTMESH_REDIS_SENTINELS: {{ join "," $g.redis.sentinel.hosts | quote }}
AGENTMESH_REDIS_SENTINEL_MASTER: {{ $g.redis.sentinel.masterName | quote }}
{{- end }}
{{- with $g.redis.cluster.nodes }}
AGENTMESH_REDIS_CLUSTER_NODES: {{ join "," . | quote }}
{{- end }}
AGENTMESH_REGISTRY_TARGET: {{ include "agentmesh.target" (dict "root" $root "daemon" "registry") | quote }}
AGENTMESH_ROUTER_TARGET: {{ include "agentmesh.target" (dict "root" $root "daemon" "router") | quote }}
AGENTMESH_BUS_TARGET: {{ include "agentmesh.target" (dict "root" $root "daemon" "bus") | quote }}
AGENTMESH_SWARM_TARGET: {{ include "agentmesh.target" (dict "root" $root "daemon" "swarm") | quote }}
{{- if eq .daemon "bus" }}
AGENTMESH_BACKEND: {{ $cfg.backend | quote }}
{{- if eq $cfg.backend "kafka" }}
AGENTMESH_KAFKA_BOOTSTRAP: {{ $g.kafka.bootstrapServers | quote }}
AGENTMESH_KAFKA_SECURITY_PROTOCOL: {{ $g.kafka.securityProtocol | quote }}
{{- if hasPrefix "SASL_" $g.kafka.securityProtocol }}
AGENTMESH_KAFKA_SASL_MECHANISM: {{ $g.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if and (include "agentmesh.kafkaTLS" $root) $g.kafka.tls.caSecret }}
AGENTMESH_KAFKA_SSL_CA_FILE: /etc/agentmesh/kafka-ca/{{ $g.kafka.tls.caKey }}
{{- end }}
{{- if and (include "agentmesh.kafkaTLS" $root) $g.kafka.tls.clientSecret }}
AGENTMESH_KAFKA_SSL_CERT_FILE: /etc/agentmesh/kafka-client/tls.crt
AGENTMESH_KAFKA_SSL_KEY_FILE: /etc/agentmesh/kafka-client/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- if $g.tls.enabled }}
AGENTMESH_TLS_CERT_FILE: /etc/agentmesh/tls/tls.crt
AGENTMESH_TLS_KEY_FILE: /etc/agentmesh/tls/tls.key
AGENTMESH_TLS_CA_FILE: /etc/agentmesh/tls/ca.crt
{{- if $g.tls.mutual }}
AGENTMESH_TLS_CLIENT_CA_FILE: /etc/agentmesh/tls/ca.crt
{{- end }}
{{- end }}
{{- if $g.auth.enabled }}
AGENTMESH_AUTH_TOKENS_FILE: /etc/agentmesh/auth/tokens.json
{{- end }}
{{- range $key, $value := $cfg.config }}
{{- /* YAML numbers arrive as float64, which toString writes as 2.097152e+06;
       whole numbers are written as integers so the daemons' int settings parse */}}
{{- if and (kindIs "float64" $value) (eq $value (float64 (int64 $value))) }}
AGENTMESH_{{ upper $key }}: {{ int64 $value | toString | quote }}
{{- else }}
AGENTMESH_{{ upper $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Secret-backed env of one daemon: passwords and tokens never land in a
ConfigMap. Context: dict root daemon.
*/}}
{{- define "agentmesh.secretEnv" -}}
{{- $g := .root.Values.global -}}
{{- $cfg := index .root.Values .daemon -}}
{{- if $g.redis.existingSecret }}
- name: AGENTMESH_REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $g.redis.existingSecret }}, key: {{ $g.redis.passwordKey }}}}
{{- end }}
{{- if and $g.redis.sentinel.enabled $g.redis.sentinel.existingSecret }}
- name: AGENTMESH_REDIS_SENTINEL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $g.redis.sentinel.existingSecret }}, key: {{ $g.redis.sentinel.passwordKey }}}}
{{- end }}
{{- if and (eq .daemon "bus") (eq $cfg.backend "kafka") (hasPrefix "SASL_" $g.kafka.securityProtocol) }}
- name: AGENTMESH_KAFKA_SASL_USERNAME
  valueFrom: {secretKeyRef: {name: {{ $g.kafka.sasl.existingSecret }}, key: {{ $g.kafka.sasl.usernameKey }}}}
- name: AGENTMESH_KAFKA_SASL_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ $g.kafka.sasl.existingSecret }}, key: {{ $g.kafka.sasl.passwordKey }}}}
{{- end }}
{{- if $g.auth.enabled }}
- name: AGENTMESH_AUTH_TOKEN
  valueFrom: {secretKeyRef: {name: {{ $g.auth.existingSecret }}, key: daemon-token}}
{{- end }}
{{- end -}}

{{/* Checks that the schema cannot express; fail with what to fix. */}}
{{- define "agentmesh.validate" -}}
{{- $g := .Values.global -}}
{{- if and $g.redis.sentinel.enabled (not $g.redis.sentinel.hosts) -}}
{{- fail "global.redis.sentinel.enabled is true: list the sentinels in global.redis.sentinel.hosts (host:port)" -}}
{{- end -}}
{{- if $g.redis.cluster.nodes -}}
{{- if $g.redis.sentinel.enabled -}}
{{- fail "global.redis.cluster.nodes and global.redis.sentinel.enabled are both set: Redis Cluster fails over by itself, use one of them" -}}
{{- end -}}
{{- /* the daemons refuse it at startup (runtime.config.redis_mode_problems); fail at install instead */}}
{{- if regexMatch "^rediss?://[^/]*/0*[1-9]" $g.redis.url -}}
{{- fail (printf "global.redis.url %s selects a db other than 0, and Redis Cluster has only db 0: end the URL with /0 (or no db) when global.redis.cluster.nodes is set" $g.redis.url) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.bus.enabled (eq .Values.bus.backend "kafka") (hasPrefix "SASL_" $g.kafka.securityProtocol) (not $g.kafka.sasl.existingSecret) -}}
{{- fail (printf "global.kafka.securityProtocol is %s: set global.kafka.sasl.existingSecret to the Secret with the SASL username and password" $g.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.bus.enabled (eq .Values.bus.backend "memory") (or (gt (int .Values.bus.replicaCount) 1) .Values.bus.autoscaling.enabled) -}}
{{- fail "bus.backend memory keeps messages in one process: set bus.replicaCount to 1 and bus.autoscaling.enabled to false, or use backend kafka" -}}
{{- end -}}
{{- end -}}
