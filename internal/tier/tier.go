// Package tier is the tier security of kube-multus and kube-tier: which pods
// a secondary network attaches to (namespaces, label selector), and an
// ingress policy installed with nftables inside the pod's network namespace
// on that network's interface. kube-multus applies it to its delegates
// (the kubeMultus extension, [Config]); [Chained] is the same policy as a
// chained CNI plugin (cmd/kube-tier) that any meta plugin can run after
// macvlan. The policy is plain data ([Rules]) so it can be tested without
// privileges; [Apply] and [Remove] talk to the kernel.
package tier

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// Pod is what selection looks at.
type Pod struct {
	Namespace, Name string
	// Labels is nil when they have not been read (no selector needs them).
	Labels map[string]string
}

// Selection picks pods by namespace and/or label selector. Both must match
// when both are given. The zero Selection matches every pod.
type Selection struct {
	Namespaces  []string `json:"namespaces,omitempty"`
	PodSelector string   `json:"podSelector,omitempty"`

	sel labels.Selector
}

// Empty reports whether s matches every pod.
func (s *Selection) Empty() bool {
	return s == nil || (len(s.Namespaces) == 0 && s.PodSelector == "")
}

// NeedsLabels reports whether matching needs the pod's labels (an API read).
func (s *Selection) NeedsLabels() bool { return s != nil && s.PodSelector != "" }

func (s *Selection) validate(where string) error {
	if s == nil {
		return nil
	}
	for _, n := range s.Namespaces {
		if n == "" {
			return fmt.Errorf("%s.namespaces: empty namespace name", where)
		}
	}
	if s.PodSelector != "" {
		sel, err := labels.Parse(s.PodSelector)
		if err != nil {
			return fmt.Errorf("%s.podSelector %q: %v", where, s.PodSelector, err)
		}
		s.sel = sel
	}
	return nil
}

// Matches reports whether p is selected. It fails when the selection needs
// labels and p has none read, so that a missing read never attaches or
// skips silently.
func (s *Selection) Matches(p Pod) (bool, error) {
	if s.Empty() {
		return true, nil
	}
	if len(s.Namespaces) > 0 && !slices.Contains(s.Namespaces, p.Namespace) {
		return false, nil
	}
	if s.PodSelector != "" {
		if s.sel == nil {
			if err := s.validate("selection"); err != nil {
				return false, err
			}
		}
		if p.Labels == nil {
			return false, errors.New("the pod's labels were not read")
		}
		return s.sel.Matches(labels.Set(p.Labels)), nil
	}
	return true, nil
}

// Port is a protocol and a port or port range (EndPort inclusive).
type Port struct {
	Protocol string `json:"protocol"`
	Port     uint16 `json:"port"`
	EndPort  uint16 `json:"endPort,omitempty"`
}

// Rule is one ingress allowance. Namespaces and PodSelector say which pods
// it protects (empty: every pod attached to the network); From, Ports and
// ICMP say what those pods accept. A pod protected by at least one rule
// drops everything else arriving on the interface.
type Rule struct {
	// From lists allowed sources: CIDRs, single addresses, or ranges
	// "first-last". Empty: any source.
	From []string `json:"from,omitempty"`
	// Ports lists allowed destination ports. With neither Ports nor ICMP,
	// every protocol is allowed from the sources.
	Ports []Port `json:"ports,omitempty"`
	// ICMP allows echo requests (ping) from the sources.
	ICMP bool `json:"icmp,omitempty"`

	Namespaces  []string `json:"namespaces,omitempty"`
	PodSelector string   `json:"podSelector,omitempty"`

	target  Selection
	sources []Source
}

// Source is an inclusive address range of one family. Bits is the prefix
// length when the range is a CIDR block, else -1.
type Source struct {
	First, Last netip.Addr
	Bits        int
}

func (s Source) String() string {
	switch {
	case s.First == s.Last:
		return s.First.String()
	case s.Bits >= 0:
		return netip.PrefixFrom(s.First, s.Bits).String()
	}
	return s.First.String() + "-" + s.Last.String()
}

// ParseSource parses a CIDR, an address or a range "a-b".
func ParseSource(s string) (Source, error) {
	s = strings.TrimSpace(s)
	if a, b, ok := strings.Cut(s, "-"); ok {
		first, err1 := netip.ParseAddr(strings.TrimSpace(a))
		last, err2 := netip.ParseAddr(strings.TrimSpace(b))
		if err := errors.Join(err1, err2); err != nil {
			return Source{}, fmt.Errorf("range %q: %v", s, err)
		}
		first, last = first.Unmap(), last.Unmap()
		if first.Is4() != last.Is4() || last.Less(first) {
			return Source{}, fmt.Errorf("range %q: ends of different families or reversed", s)
		}
		return Source{first, last, -1}, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return Source{}, err
		}
		p = p.Masked()
		first := p.Addr().Unmap()
		bits := p.Bits()
		if p.Addr().Is4In6() {
			bits -= 96
			if bits < 0 {
				return Source{}, fmt.Errorf("%q: prefix too short for an IPv4-mapped address", s)
			}
		}
		n := first.AsSlice()
		host := first.BitLen() - bits
		for i := len(n) - 1; i >= 0 && host > 0; i-- {
			k := min(host, 8)
			n[i] |= byte(1<<k - 1)
			host -= k
		}
		last, _ := netip.AddrFromSlice(n)
		return Source{first, last, bits}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return Source{}, err
	}
	return Source{a.Unmap(), a.Unmap(), a.Unmap().BitLen()}, nil
}

var protocols = map[string]byte{"tcp": 6, "udp": 17, "sctp": 132}

// Validate checks the rule and prepares it for matching and rule building.
func (r *Rule) Validate(where string) error {
	r.target = Selection{Namespaces: r.Namespaces, PodSelector: r.PodSelector}
	if err := r.target.validate(where); err != nil {
		return err
	}
	r.sources = r.sources[:0]
	for _, f := range r.From {
		src, err := ParseSource(f)
		if err != nil {
			return fmt.Errorf("%s.from: %v", where, err)
		}
		r.sources = append(r.sources, src)
	}
	for i, p := range r.Ports {
		if _, ok := protocols[strings.ToLower(p.Protocol)]; !ok {
			return fmt.Errorf("%s.ports[%d].protocol %q: want tcp, udp or sctp", where, i, p.Protocol)
		}
		if p.Port == 0 {
			return fmt.Errorf("%s.ports[%d].port: missing or 0", where, i)
		}
		if p.EndPort != 0 && p.EndPort < p.Port {
			return fmt.Errorf("%s.ports[%d].endPort %d is below port %d", where, i, p.EndPort, p.Port)
		}
	}
	return nil
}

// Protects reports whether the rule applies to p.
func (r *Rule) Protects(p Pod) (bool, error) { return r.target.Matches(p) }

// NeedsLabels reports whether deciding which pods the rule protects needs
// their labels.
func (r *Rule) NeedsLabels() bool { return r.PodSelector != "" }

// Config is the "kubeMultus" extension of one delegate.
type Config struct {
	// Attach restricts which pods get this (secondary) network.
	Attach *Selection `json:"attach,omitempty"`
	// Ingress is the network's policy; see Rule.
	Ingress []Rule `json:"ingress,omitempty"`
	// DropArgs lists CNI_ARGS keys not passed to this delegate.
	DropArgs []string `json:"dropArgs,omitempty"`
}

// Validate checks c; where names it in errors.
func (c *Config) Validate(where string) error {
	if c.Attach != nil {
		if c.Attach.Empty() {
			return fmt.Errorf("%s.attach: give namespaces and/or podSelector (omit attach to attach every pod)", where)
		}
		if err := c.Attach.validate(where + ".attach"); err != nil {
			return err
		}
	}
	for i := range c.Ingress {
		if err := c.Ingress[i].Validate(fmt.Sprintf("%s.ingress[%d]", where, i)); err != nil {
			return err
		}
	}
	for _, k := range c.DropArgs {
		if k == "" {
			return fmt.Errorf("%s.dropArgs: empty key", where)
		}
	}
	return nil
}

// NeedsLabels reports whether any selection in c needs pod labels.
func (c *Config) NeedsLabels() bool {
	if c == nil {
		return false
	}
	if c.Attach.NeedsLabels() {
		return true
	}
	for i := range c.Ingress {
		if c.Ingress[i].NeedsLabels() {
			return true
		}
	}
	return false
}

// PolicyFor returns the rules protecting p; nil means the interface stays
// unfiltered.
func (c *Config) PolicyFor(p Pod) ([]Rule, error) {
	if c == nil {
		return nil, nil
	}
	var out []Rule
	for _, r := range c.Ingress {
		ok, err := r.Protects(p)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, r)
		}
	}
	return out, nil
}
