package webhook

import (
	"testing"

	"kubeipam/internal/config"
)

// An annotation asking for an address inside an ipam.exclude entry is
// refused at admission, as the plugin would refuse it, naming the entry;
// for kube-ipam.ip and for each entry of kube-ipam.ip-pool.
func TestExcludedAnnotations(t *testing.T) {
	nets, err := config.ParseNetworks([]byte(`{"cniVersion": "0.3.1", "name": "net-x", "type": "macvlan", "ipam": {"type": "kube-ipam",
	    "etcdConfig": {"etcdURL": "http://127.0.0.1:1"}, "subnet": "10.30.0.0/24", "fixedStart": "10.30.0.200", "fixedEnd": "10.30.0.250",
	    "exclude": ["10.30.0.210-10.30.0.219", "10.30.0.240/29"]}}`), "test")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandler(nets, nil, nil)
	run(t, h, []tcase{
		{name: "outside the entries", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.30.0.209"})},
		{name: "inside a range entry", obj: podObj("default", "p", ann{"kube-ipam.ip": "10.30.0.215"}),
			deny: []string{`Pod default/p`, `annotation kube-ipam.ip="10.30.0.215"`, `is excluded by ipam.exclude entry "10.30.0.210-10.30.0.219" of network "net-x"`}},
		{name: "per-network key", obj: podObj("default", "p", ann{"kube-ipam.ip.net-x": "10.30.0.247"}),
			deny: []string{`annotation kube-ipam.ip.net-x="10.30.0.247"`, `ipam.exclude entry "10.30.0.240/29"`}},
		{name: "pool entry", obj: statefulSet("web", "u1", 2, ann{"kube-ipam.ip-pool": "10.30.0.201,10.30.0.219"}),
			deny: []string{`pod template of StatefulSet default/web`, `ipam.exclude entry "10.30.0.210-10.30.0.219"`}},
		{name: "pool clear of the entries", obj: statefulSet("web", "u1", 2, ann{"kube-ipam.ip-pool": "10.30.0.201,10.30.0.220"})},
	})
}
