{{/*
Shared pieces of kube-ipam's chart. Object names are deploy/'s, fixed
(cluster-scoped RBAC and CRDs among them): one kube-ipam per cluster, as
one CNI config per node.
*/}}

{{/* The namespace of every namespaced object: the release's. */}}
{{- define "kube-ipam.namespace" -}}
{{ .Release.Namespace }}
{{- end -}}

{{/* deploy/'s label on every object, and Helm's. */}}
{{- define "kube-ipam.labels" -}}
app.kubernetes.io/part-of: kube-ipam
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "kube-ipam.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The ConfigMap key and mount of the node's network config. */}}
{{- define "kube-ipam.configKey" -}}00-multus.conf{{- end -}}
{{- define "kube-ipam.configDir" -}}/etc/kube-ipam/config{{- end -}}
{{- define "kube-ipam.nodeDir" -}}/etc/cni/net.d/kube-ipam.d{{- end -}}

{{- define "kube-ipam.etcdStore" -}}
{{- if eq .Values.store "etcd" }}true{{ end -}}
{{- end -}}

{{/*
The controller reads the whole mounted ConfigMap (a directory) when it
holds more than the node's config: with ipamOnly, or NAD configs.
*/}}
{{- define "kube-ipam.controllerReadsDir" -}}
{{- if or .Values.ipamOnly (gt (len .Values.nadConfigs) 0) }}true{{ end -}}
{{- end -}}

{{/*
kube-ipam.conf: one CNI config (a values object or a JSON string) as JSON,
with the store filled into every kube-ipam ipam section it holds: at .ipam,
.plugins[].ipam, .delegates[].ipam and .delegates[].plugins[].ipam.
Arguments: (dict "conf" <config> "what" <name for errors> "root" $).
*/}}
{{- define "kube-ipam.conf" -}}
{{- $root := .root -}}
{{- $what := .what -}}
{{- $conf := dict -}}
{{- if kindIs "string" .conf -}}
{{- $conf = fromJson .conf -}}
{{- if hasKey $conf "Error" -}}
{{- fail (printf "%s is not valid JSON: %s" $what (get $conf "Error")) -}}
{{- end -}}
{{- else -}}
{{- $conf = deepCopy .conf -}}
{{- end -}}
{{- $ipams := list -}}
{{- if kindIs "map" $conf.ipam }}{{ $ipams = append $ipams $conf.ipam }}{{ end -}}
{{- range $p := ($conf.plugins | default list) }}{{ if kindIs "map" $p.ipam }}{{ $ipams = append $ipams $p.ipam }}{{ end }}{{ end -}}
{{- range $d := ($conf.delegates | default list) -}}
{{- if kindIs "map" $d.ipam }}{{ $ipams = append $ipams $d.ipam }}{{ end -}}
{{- range $p := ($d.plugins | default list) }}{{ if kindIs "map" $p.ipam }}{{ $ipams = append $ipams $p.ipam }}{{ end }}{{ end -}}
{{- end -}}
{{- range $ipam := $ipams -}}
{{- if eq (toString $ipam.type) "kube-ipam" -}}
{{- $name := $ipam.name | default "(no name)" -}}
{{- if not (hasKey $ipam "kubeConfig") -}}
{{- $_ := set $ipam "kubeConfig" (printf "%s/kubeconfig" (include "kube-ipam.nodeDir" $root)) -}}
{{- end -}}
{{- if eq $root.Values.store "kubernetes" -}}
{{- if hasKey $ipam "etcdConfig" -}}
{{- fail (printf "%s: kube-ipam network %s has an etcdConfig, but store is kubernetes: remove it" $what $name) -}}
{{- end -}}
{{- if and (hasKey $ipam "store") (ne (toString $ipam.store) "kubernetes") -}}
{{- fail (printf "%s: kube-ipam network %s has store %q, but the chart's store is kubernetes" $what $name (toString $ipam.store)) -}}
{{- end -}}
{{- $_ := set $ipam "store" "kubernetes" -}}
{{- else -}}
{{- if and (hasKey $ipam "store") (ne (toString $ipam.store) "etcd") -}}
{{- fail (printf "%s: kube-ipam network %s has store %q, but the chart's store is etcd" $what $name (toString $ipam.store)) -}}
{{- end -}}
{{- if not (hasKey $ipam "etcdConfig") -}}
{{- if not $root.Values.etcd.endpoints -}}
{{- fail (printf "%s: kube-ipam network %s needs etcd.endpoints (store etcd)" $what $name) -}}
{{- end -}}
{{- $dir := printf "%s/etcd" (include "kube-ipam.nodeDir" $root) -}}
{{- $_ := set $ipam "etcdConfig" (dict
      "etcdURL" (join "," $root.Values.etcd.endpoints)
      "etcdCertFile" (printf "%s/tls.crt" $dir)
      "etcdKeyFile" (printf "%s/tls.key" $dir)
      "etcdTrustedCAFileFile" (printf "%s/ca.crt" $dir)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toPrettyJson $conf -}}
{{- end -}}
