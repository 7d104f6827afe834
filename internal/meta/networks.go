package meta

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"kubeipam/internal/netattach"
)

// CodeNetwork: a network named by the config (clusterNetwork,
// defaultNetworks) or by the pod (its networks annotation) cannot be used:
// no such NetworkAttachmentDefinition or file, a bad annotation, a
// namespace the pod may not use, or an invalid config in it.
const CodeNetwork = 123

// NetworkError is a network that cannot be used (CodeNetwork). Missing is
// set when it does not exist (the Event's reason is then NoNetworkFound, as
// multus's).
type NetworkError struct {
	Msg     string
	Missing bool
}

func (e *NetworkError) Error() string { return e.Msg }

// networks returns every network this pod may get, in attach order and
// numbered: the cluster network (delegates[0], clusterNetwork, or the pod's
// v1.multus-cni.io/default-network), the config's other networks
// (delegates[1:], or defaultNetworks unless the pod's namespace is a
// systemNamespace), then the networks of the pod's
// k8s.v1.cni.cncf.io/networks annotation. pod is nil outside Kubernetes
// mode.
func (c *call) networks(pod *Pod) ([]*Delegate, error) {
	var out []*Delegate
	if c.conf.ClusterNetwork == "" {
		out = slices.Clone(c.conf.Delegates)
	} else {
		d, err := c.named(c.conf.ClusterNetwork, c.conf.MultusNamespace, "clusterNetwork")
		if err != nil {
			return nil, err
		}
		out = append(out, d)
		if !slices.Contains(c.conf.SystemNamespaces, c.pod.Namespace) {
			for i, n := range c.conf.DefaultNetworks {
				d, err := c.named(n, c.conf.MultusNamespace, fmt.Sprintf("defaultNetworks[%d]", i))
				if err != nil {
					return nil, err
				}
				out = append(out, d)
			}
		}
	}
	if pod == nil {
		return number(out), nil
	}
	if v := strings.TrimSpace(pod.Annotations[netattach.DefaultNetworkAnnotation]); v != "" {
		sels, err := netattach.ParseNetworks(v, c.conf.MultusNamespace)
		if err != nil || len(sels) != 1 {
			return nil, &NetworkError{Msg: fmt.Sprintf("annotation %s %q: want one network (%v)", netattach.DefaultNetworkAnnotation, v, err)}
		}
		if sels[0].Namespace != c.conf.MultusNamespace {
			return nil, &NetworkError{Msg: fmt.Sprintf("annotation %s names %s: the cluster network must be in multusNamespace %s",
				netattach.DefaultNetworkAnnotation, sels[0].Ref(), c.conf.MultusNamespace)}
		}
		d, err := c.nad(&sels[0], "annotation "+netattach.DefaultNetworkAnnotation)
		if err != nil {
			return nil, err
		}
		c.log.Info("the pod replaces the cluster network", "network", d.Network)
		out[0] = d
	}
	sels, err := netattach.ParseNetworks(pod.Annotations[netattach.NetworksAnnotation], c.pod.Namespace)
	if err != nil {
		return nil, &NetworkError{Msg: err.Error()}
	}
	iso := c.conf.Isolation()
	for i := range sels {
		s := &sels[i]
		if !iso.Allows(c.pod.Namespace, s.Namespace) {
			return nil, &NetworkError{Msg: fmt.Sprintf("annotation %s asks for %s, but namespaceIsolation lets pods of namespace %s use only their own namespace's networks and those of globalNamespaces %v",
				netattach.NetworksAnnotation, s.Ref(), c.pod.Namespace, iso.Global)}
		}
		d, err := c.nad(s, fmt.Sprintf("annotation %s element %d", netattach.NetworksAnnotation, s.Index))
		if err != nil {
			return nil, err
		}
		if err := applySelection(d, s); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return number(out), nil
}

// number sets each network's position (its default interface name is
// net<position>; the cluster network takes the runtime's).
func number(ds []*Delegate) []*Delegate {
	out := make([]*Delegate, len(ds))
	for i, d := range ds {
		cp := *d
		cp.Index = i
		out[i] = &cp
	}
	return out
}

// named resolves a clusterNetwork or defaultNetworks entry as multus does:
// a path is a config file (a directory: its first config); a name is a
// NetworkAttachmentDefinition in namespace, else the config of that name
// in confDir.
func (c *call) named(name, namespace, key string) (*Delegate, error) {
	where := fmt.Sprintf("meta config %s %q", key, name)
	if netattach.IsPath(name) {
		b, file, err := netattach.File(name)
		if err != nil {
			return nil, &NetworkError{Msg: fmt.Sprintf("%s: %v", where, err), Missing: errors.Is(err, netattach.ErrNotFound)}
		}
		return c.parseNetwork(b, fmt.Sprintf("%s (file %s)", where, file), "")
	}
	if c.conf.KubernetesMode() {
		k, err := c.kube()
		if err != nil {
			return nil, err
		}
		nad, err := k.NAD(c.ctx, namespace, name)
		var nf *NotFoundError
		switch {
		case err == nil:
			b, err := netattach.ConfigOf(nad, c.conf.ConfDir)
			if err != nil {
				return nil, &NetworkError{Msg: fmt.Sprintf("%s: %v", where, err), Missing: errors.Is(err, netattach.ErrNotFound)}
			}
			return c.parseNetwork(b, fmt.Sprintf("%s (NetworkAttachmentDefinition %s/%s)", where, namespace, name), namespace+"/"+name)
		case !errors.As(err, &nf):
			return nil, err
		}
	}
	b, file, err := netattach.FileByName(c.conf.ConfDir, name)
	if err != nil {
		msg := fmt.Sprintf("%s: no config of that name in confDir %s", where, c.conf.ConfDir)
		if c.conf.KubernetesMode() {
			msg = fmt.Sprintf("%s: no NetworkAttachmentDefinition %s/%s and no config of that name in confDir %s", where, namespace, name, c.conf.ConfDir)
		}
		return nil, &NetworkError{Msg: msg, Missing: true}
	}
	return c.parseNetwork(b, fmt.Sprintf("%s (file %s)", where, file), "")
}

// nad resolves a network the pod asks for: always a
// NetworkAttachmentDefinition.
func (c *call) nad(s *netattach.Selection, where string) (*Delegate, error) {
	k, err := c.kube()
	if err != nil {
		return nil, err
	}
	nad, err := k.NAD(c.ctx, s.Namespace, s.Name)
	var nf *NotFoundError
	if errors.As(err, &nf) {
		return nil, &NetworkError{Msg: fmt.Sprintf("%s: cannot find NetworkAttachmentDefinition %s in namespace %s", where, s.Name, s.Namespace), Missing: true}
	}
	if err != nil {
		return nil, err
	}
	b, err := netattach.ConfigOf(nad, c.conf.ConfDir)
	if err != nil {
		return nil, &NetworkError{Msg: fmt.Sprintf("%s: %v", where, err), Missing: errors.Is(err, netattach.ErrNotFound)}
	}
	return c.parseNetwork(b, fmt.Sprintf("%s (NetworkAttachmentDefinition %s)", where, s.Ref()), s.Ref())
}

// parseNetwork reads a resolved network's config with the delegates'
// rules; network (namespace/name of a NetworkAttachmentDefinition) names
// it in network-status.
func (c *call) parseNetwork(b []byte, where, network string) (*Delegate, error) {
	d, err := parseDelegate(-1, where, b, c.conf.CNIVersion)
	if err != nil {
		var ce *ConfigError
		if errors.As(err, &ce) {
			return nil, &NetworkError{Msg: ce.Msg}
		}
		return nil, err
	}
	if d.Ext.Attach != nil {
		return nil, &NetworkError{Msg: fmt.Sprintf("%s: %s.attach selects pods for a delegate of the meta config; pods select this network with their %s annotation",
			where, ExtensionKey, netattach.NetworksAnnotation)}
	}
	if d.Ext.NeedsLabels() && !c.conf.KubernetesMode() {
		return nil, &NetworkError{Msg: fmt.Sprintf("%s selects pods by label: set the meta config's \"kubeconfig\"", where)}
	}
	if network != "" {
		d.Network = network
	}
	return d, nil
}

// applySelection merges an annotation element's cni-args into the
// network's config (args.cni of every plugin, as multus) and keeps the
// element for the call.
func applySelection(d *Delegate, s *netattach.Selection) error {
	d.Sel = s
	if s.CNIArgs == nil || len(*s.CNIArgs) == 0 {
		return nil
	}
	var conf map[string]any
	if err := json.Unmarshal(d.Bytes, &conf); err != nil {
		return &NetworkError{Msg: fmt.Sprintf("%s: %v", d.Source, err)}
	}
	merge := func(plugin map[string]any) {
		args, _ := plugin["args"].(map[string]any)
		if args == nil {
			args = map[string]any{}
		}
		cni, _ := args["cni"].(map[string]any)
		if cni == nil {
			cni = map[string]any{}
		}
		for k, v := range *s.CNIArgs {
			cni[k] = v
		}
		args["cni"] = cni
		plugin["args"] = args
	}
	if plugins, ok := conf["plugins"].([]any); ok {
		for _, p := range plugins {
			if m, ok := p.(map[string]any); ok {
				merge(m)
			}
		}
	} else {
		merge(conf)
	}
	b, err := json.Marshal(conf)
	if err != nil {
		return &NetworkError{Msg: fmt.Sprintf("%s: %v", d.Source, err)}
	}
	d.Bytes = b
	return nil
}

// requests are what an annotation element asks of its network's plugins:
// runtimeConfig capabilities (ips, mac, portMappings, bandwidth; libcni
// passes each only to plugins that declare it) and the legacy CNI_ARGS IP= and MAC=, as multus sends
// both.
func requests(s *netattach.Selection) (rc map[string]any, args [][2]string) {
	if s == nil {
		return nil, nil
	}
	rc = map[string]any{}
	if len(s.IPRequest) > 0 {
		rc["ips"] = s.IPRequest
		args = append(args, [2]string{"IP", strings.Join(s.IPRequest, ",")})
	}
	if s.MacRequest != "" {
		rc["mac"] = s.MacRequest
		args = append(args, [2]string{"MAC", s.MacRequest})
	}
	if len(s.PortMappingsRequest) > 0 {
		rc["portMappings"] = s.PortMappingsRequest
	}
	if s.BandwidthRequest != nil {
		rc["bandwidth"] = s.BandwidthRequest
	}
	if len(rc) == 0 {
		rc = nil
	}
	return rc, args
}

// networkErr is a NetworkError as a CNI error.
func networkErr(e *NetworkError) *types.Error {
	return types.NewError(CodeNetwork, e.Msg, "")
}
