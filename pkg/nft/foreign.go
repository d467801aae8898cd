package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
)

// Blocker is a forward-hook chain of another table that drops fwdd's
// forwarded connections: every table's base chains see every packet, so an
// accept in fwdd's table does not override a drop elsewhere.
type Blocker struct {
	Family string `json:"family"` // ip, ip6, inet
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	// Reason says what drops: "policy drop", "rule handle N in chain C
	// drops every packet", "... rejects fwdd's connections" (a rule whose
	// conditions hold for them), followed by the kinds of connection it
	// applies to when not all ("(tcp)"); several reasons are joined by "; ".
	Reason string `json:"reason"`
	// Allow is the exact command that lets fwdd's connections through, in
	// the syntax of the tool that owns the table (nft, iptables, firewalld, ufw).
	Allow string `json:"allow"`
}

func (b Blocker) String() string {
	return fmt.Sprintf("table %s %s chain %s: %s", b.Family, b.Table, b.Chain, b.Reason)
}

// Owner guesses which tool wrote a table, from the names those tools use:
// "firewalld", "ufw" (its chains in iptables' filter table), "docker",
// "iptables" (iptables-nft's tables) or "nft".
func Owner(family, table string, chains []string) string {
	if table == "firewalld" {
		return "firewalld"
	}
	iptables := (family == "ip" || family == "ip6") &&
		(table == "filter" || table == "nat" || table == "mangle" || table == "raw" || table == "security")
	if iptables {
		for _, c := range chains {
			if strings.HasPrefix(c, "ufw-") || strings.HasPrefix(c, "ufw6-") {
				return "ufw"
			}
		}
		for _, c := range chains {
			if c == "DOCKER-USER" {
				return "docker"
			}
		}
		for _, c := range chains {
			if c == "FORWARD" || c == "INPUT" || c == "OUTPUT" || c == "PREROUTING" || c == "POSTROUTING" {
				return "iptables"
			}
		}
	}
	return "nft"
}

// AllowRule returns the command that makes chain of a table accept fwdd's
// connections (ct mark tag under mask), for the tool that owns the table.
func AllowRule(owner, family, table, chain string, tag, mask uint32) string {
	switch owner {
	case "docker", "iptables", "ufw":
		cmd := "iptables"
		if family == "ip6" {
			cmd = "ip6tables"
		}
		match := fmt.Sprintf("-m connmark --mark %#08x/%#08x -j ACCEPT", tag, mask)
		switch owner {
		case "docker":
			// Docker rewrites FORWARD but leaves DOCKER-USER to the operator.
			return fmt.Sprintf("%s -I DOCKER-USER %s", cmd, match)
		case "ufw":
			return fmt.Sprintf("add \"-A ufw-before-forward %s\" to /etc/ufw/before.rules (before6.rules for IPv6), then ufw reload", match)
		}
		return fmt.Sprintf("%s -I %s %s", cmd, chain, match)
	case "firewalld":
		// firewalld's forward chain (nftables backend, 0.7 and later)
		// accepts every DNATed connection, fwdd's included, right after
		// established ones, before zones and policies, unless
		// StrictForwardPorts=yes (2.3 and later) sends them to a chain
		// that accepts only firewalld's own forward ports and rejects the
		// rest: no zone or policy setting reaches them then. An iptables
		// ACCEPT (firewall-cmd --direct, deprecated) does not help either:
		// firewalld's own nftables chain still rejects the packet.
		return "set StrictForwardPorts=no in /etc/firewalld/firewalld.conf, then run firewall-cmd --reload " +
			"(firewalld's forward chain then accepts DNATed connections, all of fwdd's among them, before its zones and policies)"
	}
	return fmt.Sprintf("nft insert rule %s %s %s ct mark and %#08x == %#08x accept", family, table, chain, mask, tag)
}

// Forwarded is what fwdd forwards, as other tables see it: its tag in the
// ct mark and the kinds of packet (family, protocol) of its forwards.
type Forwarded struct {
	Tag, Mask uint32 // the tag under its mask
	packets   []packet
}

// ForwardedBy returns what the forwards of cfg forward.
func ForwardedBy(cfg *config.Config) Forwarded {
	fw := Forwarded{Tag: cfg.Daemon.CtMark.Tag, Mask: cfg.Daemon.CtMark.TagMask}
	for i := range cfg.Forwards {
		f := &cfg.Forwards[i]
		p := packet{nfproto: unix.NFPROTO_IPV4}
		if f.IPv6() {
			p.nfproto = unix.NFPROTO_IPV6
		}
		for _, proto := range f.Protos {
			p.l4proto = byte(proto)
			if !slices.Contains(fw.packets, p) {
				fw.packets = append(fw.packets, p)
			}
		}
	}
	return fw
}

// Sees reports whether a table of family ("ip", "ip6", "inet") sees
// packets of fwdd's forwarded connections at its forward hook. Tables of
// the bridge family see bridged frames there, not routed packets, and the
// netdev family has no forward hook: neither ever does.
func (fw Forwarded) Sees(family string) bool {
	return len(fw.packetsIn(tableFamily(family))) > 0
}

// packetsIn lists the kinds of packet of fwdd's connections that a table
// of family fam sees.
func (fw Forwarded) packetsIn(fam nftables.TableFamily) []packet {
	var out []packet
	for _, p := range packetsOf(fam) {
		if slices.Contains(fw.packets, p) {
			out = append(out, p)
		}
	}
	return out
}

func tableFamily(name string) nftables.TableFamily {
	switch name {
	case "ip":
		return nftables.TableFamilyIPv4
	case "ip6":
		return nftables.TableFamilyIPv6
	case "inet":
		return nftables.TableFamilyINet
	}
	return nftables.TableFamilyUnspecified
}

// ForeignBlockers lists the forward-hook chains of tables other than fwdd's
// own (inet own) that drop connections fwdd forwards (fw): chains of
// families fwdd forwards none of are left out. It only reads.
func (k *Netlink) ForeignBlockers(own string, fw Forwarded) ([]Blocker, error) {
	c, err := k.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	type tkey struct {
		fam  nftables.TableFamily
		name string
	}
	byTable := map[tkey][]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table == nil {
			continue
		}
		f := ch.Table.Family
		if len(fw.packetsIn(f)) == 0 { // bridge, netdev, arp; or no forward of the family
			continue
		}
		if f == nftables.TableFamilyINet && ch.Table.Name == own {
			continue
		}
		k := tkey{f, ch.Table.Name}
		byTable[k] = append(byTable[k], ch)
	}
	var out []Blocker
	for tk, chs := range byTable {
		var hasForward bool
		names := make([]string, len(chs))
		for i, ch := range chs {
			names[i] = ch.Name
			hasForward = hasForward || (ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward)
		}
		if !hasForward {
			continue
		}
		rules := map[string][]*nftables.Rule{}
		for _, ch := range chs {
			rs, err := c.GetRules(ch.Table, ch)
			if err != nil {
				// google/nftables v0.3.0 fails a whole chain on some
				// expressions: it reads the u8 direction of "ct original
				// proto-dst" (firewalld's rules of its forward ports with
				// StrictForwardPorts=yes) as a u32. The chain's rules are
				// then undecided, like rules of unknown conditions: the
				// walk passes over them, and the other chains are listed.
				continue
			}
			rules[ch.Name] = rs
		}
		owner := Owner(familyName(tk.fam), tk.name, names)
		for _, ch := range chs {
			if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward {
				continue
			}
			if ch.Type != "" && ch.Type != nftables.ChainTypeFilter {
				continue
			}
			policyDrop := ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
			reason := blocks(rules, ch.Name, policyDrop, fw.Tag, fw.Mask, fw.packetsIn(tk.fam))
			if reason == "" {
				continue
			}
			out = append(out, Blocker{Family: familyName(tk.fam), Table: tk.name, Chain: ch.Name, Reason: reason,
				Allow: AllowRule(owner, familyName(tk.fam), tk.name, ch.Name, fw.Tag, fw.Mask)})
		}
	}
	slices.SortFunc(out, func(a, b Blocker) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// packet is one kind of packet of fwdd's forwarded connections, as far as
// another table's rules can tell: its family and transport protocol. A
// chain is walked once per kind, as rules may treat them apart (nft's
// "reject with tcp reset" only rejects tcp, "reject with icmp" in an inet
// table only IPv4).
type packet struct {
	nfproto byte // unix.NFPROTO_IPV4 or unix.NFPROTO_IPV6
	l4proto byte // unix.IPPROTO_TCP or unix.IPPROTO_UDP
}

func (p packet) family() string {
	if p.nfproto == unix.NFPROTO_IPV6 {
		return "ipv6"
	}
	return "ipv4"
}

func (p packet) proto() string {
	if p.l4proto == unix.IPPROTO_UDP {
		return "udp"
	}
	return "tcp"
}

// packetsOf lists the kinds of packet a table of family fam sees.
func packetsOf(fam nftables.TableFamily) []packet {
	var nfprotos []byte
	switch fam {
	case nftables.TableFamilyIPv4:
		nfprotos = []byte{unix.NFPROTO_IPV4}
	case nftables.TableFamilyIPv6:
		nfprotos = []byte{unix.NFPROTO_IPV6}
	case nftables.TableFamilyINet:
		nfprotos = []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6}
	}
	var out []packet
	for _, f := range nfprotos {
		for _, l := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
			out = append(out, packet{nfproto: f, l4proto: l})
		}
	}
	return out
}

// verdicts of a walk through a chain, for one of fwdd's new connections.
const (
	walkContinue = iota // fell off the end (or returned)
	walkAccept          // a rule accepts fwdd's marks
	walkDrop            // an unconditional drop or reject
)

// blocks walks a base chain once per kind of packet as one of fwdd's new
// connections would (see walker) and says why it is dropped, or "" when
// every kind is accepted or may pass. A reason that holds for some kinds
// only names them: "rule handle 4 in chain forward rejects fwdd's
// connections (tcp)".
func blocks(rules map[string][]*nftables.Rule, chain string, policyDrop bool, tag, mask uint32, pkts []packet) string {
	var reasons []string
	hit := map[string][]packet{}
	for _, p := range pkts {
		w := walker{rules: rules, tag: tag, mask: mask, pkt: p}
		v, why := w.walk(chain, 0)
		switch {
		case v == walkContinue && policyDrop:
			why = "policy drop"
		case v != walkDrop:
			continue
		}
		if _, seen := hit[why]; !seen {
			reasons = append(reasons, why)
		}
		hit[why] = append(hit[why], p)
	}
	for i, why := range reasons {
		if len(hit[why]) < len(pkts) {
			reasons[i] = why + " (" + describePackets(hit[why], pkts) + ")"
		}
	}
	return strings.Join(reasons, "; ")
}

// describePackets names some of the kinds in all: "tcp", "ipv6" or
// "ipv4 tcp, ipv6 udp".
func describePackets(some, all []packet) string {
	fams, protos := map[string]bool{}, map[string]bool{}
	allFams, allProtos := map[string]bool{}, map[string]bool{}
	for _, p := range some {
		fams[p.family()], protos[p.proto()] = true, true
	}
	for _, p := range all {
		allFams[p.family()], allProtos[p.proto()] = true, true
	}
	if len(some) == len(fams)*len(protos) { // every family with every protocol
		var words []string
		if len(fams) < len(allFams) {
			words = append(words, slices.Sorted(maps.Keys(fams))...)
		}
		if len(protos) < len(allProtos) {
			words = append(words, slices.Sorted(maps.Keys(protos))...)
		}
		return strings.Join(words, " ")
	}
	names := make([]string, len(some))
	for i, p := range some {
		names[i] = p.family() + " " + p.proto()
	}
	return strings.Join(names, ", ")
}

// walker follows a chain as one packet of fwdd's connections would: of its
// kind, with fwdd's tag in its ct mark (under mask) and its conntrack
// entry DNATed (see ct), anything else unknown.
// Only rules whose every condition is known to hold for it are decided
// (others may or may not match: they are passed over); jumps and gotos of
// such rules are followed.
type walker struct {
	rules     map[string][]*nftables.Rule
	tag, mask uint32
	pkt       packet
}

func (w *walker) walk(chain string, depth int) (int, string) {
	if depth > 16 {
		return walkContinue, ""
	}
	for _, r := range w.rules[chain] {
		m, verdict, reject := w.shape(r)
		if m == matchOther {
			continue
		}
		what := "every packet"
		if m == matchFwdd {
			what = "fwdd's connections"
		}
		switch {
		case reject: // a reject drops the packet and answers with an error
			return walkDrop, fmt.Sprintf("rule handle %d in chain %s rejects %s", r.Handle, chain, what)
		case verdict == nil:
			continue
		case verdict.Kind == expr.VerdictDrop:
			return walkDrop, fmt.Sprintf("rule handle %d in chain %s drops %s", r.Handle, chain, what)
		case verdict.Kind == expr.VerdictAccept:
			return walkAccept, ""
		case verdict.Kind == expr.VerdictReturn:
			return walkContinue, ""
		case verdict.Kind == expr.VerdictJump, verdict.Kind == expr.VerdictGoto:
			v, why := w.walk(verdict.Chain, depth+1)
			if v != walkContinue || verdict.Kind == expr.VerdictGoto {
				return v, why
			}
		}
	}
	return walkContinue, ""
}

const (
	matchAll   = iota // the rule has no condition: it matches every packet
	matchFwdd         // its conditions hold for the walker's packet
	matchOther        // a condition fails or is unknown for it
)

// shape says whether a rule matches the walker's packet and returns its
// verdict (nil if none) and whether it rejects (nft's reject, iptables'
// REJECT target).
func (w *walker) shape(r *nftables.Rule) (match int, verdict *expr.Verdict, reject bool) {
	match = matchAll
	regs := map[uint32]value{}
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter, *expr.Log:
		case *expr.Verdict:
			verdict = e
		case *expr.Reject:
			reject = true
		case *expr.Target:
			reject = reject || e.Name == "REJECT"
		case *expr.Immediate:
			regs[e.Register] = exact(e.Data)
		case *expr.Ct:
			if e.SourceRegister { // ct ... set: a statement not followed here
				return matchOther, verdict, reject
			}
			regs[e.Register] = w.ct(e.Key)
		case *expr.Meta:
			if e.SourceRegister {
				return matchOther, verdict, reject
			}
			regs[e.Register] = w.meta(e.Key)
		case *expr.Bitwise:
			regs[e.DestRegister] = regs[e.SourceRegister].bitwise(e)
		case *expr.Cmp:
			if regs[e.Register].compare(e.Op, e.Data) != yes {
				return matchOther, verdict, reject
			}
			match = matchFwdd
		case *expr.Match:
			if e.Name == "comment" {
				// iptables-nft keeps "-m comment" as an xt match (1.8.9),
				// which always matches. Of the other xt matches none is a
				// pure annotation: nfacct, which counts, also matches only
				// over its object's quota if it has one, which the rule
				// does not tell.
				continue
			}
			if w.xtMatch(e) != yes {
				return matchOther, verdict, reject
			}
			match = matchFwdd
		default:
			return matchOther, verdict, reject
		}
	}
	return match, verdict, reject
}

// ctStatusDNAT is IPS_DST_NAT in a conntrack entry's status.
const ctStatusDNAT = 1 << 5

// ct is what a walker knows of a conntrack key, the same for every packet
// of fwdd's connections, both directions and their ICMP errors: fwdd's tag
// in the mark (set at prerouting, before any forward hook), and the DNAT
// bit in the status, as fwdd DNATs every connection it forwards.
func (w *walker) ct(key expr.CtKey) value {
	switch key {
	case expr.CtKeyMARK:
		return value{bits: binary.NativeEndian.AppendUint32(nil, w.tag), known: binary.NativeEndian.AppendUint32(nil, w.mask)}
	case expr.CtKeySTATUS:
		b := binary.NativeEndian.AppendUint32(nil, ctStatusDNAT)
		return value{bits: b, known: slices.Clone(b)}
	}
	return value{}
}

// meta is what a walker knows of a meta key: the packet's family and
// protocol (the kernel stores them as a byte in a zeroed 32-bit register).
func (w *walker) meta(key expr.MetaKey) value {
	switch key {
	case expr.MetaKeyNFPROTO:
		return exact([]byte{w.pkt.nfproto, 0, 0, 0})
	case expr.MetaKeyL4PROTO:
		return exact([]byte{w.pkt.l4proto, 0, 0, 0})
	}
	return value{}
}

// xtMatch decides an iptables match for the walker's packet.
func (w *walker) xtMatch(m *expr.Match) tri {
	switch m.Name {
	case "connmark":
		// iptables' "-m connmark --mark V/M" (struct xt_connmark_mtinfo1:
		// mark, mask, invert; host byte order). xt has no decoder for it.
		u, ok := m.Info.(*xt.Unknown)
		if !ok || len(*u) < 9 {
			return maybe
		}
		b := []byte(*u)
		got := w.ct(expr.CtKeyMARK).bitwise(&expr.Bitwise{Len: 4, Mask: b[4:8], Xor: make([]byte, 4)}).compare(expr.CmpOpEq, b[0:4])
		if b[8] != 0 {
			return got.not()
		}
		return got
	case "conntrack":
		var base *xt.ConntrackMtinfoBase
		var state, status uint16
		switch i := m.Info.(type) {
		case *xt.ConntrackMtinfo1:
			base, state, status = &i.ConntrackMtinfoBase, uint16(i.StateMask), uint16(i.StatusMask)
		case *xt.ConntrackMtinfo2:
			base, state, status = &i.ConntrackMtinfoBase, i.StateMask, i.StatusMask
		case *xt.ConntrackMtinfo3:
			base, state, status = &i.ConntrackMtinfoBase, i.StateMask, i.StatusMask
		default:
			return maybe
		}
		return conntrackMatch(xt.ConntrackFlags(base.MatchFlags), xt.ConntrackFlags(base.InvertFlags), state, status)
	}
	return maybe
}

// xtStateDNAT is the virtual state "DNAT" of iptables' "-m conntrack
// --ctstate" (XT_CONNTRACK_STATE_DNAT), set for a DNATed connection.
const xtStateDNAT = 1 << 7

// conntrackMatch decides iptables' conntrack match (also what iptables-nft
// makes of "-m state") from the --ctstate and --ctstatus it tests: true
// for fwdd's connections when they ask for DNAT. Any other test (address,
// port, protocol, expiry, direction) leaves it undecided.
func conntrackMatch(flags, invert xt.ConntrackFlags, state, status uint16) tri {
	if flags&^(xt.ConntrackState|xt.ConntrackStatus|xt.ConntrackStateAlias) != 0 {
		return maybe
	}
	// The kernel tests mask & bits != 0 for each, then applies the inversion.
	anyOf := func(mask, set uint16, f xt.ConntrackFlags) tri {
		t := maybe
		switch {
		case mask&set != 0:
			t = yes
		case mask == 0:
			t = no
		}
		if invert&f != 0 {
			return t.not()
		}
		return t
	}
	out := yes
	if flags&xt.ConntrackState != 0 {
		out = min(out, anyOf(state, xtStateDNAT, xt.ConntrackState))
	}
	if flags&xt.ConntrackStatus != 0 {
		out = min(out, anyOf(status, ctStatusDNAT, xt.ConntrackStatus))
	}
	return out
}

// tri is a condition's outcome for a packet of which not everything is
// known.
type tri int8

const (
	no tri = iota
	maybe
	yes
)

func (t tri) not() tri { return yes - t }

// value is what is known of a register: the bits set in known are those
// of bits, the others could be anything. The zero value knows nothing.
type value struct {
	bits, known []byte
}

func exact(b []byte) value {
	k := make([]byte, len(b))
	for i := range k {
		k[i] = 0xff
	}
	return value{bits: b, known: k}
}

// bitwise is (v & mask) ^ xor: a bit the mask clears is known whatever v.
func (v value) bitwise(e *expr.Bitwise) value {
	n := int(e.Len)
	if len(e.Mask) != n || len(e.Xor) != n { // a shift, or a decoding this does not know
		return value{}
	}
	out := value{bits: make([]byte, n), known: make([]byte, n)}
	for i := range n {
		var b, k byte
		if i < len(v.bits) {
			b, k = v.bits[i], v.known[i]
		}
		out.bits[i] = b&e.Mask[i] ^ e.Xor[i]
		out.known[i] = ^e.Mask[i] | k
	}
	return out
}

// compare is nft's cmp (a memcmp of the register's first len(data) bytes).
func (v value) compare(op expr.CmpOp, data []byte) tri {
	if len(v.bits) < len(data) {
		return maybe
	}
	differs, whole := false, true
	for i, d := range data {
		differs = differs || (v.bits[i]^d)&v.known[i] != 0
		whole = whole && v.known[i] == 0xff
	}
	if op == expr.CmpOpEq || op == expr.CmpOpNeq {
		eq := maybe
		switch {
		case differs:
			eq = no
		case whole:
			eq = yes
		}
		if op == expr.CmpOpNeq {
			return eq.not()
		}
		return eq
	}
	if !whole {
		return maybe
	}
	c := bytes.Compare(v.bits[:len(data)], data)
	var holds bool
	switch op {
	case expr.CmpOpLt:
		holds = c < 0
	case expr.CmpOpLte:
		holds = c <= 0
	case expr.CmpOpGt:
		holds = c > 0
	case expr.CmpOpGte:
		holds = c >= 0
	default:
		return maybe
	}
	if holds {
		return yes
	}
	return no
}

// TableInfo names a table of another component and guesses its owner.
type TableInfo struct {
	Family string
	Name   string
	Chains []string
	Owner  string // see Owner
}

// Tables lists the tables of the namespace with their chains, fwdd's own
// (inet own) included.
func (k *Netlink) Tables() ([]TableInfo, error) {
	c, err := k.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	out := make([]TableInfo, 0, len(tables))
	for _, t := range tables {
		ti := TableInfo{Family: familyName(t.Family), Name: t.Name}
		for _, ch := range chains {
			if ch.Table != nil && ch.Table.Family == t.Family && ch.Table.Name == t.Name {
				ti.Chains = append(ti.Chains, ch.Name)
			}
		}
		ti.Owner = Owner(ti.Family, ti.Name, ti.Chains)
		out = append(out, ti)
	}
	return out, nil
}
