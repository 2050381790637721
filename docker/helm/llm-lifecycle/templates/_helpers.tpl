{{- define "lifecycle.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lifecycle.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lifecycle.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "lifecycle.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "lifecycle.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}

{{- define "lifecycle.image" -}}
{{- printf "%s:%s" .repository (required "image tag must be set" .tag) -}}
{{- end -}}

{{- define "lifecycle.claim" -}}
{{- default (printf "%s-state" (include "lifecycle.fullname" .)) .Values.sharedVolume.existingClaim -}}
{{- end -}}

{{- define "lifecycle.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}{{ printf "http://%s-mlflow:%v" (include "lifecycle.fullname" .) .Values.mlflow.port }}{{- else -}}{{ required "mlflow.trackingUri is required when mlflow.enabled is false" .Values.mlflow.trackingUri }}{{- end -}}
{{- end -}}

{{/* Settings every llm-lifecycle container reads (env prefix LIFECYCLE_, see the README). */}}
{{- define "lifecycle.envFrom" -}}
- configMapRef:
    name: {{ include "lifecycle.fullname" . }}-settings
- secretRef:
    name: {{ include "lifecycle.fullname" . }}-secrets
{{- end -}}

{{- define "lifecycle.gpuResources" -}}
{{- $r := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $r.limits "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $r.requests "nvidia.com/gpu" (int .gpus) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}
