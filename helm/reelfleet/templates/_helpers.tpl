{{/* Names, labels and the settings-to-environment mapping. */}}

{{- define "reelfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "reelfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "reelfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "reelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: reelfleet
{{- end -}}

{{- define "reelfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "reelfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "reelfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "reelfleet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "reelfleet.secretName" -}}
{{- default (printf "%s-credentials" (include "reelfleet.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The work queue a worker consumes: `<namespace>.<stage>[.<tier>]`. */}}
{{- define "reelfleet.queue" -}}
{{- $w := .worker -}}
{{- if eq $w.stage "inference" -}}
{{- printf "%s.inference.%s" .namespace $w.tier -}}
{{- else -}}
{{- printf "%s.%s" .namespace $w.stage -}}
{{- end -}}
{{- end -}}

{{/*
Settings tree -> environment overrides, the names `Settings::load` reads:
`{broker: {prefetch: 4}}` -> `REELFLEET_BROKER__PREFETCH: "4"`. Whole numbers
are printed as integers (YAML numbers arrive as floats).
*/}}
{{- define "reelfleet.settingsEnv" -}}
{{- $prefix := .prefix -}}
{{- $sep := .sep -}}
{{- range $key, $value := .tree }}
{{- $name := printf "%s%s%s" $prefix $sep (upper $key) }}
{{- if kindIs "map" $value }}
{{- include "reelfleet.settingsEnv" (dict "prefix" $name "sep" "__" "tree" $value) }}
{{- else if kindIs "slice" $value }}
{{- fail (printf "config: %s is a list; put lists in configFile (TOML)" $name) }}
{{- else if kindIs "invalid" $value }}
{{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{ $name }}: {{ int64 $value | toString | quote }}
{{- else }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The effective worker values: workerDefaults overridden by the worker's own. */}}
{{- define "reelfleet.worker" -}}
{{- $merged := mergeOverwrite (deepCopy .root.Values.workerDefaults) (deepCopy .worker) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Whether KEDA renders the autoscalers. */}}
{{- define "reelfleet.useKeda" -}}
{{- $mode := .Values.autoscaling.mode -}}
{{- if or (eq $mode "keda") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "keda.sh/v1alpha1")) -}}
true
{{- end -}}
{{- end -}}

{{- define "reelfleet.useHpa" -}}
{{- $mode := .Values.autoscaling.mode -}}
{{- if or (eq $mode "hpa") (and (eq $mode "auto") (not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1"))) -}}
true
{{- end -}}
{{- end -}}

{{/* Seconds Kubernetes waits after SIGTERM: above the longest job. */}}
{{- define "reelfleet.terminationGrace" -}}
{{- $runtime := .root.Values.config.runtime | default dict -}}
{{- $job := int64 (default 900 $runtime.job_timeout_secs) -}}
{{- $grace := int64 (default 30 $runtime.grace_period_secs) -}}
{{- $value := .worker.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $value -}}
{{- $value = add (max $grace $job) 30 -}}
{{- end -}}
{{- if le (int64 $value) $job -}}
{{- fail (printf "workers.%s.terminationGracePeriodSeconds (%d) must be above config.runtime.job_timeout_secs (%d)" .name (int64 $value) $job) -}}
{{- end -}}
{{- int64 $value -}}
{{- end -}}

{{/* The scratch emptyDir's size: what one worker may hold at once (see values.yaml `scratch`). */}}
{{- define "reelfleet.scratchSize" -}}
{{- if .root.Values.scratch.sizeLimit -}}
{{- .root.Values.scratch.sizeLimit -}}
{{- else -}}
{{- $c := .root.Values.config -}}
{{- $mib := 1048576 -}}
{{- if eq .worker.stage "inference" -}}
{{- $inference := $c.inference | default dict -}}
{{- $tier := index $inference .worker.tier | default dict -}}
{{- $bytes := mul (int64 (default 4 $tier.concurrency)) (int64 (default 4294967296 $inference.max_video_bytes)) -}}
{{- printf "%dMi" (div $bytes $mib) -}}
{{- else if has .worker.stage (list "pull" "webhooks" "index") -}}
{{- /* They stream through memory (or write to a database) and write no files. */ -}}
64Mi
{{- else -}}
{{- $broker := $c.broker | default dict -}}
{{- $limits := $c.limits | default dict -}}
{{- $bytes := mul (int64 (default 4 $broker.prefetch)) (int64 (default 10737418240 $limits.max_bytes)) 3 -}}
{{- printf "%dMi" (div $bytes $mib) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ffmpeg threads from the worker's CPU limit, rounded up ("" without a limit). */}}
{{- define "reelfleet.mediaThreads" -}}
{{- $cpu := ((.resources | default dict).limits | default dict).cpu -}}
{{- if $cpu -}}
{{- $text := toString $cpu -}}
{{- if hasSuffix "m" $text -}}
{{- div (add (int64 (trimSuffix "m" $text)) 999) 1000 -}}
{{- else -}}
{{- ceil (float64 $text) | int64 -}}
{{- end -}}
{{- end -}}
{{- end -}}
