package cli

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

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

// reservable checks ip as allocator.ValidateFixed does, except the fixed
// block: inside a subnet, not its network, broadcast or gateway address,
// not excluded (ipam.exclude already keeps it from everyone; a reservation
// of it would only be reported by check).
func reservable(cfg *config.Network, ip netip.Addr) (int, error) {
	if x, ok := cfg.Excluded(ip); ok {
		return -1, fmt.Errorf("%s is excluded by ipam.exclude entry %q of network %s: it is never handed out, no reservation is needed", ip, x.Entry, cfg.Name)
	}
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
		Note:       note,
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
	fmt.Fprintf(w, "reserved %s on network %s\n", ip, n.Cfg.Name)
	return nil
}

// readNote returns ip's reservation note, "" when there is none or it
// cannot be read.
func readNote(ctx context.Context, n *Network, ip netip.Addr) string {
	note, _ := n.Store.Note(ctx, ip)
	return note
}
