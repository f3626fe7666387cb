{{/*
Labels. Selectors and pod templates carry only the two stable labels that
manifests/ uses (app.kubernetes.io/name + component): the operator's generated
NetworkPolicies and Services select them, and selectors cannot change on upgrade.
Object metadata also carries part-of (as kustomize adds it), Helm's labels and
.Values.commonLabels.
*/}}
{{- define "kubegate.selectorLabels" -}}
app.kubernetes.io/name: kubegate
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "kubegate.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{/* metadata.labels of an object: call with (dict "root" $ "component" "operator"). */}}
{{- define "kubegate.labels" -}}
{{- if .component }}{{ include "kubegate.selectorLabels" . }}
{{ end -}}
app.kubernetes.io/part-of: kubegate
{{ include "kubegate.helmLabels" .root }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* metadata of a namespaced object: (dict "root" $ "name" "..." "component" "..." ["annotations" dict]) */}}
{{- define "kubegate.metadata" -}}
name: {{ .name }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "kubegate.labels" . | nindent 2 }}
{{- with merge (deepCopy (.annotations | default dict)) (.root.Values.commonAnnotations | default dict) }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* metadata of a cluster-scoped object */}}
{{- define "kubegate.clusterMetadata" -}}
name: {{ .name }}
labels:
  {{- include "kubegate.labels" . | nindent 2 }}
{{- with .root.Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "kubegate.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "kubegate.operatorReplicas" -}}
{{- if .Values.ha.enabled }}2{{ else }}{{ .Values.operator.replicas }}{{ end -}}
{{- end }}

{{- define "kubegate.dataplaneReplicas" -}}
{{- if .Values.ha.enabled }}3{{ else }}{{ .Values.dataplane.replicas }}{{ end -}}
{{- end }}

{{/* The Secret and key holding the Redis URL, or nothing. */}}
{{- define "kubegate.redisSecret" -}}
{{- if .Values.redis.existingSecret.name -}}
{{ .Values.redis.existingSecret.name }}
{{- else if .Values.redis.url -}}
kubegate-redis
{{- end -}}
{{- end }}

{{- define "kubegate.redisSecretKey" -}}
{{- if .Values.redis.existingSecret.name }}{{ .Values.redis.existingSecret.key }}{{ else }}url{{ end -}}
{{- end }}

{{/* Pod placement shared by both Deployments: (dict "root" $ "values" .Values.operator) */}}
{{- define "kubegate.placement" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security contexts of every kubegate pod and container. */}}
{{- define "kubegate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "kubegate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
