package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"kubeipam/internal/pki"
)

// authority is a CA whose certificates are written as <dir>/<base>.crt and
// .key. The lab has two: one for Kubernetes and one for the dedicated
// kube-ipam etcd, as a real installation would (the plugin must not hold the
// cluster's etcd keys).
type authority struct {
	ca  *pki.CA
	dir string
}

// labValidity is how long the lab's certificates are valid.
const labValidity = 365 * 24 * time.Hour

func newAuthority(dir, base, cn string) (*authority, error) {
	ca, err := pki.NewCA(cn, labValidity)
	if err != nil {
		return nil, err
	}
	a := &authority{ca: ca, dir: dir}
	return a, ca.Write(filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
}

// certSpec names one leaf certificate and its files.
type certSpec struct {
	base string // file name without .crt/.key
	pki.Leaf
}

func (a *authority) issue(s certSpec) error {
	p, err := a.ca.Issue(s.Leaf)
	if err != nil {
		return fmt.Errorf("issuing %s: %w", s.base, err)
	}
	return p.Write(filepath.Join(a.dir, s.base+".crt"), filepath.Join(a.dir, s.base+".key"))
}

// writeServiceAccountKeys writes the token signing key pair (sa.key, sa.pub).
func writeServiceAccountKeys(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644)
}

// writeKubeconfig writes a client-certificate kubeconfig for base.crt/key.
func writeKubeconfig(path, server, caFile, base string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caFile}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificate: base + ".crt", ClientKey: base + ".key"}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "user", Namespace: "default"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, path)
}
