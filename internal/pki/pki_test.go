package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(Leaf{CN: "server", IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNS: []string{"localhost"}, Server: true, Client: true})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.CertPEM) {
		t.Fatal("CA PEM does not parse")
	}
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "localhost", KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Errorf("usage %v: %v", u, err)
		}
	}
	if err := leaf.Cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Error(err)
	}
	client, _ := ca.Issue(Leaf{CN: "client", Orgs: []string{"system:masters"}, Client: true})
	if _, err := client.Cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a client-only certificate verified for server auth")
	}
	if client.Cert.Subject.Organization[0] != "system:masters" || client.Cert.NotAfter.After(ca.Cert.NotAfter) {
		t.Errorf("client subject %v, not after %v (CA %v)", client.Cert.Subject, client.Cert.NotAfter, ca.Cert.NotAfter)
	}
	if _, err := tls.X509KeyPair(leaf.CertPEM, leaf.KeyPEM); err != nil {
		t.Errorf("PEM pair: %v", err)
	}
	dir := t.TempDir()
	if err := leaf.Write(filepath.Join(dir, "c"), filepath.Join(dir, "k")); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "k")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", fi.Mode().Perm(), err)
	}
}
