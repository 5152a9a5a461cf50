{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "spillway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, prefixed with the chart name unless it contains it. */}}
{{- define "spillway.fullname" -}}
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

{{- define "spillway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spillway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spillway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spillway.labels" -}}
helm.sh/chart: {{ include "spillway.chart" . }}
{{ include "spillway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spillway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spillway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Label that lets a pod in the release namespace through the NetworkPolicy to the RPC port. */}}
{{- define "spillway.clientLabel" -}}
{{- printf "%s-client" (include "spillway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spillway.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Name of the container port serving /livez, /readyz and /metrics. */}}
{{- define "spillway.adminPortName" -}}
{{- if .Values.admin.enabled }}admin{{ else }}http{{ end }}
{{- end }}

{{/* host:port for a listener; IPv6 addresses get brackets. */}}
{{- define "spillway.listen" -}}
{{- $host := .host }}
{{- if contains ":" $host }}{{ $host = printf "[%s]" $host }}{{ end }}
{{- printf "%s:%d" $host (int .port) }}
{{- end }}

{{/* Whether the server serves HTTPS itself (tls.existingSecret). */}}
{{- define "spillway.tls" -}}
{{- if .Values.tls.existingSecret }}true{{ end }}
{{- end }}

{{/* "https" when the server serves TLS, else "http". */}}
{{- define "spillway.scheme" -}}
{{- if include "spillway.tls" . }}https{{ else }}http{{ end }}
{{- end }}

{{/*
Scheme of /livez, /readyz and /metrics. TLS covers the RPC listener only: the admin listener
(admin.enabled) stays plain HTTP for the kubelet and Prometheus; with admin.enabled=false the
endpoints are on the RPC port and so HTTPS when TLS is on.
*/}}
{{- define "spillway.adminScheme" -}}
{{- if .Values.admin.enabled }}http{{ else }}{{ include "spillway.scheme" . }}{{ end }}
{{- end }}

{{/* The authentication schemes of auth.mode, as a list ("none": empty). */}}
{{- define "spillway.authModes" -}}
{{- if ne .Values.auth.mode "none" }}{{ .Values.auth.mode }}{{ end }}
{{- end }}

{{/* Whether auth.mode includes NAME. Call as (list . NAME). */}}
{{- define "spillway.authHas" -}}
{{- $root := index . 0 }}
{{- if has (index . 1) (splitList "," (include "spillway.authModes" $root)) }}true{{ end }}
{{- end }}

{{/* Whether callers can be told apart: an authentication scheme or client certificates. */}}
{{- define "spillway.authenticated" -}}
{{- if or (include "spillway.authModes" .) (include "spillway.clientCA" .) }}true{{ end }}
{{- end }}

{{/* Whether client certificates are asked for (tls.clientCA from a Secret or ConfigMap). */}}
{{- define "spillway.clientCA" -}}
{{- if or .Values.tls.clientCA.existingSecret .Values.tls.clientCA.existingConfigMap }}true{{ end }}
{{- end }}

{{/* Name of the ConfigMap holding the authorization policy ("": none). */}}
{{- define "spillway.authzConfigMap" -}}
{{- if .Values.authz.existingConfigMap }}
{{- .Values.authz.existingConfigMap }}
{{- else if .Values.authz.policy }}
{{- printf "%s-authz" (include "spillway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The in-cluster URL of the Service's RPC port. */}}
{{- define "spillway.serviceUrl" -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "spillway.scheme" .) (include "spillway.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.service.port) }}
{{- end }}

{{/*
SPILLWAY_PUBLIC_URL: the configured one, else the first ingress host (https when a TLS entry
names it), else the in-cluster Service URL. Local-store links are built from it, so it must be
an address clients can reach.
*/}}
{{- define "spillway.publicUrl" -}}
{{- if .Values.server.publicUrl }}
{{- .Values.server.publicUrl }}
{{- else if and .Values.ingress.enabled .Values.ingress.hosts }}
{{- $host := (first .Values.ingress.hosts).host }}
{{- $scheme := "http" }}
{{- range .Values.ingress.tls }}
{{- if has $host (.hosts | default list) }}{{ $scheme = "https" }}{{ end }}
{{- end }}
{{- printf "%s://%s" $scheme $host }}
{{- else }}
{{- include "spillway.serviceUrl" . }}
{{- end }}
{{- end }}

{{/* Whether more than one pod can run at once. */}}
{{- define "spillway.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "spillway.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.server.shutdownGrace) (int .Values.preStopSleepSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $floor 5 }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Combinations the schema cannot express. Rendering fails with a message saying what to change.
*/}}
{{- define "spillway.validate" -}}
{{- $multi := include "spillway.multiReplica" . }}
{{- if and (has .Values.storage.kind (list "s3" "gcs")) (not .Values.storage.bucket) }}
{{- fail (printf "storage.bucket is required when storage.kind is %s" .Values.storage.kind) }}
{{- end }}
{{- if and (eq .Values.storage.kind "local") $multi (not .Values.storage.local.existingClaim) }}
{{- fail "storage.kind=local keeps objects in the pod: with more than one replica (replicaCount > 1 or autoscaling.enabled) a replica cannot serve another's objects. Use s3 or gcs, run one replica, or set storage.local.existingClaim to a ReadWriteMany PersistentVolumeClaim shared by all replicas" }}
{{- end }}
{{- if and $multi (not .Values.signingSecret.existingSecret) }}
{{- fail "more than one replica (replicaCount > 1 or autoscaling.enabled) needs signingSecret.existingSecret: URL signatures and stream state tokens must validate on every replica. Create one with: kubectl create secret generic spillway-signing --from-literal=signing-secret=\"$(openssl rand -hex 32)\"" }}
{{- end }}
{{- $floor := add (int .Values.server.shutdownGrace) (int .Values.preStopSleepSeconds) }}
{{- if le (int (include "spillway.terminationGracePeriodSeconds" .)) $floor }}
{{- fail (printf "terminationGracePeriodSeconds (%s) must exceed server.shutdownGrace + preStopSleepSeconds (%d), or in-flight calls are killed" (include "spillway.terminationGracePeriodSeconds" .) $floor) }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.admin.enabled) (ne (toString .Values.auth.mode) "none") (not .Values.serviceMonitor.authorization) }}
{{- fail "serviceMonitor with auth.mode set and admin.enabled=false needs serviceMonitor.authorization (a token Prometheus sends): with authentication, /metrics on the RPC port needs a credential. Or keep admin.enabled, whose port serves it without one" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (kindIs "invalid" .Values.autoscaling.targetCPUUtilizationPercentage) (kindIs "invalid" .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- if and .Values.admin.enabled (eq (int .Values.admin.port) (int .Values.server.port)) }}
{{- fail "admin.port must differ from server.port (set admin.enabled=false to serve the admin endpoints on the RPC port)" }}
{{- end }}
{{- end }}

{{/*
An env entry (indented for the container's env list) when the value is set: not null, not "".
Values arrive as floats, so integers are printed whole. Call as (list NAME VALUE).
*/}}
{{- define "spillway.env" -}}
{{- $name := index . 0 }}
{{- $v := index . 1 }}
{{- if kindIs "invalid" $v }}
{{- else if and (kindIs "string" $v) (eq $v "") }}
{{- else }}
{{- $out := "" }}
{{- if kindIs "bool" $v }}
{{- $out = ternary "true" "false" $v }}
{{- else if kindIs "float64" $v }}
{{- /* YAML numbers arrive as float64: whole ones without ".0", fractions (0.5 s) as they are */}}
{{- if eq (float64 (int64 $v)) $v }}
{{- $out = int64 $v | toString }}
{{- else }}
{{- $out = toString $v }}
{{- end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) }}
{{- $out = int64 $v | toString }}
{{- else }}
{{- $out = toString $v }}
{{- end }}
{{- printf "\n            - name: %s\n              value: %s" $name (quote $out) }}
{{- end }}
{{- end }}
