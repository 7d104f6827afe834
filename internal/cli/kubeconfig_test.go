package cli

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// writeKubeconfig writes a kubeconfig whose server is server.
func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// The order of KubeRESTConfig's rule, with client-go's in-cluster loader
// replaced (its paths are fixed: TestInCluster runs the real one in a
// mount namespace).
func TestKubeRESTConfigRule(t *testing.T) {
	flagFile := writeKubeconfig(t, "https://flag.example:6443")
	ipamFile := writeKubeconfig(t, "https://ipam.example:6443")
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, []byte("{not yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := "/nonexistent/kubeconfig"
	inPod := func() (*rest.Config, error) { return &rest.Config{Host: "https://10.96.0.1:443"}, nil }
	notInPod := func() (*rest.Config, error) { return nil, rest.ErrNotInCluster }
	noToken := func() (*rest.Config, error) {
		return nil, errors.New("open /var/run/secrets/kubernetes.io/serviceaccount/token: no such file or directory")
	}
	defer func(f func() (*rest.Config, error)) { inClusterConfig = f }(inClusterConfig)
	for _, c := range []struct {
		name         string
		flag, ipam   string
		inCluster    func() (*rest.Config, error)
		host, source string
		errs         []string // all in the error, when one is wanted
	}{
		{"the flag wins over both", flagFile, ipamFile, inPod, "https://flag.example:6443", "--kubeconfig " + flagFile, nil},
		{"ipam.kubeConfig wins over in-cluster", "", ipamFile, inPod, "https://ipam.example:6443", "ipam.kubeConfig " + ipamFile, nil},
		{"in-cluster when ipam.kubeConfig is missing", "", missing, inPod, "https://10.96.0.1:443", "in-cluster", nil},
		{"in-cluster when ipam.kubeConfig is unset", "", "", inPod, "https://10.96.0.1:443", "in-cluster", nil},
		{"a missing --kubeconfig is an error, not in-cluster", missing, ipamFile, inPod, "", "",
			[]string{"--kubeconfig /nonexistent/kubeconfig", "no such file"}},
		{"a broken ipam.kubeConfig is an error, not in-cluster", "", broken, inPod, "", "", []string{"ipam.kubeConfig " + broken}},
		{"none of the three", "", missing, notInPod, "", "", []string{"no Kubernetes API configuration", "no --kubeconfig given",
			"ipam.kubeConfig /nonexistent/kubeconfig does not exist", "no in-cluster configuration", "KUBERNETES_SERVICE_HOST"}},
		{"in a pod without a token", "", "", noToken, "", "", []string{"ipam.kubeConfig is not set", "serviceaccount/token"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			inClusterConfig = c.inCluster
			rc, source, err := KubeRESTConfig(c.flag, c.ipam)
			if c.errs != nil {
				if err == nil {
					t.Fatalf("got %s from %s, want an error", rc.Host, source)
				}
				for _, w := range c.errs {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil || rc.Host != c.host || source != c.source {
				t.Fatalf("got %v from %q, %v; want %s from %q", rc, source, err, c.host, c.source)
			}
		})
	}
}
