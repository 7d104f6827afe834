package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/config"
	"kubeipam/internal/controller"
	"kubeipam/internal/store"
)

// Reservations made by reserve: a fixed record of this container-ID prefix,
// interface and node, with no pod.
const (
	ReservedPrefix = "reserved-"
	ReservedIfName = "reserved"
	ReservedNode   = "kube-ipamctl"
	// KindReserved is how list and who-has show a reservation.
	KindReserved = "reserved"
)

// ReservationID is the container ID of ip's reservation.
func ReservationID(ip netip.Addr) string { return ReservedPrefix + hex.EncodeToString(ip.AsSlice()) }

// isReservation reports whether rec was written by reserve.
func isReservation(rec *store.Record) bool {
	return rec.PodName == "" && strings.HasPrefix(rec.ContainerID, ReservedPrefix)
}

func (n *Network) noteKey(ip netip.Addr) string {
	return n.base() + "note/" + hex.EncodeToString(ip.AsSlice())
}

// reservable checks ip as allocator.ValidateFixed does, except the fixed
// block: inside a subnet, not its network, broadcast or gateway address.
func reservable(cfg *config.Network, ip netip.Addr) (int, error) {
	set, r, ok := cfg.SetFor(ip)
	switch {
	case !ok:
		return -1, fmt.Errorf("%s is outside every subnet of network %s", ip, cfg.Name)
	case ip == r.Subnet.Addr():
		return -1, fmt.Errorf("%s is the network address of %s", ip, r.Subnet)
	case ip.Is4() && ip == config.LastAddr(r.Subnet):
		return -1, fmt.Errorf("%s is the broadcast address of %s", ip, r.Subnet)
	case ip == r.Gateway:
		return -1, fmt.Errorf("%s is the gateway of %s", ip, r.Subnet)
	}
	return set, nil
}

// Reserve claims ip for nobody on one network, in one guarded transaction
// from the address's current state.
func Reserve(ctx context.Context, w io.Writer, nets []*Network, ip netip.Addr, network, note string, now time.Time) error {
	cands, err := pick(nets, network)
	if err != nil {
		return err
	}
	if network == "" {
		var in []*Network
		for _, n := range cands {
			if _, _, ok := n.Cfg.SetFor(ip); ok {
				in = append(in, n)
			}
		}
		switch len(in) {
		case 0:
			return usageErrorf("%s is outside every subnet of %s", ip, describeNets(cands))
		case 1:
		default:
			var names []string
			for _, n := range in {
				names = append(names, n.Cfg.Name)
			}
			return usageErrorf("%s is inside a subnet of several networks (%s): choose one with --network", ip, strings.Join(names, ", "))
		}
		cands = in
	}
	n := cands[0]
	set, err := reservable(n.Cfg, ip)
	if err != nil {
		return usageErrorf("cannot reserve %s: %v", ip, err)
	}
	st, err := n.Store.State(ctx, ip)
	if err != nil {
		return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v", n.Cfg.Name, err)}
	}
	if st.Record != nil {
		if isReservation(st.Record) {
			return negativef("%s is already reserved on network %s", ip, n.Cfg.Name)
		}
		return negativef("%s is already allocated on network %s to %s", ip, n.Cfg.Name, st.Record.Owner())
	}
	cid := ReservationID(ip)
	rec := store.Record{Network: n.Cfg.Name, IP: ip.String(), Kind: store.KindFixed, Set: set, IfName: ReservedIfName,
		ContainerID: cid, Node: ReservedNode, Created: now}
	claim := &store.Claim{
		Attachment: store.Attachment{ContainerID: cid, IfName: ReservedIfName, IPs: []string{ip.String()}, Node: ReservedNode, Created: now},
		Items:      []store.ClaimItem{{Record: rec, Mode: store.ClaimTomb, State: st}},
	}
	ok, err := n.Store.Commit(ctx, claim)
	if err != nil {
		return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: reserving %s: %v", n.Cfg.Name, ip, err)}
	}
	if !ok {
		if st2, err := n.Store.State(ctx, ip); err == nil && st2.Record != nil {
			return negativef("%s was just allocated on network %s to %s; nothing was reserved", ip, n.Cfg.Name, st2.Record.Owner())
		}
		return negativef("%s on network %s changed while it was being reserved; nothing was reserved (try again)", ip, n.Cfg.Name)
	}
	if note != "" {
		if _, err := n.Store.Client().Put(ctx, n.noteKey(ip), note); err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %s is reserved but its note was not saved: %v", n.Cfg.Name, ip, err)}
		}
	}
	fmt.Fprintf(w, "reserved %s on network %s\n", ip, n.Cfg.Name)
	return nil
}

// readNote returns ip's reservation note, "" when there is none or it
// cannot be read.
func readNote(ctx context.Context, n *Network, ip netip.Addr) string {
	resp, err := n.Store.Client().Get(ctx, n.noteKey(ip))
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// GCReport is gc's JSON/YAML document.
type GCReport struct {
	DryRun     bool          `json:"dryRun"`
	Checked    int           `json:"checked"`
	Candidates []GCCandidate `json:"candidates"`
	Released   []GCCandidate `json:"released"`
}

// GCCandidate is one allocation gc found leaked.
type GCCandidate struct {
	Network string `json:"network"`
	// Kind is "attachment" (a container's interface whose pod is gone) or
	// "sticky" (a StatefulSet ordinal whose StatefulSet is gone or scaled down).
	Kind        string   `json:"kind"`
	Namespace   string   `json:"namespace,omitempty"`
	Pod         string   `json:"pod,omitempty"`
	StatefulSet string   `json:"statefulSet,omitempty"`
	Ordinal     *int     `json:"ordinal,omitempty"`
	ContainerID string   `json:"containerID,omitempty"`
	IfName      string   `json:"ifname"`
	Node        string   `json:"node,omitempty"`
	IPs         []string `json:"ips"`
}

func gcCandidate(c controller.Candidate) GCCandidate {
	g := GCCandidate{Network: c.Network, Kind: c.Kind, Namespace: c.Namespace, Pod: c.Pod, StatefulSet: c.StatefulSet,
		ContainerID: c.ContainerID, IfName: c.IfName, Node: c.Node, IPs: c.IPs}
	if c.Kind == controller.KindSticky {
		o := c.Ordinal
		g.Ordinal = &o
	}
	return g
}

// GC runs kube-ipam-controller's garbage collection once over every network
// (controller.Reconciler.RunOnce: the controller's rules, released on this
// pass); with dryRun it only lists what it would free. Pods are looked up
// by a live GET through the network's kubeconfig.
func GC(ctx context.Context, w, errw io.Writer, nets []*Network, kube func(string, time.Duration) (kubernetes.Interface, error),
	timeout time.Duration, dryRun bool, now time.Time, format string) error {
	rep := GCReport{DryRun: dryRun, Candidates: []GCCandidate{}, Released: []GCCandidate{}}
	var actions []string
	clients := map[string]kubernetes.Interface{}
	opts := controller.OnceOptions{DryRun: dryRun, Progress: func(_ string, done, total int) {
		if done%1000 == 0 {
			fmt.Fprintf(errw, "gc: %d/%d allocations checked\n", done, total)
		}
	}}
	for _, n := range nets {
		kc, ok := clients[n.KubeConfig]
		if !ok {
			var err error
			if kc, err = kube(n.KubeConfig, timeout); err != nil {
				return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: Kubernetes API not configured: %v", n.Cfg.Name, err)}
			}
			clients[n.KubeConfig] = kc
		}
		r := controller.NewReconciler([]*controller.Network{controller.NewNetwork(n.Cfg, n.Store.Client())}, kc, nil, nil,
			controller.Options{Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler)})
		results, err := r.RunOnce(ctx, opts)
		for _, res := range results {
			rep.Checked += res.Checked
			for _, c := range res.Leaked {
				g := gcCandidate(c)
				rep.Candidates = append(rep.Candidates, g)
				action := "would free"
				switch {
				case c.Released:
					action = "freed"
					g.IPs = addrStrings(c.Freed)
					rep.Released = append(rep.Released, g)
				case !dryRun:
					action = "left alone (changed meanwhile)"
				}
				actions = append(actions, action)
			}
		}
		if err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("%v (released so far: %d)", err, len(rep.Released))}
		}
	}
	if format != FormatTable {
		return emit(w, format, rep, nil, nil)
	}
	if len(rep.Candidates) == 0 {
		fmt.Fprintf(w, "No leaked allocations in %d network(s), %d allocation(s) checked.\n", len(nets), rep.Checked)
		return nil
	}
	var rows [][]string
	for i, c := range rep.Candidates {
		owner := c.Namespace + "/" + c.Pod
		if c.Kind == controller.KindSticky {
			owner = fmt.Sprintf("%s/%s ordinal %d", c.Namespace, c.StatefulSet, *c.Ordinal)
		}
		rows = append(rows, []string{c.Network, c.Kind, owner, store.ShortID(c.ContainerID), c.IfName, c.Node, strings.Join(c.IPs, ","), actions[i]})
	}
	if err := table(w, []string{"NETWORK", "KIND", "OWNER", "CONTAINER", "IFNAME", "NODE", "IPS", "ACTION"}, rows); err != nil {
		return err
	}
	if dryRun {
		fmt.Fprintf(w, "Dry run: %d leaked allocation(s) would be freed; nothing was changed.\n", len(rep.Candidates))
	} else {
		fmt.Fprintf(w, "Freed %d of %d leaked allocation(s).\n", len(rep.Released), len(rep.Candidates))
	}
	return nil
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}
