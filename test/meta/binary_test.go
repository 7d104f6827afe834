package meta

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kubeipam/internal/testenv"
)

// TestBinaryErrorsAreCNIJSON runs the binary under the seed's name
// multus-cni: every failure is a CNI error on stdout with a meaningful
// code, never a panic.
func TestBinaryErrorsAreCNIJSON(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "multus-cni")
	if err := os.Symlink(testenv.Binary(t, "kube-multus"), bin); err != nil {
		t.Fatal(err)
	}
	run := func(verb, stdin string) (map[string]any, string, error) {
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=" + verb, "CNI_CONTAINERID=c1", "CNI_NETNS=/proc/self/ns/net", "CNI_NETNS_OVERRIDE=1",
			"CNI_IFNAME=kmt0", "CNI_PATH=" + dir, "PATH=" + os.Getenv("PATH")}
		cmd.Stdin = strings.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		var m map[string]any
		_ = json.Unmarshal(out.Bytes(), &m)
		return m, out.String() + errb.String(), err
	}
	cniDir := t.TempDir()
	cases := []struct {
		name, verb, stdin string
		code              float64
	}{
		{"garbage", "ADD", "{not json", 0},
		{"no delegates", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni"}`, 7},
		{"two cluster networks", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","clusterNetwork":"flannel","delegates":[{"name":"a","type":"x"}]}`, 7},
		{"unsupported multus key", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","auxiliaryCNIChainName":"x","delegates":[{"name":"a","type":"x"}]}`, 2},
		{"cluster network not found", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","cniDir":"` + cniDir + `","confDir":"` + cniDir + `","clusterNetwork":"flannel"}`, 123},
		{"missing delegate plugin", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","cniDir":"` + cniDir + `","delegates":[{"name":"a","type":"no-such-plugin"}]}`, 124},
		{"bad policy", "ADD", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","delegates":[{"name":"a","type":"x"},{"name":"b","type":"y","kubeMultus":{"ingress":[{"ports":[{"protocol":"tcp","port":70000}]}]}}]}`, 0},
		{"check on 0.3.1", "CHECK", `{"cniVersion":"0.3.1","name":"m","type":"multus-cni","delegates":[{"name":"a","type":"x"}]}`, 0},
	}
	for _, c := range cases {
		m, raw, err := run(c.verb, c.stdin)
		if err == nil {
			t.Errorf("%s: succeeded: %s", c.name, raw)
			continue
		}
		if strings.Contains(raw, "panic") || strings.Contains(raw, "goroutine ") {
			t.Fatalf("%s: panicked: %s", c.name, raw)
		}
		if m == nil || m["msg"] == "" || m["code"] == nil {
			t.Errorf("%s: not a CNI error: %s", c.name, raw)
			continue
		}
		if c.code != 0 && m["code"] != c.code {
			t.Errorf("%s: code %v, want %v: %s", c.name, m["code"], c.code, raw)
		}
	}
	m, raw, err := run("VERSION", `{"cniVersion":"1.1.0"}`)
	if err != nil || !strings.Contains(raw, `"1.1.0"`) || !strings.Contains(raw, `"0.1.0"`) || m["supportedVersions"] == nil {
		t.Errorf("VERSION: %s %v", raw, err)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "kube-multus ") {
		t.Errorf("--version: %q %v", out, err)
	}
}
