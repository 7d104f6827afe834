package controller

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"kubeipam/internal/kubeapi"
	"kubeipam/internal/testenv"
)

func (c *cluster) createNAD(namespace, name string, config []byte) {
	c.t.Helper()
	api, err := kubeapi.NewClient(c.kube.Kubeconfig, "test", 30*time.Second)
	must(c.t, err)
	body, _ := json.Marshal(map[string]any{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
		"metadata": map[string]any{"namespace": namespace, "name": name}, "spec": map[string]any{"config": string(config)}})
	resp, err := api.Do(context.Background(), kubeapi.Request{Method: "POST",
		Path: "/apis/k8s.cni.cncf.io/v1/namespaces/" + namespace + "/network-attachment-definitions", Body: body})
	if err != nil || resp.Code != 201 {
		c.t.Fatalf("creating NAD %s/%s: %v %v", namespace, name, err, resp.Status())
	}
}

// TestNADNetworks: with --nads the controller manages the kube-ipam
// networks of NetworkAttachmentDefinitions, created after it started,
// without a copy in its --config (here a Kubernetes-mode meta config with
// no network of its own): it frees a leaked address there. A NAD whose
// kube-ipam config is broken, and one that names the same network with
// other ranges, are reported once and change nothing.
func TestNADNetworks(t *testing.T) {
	c := newCluster(t, "node-1")
	c.kube.InstallCRDs(t, testenv.NADCRD)
	meta := filepath.Join(t.TempDir(), "00-multus.conf")
	must(t, os.WriteFile(meta, []byte(`{"cniVersion":"0.3.1","name":"multus-cni-network","type":"kube-multus","kubeconfig":"/k"}`), 0o644))
	ctl := c.startController("--config", meta, "--nads")
	if strings.Contains(ctl.logText(), "managing networks") {
		t.Fatalf("networks managed before any NAD existed:\n%s", ctl.logText())
	}

	c.createNAD("default", "db-net", c.conf)
	ctl.waitLog(t, c.kube, "the NAD's network managed", `msg="managing networks" added=[k8snet2]`, 30*time.Second)
	p := c.pod("web", "node-1")
	ip, _ := c.add(p)
	c.forceDelete(p)
	c.waitFreed("the NAD network's leak freed", 30*time.Second, ip)

	var conf map[string]any
	must(t, json.Unmarshal(c.conf, &conf))
	conf["ipam"].(map[string]any)["rangeStart"] = "10.188.0.100"
	other, _ := json.Marshal(conf)
	_, err := c.kube.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{})
	must(t, err)
	c.createNAD("other", "db-net", other)
	c.createNAD("default", "broken", []byte(`{"cniVersion":"0.3.1","name":"k8snet7","type":"macvlan","ipam":{"type":"kube-ipam","subnet":"nope"}}`))
	ctl.waitLog(t, c.kube, "the conflicting NAD reported", `network \"k8snet2\" of NetworkAttachmentDefinition other/db-net differs from the one of NetworkAttachmentDefinition default/db-net`, 30*time.Second)
	ctl.waitLog(t, c.kube, "the broken NAD reported", "NetworkAttachmentDefinition not managed: NetworkAttachmentDefinition default/broken", 30*time.Second)
	// Reported once, over many passes.
	c.kube.WaitFor(t, "ten more passes", 30*time.Second, func() (bool, error) {
		return strings.Count(ctl.logText(), "msg=pass") > 15, nil
	})
	if n := strings.Count(ctl.logText(), "default/broken"); n != 1 {
		t.Errorf("the broken NAD reported %d times", n)
	}
	p2 := c.pod("web2", "node-1")
	ip2, _ := c.add(p2)
	c.forceDelete(p2)
	c.waitFreed("still managed after the conflict", 30*time.Second, ip2)
}

// TestFollowsConfig: the controller follows its --config without a
// restart: a second network added to the file is managed (its leak freed);
// a broken edit is refused with one error line and the last good networks
// stay managed.
func TestFollowsConfig(t *testing.T) {
	c := newCluster(t, "node-1")
	ctl := c.startController()
	var conf map[string]any
	must(t, json.Unmarshal(c.conf, &conf))
	second := map[string]any{"cniVersion": "0.3.1", "name": "k8snet3", "type": "macvlan", "master": "eth0", "ipam": conf["ipam"]}
	both, _ := json.Marshal(map[string]any{"cniVersion": "0.3.1", "name": "multus", "type": "kube-multus",
		"delegates": []any{map[string]any{"name": "cbr0", "type": "bridge"}, conf, second}})
	must(t, os.WriteFile(c.confF, both, 0o644))
	ctl.waitLog(t, c.kube, "the new network managed", `msg="managing networks" added=[k8snet3]`, 30*time.Second)
	if !strings.Contains(ctl.logText(), `msg="config reloaded"`) {
		t.Fatalf("no reload line:\n%s", ctl.logText())
	}

	must(t, os.WriteFile(c.confF, []byte(`{"cniVersion":"0.3.1","name":"k8snet2","type":"macvlan","ipam":{"type":"kube-ipam","subnet":"nope"}}`), 0o644))
	ctl.waitLog(t, c.kube, "the broken config refused", `msg="config refused; keeping the last good one"`, 30*time.Second)
	p := c.pod("web", "node-1")
	ip, _ := c.add(p)
	c.forceDelete(p)
	c.waitFreed("k8snet2 still managed after the refused edit", 30*time.Second, ip)
	if n := strings.Count(ctl.logText(), "config refused"); n != 1 {
		t.Errorf("the refusal logged %d times", n)
	}
}
