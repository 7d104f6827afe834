package tier

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// TablePrefix starts the name of every table kube-multus owns; the
// interface name follows ("kube-multus-net1").
const TablePrefix = "kube-multus-"

// TableName is the inet table holding kube-multus's policy of one
// interface.
func TableName(ifname string) string { return TablePrefix + ifname }

// ChainedTablePrefix starts the name of every table the kube-tier chained
// plugin owns ("kube-tier-net1").
const ChainedTablePrefix = "kube-tier-"

// ChainedTableName is the inet table holding kube-tier's policy of one
// interface. It differs from kube-multus's so that both policies can be
// configured on one interface without either silently replacing the other:
// a packet then has to pass both, and each plugin's DEL removes only its
// own table.
func ChainedTableName(ifname string) string { return ChainedTablePrefix + ifname }

// NFTRule is one nftables rule as data: its expressions, and Desc, what
// `nft list ruleset` shows for them (used in logs and tests).
type NFTRule struct {
	Desc  string
	Exprs []expr.Any
}

// Rules builds the input-hook rules that enforce policy on ifname, in
// order: established/related traffic, IPv6 neighbour discovery, every
// allowance, then a drop of everything else arriving on ifname. Traffic on
// other interfaces is never matched. An empty policy yields no rules (the
// interface stays open).
func Rules(ifname string, policy []Rule) ([]NFTRule, error) {
	if len(policy) == 0 {
		return nil, nil
	}
	if len(ifname) == 0 || len(ifname) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("interface name %q: want 1-15 bytes", ifname)
	}
	iif := matchIfname(ifname)
	out := []NFTRule{
		{Desc: fmt.Sprintf("iifname %s ct state established,related accept", ifname),
			Exprs: cat(iif, ctEstablished(), accept())},
		{Desc: fmt.Sprintf("iifname %s icmpv6 type 133-137 accept (neighbour discovery)", ifname),
			Exprs: cat(iif, matchNFProto(unix.NFPROTO_IPV6), matchL4(unix.IPPROTO_ICMPV6),
				matchRange(expr.PayloadBaseTransportHeader, 0, []byte{133}, []byte{137}), accept())},
	}
	for i := range policy {
		r := &policy[i]
		if len(r.sources) != len(r.From) {
			if err := r.Validate("rule"); err != nil {
				return nil, err
			}
		}
		srcs := r.sources
		if len(srcs) == 0 {
			srcs = []Source{{}} // any source
		}
		for _, src := range srcs {
			from, srcDesc := matchSource(src)
			who := fmt.Sprintf("iifname %s%s", ifname, srcDesc)
			if len(r.Ports) == 0 && !r.ICMP {
				out = append(out, NFTRule{Desc: who + " accept", Exprs: cat(iif, from, accept())})
				continue
			}
			for _, p := range r.Ports {
				proto := strings.ToLower(p.Protocol)
				end := max(p.EndPort, p.Port)
				desc := fmt.Sprintf("%s %s dport %d", who, proto, p.Port)
				if end != p.Port {
					desc += fmt.Sprintf("-%d", end)
				}
				out = append(out, NFTRule{Desc: desc + " accept", Exprs: cat(iif, from, matchL4(protocols[proto]),
					matchRange(expr.PayloadBaseTransportHeader, 2, binaryutil.BigEndian.PutUint16(p.Port), binaryutil.BigEndian.PutUint16(end)),
					accept())})
			}
			if r.ICMP {
				out = append(out, icmpEcho(who, iif, from, src)...)
			}
		}
	}
	out = append(out, NFTRule{Desc: fmt.Sprintf("iifname %s counter drop", ifname),
		Exprs: cat(iif, []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}})})
	return out, nil
}

func icmpEcho(who string, iif, from []expr.Any, src Source) []NFTRule {
	v4 := NFTRule{Desc: who + " icmp type echo-request accept", Exprs: cat(iif, from, matchNFProto(unix.NFPROTO_IPV4),
		matchL4(unix.IPPROTO_ICMP), matchRange(expr.PayloadBaseTransportHeader, 0, []byte{8}, []byte{8}), accept())}
	v6 := NFTRule{Desc: who + " icmpv6 type echo-request accept", Exprs: cat(iif, from, matchNFProto(unix.NFPROTO_IPV6),
		matchL4(unix.IPPROTO_ICMPV6), matchRange(expr.PayloadBaseTransportHeader, 0, []byte{128}, []byte{128}), accept())}
	switch {
	case !src.First.IsValid():
		return []NFTRule{v4, v6}
	case src.First.Is4():
		return []NFTRule{v4}
	default:
		return []NFTRule{v6}
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func matchIfname(name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func matchNFProto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func matchL4(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

// matchRange loads len(from) bytes at offset of base and compares them with
// the inclusive range [from, to] (network byte order); a single value is a
// plain comparison.
func matchRange(base expr.PayloadBase, offset uint32, from, to []byte) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: uint32(len(from))}
	if bytes.Equal(from, to) {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: from}}
	}
	return []expr.Any{load, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: from, ToData: to}}
}

// matchPrefix compares the address at offset with a CIDR block (mask, then
// compare), which nft shows as "ip saddr 10.0.0.0/24".
func matchPrefix(offset uint32, src Source) []expr.Any {
	addr := src.First.AsSlice()
	mask := net.CIDRMask(src.Bits, len(addr)*8)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr},
	}
}

func matchSource(src Source) ([]expr.Any, string) {
	if !src.First.IsValid() {
		return nil, ""
	}
	family, offset, desc := byte(unix.NFPROTO_IPV4), uint32(12), " ip saddr "
	if !src.First.Is4() {
		family, offset, desc = unix.NFPROTO_IPV6, 8, " ip6 saddr "
	}
	match := matchRange(expr.PayloadBaseNetworkHeader, offset, src.First.AsSlice(), src.Last.AsSlice())
	if src.Bits >= 0 && src.First != src.Last {
		match = matchPrefix(offset, src)
	}
	return cat(matchNFProto(family), match), desc + src.String()
}

func ctEstablished() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// Apply replaces kube-multus's policy table of ifname in the network
// namespace at nsPath with rules; see [ApplyTable].
func Apply(nsPath, ifname string, rules []NFTRule) error {
	return ApplyTable(nsPath, TableName(ifname), rules)
}

// ApplyTable replaces the inet table named table in the network namespace
// at nsPath with one input chain holding rules, atomically (one netlink
// batch). Rules match the interface by name, so they may be installed
// before the interface exists: nothing arrives unfiltered.
func ApplyTable(nsPath, table string, rules []NFTRule) error {
	return inNS(nsPath, func(c *nftables.Conn) {
		t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
		c.AddTable(t) // create if missing, so that the delete cannot fail
		c.DelTable(t)
		c.AddTable(t)
		policy := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &policy})
		for _, r := range rules {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r.Exprs})
		}
	})
}

// Remove deletes kube-multus's policy table of ifname; it succeeds when
// there is none.
func Remove(nsPath, ifname string) error { return RemoveTable(nsPath, TableName(ifname)) }

// RemoveTable deletes the inet table named table; it succeeds when there is
// none.
func RemoveTable(nsPath, table string) error {
	return inNS(nsPath, func(c *nftables.Conn) {
		t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
		c.AddTable(t)
		c.DelTable(t)
	})
}

// Installed reports whether kube-multus's policy table of ifname exists.
func Installed(nsPath, ifname string) (bool, error) { return TableInstalled(nsPath, TableName(ifname)) }

// TableInstalled reports whether the inet table named table exists.
func TableInstalled(nsPath, table string) (bool, error) {
	var found bool
	err := withConn(nsPath, func(c *nftables.Conn) error {
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		for _, t := range tables {
			found = found || t.Name == table
		}
		return err
	})
	return found, err
}

func inNS(nsPath string, batch func(*nftables.Conn)) error {
	return withConn(nsPath, func(c *nftables.Conn) error {
		batch(c)
		return c.Flush()
	})
}

func withConn(nsPath string, f func(*nftables.Conn) error) error {
	fd, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("opening network namespace: %w", err)
	}
	defer fd.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := f(c); err != nil {
		return fmt.Errorf("nftables in %s: %w", nsPath, err)
	}
	return nil
}

// IsNotExist reports whether err says the namespace is gone.
func IsNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
