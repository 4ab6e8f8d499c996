{{/* Name of the chart's objects. */}}
{{- define "sapllm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sapllm.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sapllm.labels" -}}
{{ include "sapllm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sapllm.serviceAccountName" -}}
{{ include "sapllm.fullname" . }}
{{- end -}}

{{- define "sapllm.workerImage" -}}
{{ .Values.worker.image.repository }}:{{ .Values.worker.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The worker's CUDA build, for pods with GPUs: cudaTag, else "<tag>-cuda". */}}
{{- define "sapllm.workerCudaImage" -}}
{{ .Values.worker.image.repository }}:{{ .Values.worker.image.cudaTag | default (printf "%s-cuda" (.Values.worker.image.tag | default .Chart.AppVersion)) }}
{{- end -}}
