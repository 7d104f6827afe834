package servingcert

import (
	"crypto/x509"
	"encoding/base64"
	"maps"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
)

const day = 24 * time.Hour

var (
	t0     = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	policy = Policy{DNSNames: DNSNames("kube-ipam-webhook", "kube-ipam"), CAValidity: 30 * day, LeafValidity: 9 * day, CAStage: time.Hour}
)

func apply(t *testing.T, data map[string][]byte, plan Plan, now time.Time) map[string][]byte {
	t.Helper()
	out, err := Apply(data, plan, policy, now)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// evolve applies Assess's plan at now.
func evolve(t *testing.T, data map[string][]byte, now time.Time) map[string][]byte {
	t.Helper()
	return apply(t, data, Assess(data, policy, now), now)
}

func with(data map[string][]byte, k string, v []byte) map[string][]byte {
	out := maps.Clone(data)
	if v == nil {
		delete(out, k)
	} else {
		out[k] = v
	}
	return out
}

func bundleCerts(t *testing.T, data map[string][]byte) []*x509.Certificate {
	t.Helper()
	certs, err := parseCerts(data[KeyCABundle])
	if err != nil {
		t.Fatal(err)
	}
	return certs
}

func TestAssess(t *testing.T) {
	fresh := apply(t, nil, Plan{NewCA: true, NewLeaf: true}, t0)
	other := apply(t, nil, Plan{NewCA: true, NewLeaf: true}, t0)
	// Leaf renewed at day 20: the CA (30 days) is then the one nearing its end.
	renewed := apply(t, fresh, Plan{NewLeaf: true}, t0.Add(20*day))
	staged := evolve(t, renewed, t0.Add(21*day))
	stagedAt := t0.Add(21 * day)
	// A certificate for another Service's names.
	oldNames := policy
	oldNames.DNSNames = []string{"webhook", "webhook.kube-ipam", "webhook.kube-ipam.svc"}
	renamed, err := Apply(nil, Plan{NewCA: true, NewLeaf: true}, oldNames, t0)
	if err != nil {
		t.Fatal(err)
	}

	type want struct {
		newCA, stage, promote, leaf, dropNext bool
		reason                                string
	}
	for _, tc := range []struct {
		name string
		data map[string][]byte
		at   time.Time
		want want
	}{
		{"absent", nil, t0, want{newCA: true, leaf: true, reason: "ca.crt: missing"}},
		{"fresh", fresh, t0, want{}},
		{"leaf with more than a third left", fresh, t0.Add(5 * day), want{}},
		{"leaf with less than a third left", fresh, t0.Add(6*day + 12*time.Hour), want{leaf: true, reason: "less than a third of its life left"}},
		{"leaf expired", fresh, t0.Add(10 * day), want{leaf: true, reason: "not valid now"}},
		{"leaf not yet valid (clock jumped back)", fresh, t0.Add(-day), want{newCA: true, leaf: true, reason: "CA not valid now"}},
		{"DNS names changed", renamed, t0, want{leaf: true, reason: "does not cover kube-ipam-webhook"}},
		{"garbage ca.crt", with(fresh, KeyCABundle, []byte("garbage")), t0, want{newCA: true, leaf: true, reason: "ca.crt: not PEM"}},
		{"ca.key missing", with(fresh, KeyCAKey, nil), t0, want{newCA: true, leaf: true, reason: "key missing"}},
		{"ca.key of another CA", with(fresh, KeyCAKey, other[KeyCAKey]), t0, want{newCA: true, leaf: true, reason: "private key does not match"}},
		{"first of ca.crt is a leaf", with(fresh, KeyCABundle, fresh[KeyCert]), t0, want{newCA: true, leaf: true}},
		{"tls.key of another certificate", with(fresh, KeyKey, other[KeyKey]), t0, want{leaf: true, reason: "serving certificate (tls.crt, tls.key)"}},
		{"tls.crt garbage", with(fresh, KeyCert, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")), t0, want{leaf: true}},
		{"leaf signed by another CA", with(with(fresh, KeyCert, other[KeyCert]), KeyKey, other[KeyKey]), t0, want{leaf: true, reason: "not signed by the CA"}},
		{"CA expired", fresh, t0.Add(31 * day), want{newCA: true, leaf: true, reason: "CA not valid now"}},
		{"CA with less than a third left: stage its successor", renewed, t0.Add(21 * day), want{stage: true, reason: "staging its successor"}},
		{"staged, not long enough", staged, stagedAt.Add(30 * time.Minute), want{}},
		{"staged for CAStage: promote", staged, stagedAt.Add(time.Hour), want{promote: true, leaf: true, reason: "signs from now on"}},
		{"broken staged CA", with(renewed, KeyNextCA, []byte("garbage")), t0.Add(20 * day), want{dropNext: true, reason: "staged CA"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy
			got := Assess(tc.data, p, tc.at)
			w := tc.want
			if got.NewCA != w.newCA || got.StageCA != w.stage || got.PromoteCA != w.promote || got.NewLeaf != w.leaf || got.DropNext != w.dropNext {
				t.Errorf("plan %+v, want %+v", got, w)
			}
			if !strings.Contains(got.Reason, w.reason) {
				t.Errorf("reason %q lacks %q", got.Reason, w.reason)
			}
			if got.Needed() != (got.Reason != "") {
				t.Errorf("Needed()=%v but reason %q", got.Needed(), got.Reason)
			}
			// Whatever the plan, its result needs nothing more.
			next, err := Apply(tc.data, got, p, tc.at)
			if err != nil {
				t.Fatal(err)
			}
			if again := Assess(next, p, tc.at); again.Needed() {
				t.Errorf("after applying, still needs %+v", again)
			}
		})
	}
}

// TestCARotation follows a Secret through a CA's whole rotation: the
// bundle trusts every CA whose certificate any replica may serve.
func TestCARotation(t *testing.T) {
	s := evolve(t, nil, t0)
	oldCA := bundleCerts(t, s)[0]
	s = evolve(t, s, t0.Add(20*day)) // leaf renewed, same CA
	if got := bundleCerts(t, s); len(got) != 1 || !got[0].Equal(oldCA) {
		t.Fatalf("leaf renewal changed the bundle: %d CAs", len(got))
	}
	s = evolve(t, s, t0.Add(21*day)) // staged
	b := bundleCerts(t, s)
	if len(b) != 2 || !b[0].Equal(oldCA) {
		t.Fatalf("staged bundle: %d CAs, first is the old one: %v", len(b), b[0].Equal(oldCA))
	}
	newCA := b[1]
	leaf := parse(s).leaf.cert
	if leaf.CheckSignatureFrom(oldCA) != nil {
		t.Fatal("staging changed the signer of the served certificate")
	}
	s = evolve(t, s, t0.Add(21*day+time.Hour)) // promoted
	c := parse(s)
	if !c.ca.cert.Equal(newCA) || c.next != nil {
		t.Fatal("the staged CA was not promoted")
	}
	if c.leaf.cert.CheckSignatureFrom(newCA) != nil {
		t.Fatal("the new serving certificate is not signed by the promoted CA")
	}
	if b := bundleCerts(t, s); len(b) != 2 || !b[0].Equal(newCA) || !b[1].Equal(oldCA) {
		t.Fatalf("bundle after promotion: %d CAs, want new then old", len(b))
	}
	// The old CA leaves the bundle once expired (with the next write).
	s = apply(t, s, Plan{NewLeaf: true}, t0.Add(31*day))
	if b := bundleCerts(t, s); len(b) != 1 || !b[0].Equal(newCA) {
		t.Fatalf("bundle after the old CA expired: %d CAs", len(b))
	}
}

func TestPatchOps(t *testing.T) {
	b := []byte("bundle")
	hooks := []admissionregv1.ValidatingWebhook{{Name: "a"}, {Name: "b", ClientConfig: admissionregv1.WebhookClientConfig{CABundle: b}}, {Name: "c", ClientConfig: admissionregv1.WebhookClientConfig{CABundle: []byte("old")}}}
	ops := PatchOps(hooks, b)
	want := []PatchOp{
		{"test", "/webhooks/0/name", "a"}, {"add", "/webhooks/0/clientConfig/caBundle", base64.StdEncoding.EncodeToString(b)},
		{"test", "/webhooks/2/name", "c"}, {"add", "/webhooks/2/clientConfig/caBundle", base64.StdEncoding.EncodeToString(b)},
	}
	if len(ops) != len(want) {
		t.Fatalf("ops %+v, want %+v", ops, want)
	}
	for i := range ops {
		if ops[i] != want[i] {
			t.Errorf("op %d: %+v, want %+v", i, ops[i], want[i])
		}
	}
	if ops := PatchOps(hooks[1:2], b); len(ops) != 0 {
		t.Errorf("equal caBundle: ops %+v", ops)
	}
}
