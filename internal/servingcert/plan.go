// Package servingcert lets kube-ipam-controller run its admission webhook
// without cert-manager or a manual step: every replica keeps one Secret
// (a self-signed CA, a serving certificate it signed, and the CA bundle
// clients must trust) up to date, serves the certificate in it, and copies
// the bundle into the caBundle of the ValidatingWebhookConfiguration.
//
// This file holds the decisions (what does a Secret's content need, what is
// the next content), with no I/O; manager.go does the API calls.
//
// CA rotation is staged so that the API server never sees a certificate
// from a CA it does not trust yet: a new CA is first only added to the
// bundle (and so to the caBundle) while the old CA keeps signing; once it
// has been in the bundle for Policy.CAStage it is promoted and signs the
// next serving certificate; the old CA stays in the bundle until it expires
// (no certificate it signed outlives it).
package servingcert

import (
	"bytes"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"kubeipam/internal/pki"
)

// The Secret's keys. tls.crt, tls.key and ca.crt are those of a
// kubernetes.io/tls Secret as cert-manager writes it; ca.crt is the whole
// bundle (signing CA first).
const (
	KeyCert     = "tls.crt"
	KeyKey      = "tls.key"
	KeyCABundle = "ca.crt"
	KeyCAKey    = "ca.key"      // private key of the signing CA (the first of ca.crt)
	KeyNextCA   = "next-ca.crt" // a staged CA: in ca.crt already, not signing yet
	KeyNextKey  = "next-ca.key"
)

// Defaults of Policy.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultLeafValidity = 365 * 24 * time.Hour
	DefaultCAStage      = time.Hour
)

// Policy is what the Secret must satisfy.
type Policy struct {
	DNSNames     []string      // the serving certificate must cover every one
	CAValidity   time.Duration // lifetime of a new CA
	LeafValidity time.Duration // lifetime of a new serving certificate (at most its CA's)
	// CAStage is how long a new CA sits in the bundle before it signs: far
	// longer than every replica takes to copy the bundle into the caBundle
	// and the API server to reload it.
	CAStage time.Duration
}

func (p Policy) withDefaults() Policy {
	if p.CAValidity <= 0 {
		p.CAValidity = DefaultCAValidity
	}
	if p.LeafValidity <= 0 {
		p.LeafValidity = DefaultLeafValidity
	}
	if p.CAStage <= 0 {
		p.CAStage = DefaultCAStage
	}
	return p
}

// keyPair is a certificate with its key.
type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// contents is a Secret's data, parsed. A part that is missing or does not
// parse is nil, with the reason in problems.
type contents struct {
	ca, next, leaf *keyPair
	bundle         []*x509.Certificate // every CA of ca.crt, in order
	problems       []string            // what is wrong with the CA or the bundle
	leafProblem    string              // what is wrong with tls.crt/tls.key
	nextBroken     bool                // next-ca.* present but unusable
}

// parse reads a Secret's data, never failing: what is wrong is listed.
func parse(data map[string][]byte) *contents {
	c := &contents{}
	bundle, err := parseCerts(data[KeyCABundle])
	if err != nil {
		c.problems = append(c.problems, fmt.Sprintf("%s: %v", KeyCABundle, err))
	}
	c.bundle = bundle
	if len(bundle) > 0 {
		if c.ca, err = pairOf(bundle[0], data[KeyCAKey]); err != nil {
			c.problems = append(c.problems, fmt.Sprintf("CA (%s, %s): %v", KeyCABundle, KeyCAKey, err))
		} else if !c.ca.cert.IsCA {
			c.problems = append(c.problems, fmt.Sprintf("%s: first certificate %q is not a CA", KeyCABundle, c.ca.cert.Subject.CommonName))
			c.ca = nil
		}
	}
	if len(data[KeyNextCA]) > 0 || len(data[KeyNextKey]) > 0 {
		certs, err := parseCerts(data[KeyNextCA])
		if err == nil && len(certs) != 1 {
			err = fmt.Errorf("want one certificate, found %d", len(certs))
		}
		if err == nil {
			c.next, err = pairOf(certs[0], data[KeyNextKey])
		}
		if err == nil && !c.next.cert.IsCA {
			err = errors.New("not a CA")
		}
		if err != nil {
			c.problems = append(c.problems, fmt.Sprintf("staged CA (%s, %s): %v", KeyNextCA, KeyNextKey, err))
			c.next, c.nextBroken = nil, true
		}
	}
	certs, err := parseCerts(data[KeyCert])
	if err == nil && len(certs) == 0 {
		err = errors.New("no certificate")
	}
	if err == nil {
		c.leaf, err = pairOf(certs[0], data[KeyKey])
	}
	if err != nil {
		c.leafProblem = fmt.Sprintf("serving certificate (%s, %s): %v", KeyCert, KeyKey, err)
		c.leaf = nil
	}
	return c
}

func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			if len(bytes.TrimSpace(b)) > 0 || len(out) == 0 {
				return out, errors.New("not PEM")
			}
			break
		}
		if blk.Type != "CERTIFICATE" {
			return out, fmt.Errorf("PEM block %q, want CERTIFICATE", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return out, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("missing")
	}
	return out, nil
}

// pairOf parses keyPEM and checks that it belongs to cert.
func pairOf(cert *x509.Certificate, keyPEM []byte) (*keyPair, error) {
	if len(keyPEM) == 0 {
		return nil, errors.New("key missing")
	}
	// tls.X509KeyPair parses every key format and checks the match.
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	tc, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	signer, ok := tc.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
	}
	return &keyPair{cert: cert, key: signer}, nil
}

// Plan is what a Secret needs. The zero Plan means nothing.
type Plan struct {
	NewCA     bool   // the CA is unusable: a fresh CA signs a fresh serving certificate at once
	StageCA   bool   // the CA nears its end: add a new CA to the bundle, not signing yet
	PromoteCA bool   // the staged CA has been trusted for CAStage: it signs from now on
	NewLeaf   bool   // issue a new serving certificate
	DropNext  bool   // the staged CA is unusable: write the Secret without it
	Reason    string // why, for the log
}

// Needed reports whether the plan changes anything.
func (p Plan) Needed() bool { return p.NewCA || p.StageCA || p.PromoteCA || p.NewLeaf || p.DropNext }

// Assess decides what data (a Secret's, nil when absent) needs at now.
func Assess(data map[string][]byte, p Policy, now time.Time) Plan {
	p = p.withDefaults()
	c := parse(data)
	return assess(c, p, now)
}

func assess(c *contents, p Policy, now time.Time) Plan {
	var reasons []string
	plan := Plan{}
	switch {
	case c.ca == nil:
		plan.NewCA, plan.NewLeaf = true, true
		reasons = append(reasons, c.problems...)
		if len(reasons) == 0 {
			reasons = append(reasons, "no CA")
		}
	case !now.Before(c.ca.cert.NotAfter) || now.Before(c.ca.cert.NotBefore):
		plan.NewCA, plan.NewLeaf = true, true
		reasons = append(reasons, fmt.Sprintf("CA not valid now (%s to %s)", stamp(c.ca.cert.NotBefore), stamp(c.ca.cert.NotAfter)))
	case c.next != nil && !now.Before(issued(c.next.cert).Add(p.CAStage)):
		plan.PromoteCA, plan.NewLeaf = true, true
		reasons = append(reasons, fmt.Sprintf("the CA staged at %s has been trusted for %v: it signs from now on", stamp(issued(c.next.cert)), p.CAStage))
	case c.next == nil && lowOnLife(c.ca.cert, now):
		plan.StageCA = true
		reasons = append(reasons, fmt.Sprintf("CA expires at %s (less than a third of its life left): staging its successor", stamp(c.ca.cert.NotAfter)))
	}
	if c.nextBroken && !plan.NewCA && !plan.StageCA {
		plan.DropNext = true
		reasons = append(reasons, "dropping the unusable staged CA")
	}
	if !plan.NewLeaf {
		if why := leafProblem(c, p, now); why != "" {
			plan.NewLeaf = true
			reasons = append(reasons, why)
		}
	}
	if plan.Needed() {
		plan.Reason = joinReasons(reasons)
	}
	return plan
}

// leafProblem says why the serving certificate must be renewed, or "".
func leafProblem(c *contents, p Policy, now time.Time) string {
	if c.leaf == nil {
		return c.leafProblem
	}
	l := c.leaf.cert
	if err := l.CheckSignatureFrom(c.ca.cert); err != nil {
		return fmt.Sprintf("serving certificate is not signed by the CA (%v)", err)
	}
	if !now.Before(l.NotAfter) || now.Before(l.NotBefore) {
		return fmt.Sprintf("serving certificate not valid now (%s to %s)", stamp(l.NotBefore), stamp(l.NotAfter))
	}
	if lowOnLife(l, now) {
		return fmt.Sprintf("serving certificate expires at %s (less than a third of its life left)", stamp(l.NotAfter))
	}
	for _, n := range p.DNSNames {
		if !slices.Contains(l.DNSNames, n) {
			return fmt.Sprintf("serving certificate does not cover %s (it has %v)", n, l.DNSNames)
		}
	}
	return ""
}

// lowOnLife: less than a third of the certificate's life is left.
func lowOnLife(c *x509.Certificate, now time.Time) bool {
	life := c.NotAfter.Sub(issued(c))
	return c.NotAfter.Sub(now) < life/3
}

// issued is when a certificate was made: we back-date NotBefore by
// backdate for clocks running behind.
func issued(c *x509.Certificate) time.Time { return c.NotBefore.Add(backdate) }

const backdate = 5 * time.Minute

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func joinReasons(r []string) string {
	var b bytes.Buffer
	for i, s := range r {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(s)
	}
	return b.String()
}

// Apply returns the data that carries out plan on data (which it does not
// modify). With a zero plan it returns data unchanged.
func Apply(data map[string][]byte, plan Plan, p Policy, now time.Time) (map[string][]byte, error) {
	if !plan.Needed() {
		return data, nil
	}
	p = p.withDefaults()
	c := parse(data)
	ca, next := c.ca, c.next
	var err error
	switch {
	case plan.NewCA:
		if ca, err = newCA(now, p.CAValidity); err != nil {
			return nil, err
		}
		next = nil
	case plan.PromoteCA:
		ca, next = next, nil
	case plan.StageCA:
		if next, err = newCA(now, p.CAValidity); err != nil {
			return nil, err
		}
	}
	out := map[string][]byte{}
	leafCert, leafKey := data[KeyCert], data[KeyKey]
	if plan.NewLeaf {
		leaf, err := newLeaf(ca, p.DNSNames, now, p.LeafValidity)
		if err != nil {
			return nil, err
		}
		leafCert = certPEM(leaf.cert)
		if leafKey, err = keyPEM(leaf.key); err != nil {
			return nil, err
		}
	}
	out[KeyCert], out[KeyKey] = leafCert, leafKey
	out[KeyCAKey], err = keyPEM(ca.key)
	if err != nil {
		return nil, err
	}
	if next != nil {
		out[KeyNextCA] = certPEM(next.cert)
		if out[KeyNextKey], err = keyPEM(next.key); err != nil {
			return nil, err
		}
	}
	out[KeyCABundle] = Bundle(ca.cert, next, c.bundle, now)
	return out, nil
}

// Bundle is the CA bundle clients must trust: the signing CA, the staged
// one, then every other CA of the previous bundle still valid at now (a
// replica may still serve a certificate one of them signed). Duplicates and
// expired CAs are dropped.
func Bundle(signing *x509.Certificate, staged *keyPair, previous []*x509.Certificate, now time.Time) []byte {
	list := []*x509.Certificate{signing}
	if staged != nil {
		list = append(list, staged.cert)
	}
	for _, c := range previous {
		if c.IsCA && now.Before(c.NotAfter) {
			list = append(list, c)
		}
	}
	var b []byte
	seen := map[string]bool{}
	for _, c := range list {
		if seen[string(c.Raw)] {
			continue
		}
		seen[string(c.Raw)] = true
		b = append(b, certPEM(c)...)
	}
	return b
}

func newCA(now time.Time, validity time.Duration) (*keyPair, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: fmt.Sprintf("kube-ipam-webhook-ca@%d", now.Unix())},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	return sign(tmpl, nil, now, validity)
}

func newLeaf(ca *keyPair, dns []string, now time.Time, validity time.Duration) (*keyPair, error) {
	if len(dns) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dns[len(dns)-1]},
		DNSNames:    slices.Clone(dns),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return sign(tmpl, ca, now, validity)
}

// sign issues tmpl, signed by parent (self-signed when nil), valid from
// backdate before now for validity, but never beyond its parent.
func sign(tmpl *x509.Certificate, parent *keyPair, now time.Time, validity time.Duration) (*keyPair, error) {
	var pc *x509.Certificate
	var pk crypto.Signer
	if parent != nil {
		pc, pk = parent.cert, parent.key
	}
	cert, key, err := pki.Sign(tmpl, pc, pk, now.Add(-backdate), now.Add(validity))
	if err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DNSNames are the names a Service's serving certificate covers.
func DNSNames(service, namespace string) []string {
	return []string{service, service + "." + namespace, service + "." + namespace + ".svc"}
}
