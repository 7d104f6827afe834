// Package netattach is the Network Plumbing Working Group's pod API as
// kube-multus reads and writes it, as pure functions: the
// k8s.v1.cni.cncf.io/networks selection annotation (both forms), the
// namespace rules that decide which NetworkAttachmentDefinitions a pod may
// use, the CNI config a NetworkAttachmentDefinition stands for, and the
// k8s.v1.cni.cncf.io/network-status annotation built from CNI results. The
// wire types are the NPWG client's (k8s.cni.cncf.io/v1), so the JSON field
// names are the ones every other tool reads.
package netattach

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
)

// The pod annotations of the NPWG specification and multus.
const (
	NetworksAnnotation       = nadv1.NetworkAttachmentAnnot // k8s.v1.cni.cncf.io/networks
	NetworkStatusAnnotation  = nadv1.NetworkStatusAnnot     // k8s.v1.cni.cncf.io/network-status
	DefaultNetworkAnnotation = "v1.multus-cni.io/default-network"
)

// Selection is one network a pod asks for.
type Selection struct {
	nadv1.NetworkSelectionElement
	// Index is the element's position in the annotation, for messages.
	Index int
}

// Ref is "namespace/name", the network's name in network-status.
func (s Selection) Ref() string { return s.Namespace + "/" + s.Name }

// SelectionError is an annotation that cannot be used as written.
type SelectionError struct{ Msg string }

func (e *SelectionError) Error() string { return e.Msg }

func selErr(format string, a ...any) error { return &SelectionError{fmt.Sprintf(format, a...)} }

var dns1123Label = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// maxIfName is IFNAMSIZ-1: the kernel's limit on interface names.
const maxIfName = 15

// ParseNetworks reads the networks annotation of a pod in podNamespace: a
// JSON list of selection objects, or a comma-separated list of
// [namespace/]name[@ifname]. An empty value selects nothing. Elements
// without a namespace get the pod's. Every requested address, MAC and
// interface name is checked here, so a typo fails the pod's ADD with the
// element it is in rather than reaching a plugin.
func ParseNetworks(value, podNamespace string) ([]Selection, error) {
	value = strings.TrimSpace(value)
	if value == "" {
		return nil, nil
	}
	var out []Selection
	if strings.ContainsAny(value, "[{\"") {
		var elems []nadv1.NetworkSelectionElement
		dec := json.NewDecoder(strings.NewReader(value))
		if err := dec.Decode(&elems); err != nil {
			return nil, selErr("annotation %s: not a JSON list of networks: %v", NetworksAnnotation, err)
		}
		for i, e := range elems {
			out = append(out, Selection{NetworkSelectionElement: e, Index: i})
		}
	} else {
		for i, item := range strings.Split(value, ",") {
			s, err := parseShort(strings.TrimSpace(item))
			if err != nil {
				return nil, selErr("annotation %s, element %d %q: %v", NetworksAnnotation, i, item, err)
			}
			s.Index = i
			out = append(out, s)
		}
	}
	for i := range out {
		s := &out[i]
		if s.Namespace == "" {
			s.Namespace = podNamespace
		}
		if err := validate(s); err != nil {
			return nil, selErr("annotation %s, element %d (%s): %v", NetworksAnnotation, s.Index, s.Name, err)
		}
	}
	return out, nil
}

// parseShort reads "[namespace/]name[@ifname]".
func parseShort(item string) (Selection, error) {
	var s Selection
	if item == "" {
		return s, fmt.Errorf("empty network name")
	}
	ref, ifname, hasIf := strings.Cut(item, "@")
	if hasIf {
		if strings.Contains(ifname, "@") {
			return s, fmt.Errorf("more than one '@'")
		}
		s.InterfaceRequest = strings.TrimSpace(ifname)
		if s.InterfaceRequest == "" {
			return s, fmt.Errorf("empty interface name after '@'")
		}
	}
	parts := strings.Split(ref, "/")
	switch len(parts) {
	case 1:
		s.Name = strings.TrimSpace(parts[0])
	case 2:
		s.Namespace, s.Name = strings.TrimSpace(parts[0]), strings.TrimSpace(parts[1])
		if s.Namespace == "" {
			return s, fmt.Errorf("empty namespace before '/'")
		}
	default:
		return s, fmt.Errorf("more than one '/' (want [namespace/]name[@interface])")
	}
	return s, nil
}

func validate(s *Selection) error {
	if s.Name == "" {
		return fmt.Errorf("no network name")
	}
	if !dns1123Label.MatchString(s.Name) {
		return fmt.Errorf("network name %q is not a DNS-1123 label (lower-case letters, digits, '-')", s.Name)
	}
	if !dns1123Label.MatchString(s.Namespace) {
		return fmt.Errorf("namespace %q is not a DNS-1123 label", s.Namespace)
	}
	if err := ValidIfName(s.InterfaceRequest); s.InterfaceRequest != "" && err != nil {
		return err
	}
	for _, ip := range s.IPRequest {
		if _, err := ParseIPRequest(ip); err != nil {
			return err
		}
	}
	if s.MacRequest != "" {
		if _, err := net.ParseMAC(s.MacRequest); err != nil {
			return fmt.Errorf("mac %q: %v", s.MacRequest, err)
		}
	}
	if s.InfinibandGUIDRequest != "" {
		return fmt.Errorf("infiniband-guid is not supported by kube-multus")
	}
	if s.IPAMClaimReference != "" {
		return fmt.Errorf("ipam-claim-reference is not supported by kube-multus (kube-ipam keeps StatefulSet addresses by itself)")
	}
	seen := map[bool]bool{}
	for _, gw := range s.GatewayRequest {
		if gw == nil {
			return fmt.Errorf("default-route: empty gateway")
		}
		v4 := gw.To4() != nil
		if seen[v4] {
			return fmt.Errorf("default-route: more than one gateway of one address family")
		}
		seen[v4] = true
	}
	return nil
}

// ParseIPRequest reads one "ips" entry: an address or an address with its
// prefix length.
func ParseIPRequest(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("ips: %q is not an address or CIDR", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ips: %q is not an address or CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ValidIfName checks an interface name as the kernel and multus do.
func ValidIfName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty interface name")
	case len(name) > maxIfName:
		return fmt.Errorf("interface name %q is longer than %d characters", name, maxIfName)
	case strings.ContainsAny(name, " \t\n\v\f\r/:") || name == "." || name == "..":
		return fmt.Errorf("interface name %q contains a space, '/' or ':'", name)
	}
	return nil
}

// Isolation decides which namespaces' NetworkAttachmentDefinitions a pod
// may use (multus's namespaceIsolation and globalNamespaces).
type Isolation struct {
	Enabled bool
	// Global are the namespaces any pod may use; multus's default is
	// "default".
	Global []string
}

// Allows reports whether a pod in podNamespace may use a network in
// netNamespace.
func (i Isolation) Allows(podNamespace, netNamespace string) bool {
	return !i.Enabled || podNamespace == netNamespace || slices.Contains(i.Global, netNamespace)
}

// SplitList reads multus's comma-separated lists (globalNamespaces),
// dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
