package netattach

import (
	"encoding/json"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	nadv1 "github.com/k8snetworkplumbingwg/network-attachment-definition-client/pkg/apis/k8s.cni.cncf.io/v1"
)

// Status is one element of the network-status annotation.
type Status = nadv1.NetworkStatus

// Statuses turns one attachment's CNI result into network-status elements,
// one per interface the result puts in the pod (a plugin may create
// several). name is the network's name (the delegate's for the cluster
// network and config delegates, namespace/name for NADs); isDefault marks
// the cluster network, whose first pod interface (the one with a gateway,
// if any) is the pod's default. Addresses go to the interface their
// "interface" index names; addresses without one go to the last pod
// interface, as multus does. ifname names the interface when the result
// lists none in the pod (results of spec 0.1/0.2 have no interfaces); all
// addresses are then that interface's.
func Statuses(r types.Result, name string, isDefault bool, ifname string) ([]Status, error) {
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("network %s: reading the result: %v", name, err)
	}
	var gws []string
	for _, rt := range res.Routes {
		if ones, _ := rt.Dst.Mask.Size(); ones == 0 && rt.GW != nil {
			gws = append(gws, rt.GW.String())
		}
	}
	dns := nadv1.DNS{Nameservers: res.DNS.Nameservers, Domain: res.DNS.Domain, Search: res.DNS.Search, Options: res.DNS.Options}
	var out []Status
	at := map[int]int{} // result interface index -> out index
	gwIface := -1
	if isDefault {
		for _, ip := range res.IPs {
			if ip.Gateway != nil && ip.Interface != nil {
				gwIface = *ip.Interface
				break
			}
		}
	}
	for i, iface := range res.Interfaces {
		if iface.Sandbox == "" {
			continue
		}
		at[i] = len(out)
		out = append(out, Status{Name: name, Interface: iface.Name, Mac: iface.Mac, Mtu: iface.Mtu, DNS: dns, Gateway: gws})
	}
	if len(out) == 0 {
		// No interface reported in the pod: one element for the interface
		// kube-multus asked for.
		out = append(out, Status{Name: name, Interface: ifname, DNS: dns, Gateway: gws})
	}
	if isDefault {
		d := 0
		if j, ok := at[gwIface]; ok {
			d = j
		}
		out[d].Default = true
	}
	for _, ip := range res.IPs {
		j := len(out) - 1
		if ip.Interface != nil && len(at) > 0 {
			k, ok := at[*ip.Interface]
			if !ok {
				continue // an address of a host-side interface
			}
			j = k
		}
		out[j].IPs = append(out[j].IPs, ip.Address.IP.String())
	}
	return out, nil
}

// Encode is the annotation value: a JSON list, indented as multus writes
// it (people read it with kubectl).
func Encode(s []Status) (string, error) {
	if s == nil {
		s = []Status{}
	}
	b, err := json.MarshalIndent(s, "", "    ")
	return string(b), err
}

// Decode reads a network-status annotation.
func Decode(v string) ([]Status, error) {
	var s []Status
	if err := json.Unmarshal([]byte(v), &s); err != nil {
		return nil, fmt.Errorf("annotation %s: %v", NetworkStatusAnnotation, err)
	}
	return s, nil
}
