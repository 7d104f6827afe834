package controller

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
	"kubeipam/internal/store/memstore"
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

// TestRegistrySet: an unchanged network stays open, a changed one (any
// setting) is reopened, one that is gone is dropped with its watch, and one
// that cannot be opened is left out (or kept as it was).
func TestRegistrySet(t *testing.T) {
	parse := func(name, cooldown string) *config.Network {
		ns, err := config.ParseNetworks([]byte(`{"cniVersion":"0.3.1","name":"`+name+`","type":"macvlan","ipam":{"type":"kube-ipam","etcdConfig":{"etcdURL":"http://127.0.0.1:2379"},"subnet":"10.188.0.0/16","releaseCooldown":"`+cooldown+`"}}`), name)
		if err != nil {
			t.Fatal(err)
		}
		return ns[0]
	}
	opened := map[string]int{}
	failing := map[string]bool{}
	done := make(chan string, 10)
	r := newRegistry(func(_ context.Context, n *config.Network) (store.Backend, error) {
		if failing[n.Name] {
			return nil, errors.New("etcd unreachable")
		}
		opened[n.Name]++
		return memstore.New(n.Name), nil
	}, func(ctx context.Context, n *Network) {
		<-ctx.Done()
		done <- n.Cfg.Name
	}, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	names := func() string {
		var s []string
		for _, n := range r.List() {
			s = append(s, n.Cfg.Name)
		}
		return strings.Join(s, ",")
	}
	if added, err := r.Set(ctx, []*config.Network{parse("a", "1h"), parse("b", "1h")}); err != nil || strings.Join(added, ",") != "a,b" || names() != "a,b" {
		t.Fatalf("first set: %v %v %s", added, err, names())
	}
	if added, _ := r.Set(ctx, []*config.Network{parse("a", "1h"), parse("b", "1h")}); len(added) != 0 || opened["a"] != 1 {
		t.Fatalf("unchanged networks reopened: %v %v", added, opened)
	}
	if added, _ := r.Set(ctx, []*config.Network{parse("a", "2h")}); strings.Join(added, ",") != "a" || opened["a"] != 2 || names() != "a" {
		t.Fatalf("changed a, dropped b: %v %v %s", added, opened, names())
	}
	gone := map[string]bool{<-done: true, <-done: true} // a's old watch and b's
	if !gone["a"] || !gone["b"] || r.Get("b") != nil || r.Get("a").Cfg.ReleaseCooldown.String() != "2h0m0s" {
		t.Fatalf("watches stopped %v, b %v, a %v", gone, r.Get("b"), r.Get("a").Cfg.ReleaseCooldown)
	}
	failing["a"], failing["c"] = true, true
	if _, err := r.Set(ctx, []*config.Network{parse("a", "3h"), parse("c", "1h")}); err == nil || names() != "a" || r.Get("a").Cfg.ReleaseCooldown.String() != "2h0m0s" {
		t.Fatalf("unopenable: %v %s", err, names())
	}
}
