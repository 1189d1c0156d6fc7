{{/* The chart name, or nameOverride. */}}
{{- define "relay-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Object names: fullnameOverride; else the release name when it contains the chart name
(`helm install relay-operator` gives the kustomize install's names); else RELEASE-NAME.
*/}}
{{- define "relay-operator.fullname" -}}
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

{{/* Selector labels: kustomize's app.kubernetes.io/name, plus the release. */}}
{{- define "relay-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart owns. */}}
{{- define "relay-operator.labels" -}}
{{ include "relay-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Helm's labels only (for objects that keep their own app.kubernetes.io/name). */}}
{{- define "relay-operator.releaseLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "relay-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay-operator.leaseName" -}}
{{- default (printf "%s-leader" (include "relay-operator.fullname" .)) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "relay-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
A manifest from files/ (a verbatim copy of a kustomize source, checked for drift by
scripts/check-helm.sh), with the namespace set and extra labels/annotations merged in.
Arguments: (dict "ctx" $ "file" PATH "namespace" NS-or-"" "labels" DICT "annotations" DICT)
*/}}
{{- define "relay-operator.fileObject" -}}
{{- $object := .ctx.Files.Get .file | fromYaml }}
{{- if hasKey $object "Error" }}
{{- fail (printf "%s: %s" .file $object.Error) }}
{{- end }}
{{- $metadata := $object.metadata }}
{{- if .namespace }}
{{- $_ := set $metadata "namespace" .namespace }}
{{- end }}
{{- $_ := set $metadata "labels" (merge (dict) (.labels | default dict) ($metadata.labels | default dict)) }}
{{- if .annotations }}
{{- $_ := set $metadata "annotations" (merge (dict) .annotations ($metadata.annotations | default dict)) }}
{{- end }}
{{- toYaml $object }}
{{- end }}

{{/*
The operator's permissions: the rules of files/rbac/role.yaml, a verbatim copy of
config/rbac/role.yaml (its comments say why each rule is there).
*/}}
{{- define "relay-operator.rules" -}}
{{- $role := .Files.Get "files/rbac/role.yaml" | fromYaml }}
{{- if not $role.rules }}
{{- fail "files/rbac/role.yaml has no rules" }}
{{- end }}
{{- toYaml $role.rules }}
{{- end }}
