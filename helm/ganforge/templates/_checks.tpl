{{/*
Value combinations the schema cannot express and Kubernetes or Ray would accept silently, then
never schedule (pods Pending, a job or a replica waiting forever). Each refusal names the values
and what to change. Rendered by validate.yaml, so `helm install/upgrade/template` fail early.
(`helm lint` only reports `fail` as INFO: it is the schema that fails lint.)
*/}}
{{- define "ganforge.checks" -}}
{{- include "ganforge.checks.storage" . -}}
{{- include "ganforge.checks.rayAuth" . -}}
{{- include "ganforge.checks.networkPolicy" . -}}
{{- if .Values.train.enabled -}}
{{- include "ganforge.checks.train" . -}}
{{- end -}}
{{- if .Values.serve.enabled -}}
{{- include "ganforge.checks.serve" . -}}
{{- include "ganforge.checks.serveCapacity" . -}}
{{- end -}}
{{- end -}}

{{- define "ganforge.checks.storage" -}}
{{- $st := .Values.storage -}}
{{- if $st.url -}}
{{- include "ganforge.checks.objectStoreRuns" . -}}
{{- else if not (or $st.existingClaim $st.create.storageClassName $st.singleNode) -}}
{{- fail "storage: set storage.url to an object-store URL for runs (s3://bucket/prefix), or storage.create.storageClassName to a ReadWriteMany StorageClass (EKS: efs-sc from the EFS CSI driver; GKE: standard-rwx from the Filestore CSI driver; AKS: azurefile-csi; or an NFS provisioner's class), or storage.existingClaim to an existing ReadWriteMany claim, or storage.singleNode=true when every Ray pod runs on one node. The training head, every training worker and the serving pods mount the run claim from several nodes, and the default StorageClass of a GPU cluster is usually ReadWriteOnce (EKS gp3, GKE standard-rwo), where the claim would never bind and every pod would stay Pending." -}}
{{- end -}}
{{- end -}}

{{/* storage.url: nothing mounts a run claim, so no path may point into one. */}}
{{- define "ganforge.checks.objectStoreRuns" -}}
{{- $mount := trimSuffix "/" .Values.storage.mountPath -}}
{{- $urls := toString .Values.data.urls -}}
{{- if and .Values.train.enabled (hasPrefix (printf "%s/" $mount) (printf "%s/" $urls)) (not .Values.data.claimName) -}}
{{- fail (printf "data.urls (%s) is a folder on the run claim, but storage.url is set, so no run claim is mounted: stream the shards from the object store (data.urls: \"pipe:aws s3 cp s3://bucket/cifar10/train-{000000..000099}.tar -\") or mount a claim that holds them with data.claimName and data.mountPath" $urls) -}}
{{- end -}}
{{- if .Values.serve.enabled -}}
{{- range $name, $path := .Values.serve.models -}}
{{- if not (contains "://" (toString $path)) -}}
{{- fail (printf "serve.models.%s is %s, a path, but storage.url is set, so no run claim is mounted: give the run's URL, e.g. %s/runs/%s" $name (toString $path) (trimSuffix "/" $.Values.storage.url) $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ganforge.checks.rayAuth" -}}
{{- $auth := .Values.rayAuth -}}
{{- if eq $auth.mode "token" -}}
{{- if semverCompare "<1.5.1-0" .Values.kuberayVersion -}}
{{- fail (printf "rayAuth.mode=token needs KubeRay >= 1.5.1 (authOptions), but kuberayVersion is %s: upgrade the operator, or set rayAuth.mode=disabled (no authOptions rendered) and keep the Ray ports behind a NetworkPolicy" .Values.kuberayVersion) -}}
{{- end -}}
{{- if semverCompare "<2.52.0-0" .Values.rayVersion -}}
{{- fail (printf "rayAuth.mode=token needs Ray >= 2.52 (token authentication), but rayVersion is %s: use a newer image or rayAuth.mode=disabled" .Values.rayVersion) -}}
{{- end -}}
{{- if and $auth.secretName (semverCompare "<1.6.0-0" .Values.kuberayVersion) -}}
{{- fail (printf "rayAuth.secretName renders authOptions.secretName, which KubeRay defines from v1.6.0 only, but kuberayVersion is %s (an older operator drops the field and generates its own token Secret): upgrade the operator and set kuberayVersion, or leave rayAuth.secretName empty" .Values.kuberayVersion) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A NetworkPolicyPeer is an ipBlock alone, or pod/namespace selectors (the API refuses both). */}}
{{- define "ganforge.checks.networkPolicy" -}}
{{- range $list := list "serveFrom" "metricsFrom" -}}
{{- range $i, $peer := index $.Values.networkPolicy $list -}}
{{- if and (hasKey $peer "ipBlock") (or (hasKey $peer "podSelector") (hasKey $peer "namespaceSelector")) -}}
{{- fail (printf "networkPolicy.%s[%d] has an ipBlock and a podSelector or namespaceSelector: Kubernetes refuses such a peer. Make the ipBlock its own list item (items are alternatives: any one admits the traffic)" $list $i) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Ray Train workers must fit the worker pods: one GPU each, cpusPerWorker CPUs each. */}}
{{- define "ganforge.checks.train" -}}
{{- $t := .Values.train -}}
{{- $gpus := int $t.workers.gpus -}}
{{- $pods := int $t.workers.replicas -}}
{{- $workers := int (include "ganforge.trainWorkers" .) -}}
{{- if and (gt $gpus 0) (gt $workers (mul $pods $gpus)) -}}
{{- fail (printf "train.numWorkers (%d) needs %d GPUs (one per Ray Train worker), but the worker pods have train.workers.replicas (%d) x train.workers.gpus (%d) = %d: raise replicas or gpus, or lower numWorkers" $workers $workers $pods $gpus (mul $pods $gpus)) -}}
{{- end -}}
{{- $perPod := div (add $workers $pods -1) $pods -}}
{{- $need := mul $perPod (int $t.cpusPerWorker) -}}
{{- $cpus := include "ganforge.cpus" $t.workers.resources | float64 -}}
{{- if lt $cpus (float64 $need) -}}
{{- fail (printf "train.workers.resources: a worker pod has %v CPUs (limits.cpu, what KubeRay gives Ray), but its Ray Train workers reserve %d: %d workers per pod x train.cpusPerWorker (%d). Ray could never place them and the job would wait forever: raise train.workers.resources requests and limits cpu to >= %d, or lower train.cpusPerWorker" $cpus $need $perPod (int $t.cpusPerWorker) $need) -}}
{{- end -}}
{{- end -}}

{{/* Serve batching and autoscaling targets that agree with each other. */}}
{{- define "ganforge.checks.serve" -}}
{{- $s := .Values.serve -}}
{{- $a := $s.autoscaling -}}
{{- $fill := min (int $s.maxBatchSize) (int $s.maxImagesPerRequest) -}}
{{- if lt (int $s.maxOngoingRequests) $fill -}}
{{- fail (printf "serve.maxOngoingRequests (%d) must be >= serve.maxBatchSize (%d) (or maxImagesPerRequest when smaller): Serve caps a replica's requests at max_ongoing_requests, so larger batches never fill" (int $s.maxOngoingRequests) (int $s.maxBatchSize)) -}}
{{- end -}}
{{- if gt (int $s.workers.minReplicas) (int $s.workers.maxReplicas) -}}
{{- fail (printf "serve.workers.minReplicas (%d) must be <= serve.workers.maxReplicas (%d)" (int $s.workers.minReplicas) (int $s.workers.maxReplicas)) -}}
{{- end -}}
{{- if or (lt (int $s.workers.replicas) (int $s.workers.minReplicas)) (gt (int $s.workers.replicas) (int $s.workers.maxReplicas)) -}}
{{- fail (printf "serve.workers.replicas (%d) must lie between serve.workers.minReplicas (%d) and serve.workers.maxReplicas (%d)" (int $s.workers.replicas) (int $s.workers.minReplicas) (int $s.workers.maxReplicas)) -}}
{{- end -}}
{{- if $a.enabled -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail (printf "serve.autoscaling.minReplicas (%d) must be <= serve.autoscaling.maxReplicas (%d)" (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- $target := float64 $a.targetOngoingRequests -}}
{{- if lt $target (float64 $fill) -}}
{{- fail (printf "serve.autoscaling.targetOngoingRequests (%v) must be >= serve.maxBatchSize (%d) (or maxImagesPerRequest when smaller): Serve adds replicas once replicas average that many requests in flight, so a lower target scales out before one batch can fill" $a.targetOngoingRequests (int $s.maxBatchSize)) -}}
{{- end -}}
{{- if gt $target (float64 (int $s.maxOngoingRequests)) -}}
{{- fail (printf "serve.autoscaling.targetOngoingRequests (%v) must be <= serve.maxOngoingRequests (%d): a replica never holds more than max_ongoing_requests, so the autoscaler would never see the target and never scale out" $a.targetOngoingRequests (int $s.maxOngoingRequests)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Serve replicas must fit the worker pods (the head has num-cpus 0, so replicas never run there):
one replica per pod, and all replicas in the worker group (workers.replicas pods, or up to
workers.maxReplicas with autoscaling).
*/}}
{{- define "ganforge.checks.serveCapacity" -}}
{{- $s := .Values.serve -}}
{{- $gpr := float64 $s.gpusPerReplica -}}
{{- $cpr := float64 $s.cpusPerReplica -}}
{{- $podGpus := int $s.workers.gpus -}}
{{- $podCpus := include "ganforge.cpus" $s.workers.resources | float64 -}}
{{- if and (gt $gpr 1.0) (ne $gpr (floor $gpr)) -}}
{{- fail (printf "serve.gpusPerReplica (%v): Ray accepts a fraction of one GPU (e.g. 0.5) or a whole number of GPUs" $s.gpusPerReplica) -}}
{{- end -}}
{{- if gt $gpr (float64 $podGpus) -}}
{{- fail (printf "serve.gpusPerReplica (%v) is more than a serve worker pod has (serve.workers.gpus: %d): no replica could ever be placed. Raise serve.workers.gpus or lower serve.gpusPerReplica (0 = CPU inference)" $s.gpusPerReplica $podGpus) -}}
{{- end -}}
{{- if gt $cpr $podCpus -}}
{{- fail (printf "serve.cpusPerReplica (%v) is more than a serve worker pod has (%v CPUs: serve.workers.resources limits.cpu): no replica could ever be placed" $s.cpusPerReplica $podCpus) -}}
{{- end -}}
{{- /* Replicas per pod: the scarcer of GPUs and CPUs (1e-6 absorbs 0.1 + 0.2 style rounding). */ -}}
{{- $perPod := -1 -}}
{{- if gt $gpr 0.0 -}}
{{- $perPod = int (floor (addf (divf $podGpus $gpr) 0.000001)) -}}
{{- end -}}
{{- if gt $cpr 0.0 -}}
{{- $byCpu := int (floor (addf (divf $podCpus $cpr) 0.000001)) -}}
{{- $perPod = ternary $byCpu (min $perPod $byCpu) (lt $perPod 0) -}}
{{- end -}}
{{- if ge $perPod 0 -}}
{{- $how := printf "%d per pod (serve.workers.gpus %d / gpusPerReplica %v, %v CPUs / cpusPerReplica %v)" $perPod $podGpus $s.gpusPerReplica $podCpus $s.cpusPerReplica -}}
{{- if $s.autoscaling.enabled -}}
{{- $cap := mul $perPod (int $s.workers.maxReplicas) -}}
{{- if gt (int $s.autoscaling.maxReplicas) $cap -}}
{{- fail (printf "serve.autoscaling.maxReplicas (%d) is more than the serve worker group can hold: serve.workers.maxReplicas (%d) pods x %s = room for %d. Raise serve.workers.maxReplicas or lower serve.autoscaling.maxReplicas" (int $s.autoscaling.maxReplicas) (int $s.workers.maxReplicas) $how $cap) -}}
{{- end -}}
{{- else -}}
{{- $cap := mul $perPod (int $s.workers.replicas) -}}
{{- if gt (int $s.numReplicas) $cap -}}
{{- fail (printf "serve.numReplicas (%d) is more than the serve worker group holds: serve.workers.replicas (%d) pods x %s = room for %d. Raise serve.workers.replicas or lower serve.numReplicas" (int $s.numReplicas) (int $s.workers.replicas) $how $cap) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
