{{/*
Names. The release's objects are "<fullname>-agent" and "<fullname>-operator"; the fullname is
the release name, with the chart name appended unless the release name already contains it.
*/}}
{{- define "vramkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vramkeeper.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vramkeeper.agent.fullname" -}}
{{- printf "%s-agent" (include "vramkeeper.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vramkeeper.operator.fullname" -}}
{{- printf "%s-operator" (include "vramkeeper.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. */}}
{{- define "vramkeeper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: {{ include "vramkeeper.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Agent selector labels. The operator finds the agent Pods with exactly these (its
--agent-selector), so they must stay stable across upgrades.
*/}}
{{- define "vramkeeper.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vramkeeper.name" . }}-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vramkeeper.agent.labels" -}}
{{ include "vramkeeper.labels" . }}
{{ include "vramkeeper.agent.selectorLabels" . }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "vramkeeper.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vramkeeper.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vramkeeper.operator.labels" -}}
{{ include "vramkeeper.labels" . }}
{{ include "vramkeeper.operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The agent selector as the operator's --agent-selector wants it: k=v,k=v. */}}
{{- define "vramkeeper.agent.selector" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "vramkeeper.agent.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The Secret holding the agents' bearer token, and its key. */}}
{{- define "vramkeeper.tokenSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "vramkeeper.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "vramkeeper.tokenSecretKey" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{/* image: repository:tag (tag defaults to the chart's appVersion), or @digest. */}}
{{- define "vramkeeper.image" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (.tag | default .appVersion) }}
{{- end }}
{{- end }}

{{/*
The agent's auto-free: off when the operator manages the GPUs (it runs the free -> reset ladder
with each GpuModel's policy), on when the agent runs alone.
*/}}
{{- define "vramkeeper.agent.autoFree" -}}
{{- if eq (toString .Values.agent.autoFree) "auto" }}
{{- not .Values.operator.enabled }}
{{- else }}
{{- .Values.agent.autoFree }}
{{- end }}
{{- end }}

{{/*
Whether the agent container runs as root: only to kill foreign processes (CAP_KILL is not
effective for a non-root user in a container: Kubernetes sets no ambient capabilities).
*/}}
{{- define "vramkeeper.agent.runsAsRoot" -}}
{{- if .Values.agent.killForeignProcesses }}true{{ end }}
{{- end }}

{{/* A catalog value as TOML: strings quoted, whole numbers without an exponent. */}}
{{- define "vramkeeper.tomlValue" -}}
{{- if kindIs "string" . }}
{{- toJson . }}
{{- else if kindIs "bool" . }}
{{- ternary "true" "false" . }}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) }}
{{- if eq (float64 (int64 .)) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}
{{- fail (printf "catalog values must be strings, numbers or booleans, not %s" (kindOf .)) }}
{{- end }}
{{- end }}
