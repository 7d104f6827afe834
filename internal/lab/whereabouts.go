package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/yaml"
)

// WhereaboutsVersion is the whereabouts release hack/whereabouts.sh builds.
const WhereaboutsVersion = "v0.9.2"

// WhereaboutsDir is where hack/whereabouts.sh puts whereabouts (the binary
// and crds/): $KUBE_IPAM_WHEREABOUTS, else the user cache directory.
func WhereaboutsDir() string {
	return cacheDir("KUBE_IPAM_WHEREABOUTS", "whereabouts-"+WhereaboutsVersion)
}

// The whereabouts network of the pod-start benchmark: a NAD like db-net
// (macvlan on the node's eth0, then kube-tier) whose only difference is the
// IPAM, so that the two variants compare IPAMs and nothing else. Its range
// does not overlap kube-ipam's 10.188.0.0/16.
const (
	WhereaboutsNAD     = "wb-net"
	WhereaboutsNetwork = "wbnet"
	WhereaboutsRange   = "10.189.0.0/16"
	// WhereaboutsNamespace holds whereabouts' IPPools and its Lease: its
	// kubeconfig context's namespace, as its own install sets it.
	WhereaboutsNamespace = "kube-system"
	// The node paths of whereabouts' files, where its DaemonSet would put
	// them (its flat file is the default path the binary reads).
	whereaboutsConfDir = "/etc/cni/net.d/whereabouts.d"
)

// whereaboutsRBAC is what whereabouts' own install (daemonset-install.yaml)
// grants its ServiceAccount: its CRDs, the Lease it serialises every ADD
// and DEL with, and reads of pods, nodes and NADs.
const whereaboutsRBAC = `apiVersion: v1
kind: ServiceAccount
metadata:
  name: whereabouts
  namespace: ` + WhereaboutsNamespace + `
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: whereabouts
rules:
  - apiGroups: ["whereabouts.cni.cncf.io"]
    resources: ["ippools", "overlappingrangeipreservations", "nodeslicepools"]
    verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["create", "get", "update"]
  - apiGroups: [""]
    resources: ["pods", "nodes"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["k8s.cni.cncf.io"]
    resources: ["network-attachment-definitions"]
    verbs: ["get", "list", "watch"]
  - apiGroups: ["", "events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch", "update", "get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: whereabouts
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: whereabouts
subjects:
  - kind: ServiceAccount
    name: whereabouts
    namespace: ` + WhereaboutsNamespace + `
`

// InstallWhereabouts installs whereabouts on a running lab the way its own
// DaemonSet would on a cluster: its CRDs and RBAC in the API, its binary in
// every node's /opt/cni/bin (beside the reference plugins, as installCNI
// puts them), and in every node's /etc/cni/net.d/whereabouts.d its flat
// file and a kubeconfig with a ServiceAccount token that works from the
// node. Then it applies NetworkAttachmentDefinition wb-net (WhereaboutsNAD)
// in namespace default. Idempotent: a lab can be benchmarked twice.
func (l *Lab) InstallWhereabouts(ctx context.Context) error {
	dir := WhereaboutsDir()
	bin := filepath.Join(dir, "whereabouts")
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("whereabouts %s is not built (make whereabouts, i.e. hack/whereabouts.sh): %w", WhereaboutsVersion, err)
	}
	if _, err := l.kubectl(ctx, "apply", "-f", filepath.Join(dir, "crds")); err != nil {
		return err
	}
	if _, err := l.kubectl(ctx, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/ippools.whereabouts.cni.cncf.io", "crd/overlappingrangeipreservations.whereabouts.cni.cncf.io"); err != nil {
		return err
	}
	manifests := filepath.Join(l.opts.Dir, "manifests")
	if err := os.MkdirAll(manifests, 0o755); err != nil {
		return err
	}
	rbac := filepath.Join(manifests, "whereabouts-rbac.yaml")
	if err := os.WriteFile(rbac, []byte(whereaboutsRBAC), 0o644); err != nil {
		return err
	}
	if _, err := l.kubectl(ctx, "apply", "-f", rbac); err != nil {
		return err
	}
	kubeconfig, err := l.whereaboutsKubeconfig(ctx)
	if err != nil {
		return err
	}
	flat, _ := json.Marshal(map[string]any{"datastore": "kubernetes",
		"kubernetes": map[string]any{"kubeconfig": whereaboutsConfDir + "/whereabouts.kubeconfig"}})
	for _, n := range l.state.Nodes {
		if err := copyFile(bin, filepath.Join(n.FS("/opt/cni/bin"), "whereabouts")); err != nil {
			return err
		}
		d := filepath.Join(n.FS("/etc/cni/net.d"), "whereabouts.d")
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "whereabouts.kubeconfig"), kubeconfig, 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "whereabouts.conf"), flat, 0o644); err != nil {
			return err
		}
	}
	nad, err := l.whereaboutsNADManifest()
	if err != nil {
		return err
	}
	_, err = l.kubectl(ctx, "apply", "-f", nad)
	return err
}

// whereaboutsKubeconfig is a kubeconfig for the whereabouts ServiceAccount
// (a bound token, as its install's token file is) with the CA inline, so it
// needs no other file on the node; its context namespace is where the
// IPPools live.
func (l *Lab) whereaboutsKubeconfig(ctx context.Context) ([]byte, error) {
	cs, err := l.client()
	if err != nil {
		return nil, err
	}
	expiry := int64((48 * time.Hour).Seconds())
	var tok *authv1.TokenRequest
	// The ServiceAccount was just applied: the token request may race it.
	if err := poll(ctx, 30*time.Second, "a token for ServiceAccount whereabouts", func() (bool, string, error) {
		var err error
		tok, err = cs.CoreV1().ServiceAccounts(WhereaboutsNamespace).CreateToken(ctx, "whereabouts",
			&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
		if err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	}); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(l.pki("ca.crt"))
	if err != nil {
		return nil, err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: l.apiURL(), CertificateAuthorityData: ca}
	cfg.AuthInfos["whereabouts"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["whereabouts"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "whereabouts", Namespace: WhereaboutsNamespace}
	cfg.CurrentContext = "whereabouts"
	return clientcmd.Write(*cfg)
}

// WhereaboutsNADConfig is wb-net's spec.config: db-net's (NADConfig) with
// whereabouts as macvlan's IPAM, under its own network name.
func (l *Lab) WhereaboutsNADConfig() ([]byte, error) {
	_, raw, err := l.NADConfig()
	if err != nil {
		return nil, err
	}
	var conf map[string]any
	if err := json.Unmarshal(raw, &conf); err != nil {
		return nil, err
	}
	conf["name"] = WhereaboutsNetwork
	plugins, _ := conf["plugins"].([]any)
	found := false
	for _, p := range plugins {
		if m, _ := p.(map[string]any); m != nil && m["type"] == "macvlan" {
			m["ipam"] = map[string]any{
				"type":       "whereabouts",
				"range":      WhereaboutsRange,
				"kubernetes": map[string]any{"kubeconfig": whereaboutsConfDir + "/whereabouts.kubeconfig"},
				"log_file":   "/var/log/whereabouts.log",
				"log_level":  "error",
			}
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("%s: no macvlan plugin in spec.config", filepath.Join(l.opts.Examples, NADFile))
	}
	return json.MarshalIndent(conf, "", "  ")
}

func (l *Lab) whereaboutsNADManifest() (string, error) {
	conf, err := l.WhereaboutsNADConfig()
	if err != nil {
		return "", err
	}
	nad := map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"name": WhereaboutsNAD, "namespace": "default"},
		"spec":     map[string]any{"config": string(conf)},
	}
	b, err := yaml.Marshal(nad)
	if err != nil {
		return "", err
	}
	path := filepath.Join(l.opts.Dir, "manifests", WhereaboutsNAD+".yaml")
	return path, os.WriteFile(path, b, 0o644)
}

// whereaboutsPoolName is the IPPool whereabouts keeps a range in: the range
// with '/' as '-'.
func whereaboutsPoolName(r string) string { return strings.ReplaceAll(r, "/", "-") }
