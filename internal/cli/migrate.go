package cli

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"kubeipam/internal/config"
	"kubeipam/internal/store"
)

// MigrateReport is migrate's JSON/YAML document, one entry per network.
type MigrateReport struct {
	DryRun   bool             `json:"dryRun"`
	Networks []MigrateNetwork `json:"networks"`
}

// MigrateNetwork is what migrate copied (or, with --dry-run, would copy) for
// one network.
type MigrateNetwork struct {
	Network string `json:"network"`
	From    string `json:"from"`
	To      string `json:"to"`
	// Attachments and Addresses copied (held addresses, with their
	// attachments); Present were already held by the same holder there.
	Attachments int `json:"attachments"`
	Addresses   int `json:"addresses"`
	Present     int `json:"present"`
	// Stickies and Tombstones copied (StatefulSet ordinals' remembered
	// addresses, released addresses with their release time).
	Stickies   int `json:"stickies"`
	Tombstones int `json:"tombstones"`
	// Conflicts are addresses held there by another holder: not copied.
	Conflicts []string `json:"conflicts"`
}

// migrateGroup is one attachment to copy: its records by container and
// interface, with the attachment as the source read it (nil for records
// whose attachment is missing: a stand-in is made from the record).
type migrateGroup struct {
	att  *store.Attachment
	recs []store.RecordEntry
}

// groupHeld groups the snapshot's records by holder (container, interface).
// Every held address is in exactly one group, attachment or not, so that
// nothing held is left behind.
func groupHeld(s *store.Snapshot) []migrateGroup {
	atts := map[[2]string]*store.Attachment{}
	for _, a := range s.Attachments {
		atts[[2]string{a.ContainerID, a.IfName}] = a
	}
	byHolder := map[[2]string]*migrateGroup{}
	var order [][2]string
	for _, e := range s.Records {
		k := [2]string{e.Record.ContainerID, e.Record.IfName}
		g := byHolder[k]
		if g == nil {
			g = &migrateGroup{att: atts[k]}
			byHolder[k] = g
			order = append(order, k)
		}
		g.recs = append(g.recs, e)
	}
	out := make([]migrateGroup, 0, len(order))
	for _, k := range order {
		out = append(out, *byHolder[k])
	}
	return out
}

// Migrate copies every network's allocations from its store (nets) into the
// store of the network with the same name in dst: held addresses with their
// attachments, StatefulSet sticky records and tombstones (release times,
// reserved StatefulSet addresses). The source is only read, and nothing
// held in the destination is freed or taken over: run migrate, switch the
// nodes' config to the new store, run migrate again for what was allocated
// on the old store meanwhile (free in the new store until then). It exits 1
// when an address is held by another holder in the destination.
func Migrate(ctx context.Context, w io.Writer, nets, dst []*Network, dryRun bool, format string) error {
	byName := map[string]*Network{}
	for _, n := range dst {
		byName[n.Cfg.Name] = n
	}
	rep := MigrateReport{DryRun: dryRun, Networks: []MigrateNetwork{}}
	for _, n := range nets {
		d := byName[n.Cfg.Name]
		if d == nil {
			return usageErrorf("network %s is not in the destination config", n.Cfg.Name)
		}
		if sameStore(n, d) {
			return usageErrorf("network %s: the destination is the source (%s)", n.Cfg.Name, n.Store.Describe())
		}
		imp, ok := d.Store.(store.Importer)
		if !ok {
			return usageErrorf("network %s: %s cannot import allocations", n.Cfg.Name, d.Store.Describe())
		}
		mn, err := migrateNetwork(ctx, n, d, imp, dryRun)
		if err != nil {
			return &ExitError{Code: 3, Msg: fmt.Sprintf("network %s: %v (what was copied stays; run migrate again)", n.Cfg.Name, err)}
		}
		rep.Networks = append(rep.Networks, mn)
	}
	var rows [][]string
	conflicts := 0
	for _, m := range rep.Networks {
		rows = append(rows, []string{m.Network, m.From, m.To, strconv.Itoa(m.Attachments), strconv.Itoa(m.Addresses),
			strconv.Itoa(m.Present), strconv.Itoa(m.Stickies), strconv.Itoa(m.Tombstones), strconv.Itoa(len(m.Conflicts))})
		conflicts += len(m.Conflicts)
	}
	if err := emit(w, format, rep, []string{"NETWORK", "FROM", "TO", "ATTACHMENTS", "ADDRESSES", "PRESENT", "STICKY", "TOMBSTONES", "CONFLICTS"}, rows); err != nil {
		return err
	}
	if format == "" || format == "table" {
		for _, m := range rep.Networks {
			for _, c := range m.Conflicts {
				fmt.Fprintf(w, "conflict: network %s: %s\n", m.Network, c)
			}
		}
		if dryRun {
			fmt.Fprintln(w, "dry run: nothing was written")
		}
	}
	if conflicts > 0 {
		return negativef("%d address(es) are held by another holder in the destination; their holders' addresses were not copied", conflicts)
	}
	return nil
}

// sameStore reports whether two networks' stores are one: the same
// description (etcd prefix and network, or API server) and, for etcd, the
// same endpoints (two etcd clusters may use one prefix).
func sameStore(n, d *Network) bool {
	if n.Store.Describe() != d.Store.Describe() {
		return false
	}
	if n.Cfg.Store != config.StoreKubernetes && d.Cfg.Store != config.StoreKubernetes {
		a, b := slices.Clone(n.Cfg.Etcd.Endpoints), slices.Clone(d.Cfg.Etcd.Endpoints)
		slices.Sort(a)
		slices.Sort(b)
		return slices.Equal(a, b)
	}
	return true
}

func migrateNetwork(ctx context.Context, n, d *Network, imp store.Importer, dryRun bool) (MigrateNetwork, error) {
	m := MigrateNetwork{Network: n.Cfg.Name, From: n.Store.Describe(), To: d.Store.Describe(), Conflicts: []string{}}
	snap, err := n.Store.Snapshot(ctx)
	if err != nil {
		return m, fmt.Errorf("reading %s: %w", m.From, err)
	}
	for _, g := range groupHeld(snap) {
		if err := migrateGroupTo(ctx, snap, g, d, &m, dryRun); err != nil {
			return m, err
		}
	}
	for _, e := range snap.Stickies {
		if dryRun {
			m.Stickies++
			continue
		}
		ok, err := imp.ImportSticky(ctx, e.Sticky)
		if err != nil {
			return m, fmt.Errorf("copying the sticky record of %s/%s ordinal %d: %w", e.Namespace, e.StatefulSet, e.Ordinal, err)
		}
		if ok {
			m.Stickies++
		}
	}
	tombs := make([]netip.Addr, 0, len(snap.Tombs))
	for a := range snap.Tombs {
		if snap.Record(a) == nil {
			tombs = append(tombs, a)
		}
	}
	sort.Slice(tombs, func(i, j int) bool { return tombs[i].Less(tombs[j]) })
	for _, a := range tombs {
		set, _, ok := d.Cfg.SetFor(a)
		if !ok {
			continue // outside the destination network: nothing to keep
		}
		if dryRun {
			m.Tombstones++
			continue
		}
		ok, err := imp.ImportTombstone(ctx, a, *snap.Tombs[a], set)
		if err != nil {
			return m, fmt.Errorf("copying the tombstone of %s: %w", a, err)
		}
		if ok {
			m.Tombstones++
		}
	}
	return m, nil
}

// migrateGroupTo copies one holder's addresses as one claim in the
// destination. Addresses already held there by the same holder are left as
// they are; each address held by another holder is a conflict, and then
// nothing of the group is copied.
func migrateGroupTo(ctx context.Context, snap *store.Snapshot, g migrateGroup, d *Network, m *MigrateNetwork, dryRun bool) error {
	first := g.recs[0].Record
	att := store.Attachment{ContainerID: first.ContainerID, IfName: first.IfName, PodNamespace: first.PodNamespace,
		PodName: first.PodName, PodUID: first.PodUID, Node: first.Node, Cluster: first.Cluster, Created: first.Created}
	if g.att != nil {
		att = *g.att
		att.Rev, att.Key, att.Partial, att.IPs = "", "", false, nil
	}
	for attempt := 0; attempt < 8; attempt++ {
		claim := &store.Claim{Attachment: att}
		present := 0
		var conflicts []string
		for _, e := range g.recs {
			st, err := d.Store.State(ctx, e.IP)
			if err != nil {
				return err
			}
			if r := st.Record; r != nil {
				if r.ContainerID == first.ContainerID && r.IfName == first.IfName {
					present++
					continue
				}
				conflicts = append(conflicts, fmt.Sprintf("%s is held by %s here and by %s in %s", e.IP, r.Owner(), e.Record.Owner(), m.From))
				continue
			}
			claim.Items = append(claim.Items, store.ClaimItem{Record: *e.Record, Mode: store.ClaimTomb, State: st})
			if note := snap.Notes[e.IP]; note != "" {
				claim.Note = note
			}
		}
		switch {
		case len(conflicts) > 0:
			// Every address of the holder held by another is named; none
			// of the holder's addresses is copied.
			m.Conflicts = append(m.Conflicts, conflicts...)
			return nil
		case len(claim.Items) == 0:
			m.Present += present
			return nil
		case present > 0:
			var ips []string
			for _, e := range g.recs {
				ips = append(ips, e.IP.String())
			}
			m.Conflicts = append(m.Conflicts, fmt.Sprintf("%s (container %s, interface %s): only %d of its addresses %s are held there; release them there and run migrate again",
				first.Owner(), store.ShortID(first.ContainerID), first.IfName, present, strings.Join(ips, ", ")))
			return nil
		case dryRun:
			m.Attachments++
			m.Addresses += len(claim.Items)
			return nil
		}
		ok, err := d.Store.Commit(ctx, claim)
		if err != nil {
			return fmt.Errorf("copying the addresses of %s: %w", first.Owner(), err)
		}
		if ok {
			m.Attachments++
			m.Addresses += len(claim.Items)
			return nil
		}
	}
	return fmt.Errorf("copying the addresses of %s kept losing races with concurrent writers", first.Owner())
}
