{{/* The chart name, or nameOverride. */}}
{{- define "razor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of the release's objects: fullnameOverride, else the release name if it contains
the chart name, else "<release>-<chart>". Cut to 52 characters: "-operator" and such still fit.
*/}}
{{- define "razor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The operator's objects (Deployment, ClusterRole/Roles, bindings, metrics Service). */}}
{{- define "razor.operatorName" -}}
{{- printf "%s-operator" (include "razor.fullname" .) -}}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "razor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "razor.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: the name of an existing ServiceAccount (serviceAccount.create is false)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "razor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "razor.labels" -}}
helm.sh/chart: {{ include "razor.chart" . }}
{{ include "razor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: razor
{{- end -}}

{{/* The operator pod's selector. */}}
{{- define "razor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "razor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's image reference: repository@digest, else repository:tag (appVersion). */}}
{{- define "razor.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does to RazorJobs and their pods, Services and Events, in the namespaces it
watches (a ClusterRole's rules when it watches all, a Role's in each watched namespace).
*/}}
{{- define "razor.jobRules" -}}
# RazorJobs: kopf lists and watches them (and would patch off a finalizer an older kopf-based
# operator left on one); the operator gets a job before each reconcile and deletes a finished one
# whose ttlSecondsAfterFinished has passed.
- apiGroups: ["razor.dev"]
  resources: ["razorjobs"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# The job's status (phase, conditions, ranks, port), patched through the status subresource.
- apiGroups: ["razor.dev"]
  resources: ["razorjobs/status"]
  verbs: ["patch"]
# One pod per node: watched (kopf), listed per job, created, deleted for a gang restart or
# a suspend; a pod that reports progress is looked up by name (a list, not a get).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "create", "delete"]
# The job's headless Service: read to see whether it exists, created once.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
# The job's PodGroup (spec.gang), created once before its pods (it may exist already), deleted
# with the job by the garbage collector (its ownerReference): Kubernetes' own (native), Volcano's,
# the scheduler-plugins coscheduler's.
- apiGroups: ["scheduling.k8s.io", "scheduling.volcano.sh", "scheduling.x-k8s.io"]
  resources: ["podgroups"]
  verbs: ["create"]
# Events on the jobs (Created, Running, Restarting, ...), posted by kopf.event (core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}

{{/* Where the pods report progress: the operator's Service (--progress-url; razorctl render reads it from the defaults ConfigMap). */}}
{{- define "razor.progressURL" -}}
http://{{ include "razor.operatorName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.progress.port }}/progress
{{- end }}
