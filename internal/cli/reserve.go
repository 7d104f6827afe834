package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"kubeipam/internal/allocator"
	"kubeipam/internal/config"
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

// GC runs the controller's garbage collection once over every network,
// with grace 0; with dryRun it only lists what it would free.
func GC(ctx context.Context, w, errw io.Writer, nets []*Network, kube func(string, time.Duration) (kubernetes.Interface, error),
	timeout time.Duration, dryRun bool, now time.Time, format string) error {
	rep := GCReport{DryRun: dryRun, Candidates: []GCCandidate{}, Released: []GCCandidate{}}
	clients := map[string]kubernetes.Interface{}
	for _, n := range nets {
		kc, ok := clients[n.KubeConfig]
		if !ok {
			var err error
			if kc, err = kube(n.KubeConfig, timeout); err != nil {
				return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: Kubernetes API not configured: %v", n.Cfg.Name, err)}
			}
			clients[n.KubeConfig] = kc
		}
		progress := func(done, total int) {
			if done%1000 == 0 {
				fmt.Fprintf(errw, "gc: %d/%d allocations checked\n", done, total)
			}
			if done == total {
				rep.Checked += total
			}
		}
		cands, rel, err := gcPass(ctx, n, kc, now, dryRun, progress)
		rep.Candidates = append(rep.Candidates, cands...)
		rep.Released = append(rep.Released, rel...)
		if err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v (released so far: %d)", n.Cfg.Name, err, len(rep.Released))}
		}
	}
	if format != FormatTable {
		return emit(w, format, rep, nil, nil)
	}
	if len(rep.Candidates) == 0 {
		fmt.Fprintf(w, "No leaked allocations in %d network(s), %d allocation(s) checked.\n", len(nets), rep.Checked)
		return nil
	}
	freed := map[string]bool{}
	for _, c := range rep.Released {
		freed[candKey(c)] = true
	}
	var rows [][]string
	for _, c := range rep.Candidates {
		owner := c.Namespace + "/" + c.Pod
		if c.Kind == "sticky" {
			owner = fmt.Sprintf("%s/%s ordinal %d", c.Namespace, c.StatefulSet, ordinal(c))
		}
		action := "would free"
		if !dryRun {
			action = "left alone (changed meanwhile)"
			if freed[candKey(c)] {
				action = "freed"
			}
		}
		rows = append(rows, []string{c.Network, c.Kind, owner, store.ShortID(c.ContainerID), c.IfName, c.Node, strings.Join(c.IPs, ","), action})
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

func candKey(c GCCandidate) string {
	return fmt.Sprintf("%s|%s|%s|%s|%s|%s|%d", c.Network, c.Kind, c.ContainerID, c.IfName, c.Namespace, c.StatefulSet, ordinal(c))
}

func ordinal(c GCCandidate) int {
	if c.Ordinal == nil {
		return -1
	}
	return *c.Ordinal
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

type owner int

const (
	ownerAlive owner = iota
	ownerIsGone
	ownerUnknown // API error: never free
)

// gcPass applies kube-ipam-controller's GC rules (internal/controller
// Reconciler.Pass) once to one network, with grace 0: two observations
// cannot span separate runs. The controller package imports this one, so
// the rules are restated here rather than shared:
//   - an attachment without a pod (e.g. a reservation) is never touched;
//   - a pod is gone only when a live GET says NotFound or shows another UID;
//     any other API error keeps the allocation;
//   - an attachment whose records are StatefulSet ordinals still wanted
//     (StatefulSet of that UID exists, ordinal < replicas) is kept;
//   - a sticky record is freed when its StatefulSet is gone (or another
//     UID) or scaled below its ordinal;
//   - every release is store.ReleaseAttachment / ReleaseSticky, one etcd
//     transaction guarded by the revisions read.
func gcPass(ctx context.Context, n *Network, kube kubernetes.Interface, now time.Time, dryRun bool, progress func(done, total int)) (candidates, released []GCCandidate, err error) {
	s, err := read(ctx, n)
	if err != nil {
		return nil, nil, err
	}
	stickies, err := n.Store.Stickies(ctx)
	if err != nil {
		return nil, nil, err
	}
	policy := allocator.ReusePolicy(n.Cfg)
	name := n.Cfg.Name
	pods := map[string]owner{}
	stss := map[string]*appsv1.StatefulSet{}
	stsErr := map[string]bool{}
	podOwner := func(ns, pname, uid string) owner {
		key := ns + "/" + pname + "/" + uid
		if st, ok := pods[key]; ok {
			return st
		}
		p, err := kube.CoreV1().Pods(ns).Get(ctx, pname, metav1.GetOptions{})
		st := ownerAlive
		switch {
		case apierrors.IsNotFound(err):
			st = ownerIsGone
		case err != nil:
			st = ownerUnknown
		case uid != "" && string(p.UID) != uid:
			st = ownerIsGone
		}
		pods[key] = st
		return st
	}
	stsOwner := func(ns, sname, uid string, ordinal int) owner {
		key := ns + "/" + sname
		sts, ok := stss[key]
		if !ok && !stsErr[key] {
			got, err := kube.AppsV1().StatefulSets(ns).Get(ctx, sname, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				stss[key] = nil
			case err != nil:
				stsErr[key] = true
			default:
				stss[key] = got
				sts = got
			}
		}
		if stsErr[key] {
			return ownerUnknown
		}
		if sts == nil || string(sts.UID) != uid {
			return ownerIsGone
		}
		replicas := 1
		if sts.Spec.Replicas != nil {
			replicas = int(*sts.Spec.Replicas)
		}
		if ordinal >= replicas {
			return ownerIsGone
		}
		return ownerAlive
	}
	total := len(s.atts) + len(stickies)
	done := 0
	tick := func() {
		done++
		if progress != nil {
			progress(done, total)
		}
	}
	for _, ae := range s.atts {
		if err := ctx.Err(); err != nil {
			return candidates, released, err
		}
		tick()
		att := ae.Att
		if att.PodName == "" {
			continue
		}
		if podOwner(att.PodNamespace, att.PodName, att.PodUID) != ownerIsGone {
			continue
		}
		keep := false
		for _, ipStr := range att.IPs {
			a, err := netip.ParseAddr(ipStr)
			if err != nil {
				continue
			}
			e, ok := s.byIP[a]
			if !ok || e.Rec.ContainerID != att.ContainerID || e.Rec.IfName != att.IfName || e.Rec.StatefulSetUID == "" {
				continue
			}
			if stsOwner(e.Rec.PodNamespace, e.Rec.StatefulSet, e.Rec.StatefulSetUID, e.Rec.Ordinal) != ownerIsGone {
				keep = true
			}
		}
		if keep {
			continue
		}
		c := GCCandidate{Network: name, Kind: "attachment", Namespace: att.PodNamespace, Pod: att.PodName, ContainerID: att.ContainerID,
			IfName: att.IfName, Node: att.Node, IPs: append([]string{}, att.IPs...)}
		candidates = append(candidates, c)
		if dryRun {
			continue
		}
		freed, ok, err := n.Store.ReleaseAttachment(ctx, att, now, policy)
		if err != nil {
			return candidates, released, fmt.Errorf("releasing container %s interface %s: %w", store.ShortID(att.ContainerID), att.IfName, err)
		}
		if ok {
			c.IPs = addrStrings(freed)
			released = append(released, c)
		}
	}
	for _, e := range stickies {
		if err := ctx.Err(); err != nil {
			return candidates, released, err
		}
		tick()
		if stsOwner(e.Namespace, e.StatefulSet, e.StatefulSetUID, e.Ordinal) != ownerIsGone {
			continue
		}
		o := e.Ordinal
		c := GCCandidate{Network: name, Kind: "sticky", Namespace: e.Namespace, StatefulSet: e.StatefulSet, Ordinal: &o, IfName: e.IfName,
			IPs: append([]string{}, e.IPs...)}
		candidates = append(candidates, c)
		if dryRun {
			continue
		}
		freed, ok, err := n.Store.ReleaseSticky(ctx, e, now, policy)
		if err != nil {
			return candidates, released, fmt.Errorf("releasing sticky %s/%s ordinal %d: %w", e.Namespace, e.StatefulSet, e.Ordinal, err)
		}
		if ok {
			c.IPs = addrStrings(freed)
			released = append(released, c)
		}
	}
	return candidates, released, nil
}

func addrStrings(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}
