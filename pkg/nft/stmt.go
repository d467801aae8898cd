package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
)

// Stmt is one statement of a rule. Each statement knows its nft text and its
// kernel expressions side by side, so that `fwdd print` shows exactly what is
// programmed. Both are pure: lowering returns the anonymous sets a
// statement needs (in the lowering) instead of adding them to a batch.
type Stmt interface {
	render(w *nftText)
	lower(l *lowering) []expr.Any
}

// lowering collects what lowering one plan's rules needs besides the
// expressions: anonymous sets, numbered uniquely within the plan. Named
// sets are referred to by name (the kernel finds sets added earlier in the
// same batch by name).
type lowering struct {
	anon   []AnonSet
	lastID uint32
}

// anonSet records an anonymous set and returns the name and id a lookup
// uses: the kernel names the set itself ("__map%d" asks it to).
func (l *lowering) anonSet(s AnonSet) (name string, id uint32) {
	l.lastID++
	s.ID = l.lastID
	l.anon = append(l.anon, s)
	if len(s.Data) > 0 {
		return "__map%d", s.ID
	}
	return "__set%d", s.ID
}

// Family is an address family of fwdd's forwards.
type Family uint8

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

func (f Family) nfproto() byte {
	if f == IPv4 {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

func (f Family) word() string { // nft's name of the family in statements
	if f == IPv4 {
		return "ip"
	}
	return "ip6"
}

func (f Family) addrField() Field {
	if f == IPv4 {
		return FieldIPv4
	}
	return FieldIPv6
}

// loader loads one field of a key into a register.
type loader struct {
	text  string
	field Field
	load  func(reg uint32) []expr.Any
}

func payload(base expr.PayloadBase, off, n uint32) func(uint32) []expr.Any {
	return func(reg uint32) []expr.Any {
		return []expr.Any{&expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: n}}
	}
}

func loadDaddr(f Family) loader {
	if f == IPv4 {
		return loader{"ip daddr", FieldIPv4, payload(expr.PayloadBaseNetworkHeader, 16, 4)}
	}
	return loader{"ip6 daddr", FieldIPv6, payload(expr.PayloadBaseNetworkHeader, 24, 16)}
}

var (
	loadL4Proto = loader{"meta l4proto", FieldProto, func(reg uint32) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg}}
	}}
	loadDport = loader{"th dport", FieldPort, payload(expr.PayloadBaseTransportHeader, 2, 2)}
	loadCtMrk = loader{"ct mark", FieldMark, func(reg uint32) []expr.Any {
		return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: reg}}
	}}
)

// key is a (possibly concatenated) lookup key.
type key []loader

func (k key) text() string {
	parts := make([]string, len(k))
	for i, l := range k {
		parts[i] = l.text
	}
	return strings.Join(parts, " . ")
}

// load puts the key into registers the way nft does: the first field in
// NFT_REG_1, each following one in the next 32-bit register after the
// previous field's padded length (FACTS: registers 1, 9, 10, ...).
func (k key) load() []expr.Any {
	var out []expr.Any
	words := uint32(0)
	for _, l := range k {
		reg := uint32(unix.NFT_REG_1)
		if words > 0 {
			reg = unix.NFT_REG32_00 + words
		}
		out = append(out, l.load(reg)...)
		words += uint32((l.field.size() + 3) / 4)
	}
	return out
}

func cmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

// Matches.

type matchNFProto struct{ fam Family }

func (m matchNFProto) render(w *nftText) {
	w.WriteString("meta nfproto " + map[Family]string{IPv4: "ipv4", IPv6: "ipv6"}[m.fam])
}
func (m matchNFProto) lower(*lowering) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq(1, []byte{m.fam.nfproto()})}
}

type matchIifname struct{ name string }

func (m matchIifname) render(w *nftText) {
	w.WriteString("iifname ")
	w.ifname(m.name)
}
func (m matchIifname) lower(*lowering) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, m.name)
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, cmpEq(1, b)}
}

// matchAddr matches the source or destination address against a prefix.
type matchAddr struct {
	dst    bool
	prefix netip.Prefix
}

func (m matchAddr) render(w *nftText) {
	dir := "saddr"
	if m.dst {
		dir = "daddr"
	}
	p := m.prefix.String()
	if m.prefix.IsSingleIP() {
		p = m.prefix.Addr().String()
	}
	fmt.Fprintf(w, "%s %s %s", familyOf(m.prefix.Addr()).word(), dir, p)
}

func (m matchAddr) lower(*lowering) []expr.Any {
	a := m.prefix.Addr()
	off, n := uint32(12), uint32(4)
	if a.Is6() {
		off, n = 8, 16
	}
	if m.dst {
		off += n
	}
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if !m.prefix.IsSingleIP() {
		mask := make([]byte, n)
		for i := 0; i < m.prefix.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, cmpEq(1, m.prefix.Masked().Addr().AsSlice()))
}

type matchFibLocal struct{}

func (matchFibLocal) render(w *nftText) { w.WriteString("fib daddr type local") }
func (matchFibLocal) lower(*lowering) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: true},
		cmpEq(1, binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)),
	}
}

type matchL4Proto struct{ p config.Proto }

func (m matchL4Proto) render(w *nftText) { w.WriteString("meta l4proto " + m.p.String()) }
func (m matchL4Proto) lower(*lowering) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq(1, []byte{byte(m.p)})}
}

type matchDport struct{ r config.PortRange }

func (m matchDport) render(w *nftText) {
	if m.r.Lo == m.r.Hi {
		fmt.Fprintf(w, "th dport %d", m.r.Lo)
		return
	}
	fmt.Fprintf(w, "th dport %d-%d", m.r.Lo, m.r.Hi)
}

func (m matchDport) lower(*lowering) []expr.Any {
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	if m.r.Lo == m.r.Hi {
		return append(out, cmpEq(1, binary.BigEndian.AppendUint16(nil, m.r.Lo)))
	}
	return append(out, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binary.BigEndian.AppendUint16(nil, m.r.Lo), ToData: binary.BigEndian.AppendUint16(nil, m.r.Hi)})
}

type matchCtMark struct{ mark uint32 }

func (m matchCtMark) render(w *nftText) { fmt.Fprintf(w, "ct mark 0x%08x", m.mark) }
func (m matchCtMark) lower(*lowering) []expr.Any {
	return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, cmpEq(1, binary.NativeEndian.AppendUint32(nil, m.mark))}
}

// matchCtMarkMasked matches marks whose masked bits equal value: fwdd's
// tag byte, whatever the forward id.
type matchCtMarkMasked struct{ mask, value uint32 }

func (m matchCtMarkMasked) render(w *nftText) {
	fmt.Fprintf(w, "ct mark and 0x%08x == 0x%08x", m.mask, m.value)
}

func (m matchCtMarkMasked) lower(*lowering) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, m.mask), Xor: make([]byte, 4)},
		cmpEq(1, binary.NativeEndian.AppendUint32(nil, m.value)),
	}
}

type matchCtDirection struct{ reply bool }

func (m matchCtDirection) render(w *nftText) {
	if m.reply {
		w.WriteString("ct direction reply")
		return
	}
	w.WriteString("ct direction original")
}

func (m matchCtDirection) lower(*lowering) []expr.Any {
	d := byte(0)
	if m.reply {
		d = 1
	}
	return []expr.Any{&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1}, cmpEq(1, []byte{d})}
}

// matchCtStateNewOrInvalid matches packets conntrack has no entry for
// (new, including a mid-stream packet picked up as new) or could not track.
type matchCtStateNewOrInvalid struct{}

func (matchCtStateNewOrInvalid) render(w *nftText) { w.WriteString("ct state invalid,new") }
func (matchCtStateNewOrInvalid) lower(*lowering) []expr.Any {
	bits := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitINVALID|expr.CtStateBitNEW)
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: bits, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// matchTCPNotSyn matches TCP segments other than a connection's first (a
// SYN without ACK): mid-stream segments and SYN-ACKs. It must follow a
// match on meta l4proto tcp.
type matchTCPNotSyn struct{}

func (matchTCPNotSyn) render(w *nftText) { w.WriteString("tcp flags & (syn | ack) != syn") }
func (matchTCPNotSyn) lower(*lowering) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x02}},
	}
}

// matchSet matches when the key is in a named set; for a set with counters
// the matched element's counter counts the packet.
type matchSet struct {
	key key
	set string
}

func (m matchSet) render(w *nftText) {
	w.WriteString(m.key.text() + " @")
	w.ident(m.set)
}

func (m matchSet) lower(*lowering) []expr.Any {
	return append(m.key.load(), &expr.Lookup{SourceRegister: 1, SetName: m.set})
}

// Actions.

type setCtMark struct{ mark uint32 }

func (s setCtMark) render(w *nftText) { fmt.Fprintf(w, "ct mark set 0x%08x", s.mark) }
func (s setCtMark) lower(*lowering) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, s.mark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

type setCtMarkMap struct {
	key key
	set string
}

func (s setCtMarkMap) render(w *nftText) {
	w.WriteString("ct mark set " + s.key.text() + " map @")
	w.ident(s.set)
}

func (s setCtMarkMap) lower(*lowering) []expr.Any {
	return append(s.key.load(),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: s.set},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	)
}

// natMap translates to the address (and port) a map yields for the key.
type natMap struct {
	snat     bool
	fam      Family
	key      key
	set      string
	withPort bool
}

func (n natMap) kind() (string, expr.NATType) {
	if n.snat {
		return "snat", expr.NATTypeSourceNAT
	}
	return "dnat", expr.NATTypeDestNAT
}

func (n natMap) render(w *nftText) {
	word, _ := n.kind()
	fmt.Fprintf(w, "%s %s to %s map @", word, n.fam.word(), n.key.text())
	w.ident(n.set)
}

func (n natMap) lower(*lowering) []expr.Any {
	_, typ := n.kind()
	nat := &expr.NAT{Type: typ, Family: uint32(n.fam.nfproto()), RegAddrMin: 1}
	if n.withPort {
		// Specified means "a port is given": without a port register it
		// would translate the port to 0.
		nat.RegProtoMin = unix.NFT_REG32_00 + uint32(n.fam.addrField().size()/4)
		nat.Specified = true
	}
	return append(n.key.load(),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: n.set},
		nat)
}

// dnatTo translates to a fixed address and optionally a fixed port.
type dnatTo struct {
	to   netip.Addr
	port uint16 // 0 keeps the original port
}

func (d dnatTo) render(w *nftText) {
	fam := familyOf(d.to)
	if d.port == 0 {
		fmt.Fprintf(w, "dnat %s to %s", fam.word(), d.to)
		return
	}
	fmt.Fprintf(w, "dnat %s to %s", fam.word(), netip.AddrPortFrom(d.to, d.port))
}

func (d dnatTo) lower(*lowering) []expr.Any {
	fam := familyOf(d.to)
	out := []expr.Any{&expr.Immediate{Register: 1, Data: d.to.AsSlice()}}
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam.nfproto()), RegAddrMin: 1}
	if d.port != 0 {
		out = append(out, &expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, d.port)})
		nat.RegProtoMin = 2
		nat.Specified = true
	}
	return append(out, nat)
}

// dnatPortMap maps each original port 1:1 to backend address and port, with
// an anonymous map: nftables' own range DNAT is a pool, not 1:1 (FACTS.md).
type dnatPortMap struct {
	fam   Family
	elems []Element // key: port; data: addr . port
}

func (d dnatPortMap) render(w *nftText) {
	parts := make([]string, len(d.elems))
	for i, e := range d.elems {
		parts[i] = renderBytes([]Field{FieldPort}, e.Key) + " : " + renderBytes([]Field{d.fam.addrField(), FieldPort}, e.Data)
	}
	fmt.Fprintf(w, "dnat %s to th dport map { %s }", d.fam.word(), strings.Join(parts, ", "))
}

func (d dnatPortMap) lower(l *lowering) []expr.Any {
	name, id := l.anonSet(AnonSet{Key: []Field{FieldPort}, Data: []Field{d.fam.addrField(), FieldPort}, Elements: d.elems})
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: name, SetID: id},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(d.fam.nfproto()), RegAddrMin: 1,
			RegProtoMin: unix.NFT_REG32_00 + uint32(d.fam.addrField().size()/4), Specified: true},
	}
}

type masquerade struct{}

func (masquerade) render(w *nftText)          { w.WriteString("masquerade") }
func (masquerade) lower(*lowering) []expr.Any { return []expr.Any{&expr.Masq{}} }

// verdictKind is what a verdict statement does.
type verdictKind uint8

const (
	verdictAccept verdictKind = iota + 1
	verdictReturn
	verdictJump
	verdictGoto
	verdictDrop
)

type verdict struct {
	kind  verdictKind
	chain string // Jump, Goto
}

func jump(chain string) verdict { return verdict{kind: verdictJump, chain: chain} }
func goTo(chain string) verdict { return verdict{kind: verdictGoto, chain: chain} }

var (
	accept = verdict{kind: verdictAccept}
	ret    = verdict{kind: verdictReturn}
	drop   = verdict{kind: verdictDrop}
)

func (v verdict) render(w *nftText) {
	switch v.kind {
	case verdictGoto:
		w.WriteString("goto ")
		w.ident(v.chain)
	case verdictJump:
		w.WriteString("jump ")
		w.ident(v.chain)
	case verdictReturn:
		w.WriteString("return")
	case verdictAccept:
		w.WriteString("accept")
	case verdictDrop:
		w.WriteString("drop")
	default:
		w.fail(fmt.Errorf("verdict %d has no nft syntax", v.kind))
	}
}

func (v verdict) lower(*lowering) []expr.Any {
	k := map[verdictKind]expr.VerdictKind{verdictAccept: expr.VerdictAccept, verdictReturn: expr.VerdictReturn,
		verdictJump: expr.VerdictJump, verdictGoto: expr.VerdictGoto, verdictDrop: expr.VerdictDrop}[v.kind]
	return []expr.Any{&expr.Verdict{Kind: k, Chain: v.chain}}
}
