{{- define "crossover.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name prefix; the Redis and vLLM objects add -redis and -vllm (so 57 characters). */}}
{{- define "crossover.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else if contains (include "crossover.name" .) .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "crossover.name" .) | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "crossover.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: call with (list $ "gateway"). */}}
{{- define "crossover.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "crossover.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "crossover.keysSecret" -}}
{{- .Values.providerKeys.existingSecret | default (printf "%s-keys" (include "crossover.fullname" .)) }}
{{- end }}

{{/* The gateway's config file: the `config` value, with the chart's Redis filled in, templates expanded. */}}
{{- define "crossover.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- if .Values.redis.enabled -}}
{{- $redis := get $config "redis" | default dict -}}
{{- if not (get $redis "url") -}}
{{- $_ := set $redis "url" (printf "redis://%s-redis:%v" (include "crossover.fullname" .) .Values.redis.port) -}}
{{- end -}}
{{- $_ := set $config "redis" $redis -}}
{{- end -}}
{{- tpl (toYaml $config) . }}
{{- end }}
