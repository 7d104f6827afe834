package meta

import (
	"fmt"
	"slices"
	"strings"
)

// PodArgs are the Kubernetes keys of CNI_ARGS.
type PodArgs struct {
	Namespace, Name, InfraContainerID, UID string
	// Pairs are the incoming key=value pairs, in order.
	Pairs [][2]string
}

// prefixKeys are the keys multus puts first in every delegate's CNI_ARGS.
var prefixKeys = []string{"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}

// ParseArgs splits CNI_ARGS ("K=V;K=V"). For repeated keys the last value
// wins, as with the CNI library's LoadArgs. Unknown keys are kept.
func ParseArgs(s string) (PodArgs, error) {
	var a PodArgs
	if s == "" {
		return a, nil
	}
	for _, pair := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || k == "" {
			return a, fmt.Errorf("CNI_ARGS: invalid pair %q (want KEY=VALUE)", pair)
		}
		a.Pairs = append(a.Pairs, [2]string{k, v})
		switch k {
		case "K8S_POD_NAMESPACE":
			a.Namespace = v
		case "K8S_POD_NAME":
			a.Name = v
		case "K8S_POD_INFRA_CONTAINER_ID":
			a.InfraContainerID = v
		case "K8S_POD_UID":
			a.UID = v
		}
	}
	return a, nil
}

// DelegateArgs builds a delegate's CNI_ARGS the way multus (>= 3.9) does:
// IgnoreUnknown=true and the four pod keys first, then every incoming pair;
// an incoming pair fills a prefix slot only if that slot is empty, otherwise
// it is appended (so kubelet's keys appear twice). Keys in drop are left out
// (kubeMultus.dropArgs).
func DelegateArgs(a PodArgs, drop []string) [][2]string {
	out := [][2]string{
		{"IgnoreUnknown", "true"},
		{"K8S_POD_NAMESPACE", a.Namespace},
		{"K8S_POD_NAME", a.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", a.InfraContainerID},
		{"K8S_POD_UID", a.UID},
	}
	for _, p := range a.Pairs {
		if i := slices.Index(prefixKeys, p[0]); i >= 0 && out[i][1] == "" {
			out[i][1] = p[1]
			continue
		}
		out = append(out, p)
	}
	if len(drop) > 0 {
		out = slices.DeleteFunc(out, func(p [2]string) bool { return slices.Contains(drop, p[0]) })
	}
	return out
}

// Label is "<ns>/<pod>/<uid>", used to prefix delegate errors as multus does.
func (a PodArgs) Label() string { return a.Namespace + "/" + a.Name + "/" + a.UID }
