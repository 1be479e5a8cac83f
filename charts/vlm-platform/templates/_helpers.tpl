{{/* Names ---------------------------------------------------------------------------------- */}}

{{- define "vlm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vlm.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vlm.mlflow.fullname" -}}{{ include "vlm.fullname" . }}-mlflow{{- end }}
{{- define "vlm.minio.fullname" -}}{{ include "vlm.fullname" . }}-minio{{- end }}
{{- define "vlm.postgresql.fullname" -}}{{ include "vlm.fullname" . }}-postgresql{{- end }}

{{- define "vlm.pipeline.serviceAccountName" -}}
{{- default (printf "%s-pipeline" (include "vlm.fullname" .)) .Values.pipelines.serviceAccount.name }}
{{- end }}

{{/* Labels --------------------------------------------------------------------------------- */}}

{{- define "vlm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "vlm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vlm-platform
{{- end }}

{{/* Selector labels of one component: include "vlm.selectorLabels" (list . "mlflow") */}}
{{- define "vlm.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "vlm.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "vlm.componentLabels" -}}
{{ include "vlm.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Images: include "vlm.image" (dict "image" .Values.image "default" "0.1.0-cpu") */}}
{{- define "vlm.image" -}}
{{- $tag := default .default .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "vlm.cpuImage" -}}
{{- include "vlm.image" (dict "image" .Values.image "default" (printf "%s-cpu" .Chart.AppVersion)) -}}
{{- end }}

{{- define "vlm.trainingImage" -}}
{{- include "vlm.image" (dict "image" .Values.trainingImage "default" (printf "%s-cuda" .Chart.AppVersion)) -}}
{{- end }}

{{/* Empty when there is nothing to set; call as {{- with (include "vlm.imagePullSecrets" .) }}{{ . | nindent 6 }}{{ end }} */}}
{{- define "vlm.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end -}}
{{- end }}

{{/* Endpoints ------------------------------------------------------------------------------ */}}

{{- define "vlm.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "vlm.minio.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.minio.service.port) -}}
{{- else -}}
{{- required "externalS3.endpoint is required when minio.enabled=false" .Values.externalS3.endpoint -}}
{{- end -}}
{{- end }}

{{- define "vlm.mlflow.url" -}}
{{- printf "http://%s.%s.svc.%s:%d" (include "vlm.mlflow.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.mlflow.service.port) -}}
{{- end }}

{{- define "vlm.db.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s.%s.svc.%s" (include "vlm.postgresql.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- required "externalDatabase.host is required when postgresql.enabled=false" .Values.externalDatabase.host -}}
{{- end -}}
{{- end }}

{{/* The database settings in effect, as a dict: host, port, database, username, secret, key, sslmode */}}
{{- define "vlm.db" -}}
{{- if .Values.postgresql.enabled -}}
{{- dict "port" (int .Values.postgresql.service.port) "database" .Values.postgresql.database "username" .Values.postgresql.username "secret" .Values.postgresql.auth.existingSecret "key" .Values.postgresql.auth.passwordKey "sslmode" "disable" | toJson -}}
{{- else -}}
{{- $e := .Values.externalDatabase -}}
{{- dict "port" (int $e.port) "database" $e.database "username" $e.username "secret" $e.existingSecret "key" $e.passwordKey "sslmode" $e.sslmode | toJson -}}
{{- end -}}
{{- end }}

{{/* Environment of containers that talk to the database: DB_USER, DB_PASSWORD, MLFLOW_BACKEND_STORE_URI.
     The password reaches the URI through Kubernetes' $(VAR) expansion, never through values or args. */}}
{{- define "vlm.db.env" -}}
{{- $db := include "vlm.db" . | fromJson -}}
- name: DB_USER
  value: {{ $db.username | quote }}
- name: DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $db.secret }}
      key: {{ $db.key }}
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ printf "postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@%s:%d/%s?sslmode=%s" (include "vlm.db.host" .) (int $db.port) $db.database $db.sslmode | quote }}
{{- end }}

{{/* S3 client environment (endpoint + the S3 user's credentials by reference). */}}
{{- define "vlm.s3.env" -}}
- name: AWS_ENDPOINT_URL
  value: {{ include "vlm.s3.endpoint" . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "vlm.s3.endpoint" . | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}

{{/* Host headers MLflow accepts: service names in every form, ingress host, localhost (port-forward). */}}
{{- define "vlm.mlflow.allowedHosts" -}}
{{- $svc := include "vlm.mlflow.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $hosts := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) -}}
{{- $out := list -}}
{{- range $hosts }}{{ $out = append $out . }}{{ $out = append $out (printf "%s:*" .) }}{{ end -}}
{{- if and .Values.mlflow.ingress.enabled .Values.mlflow.ingress.host }}{{ $out = append $out .Values.mlflow.ingress.host }}{{ end -}}
{{- $out = concat $out (list "localhost:*" "127.0.0.1:*") .Values.mlflow.allowedHosts -}}
{{- join "," (uniq $out) -}}
{{- end }}

{{/* Hardened container defaults: include "vlm.containerSecurityContext" . */}}
{{- define "vlm.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod security context for a numeric user: include "vlm.podSecurityContext" 10001 */}}
{{- define "vlm.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ . }}
runAsGroup: {{ . }}
fsGroup: {{ . }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* nodeSelector/tolerations/affinity of one component; empty when unset (call like vlm.imagePullSecrets) */}}
{{- define "vlm.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
