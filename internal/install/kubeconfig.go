package install

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// In-cluster service-account files (kubelet mounts them in every pod that
// does not opt out with automountServiceAccountToken: false).
const (
	DefaultTokenFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAFile    = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
)

// ServerFromEnv is the API server address a pod sees:
// https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (an IPv6 host
// is bracketed). The installer runs with hostNetwork, so the node itself
// can reach the same address.
func ServerFromEnv(getenv func(string) string) (string, error) {
	host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return "", errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not running in a pod?): give --kube-server")
	}
	return "https://" + net.JoinHostPort(host, port), nil
}

// Kubeconfig renders the plugins' kubeconfig: one cluster (server, CA
// inlined) and one user authenticated by the service-account token
// (inlined: the token file lives in the pod's volume, which the node's
// plugins cannot rely on). The output is deterministic, so an unchanged
// token gives an unchanged file.
func Kubeconfig(server string, caPEM []byte, token string) ([]byte, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("API server address %q: want https://host:port", server)
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return nil, errors.New("the service-account token is empty")
	}
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the service-account CA bundle holds no PEM certificate")
	}
	const name = "kube-ipam"
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name}
	cfg.CurrentContext = name
	return clientcmd.Write(*cfg)
}

// readKubeconfig reads the token and CA and renders the kubeconfig.
func readKubeconfig(server, tokenFile, caFile string) ([]byte, error) {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("service-account token: %v (is automountServiceAccountToken off for the installer pod?)", err)
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("service-account CA: %v", err)
	}
	kc, err := Kubeconfig(server, ca, string(token))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig from %s and %s: %v", tokenFile, caFile, err)
	}
	return kc, nil
}
