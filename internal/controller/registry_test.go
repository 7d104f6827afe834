package controller

import (
	"strings"
	"testing"

	"kubeipam/internal/config"
)

func TestDesiredNetworks(t *testing.T) {
	net := func(name, etcd, start string) *config.Network {
		b := `{"cniVersion":"0.3.1","name":"` + name + `","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"` + etcd +
			`"},"subnet":"10.188.0.0/16","rangeStart":"` + start + `"}}`
		ns, err := config.ParseNetworks([]byte(b), name)
		if err != nil {
			t.Fatal(err)
		}
		return ns[0]
	}
	a := net("k8snet2", "http://127.0.0.1:2379", "10.188.0.10")
	for _, c := range []struct {
		name      string
		static    []*config.Network
		nads      map[string][]*config.Network
		want      string
		conflicts []string
	}{
		{name: "config only", static: []*config.Network{a}, want: "k8snet2"},
		{name: "NADs only, in name order", nads: map[string][]*config.Network{"z/n": {net("k8snet9", "http://127.0.0.1:2379", "10.188.0.10")}, "a/n": {a}},
			want: "k8snet2,k8snet9"},
		{name: "a ConfigMap copy of the NAD is one network", static: []*config.Network{a}, nads: map[string][]*config.Network{"default/db-net": {net("k8snet2", "http://127.0.0.1:2379", "10.188.0.10")}},
			want: "k8snet2"},
		{name: "other ranges: --config wins, reported", static: []*config.Network{a}, nads: map[string][]*config.Network{"default/db-net": {net("k8snet2", "http://127.0.0.1:2379", "10.188.0.100")}},
			want: "k8snet2", conflicts: []string{`network "k8snet2" of NetworkAttachmentDefinition default/db-net differs from the one of --config`}},
		{name: "another store: the first NAD wins, reported", nads: map[string][]*config.Network{"a/x": {a}, "b/x": {net("k8snet2", "http://127.0.0.1:12379", "10.188.0.10")}},
			want: "k8snet2", conflicts: []string{"of NetworkAttachmentDefinition b/x differs from the one of NetworkAttachmentDefinition a/x"}},
	} {
		got, conflicts := DesiredNetworks(c.static, c.nads)
		var names []string
		for _, n := range got {
			names = append(names, n.Name)
		}
		if strings.Join(names, ",") != c.want {
			t.Errorf("%s: networks %v, want %s", c.name, names, c.want)
		}
		if len(conflicts) != len(c.conflicts) {
			t.Errorf("%s: conflicts %q, want %q", c.name, conflicts, c.conflicts)
			continue
		}
		for i := range conflicts {
			if !strings.Contains(conflicts[i], c.conflicts[i]) {
				t.Errorf("%s: conflict %q, want %q", c.name, conflicts[i], c.conflicts[i])
			}
		}
	}
}
