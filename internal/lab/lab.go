// Package lab brings up the seed's architecture on one machine, for real: an
// etcd and a Kubernetes control plane, several kubelet nodes each in its own
// network namespace with its own containerd, the kube-multus + kube-ipam CNI
// chain on every node, locally built images (no registry), and the seed's
// manifests applied with kubectl. Replay then runs the seed's verification
// (sections 4 and 5) with the seed's own commands, and Down removes every
// trace. `make lab` and test/lab drive it; docs/lab.md describes it.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"kubeipam/internal/config"
	"kubeipam/internal/toolcache"
)

// Options describe one lab. Two labs with different Name, Underlay and Dir
// can run at the same time (the test and `make lab`, say).
type Options struct {
	// Dir holds everything the lab writes: PKI, configs, data, logs.
	Dir string `json:"dir"`
	// Name prefixes every host-visible name: the underlay bridge <Name>0,
	// network namespaces <Name>-node<i>, cgroups /<Name>-node<i>.
	Name string `json:"name"`
	// Nodes is the number of kubelet nodes (node1 … nodeN).
	Nodes int `json:"nodes"`
	// Underlay is the node network (the seed's node eth0): .1 is the host
	// (where the API server and the kube-ipam etcd listen), .10+i node i.
	Underlay netip.Prefix `json:"underlay"`
	// APIPort is the API server's port on the underlay host address.
	APIPort int `json:"apiPort"`
	// RepoBin has kube-ipam, kube-multus, kube-ipamctl, kube-ipam-controller and
	// kube-ipam-lab-pause (make build).
	RepoBin string `json:"repoBin"`
	// KubeBin has kube-apiserver, kube-controller-manager, kube-scheduler,
	// kubelet, kube-proxy and kubectl (hack/testbin.sh).
	KubeBin string `json:"kubeBin"`
	// CNIBin has the reference plugins (Debian: /usr/lib/cni).
	CNIBin string `json:"cniBin"`
	// LabBin has flanneld and the flannel CNI plugin (hack/labbin.sh).
	LabBin string `json:"labBin"`
	// Examples is deploy/examples: db.yaml, web.yaml, web-svc.yaml,
	// web-ingress.yaml, applied as they are.
	Examples string `json:"examples"`
	// Deploy is deploy/: the installer DaemonSet, the controller, RBAC and
	// the network ConfigMap run in the lab from a locally built image.
	Deploy string `json:"deploy"`
	// Store is where kube-ipam keeps its allocations: StoreEtcd (or empty:
	// the guide's dedicated etcd) or StoreKubernetes (IPAllocation and
	// IPSticky objects in the lab's API, installed with deploy/ and its
	// kubernetes-store component). The kube-ipam etcd runs either way.
	Store string `json:"store,omitempty"`
	// Mode is how pods get the database network: ModeDelegates (or empty:
	// the guide's kube-multus delegates mode), ModeNAD (kube-multus in
	// Kubernetes mode, the network a NetworkAttachmentDefinition that pods
	// ask for) or ModeMultus (the same NAD under upstream multus, with
	// kube-ipam installed IPAM-only).
	Mode string `json:"mode,omitempty"`
	// MultusBin has upstream multus's thin plugin, "multus" (hack/multus.sh);
	// only ModeMultus uses it.
	MultusBin string `json:"multusBin,omitempty"`
	// MaxPods is each kubelet's maxPods; zero means DefaultMaxPods. The
	// pod-start benchmark (Bench) raises it to fit its pods.
	MaxPods int `json:"maxPods,omitempty"`
	// Out receives progress and the replay; nil discards.
	Out io.Writer `json:"-"`
}

// The stores a lab can run kube-ipam on (ipam "store" of the network
// config).
const (
	StoreEtcd       = config.StoreEtcd
	StoreKubernetes = config.StoreKubernetes
)

// DefaultMaxPods is each kubelet's maxPods unless Options.MaxPods says
// otherwise: plenty for the guide's pods.
const DefaultMaxPods = 50

func (o Options) maxPods() int {
	if o.MaxPods > 0 {
		return o.MaxPods
	}
	return DefaultMaxPods
}

// KubernetesStore reports whether the lab keeps kube-ipam's allocations in
// the Kubernetes API.
func (o Options) KubernetesStore() bool { return o.Store == StoreKubernetes }

// The ways a lab gives pods the database network (Options.Mode).
const (
	ModeDelegates = "delegates"
	ModeNAD       = "nad"
	ModeMultus    = "multus"
)

// NADs reports whether the database network is a NetworkAttachmentDefinition
// that pods ask for (ModeNAD, ModeMultus).
func (o Options) NADs() bool { return o.Mode == ModeNAD || o.Mode == ModeMultus }

// UpstreamMultus reports whether the nodes run upstream multus.
func (o Options) UpstreamMultus() bool { return o.Mode == ModeMultus }

// MultusVersion is the upstream multus release hack/multus.sh builds.
const MultusVersion = "v4.2.4"

// MultusBinDir is where hack/multus.sh puts upstream multus:
// $KUBE_IPAM_MULTUS, else the user cache directory.
func MultusBinDir() string { return cacheDir("KUBE_IPAM_MULTUS", "multus-"+MultusVersion) }

// DefaultOptions is what `make lab` uses.
func DefaultOptions(repo string) Options {
	return Options{
		Dir: "/var/tmp/kube-ipam-lab", Name: "kilab", Nodes: 3,
		Underlay: netip.MustParsePrefix("172.30.0.0/24"), APIPort: 16443,
		RepoBin: filepath.Join(repo, "bin"), KubeBin: KubeBinDir(), CNIBin: "/usr/lib/cni", LabBin: LabBinDir(), MultusBin: MultusBinDir(),
		Examples: filepath.Join(repo, "deploy", "examples"), Deploy: filepath.Join(repo, "deploy"),
	}
}

// KubeVersion is the Kubernetes release hack/testbin.sh builds.
const KubeVersion = toolcache.KubeVersion

// KubeBinDir is where hack/testbin.sh puts the Kubernetes binaries:
// $KUBE_IPAM_TESTBIN, else the user cache directory.
func KubeBinDir() string { return toolcache.KubeBinDir() }

// LabBinDir is where hack/labbin.sh puts flanneld and the flannel CNI
// plugin: $KUBE_IPAM_LABBIN, else the user cache directory.
func LabBinDir() string { return cacheDir("KUBE_IPAM_LABBIN", "labbin") }

// cacheDir is $env, else <user cache dir>/kube-ipam/<name>, as the hack/
// scripts compute it.
func cacheDir(env, name string) string { return toolcache.Dir(env, name) }

// ClusterCIDR is the cluster network (the seed's flannel Network); the
// controller-manager gives each node a /24 of it, which flannel uses.
const ClusterCIDR = "10.244.0.0/16"

// Lab is a running (or partly started) lab.
type Lab struct {
	opts     Options
	state    state
	reap     map[int]chan struct{} // processes this process started
	start    time.Time
	ca       *authority // the Kubernetes CA (Up only)
	etcdKube string     // the Kubernetes etcd's client URL (Up only)
}

// state is <Dir>/lab.json: what Down needs to undo, written as the lab
// comes up so that an interrupted Up can be torn down by another process.
type state struct {
	Options Options `json:"options"`
	Procs   []Proc  `json:"procs"`
	Nodes   []Node  `json:"nodes"`
	Host    host    `json:"host"`
	APIUp   bool    `json:"apiUp"`
}

// Node is one kubelet node.
type Node struct {
	Name   string     `json:"name"`  // Kubernetes node name: node1 …
	NetNS  string     `json:"netns"` // <Name>-node<i>
	IP     netip.Addr `json:"ip"`    // its eth0 on the underlay
	Dir    string     `json:"dir"`
	Cgroup string     `json:"cgroup"` // cgroupRoot, /<Name>-node<i>
}

func (n Node) sock() string { return filepath.Join(n.Dir, "containerd", "containerd.sock") }

// Namespace files of a node: network (named, in /run/netns), mount and UTS
// (bind mounts under the lab dir).
func (n Node) mntNS() string { return filepath.Join(filepath.Dir(n.Dir), "ns", n.Name+".mnt") }
func (n Node) utsNS() string { return filepath.Join(filepath.Dir(n.Dir), "ns", n.Name+".uts") }

// enter prefixes argv to run it inside the node: its network, mount and UTS
// namespaces. nsenter execs without forking, so a recorded PID is the
// command's.
func (n Node) enter(argv ...string) []string {
	return append([]string{"nsenter", "--net=/var/run/netns/" + n.NetNS, "--mount=" + n.mntNS(), "--uts=" + n.utsNS(), "--"}, argv...)
}

// host is what the lab finds on the machine before it changes anything.
type host struct {
	Sysctls map[string]string `json:"sysctls"`
	Dirs    map[string]bool   `json:"dirs"`
	Bridge  bool              `json:"bridge"` // the lab created the underlay bridge
}

func (o Options) statePath() string { return filepath.Join(o.Dir, "lab.json") }

// HostIP is the underlay address of the host: the API server, the
// kube-ipam etcd and the NodePort client live here.
func (o Options) HostIP() netip.Addr { return o.Underlay.Addr().Next() }

// Kubeconfig is the admin kubeconfig of a lab.
func (o Options) Kubeconfig() string { return filepath.Join(o.Dir, "admin.kubeconfig") }

func (o Options) validate() error {
	switch {
	case o.Dir == "" || !filepath.IsAbs(o.Dir):
		return fmt.Errorf("lab dir %q must be an absolute path", o.Dir)
	case o.Name == "" || len(o.Name) > 8:
		return fmt.Errorf("lab name %q must be 1-8 characters (it prefixes interface names)", o.Name)
	case o.Nodes < 2 || o.Nodes > 9:
		return fmt.Errorf("%d nodes: the lab runs 2 to 9", o.Nodes)
	case !o.Underlay.IsValid() || !o.Underlay.Addr().Is4() || o.Underlay.Bits() > 27:
		return fmt.Errorf("underlay %v must be an IPv4 prefix of /27 or larger", o.Underlay)
	case o.MaxPods < 0 || o.MaxPods > 250:
		return fmt.Errorf("maxPods %d: want 0 (the default, %d) to 250 (a node's /24 of the cluster network)", o.MaxPods, DefaultMaxPods)
	case o.APIPort <= 0:
		return fmt.Errorf("API port %d", o.APIPort)
	case o.Store != "" && o.Store != StoreEtcd && o.Store != StoreKubernetes:
		return fmt.Errorf("store %q: want %q or %q", o.Store, StoreEtcd, StoreKubernetes)
	case o.Mode != "" && o.Mode != ModeDelegates && o.Mode != ModeNAD && o.Mode != ModeMultus:
		return fmt.Errorf("mode %q: want %q, %q or %q", o.Mode, ModeDelegates, ModeNAD, ModeMultus)
	case o.UpstreamMultus() && o.KubernetesStore():
		return fmt.Errorf("mode %q runs on the etcd store only", ModeMultus)
	}
	return nil
}

func (l *Lab) logf(format string, args ...any) {
	if l.opts.Out == nil {
		return
	}
	fmt.Fprintf(l.opts.Out, "[lab %5.1fs] %s\n", time.Since(l.start).Seconds(), fmt.Sprintf(format, args...))
}

func (l *Lab) saveState() error {
	b, err := json.MarshalIndent(l.state, "", "  ")
	if err != nil {
		return err
	}
	tmp := l.opts.statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, l.opts.statePath())
}

// ErrRunning means a lab with this Dir is already up.
var ErrRunning = errors.New("a lab is already running here")

// Up brings the lab up: PKI, network, etcds, control plane, nodes, CNI,
// images, workloads. On error the partial lab stays for the caller to tear
// down with Down (its state file says what exists).
func Up(ctx context.Context, opts Options) (*Lab, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errNotRoot
	}
	if _, err := os.Stat(opts.statePath()); err == nil {
		return nil, fmt.Errorf("%w (%s exists): run `make lab-down` (kube-ipam-lab down) first", ErrRunning, opts.statePath())
	}
	l := &Lab{opts: opts, reap: map[int]chan struct{}{}, start: time.Now()}
	if err := l.preflight(); err != nil {
		return nil, err
	}
	for _, d := range []string{"", "pki", "logs", "manifests", "cni/bin"} {
		if err := os.MkdirAll(filepath.Join(opts.Dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	l.state = state{Options: opts, Host: recordHost()}
	if err := l.saveState(); err != nil {
		return nil, err
	}
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"certificates", l.writePKI},
		{"underlay network and node namespaces", l.network},
		{"node filesystems (mount and UTS namespaces)", l.nodeNamespaces},
		{"etcd for Kubernetes and a dedicated etcd for kube-ipam", l.startEtcds},
		{"control plane", l.controlPlane},
		{"images (pause, busybox stand-ins, kube-ipam:dev)", l.images},
		{"CNI reference plugins and flannel's plugin on every node (the seed's section 2.1)", l.installCNI},
		{"nodes (containerd, kubelet, kube-proxy, flanneld)", l.startNodes},
		{"kube-ipam from deploy/ (installer DaemonSet, controller)", l.deployKubeIPAM},
	}
	for _, s := range steps {
		t0 := time.Now()
		l.logf("%s ...", s.what)
		if err := s.fn(ctx); err != nil {
			return l, fmt.Errorf("lab: %s: %w", s.what, err)
		}
		l.logf("%s done in %.1fs", s.what, time.Since(t0).Seconds())
	}
	return l, nil
}

// Load reads the state of a lab (for Down from another process).
func Load(dir string) (*Lab, error) {
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return nil, err
	}
	l := &Lab{reap: map[int]chan struct{}{}, start: time.Now()}
	if err := json.Unmarshal(b, &l.state); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, "lab.json"), err)
	}
	l.opts = l.state.Options
	return l, nil
}

// SetOutput redirects progress output.
func (l *Lab) SetOutput(w io.Writer) { l.opts.Out = w }

// Options returns the lab's options.
func (l *Lab) Options() Options { return l.opts }

// Nodes returns the lab's nodes.
func (l *Lab) Nodes() []Node { return l.state.Nodes }
