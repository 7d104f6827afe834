// Package pki issues ECDSA certificates: Sign is the one signing step (a
// new P-256 key, never valid beyond its parent), used by the controller's
// webhook certificates (internal/servingcert); CA and Pair are the lab's
// and the tests' self-signed CA and leaves, as PEM. Serial numbers are
// random; such a leaf is valid as long as its CA, from an hour before it
// was made.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"time"
)

// Pair is a certificate and its private key.
type Pair struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// CA is a self-signed certificate authority.
type CA struct{ Pair }

// Leaf describes a certificate to issue.
type Leaf struct {
	CN     string
	Orgs   []string
	DNS    []string
	IPs    []net.IP
	Server bool // extended key usage serverAuth
	Client bool // extended key usage clientAuth
}

// NewCA makes a CA named cn, valid for validity.
func NewCA(cn string, validity time.Duration) (*CA, error) {
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	p, err := sign(tmpl, nil, nil, validity)
	if err != nil {
		return nil, err
	}
	return &CA{*p}, nil
}

// Issue signs a leaf certificate with the CA.
func (ca *CA) Issue(l Leaf) (*Pair, error) {
	tmpl := &x509.Certificate{
		Subject:  pkix.Name{CommonName: l.CN, Organization: l.Orgs},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames: l.DNS, IPAddresses: l.IPs,
	}
	if l.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.Client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	return sign(tmpl, ca.Cert, ca.Key, time.Until(ca.Cert.NotAfter))
}

// sign self-signs tmpl when parent is nil.
func sign(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, validity time.Duration) (*Pair, error) {
	now := time.Now()
	var pk crypto.Signer
	if parentKey != nil {
		pk = parentKey
	}
	cert, key, err := Sign(tmpl, parent, pk, now.Add(-time.Hour), now.Add(validity))
	if err != nil {
		return nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &Pair{Cert: cert, Key: key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})}, nil
}

// Sign issues tmpl with a new P-256 key, valid from notBefore to notAfter
// but never beyond parent, signed by parent and parentKey (self-signed
// when parent is nil). A nil SerialNumber makes it random.
func Sign(tmpl, parent *x509.Certificate, parentKey crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	if parent == nil {
		parent, parentKey = tmpl, key
	} else if tmpl.NotAfter.After(parent.NotAfter) {
		tmpl.NotAfter = parent.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func (p *Pair) TLS() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{p.Cert.Raw}, PrivateKey: p.Key, Leaf: p.Cert}
}

// Write writes the certificate (0644) and the key (0600).
func (p *Pair) Write(certFile, keyFile string) error {
	return errors.Join(os.WriteFile(certFile, p.CertPEM, 0o644), os.WriteFile(keyFile, p.KeyPEM, 0o600))
}
