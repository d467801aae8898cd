package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
)

// Stmt is one statement of a rule. Each statement knows its nft text and its
// kernel expressions side by side, so that `fwdd print` shows exactly what is
// programmed.
type Stmt interface {
	text() string
	exprs(c *compileCtx) ([]expr.Any, error)
}

// compileCtx resolves named sets and collects the anonymous sets a rule needs.
type compileCtx struct {
	table *nftables.Table
	sets  map[string]*nftables.Set
	// addSet adds an anonymous set to the batch before the rule that uses
	// it; it assigns the set's name and id.
	addSet func(*nftables.Set, []nftables.SetElement) error
}

func (c *compileCtx) set(name string) (*nftables.Set, error) {
	s, ok := c.sets[name]
	if !ok {
		return nil, fmt.Errorf("rule refers to unknown set %q", name)
	}
	return s, nil
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

func (m matchNFProto) text() string {
	return "meta nfproto " + map[Family]string{IPv4: "ipv4", IPv6: "ipv6"}[m.fam]
}
func (m matchNFProto) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq(1, []byte{m.fam.nfproto()})}, nil
}

type matchIifname struct{ name string }

func (m matchIifname) text() string { return fmt.Sprintf("iifname %q", m.name) }
func (m matchIifname) exprs(*compileCtx) ([]expr.Any, error) {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, m.name)
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, cmpEq(1, b)}, nil
}

// matchAddr matches the source or destination address against a prefix.
type matchAddr struct {
	dst    bool
	prefix netip.Prefix
}

func (m matchAddr) text() string {
	dir := "saddr"
	if m.dst {
		dir = "daddr"
	}
	p := m.prefix.String()
	if m.prefix.IsSingleIP() {
		p = m.prefix.Addr().String()
	}
	return fmt.Sprintf("%s %s %s", familyOf(m.prefix.Addr()).word(), dir, p)
}

func (m matchAddr) exprs(*compileCtx) ([]expr.Any, error) {
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
	return append(out, cmpEq(1, m.prefix.Masked().Addr().AsSlice())), nil
}

type matchFibLocal struct{}

func (matchFibLocal) text() string { return "fib daddr type local" }
func (matchFibLocal) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: true},
		cmpEq(1, binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)),
	}, nil
}

type matchL4Proto struct{ p config.Proto }

func (m matchL4Proto) text() string { return "meta l4proto " + m.p.String() }
func (m matchL4Proto) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, cmpEq(1, []byte{byte(m.p)})}, nil
}

type matchDport struct{ r config.PortRange }

func (m matchDport) text() string {
	if m.r.Lo == m.r.Hi {
		return fmt.Sprintf("th dport %d", m.r.Lo)
	}
	return fmt.Sprintf("th dport %d-%d", m.r.Lo, m.r.Hi)
}

func (m matchDport) exprs(*compileCtx) ([]expr.Any, error) {
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}}
	if m.r.Lo == m.r.Hi {
		return append(out, cmpEq(1, binary.BigEndian.AppendUint16(nil, m.r.Lo))), nil
	}
	return append(out, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binary.BigEndian.AppendUint16(nil, m.r.Lo), ToData: binary.BigEndian.AppendUint16(nil, m.r.Hi)}), nil
}

type matchCtMark struct{ mark uint32 }

func (m matchCtMark) text() string { return fmt.Sprintf("ct mark 0x%08x", m.mark) }
func (m matchCtMark) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, cmpEq(1, binary.NativeEndian.AppendUint32(nil, m.mark))}, nil
}

// matchCtMarkMasked matches marks whose masked bits equal value: fwdd's
// tag byte, whatever the forward id.
type matchCtMarkMasked struct{ mask, value uint32 }

func (m matchCtMarkMasked) text() string {
	return fmt.Sprintf("ct mark and 0x%08x == 0x%08x", m.mask, m.value)
}

func (m matchCtMarkMasked) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, m.mask), Xor: make([]byte, 4)},
		cmpEq(1, binary.NativeEndian.AppendUint32(nil, m.value)),
	}, nil
}

type matchCtDirection struct{ reply bool }

func (m matchCtDirection) text() string {
	if m.reply {
		return "ct direction reply"
	}
	return "ct direction original"
}

func (m matchCtDirection) exprs(*compileCtx) ([]expr.Any, error) {
	d := byte(0)
	if m.reply {
		d = 1
	}
	return []expr.Any{&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1}, cmpEq(1, []byte{d})}, nil
}

// matchSet matches when the key is in a named set; for a set with counters
// the matched element's counter counts the packet.
type matchSet struct {
	key key
	set string
}

func (m matchSet) text() string { return fmt.Sprintf("%s @%s", m.key.text(), m.set) }
func (m matchSet) exprs(c *compileCtx) ([]expr.Any, error) {
	s, err := c.set(m.set)
	if err != nil {
		return nil, err
	}
	return append(m.key.load(), &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}), nil
}

// Actions.

// counter counts the packets that reach it: the rule counters of the
// counting chains are the totals of all forwards, read without walking the
// per-forward sets.
type counter struct{}

func (counter) text() string                          { return "counter" }
func (counter) exprs(*compileCtx) ([]expr.Any, error) { return []expr.Any{&expr.Counter{}}, nil }

type setCtMark struct{ mark uint32 }

func (s setCtMark) text() string { return fmt.Sprintf("ct mark set 0x%08x", s.mark) }
func (s setCtMark) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, s.mark)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}, nil
}

type setCtMarkMap struct {
	key key
	set string
}

func (s setCtMarkMap) text() string {
	return fmt.Sprintf("ct mark set %s map @%s", s.key.text(), s.set)
}
func (s setCtMarkMap) exprs(c *compileCtx) ([]expr.Any, error) {
	set, err := c.set(s.set)
	if err != nil {
		return nil, err
	}
	return append(s.key.load(),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	), nil
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

func (n natMap) text() string {
	word, _ := n.kind()
	return fmt.Sprintf("%s %s to %s map @%s", word, n.fam.word(), n.key.text(), n.set)
}

func (n natMap) exprs(c *compileCtx) ([]expr.Any, error) {
	set, err := c.set(n.set)
	if err != nil {
		return nil, err
	}
	_, typ := n.kind()
	nat := &expr.NAT{Type: typ, Family: uint32(n.fam.nfproto()), RegAddrMin: 1}
	if n.withPort {
		// Specified means "a port is given": without a port register it
		// would translate the port to 0.
		nat.RegProtoMin = unix.NFT_REG32_00 + uint32(n.fam.addrField().size()/4)
		nat.Specified = true
	}
	return append(n.key.load(),
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: set.Name, SetID: set.ID},
		nat), nil
}

// dnatTo translates to a fixed address and optionally a fixed port.
type dnatTo struct {
	to   netip.Addr
	port uint16 // 0 keeps the original port
}

func (d dnatTo) text() string {
	fam := familyOf(d.to)
	switch {
	case d.port == 0:
		return fmt.Sprintf("dnat %s to %s", fam.word(), d.to)
	default:
		return fmt.Sprintf("dnat %s to %s", fam.word(), netip.AddrPortFrom(d.to, d.port))
	}
}

func (d dnatTo) exprs(*compileCtx) ([]expr.Any, error) {
	fam := familyOf(d.to)
	out := []expr.Any{&expr.Immediate{Register: 1, Data: d.to.AsSlice()}}
	nat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(fam.nfproto()), RegAddrMin: 1}
	if d.port != 0 {
		out = append(out, &expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, d.port)})
		nat.RegProtoMin = 2
		nat.Specified = true
	}
	return append(out, nat), nil
}

// dnatPortMap maps each original port 1:1 to backend address and port, with
// an anonymous map: nftables' own range DNAT is a pool, not 1:1 (FACTS.md).
type dnatPortMap struct {
	fam   Family
	elems []Element // key: port; data: addr . port
}

func (d dnatPortMap) text() string {
	parts := make([]string, len(d.elems))
	for i, e := range d.elems {
		parts[i] = renderBytes([]Field{FieldPort}, e.Key) + " : " + renderBytes([]Field{d.fam.addrField(), FieldPort}, e.Data)
	}
	return fmt.Sprintf("dnat %s to th dport map { %s }", d.fam.word(), strings.Join(parts, ", "))
}

func (d dnatPortMap) exprs(c *compileCtx) ([]expr.Any, error) {
	dt, err := nftables.ConcatSetType(datatype(d.fam.addrField()), nftables.TypeInetService)
	if err != nil {
		return nil, err
	}
	s := &nftables.Set{Table: c.table, Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInetService, DataType: dt}
	elems := make([]nftables.SetElement, len(d.elems))
	for i, e := range d.elems {
		elems[i] = nftables.SetElement{Key: e.Key, Val: e.Data}
	}
	if err := c.addSet(s, elems); err != nil {
		return nil, fmt.Errorf("add port map: %w", err)
	}
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, DestRegister: 1, IsDestRegSet: true, SetName: s.Name, SetID: s.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(d.fam.nfproto()), RegAddrMin: 1,
			RegProtoMin: unix.NFT_REG32_00 + uint32(d.fam.addrField().size()/4), Specified: true},
	}, nil
}

type masquerade struct{}

func (masquerade) text() string                          { return "masquerade" }
func (masquerade) exprs(*compileCtx) ([]expr.Any, error) { return []expr.Any{&expr.Masq{}}, nil }

type verdict struct {
	kind  expr.VerdictKind
	chain string
}

func (v verdict) text() string {
	switch v.kind {
	case expr.VerdictGoto:
		return "goto " + v.chain
	case expr.VerdictJump:
		return "jump " + v.chain
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictAccept:
		return "accept"
	}
	return "?"
}

func (v verdict) exprs(*compileCtx) ([]expr.Any, error) {
	return []expr.Any{&expr.Verdict{Kind: v.kind, Chain: v.chain}}, nil
}
