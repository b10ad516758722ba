{{/* Names: KubeRay appends suffixes to these, so keep them short. */}}
{{- define "ganforge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "ganforge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ganforge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ganforge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ganforge.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 }}
{{ include "ganforge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ganforge.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{- define "ganforge.storageClaim" -}}
{{- default (printf "%s-runs" (include "ganforge.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{/* Label of every pod that mounts the run claim (the single-node pod affinity selects on it). */}}
{{- define "ganforge.claimLabel" -}}
ganforge.dev/runs-claim: {{ include "ganforge.storageClaim" . | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{/* Ray Train workers: train.numWorkers, or one per GPU of the worker pods (one per CPU pod). */}}
{{- define "ganforge.trainWorkers" -}}
{{- $w := .Values.train.workers -}}
{{- int .Values.train.numWorkers | default (mul (int $w.replicas) (max (int $w.gpus) 1)) -}}
{{- end -}}

{{/*
CPUs Ray sees in a container: KubeRay passes limits.cpu (requests.cpu without a limit) to
`ray start --num-cpus`, rounded up to whole CPUs. Arg: a resources value {requests, limits}.
*/}}
{{- define "ganforge.cpus" -}}
{{- $q := toString (dig "limits" "cpu" (dig "requests" "cpu" "0" .) .) -}}
{{- if hasSuffix "m" $q -}}
{{- ceil (divf (float64 (trimSuffix "m" $q)) 1000) -}}
{{- else -}}
{{- ceil (float64 $q) -}}
{{- end -}}
{{- end -}}

{{/* POSIX shell quoting: 'it'\''s' survives any character, spaces and braces included. */}}
{{- define "ganforge.shq" -}}
'{{ replace "'" "'\\''" (toString .) }}'
{{- end -}}

{{/* Nested config map -> `--set a.b=<json>` args; JSON scalars are valid YAML for ganforge. */}}
{{- define "ganforge.setArgs" -}}
{{- $prefix := .prefix -}}
{{- range $k, $v := .value -}}
{{- $key := ternary $k (printf "%s.%s" $prefix $k) (eq $prefix "") -}}
{{- if kindIs "map" $v -}}
{{- include "ganforge.setArgs" (dict "prefix" $key "value" $v) -}}
{{- else -}}
{{- printf " --set %s" (include "ganforge.shq" (printf "%s=%s" $key (toJson $v))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security context shared by every pod. */}}
{{- define "ganforge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
runAsGroup: {{ .Values.security.runAsGroup }}
fsGroup: {{ .Values.security.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level security context shared by every container. */}}
{{- define "ganforge.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.security.runAsUser }}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.security.readOnlyRootFilesystem }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment of every Ray container: writable caches under /tmp (read-only root fs). */}}
{{- define "ganforge.env" -}}
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
- name: TRITON_CACHE_DIR
  value: /tmp/.triton
- name: TORCHINDUCTOR_CACHE_DIR
  value: /tmp/.torchinductor
- name: MPLCONFIGDIR
  value: /tmp/.matplotlib
{{- range $k, $v := .Values.objectStore.env }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end }}
{{- end -}}

{{/* Object-store credentials: every key of an existing Secret becomes an env var. */}}
{{- define "ganforge.envFrom" -}}
envFrom:
  - secretRef:
      name: {{ .Values.objectStore.credentialsSecret }}
{{- end -}}

{{/* Where serving pods find the API's bearer token (serve.auth); the app reads the file. */}}
{{- define "ganforge.apiTokenDir" -}}
/var/run/secrets/ganforge/api-token
{{- end -}}

{{- define "ganforge.apiTokenFile" -}}
{{- include "ganforge.apiTokenDir" . }}/token
{{- end -}}

{{/* Volumes of a Ray pod. Args: dict "root" $ "component" "train"|"serve". */}}
{{- define "ganforge.volumes" -}}
{{- $v := .root.Values -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ $v.security.tmpSizeLimit }}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $v.security.shmSizeLimit }}
{{- if not $v.storage.url }}
- name: runs
  persistentVolumeClaim:
    claimName: {{ include "ganforge.storageClaim" .root }}
    readOnly: {{ eq .component "serve" }}
{{- end }}
{{- if and (eq .component "train") $v.data.claimName }}
- name: shards
  persistentVolumeClaim:
    claimName: {{ $v.data.claimName }}
    readOnly: true
{{- end }}
{{- if and (eq .component "train") .head (not $v.train.variant) }}
- name: train-config
  configMap:
    name: {{ include "ganforge.fullname" .root }}-train
{{- end }}
{{- if and (eq .component "serve") $v.serve.auth.existingSecret }}
{{- /*
serve.auth: the key is always mounted as `token`. Mode 0440 (288), group fsGroup: the ray user
(runAsUser, fsGroup among its groups) reads it, nobody writes it. A missing Secret or key keeps
the pod from starting (not optional), rather than serving an open API.
*/}}
- name: api-token
  secret:
    secretName: {{ $v.serve.auth.existingSecret }}
    items:
      - key: {{ $v.serve.auth.secretKey | quote }}
        path: token
    defaultMode: 288
{{- end }}
{{- end -}}

{{- define "ganforge.volumeMounts" -}}
{{- $v := .root.Values -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- if not $v.storage.url }}
- name: runs
  mountPath: {{ $v.storage.mountPath }}
  readOnly: {{ eq .component "serve" }}
{{- end }}
{{- if and (eq .component "train") $v.data.claimName }}
- name: shards
  mountPath: {{ $v.data.mountPath }}
  readOnly: true
{{- end }}
{{- if and (eq .component "train") .head (not $v.train.variant) }}
- name: train-config
  mountPath: /etc/ganforge
  readOnly: true
{{- end }}
{{- if and (eq .component "serve") $v.serve.auth.existingSecret }}
- name: api-token
  mountPath: {{ include "ganforge.apiTokenDir" .root }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Pod metadata. Args: dict "root" $ "component" "train"|"serve" "claim" (mounts runs). */}}
{{- define "ganforge.podMetadata" -}}
labels:
  {{- include "ganforge.selectorLabels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- if .claim }}
  {{- include "ganforge.claimLabel" .root | nindent 2 }}
  {{- end }}
  {{- with .root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .root.Values.podAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container resources, adding whole GPUs to requests and limits when gpus > 0. */}}
{{- define "ganforge.resources" -}}
{{- $res := deepCopy .resources -}}
{{- if gt (int .gpus) 0 -}}
{{- $_ := set $res "requests" (merge (dict "nvidia.com/gpu" (int .gpus)) ($res.requests | default dict)) -}}
{{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" (int .gpus)) ($res.limits | default dict)) -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Ports of a Ray head; `metrics` (8080) is Ray's metrics export, scraped by PodMonitors. */}}
{{- define "ganforge.headPorts" -}}
- {name: gcs-server, containerPort: 6379}
- {name: dashboard, containerPort: 8265}
- {name: client, containerPort: 10001}
- {name: metrics, containerPort: 8080}
{{- end -}}

{{/*
authOptions exists from KubeRay v1.5.1 (mode only); secretName from v1.6.0. Older operators get
no authOptions at all (ganforge.checks allows that only with rayAuth.mode=disabled).
*/}}
{{- define "ganforge.rayAuth" -}}
{{- if semverCompare ">=1.5.1-0" .Values.kuberayVersion -}}
authOptions:
  mode: {{ .Values.rayAuth.mode }}
  {{- if and (eq .Values.rayAuth.mode "token") .Values.rayAuth.secretName }}
  secretName: {{ .Values.rayAuth.secretName }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/*
The pod template of a Ray head or worker. Args: dict
  root: $, component: "train"|"serve", head: bool, group: values with resources/nodeSelector/
  tolerations, gpus: int, ports: list of {name, containerPort}, kubeApi: bool (optional: a
  container of the pod calls the Kubernetes API, so the service account token is mounted).
*/}}
{{- define "ganforge.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
metadata:
  {{- include "ganforge.podMetadata" (dict "root" $root "component" .component "claim" true) | nindent 2 }}
spec:
  {{- /* Ray itself never calls the Kubernetes API: no token for code on the cluster to steal. */}}
  automountServiceAccountToken: {{ .kubeApi | default false }}
  securityContext:
    {{- include "ganforge.podSecurityContext" $root | nindent 4 }}
  {{- if $v.storage.singleNode }}
  # storage.singleNode: a ReadWriteOnce claim mounts on one node only, so every pod that mounts
  # it follows the first one there (that pod matches its own term, so it may go anywhere).
  affinity:
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "ganforge.claimLabel" $root | nindent 14 }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .group.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumes:
    {{- include "ganforge.volumes" . | nindent 4 }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" .head }}
      image: {{ include "ganforge.image" $root }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        {{- range .ports }}
        - {name: {{ .name }}, containerPort: {{ .containerPort }}}
        {{- end }}
      env:
        {{- include "ganforge.env" $root | nindent 8 }}
      {{- if $v.objectStore.credentialsSecret }}
      {{- include "ganforge.envFrom" $root | nindent 6 }}
      {{- end }}
      resources:
        {{- include "ganforge.resources" (dict "resources" .group.resources "gpus" .gpus) | nindent 8 }}
      securityContext:
        {{- include "ganforge.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "ganforge.volumeMounts" . | nindent 8 }}
{{- end -}}
