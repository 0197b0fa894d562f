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

{{/*
Labels every object carries. The chart and app versions are here, on the objects, never in a
Pod template: there they would change the template at every chart bump and restart every agent
(and unload its models) although nothing the Pod runs changed.
*/}}
{{- define "vramkeeper.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{ include "vramkeeper.stableLabels" . }}
{{- end }}

{{/* Labels that stay the same across chart versions: the ones Pod templates carry. */}}
{{- define "vramkeeper.stableLabels" -}}
app.kubernetes.io/part-of: {{ include "vramkeeper.name" . }}
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

{{/* The agent Pod template's labels: no version in them (see vramkeeper.labels). */}}
{{- define "vramkeeper.agent.podLabels" -}}
{{ include "vramkeeper.stableLabels" . }}
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

{{/* The operator Pod template's labels: no version in them (see vramkeeper.labels). */}}
{{- define "vramkeeper.operator.podLabels" -}}
{{ include "vramkeeper.stableLabels" . }}
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

{{/*
Whether the Prometheus Operator's monitors are rendered: one of them is enabled and the cluster
serves monitoring.coreos.com/v1 (`helm template` knows only what --api-versions tells it).
*/}}
{{- define "vramkeeper.monitoring.scraped" -}}
{{- $m := .Values.monitoring }}
{{- if and (or $m.serviceMonitor.enabled $m.podMonitor.enabled) (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end }}
{{- end }}

{{/*
The agent's GPU mode: it manages NVIDIA GPUs (device cuda or auto), so the container gets them
from NVIDIA's runtime. In cpu mode the runtime is told to inject nothing.
*/}}
{{- define "vramkeeper.agent.gpuMode" -}}
{{- if ne .Values.agent.device "cpu" }}true{{ end }}
{{- end }}

{{/*
NVIDIA's runtime variables, shared by the agent and the init container that waits for the
driver. cpu: `void`, since NVIDIA's CUDA base image sets NVIDIA_VISIBLE_DEVICES=all and the
runtime would otherwise inject every GPU. GPUs requested from the device plugin: its allocation
decides. Otherwise agent.gpu.visibleDevices.
*/}}
{{- define "vramkeeper.agent.nvidiaEnv" -}}
{{- $agent := .Values.agent }}
{{- if not (include "vramkeeper.agent.gpuMode" .) }}
- name: NVIDIA_VISIBLE_DEVICES
  value: void
{{- else }}
{{- if and (eq (int $agent.gpu.count) 0) $agent.gpu.visibleDevices }}
- name: NVIDIA_VISIBLE_DEVICES
  value: {{ $agent.gpu.visibleDevices | quote }}
{{- end }}
- name: NVIDIA_DRIVER_CAPABILITIES
  value: {{ $agent.gpu.driverCapabilities | quote }}
{{- end }}
{{- end }}

{{/*
The default node affinity of GPU mode, used only when the user gives neither agent.affinity nor
agent.nodeSelector (theirs replace it, never merge with it). Terms are alternatives: any one
label marks an NVIDIA GPU node, whichever tool set it.
*/}}
{{- define "vramkeeper.agent.gpuAffinity" -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      # Node Feature Discovery: a PCI device of vendor 10de (NVIDIA).
      - matchExpressions:
          - key: feature.node.kubernetes.io/pci-10de.present
            operator: In
            values: ["true"]
      # NVIDIA's GPU feature discovery (GPU operator), or set by hand to force a node in.
      - matchExpressions:
          - key: nvidia.com/gpu.present
            operator: In
            values: ["true"]
      # GKE GPU node pools.
      - matchExpressions:
          - key: cloud.google.com/gke-accelerator
            operator: Exists
{{- end }}

{{/*
The agents' catalog (TOML). The DaemonSet's checksum is of this text alone, not of the
ConfigMap, whose labels carry the chart version: a chart bump must not roll the agents.
*/}}
{{- define "vramkeeper.agent.catalog" -}}
# The agents' model catalog, written by the vramkeeper chart from `catalog.models`.
{{- range .Values.catalog.models }}

[[model]]
name = {{ include "vramkeeper.tomlValue" .name }}
{{- range $key, $value := omit . "name" }}
{{ $key }} = {{ include "vramkeeper.tomlValue" $value }}
{{- end }}
{{- end }}
{{- end }}
