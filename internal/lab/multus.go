package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubeipam/internal/pki"
)

// FlannelConflist is what flannel's DaemonSet writes on every node
// (kube-flannel.yml's cni-conf.json): flannel, then portmap. The NAD modes
// write it, so that the cluster network is the cluster's own config, as
// kube-ipam-install --cluster-network=auto and multus find it on a real
// node.
const (
	FlannelConflistName = "10-flannel.conflist"
	FlannelConflist     = `{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    { "type": "flannel", "delegate": { "hairpinMode": true, "isDefaultGateway": true } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
`
)

// writeFlannelConflist puts flannel's conflist on every node (NAD modes).
func (l *Lab) writeFlannelConflist() error {
	for _, n := range l.state.Nodes {
		if err := os.WriteFile(filepath.Join(n.FS("/etc/cni/net.d"), FlannelConflistName), []byte(FlannelConflist), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// multusRBAC is what upstream multus's own install (multus-daemonset.yml)
// grants multus: NADs, pods and pods/status (it writes network-status with
// an update of pods/status), and Events. The lab's multus authenticates as
// user "multus" with a certificate of the lab's CA.
const multusRBAC = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: multus
rules:
  - apiGroups: ["k8s.cni.cncf.io"]
    resources: ["*"]
    verbs: ["*"]
  - apiGroups: [""]
    resources: ["pods", "pods/status"]
    verbs: ["get", "list", "update", "watch"]
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: multus
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: multus
subjects:
  - kind: User
    name: multus
    apiGroup: rbac.authorization.k8s.io
`

// MultusConfig is the thin plugin's 00-multus.conf in ModeMultus, as a
// multus install writes it around flannel's conflist: Kubernetes mode, the
// cluster network given as "delegates" (the conflist itself), not as a
// "clusterNetwork" path: with a conflist path, v4.2.4's DEL rebuilds the
// cluster network's config without its plugin keys, so flannel's DEL fails
// and eth0's address leaks (docs/upstream-multus.md).
func MultusConfig() ([]byte, error) {
	var flannel map[string]any
	if err := json.Unmarshal([]byte(FlannelConflist), &flannel); err != nil {
		return nil, err
	}
	return json.MarshalIndent(map[string]any{
		"cniVersion": "0.3.1",
		"name":       "multus-cni-network",
		"type":       "multus",
		"kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
		"confDir":    "/etc/cni/net.d",
		"cniDir":     "/var/lib/cni/multus",
		"binDir":     "/opt/cni/bin",
		"logFile":    "/var/log/multus.log",
		"logLevel":   "verbose",
		"delegates":  []any{flannel},
	}, "", "  ")
}

// installMultus installs upstream multus (thin plugin) on every node, as
// the cluster's own multus would be: its binary in /opt/cni/bin, its
// kubeconfig and RBAC, and 00-multus.conf. kube-ipam is installed
// IPAM-only beside it and never touches these files.
func (l *Lab) installMultus(ctx context.Context) error {
	bin := filepath.Join(l.opts.MultusBin, "multus")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("upstream multus %s not built (%v): run hack/multus.sh", MultusVersion, err)
	}
	rbac := filepath.Join(l.opts.Dir, "manifests", "multus-rbac.yaml")
	if err := os.WriteFile(rbac, []byte(multusRBAC), 0o644); err != nil {
		return err
	}
	// multus's install brings the NAD CRD (deploy/ipam-only leaves it out).
	crd := filepath.Join(l.opts.Deploy, "crds", "network-attachment-definitions.yaml")
	for _, step := range [][]string{{"apply", "-f", rbac, "-f", crd},
		{"wait", "--for=condition=Established", "--timeout=60s", "crd/network-attachment-definitions.k8s.cni.cncf.io"}} {
		if _, err := l.kubectl(ctx, step...); err != nil {
			return err
		}
	}
	if err := l.ca.issue(certSpec{"multus", pki.Leaf{CN: "multus"}}); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(l.pki("ca.crt"))
	if err != nil {
		return err
	}
	crt, err := os.ReadFile(l.pki("multus.crt"))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(l.pki("multus.key"))
	if err != nil {
		return err
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["lab"] = &clientcmdapi.Cluster{Server: l.apiURL(), CertificateAuthorityData: caPEM}
	kc.AuthInfos["multus"] = &clientcmdapi.AuthInfo{ClientCertificateData: crt, ClientKeyData: key}
	kc.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "multus"}
	kc.CurrentContext = "lab"
	kubeconfig, err := clientcmd.Write(*kc)
	if err != nil {
		return err
	}
	conf, err := MultusConfig()
	if err != nil {
		return err
	}
	for _, n := range l.state.Nodes {
		if err := copyFile(bin, filepath.Join(n.FS("/opt/cni/bin"), "multus")); err != nil {
			return err
		}
		dir := filepath.Join(n.FS("/etc/cni/net.d"), "multus.d")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "multus.kubeconfig"), kubeconfig, 0o600); err != nil {
			return err
		}
		// Last: the runtime uses it from the moment it appears.
		if err := os.WriteFile(filepath.Join(n.FS("/etc/cni/net.d"), ConfigKey), conf, 0o644); err != nil {
			return err
		}
	}
	return nil
}
