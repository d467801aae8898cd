package nft

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// A forward with several backends is balanced in the kernel: its
// connections get their ct mark from the mark maps like any forward's, but
// no dnat element; instead the rules at the end of dispatch look up
//
//	dnat ip to ct mark . th dport . numgen random mod 1048576 map @balance4_random
//	dnat ip to ct mark . th dport . jhash ip saddr mod 1048576 seed 0xfd0d map @balance4_source
//
// where the forward's elements split the slot space [0, SlotSpace) into one
// interval per backend that is up, as wide as its share of the weight (see
// Slots), for every original port (so a port range maps every backend the
// same way, 1:1 ranges included). A health change replaces only those
// elements. Interval keys compare bytewise, so the mark and the slot are in
// network byte order there (FieldMarkBE, FieldSlot), as nft itself lays
// them out.

// balanceSeed seeds jhash for balance = "source": one constant for the
// whole table, so that a reload keeps every client on its backend.
const balanceSeed = 0xfd0d

func balanceSetName(fam Family, source bool) string {
	if source {
		return setName("balance", fam, "source")
	}
	return setName("balance", fam, "random")
}

func balanceSets() []*Set {
	var out []*Set
	for _, fam := range []Family{IPv4, IPv6} {
		for _, source := range []bool{false, true} {
			out = append(out, &Set{Name: balanceSetName(fam, source), Interval: true,
				Key: []Field{FieldMarkBE, FieldPort, FieldSlot}, Data: []Field{fam.addrField(), FieldPort},
				// The typeof of a jhash key makes nft 1.0.6 crash when it
				// lists the table; numgen's declares the same key type.
				Typeof:     "ct mark . th dport . " + slotText(fam, false),
				DataTypeof: fam.word() + " daddr . th dport"})
		}
	}
	return out
}

func slotText(fam Family, source bool) string {
	if source {
		return fmt.Sprintf("jhash %s saddr mod %d seed 0x%x", fam.word(), SlotSpace, balanceSeed)
	}
	return fmt.Sprintf("numgen random mod %d", SlotSpace)
}

// balanceRules are dispatch's last rules: a connection whose forward has
// elements in a balance map is translated there; for any other the lookup
// misses and the rule does nothing. nft wants a protocol match before a
// translation to a port, hence one rule per protocol.
func balanceRules(l ctmark.Layout) []Rule {
	var out []Rule
	for _, fam := range []Family{IPv4, IPv6} {
		for _, source := range []bool{false, true} {
			for _, p := range []config.Proto{config.TCP, config.UDP} {
				out = append(out, Rule{Stmts: []Stmt{matchNFProto{fam}, matchL4Proto{p}, balanceDNAT{fam: fam, source: source, mark: loadCtMark(l)}}})
			}
		}
	}
	return out
}

// balanceDNAT translates to the backend a balance map gives for the
// connection's mark, port and drawn slot.
type balanceDNAT struct {
	fam    Family
	source bool
	mark   loader // the ct mark as the layout keys it (loadCtMark)
}

func (b balanceDNAT) render(w *nftText) {
	fmt.Fprintf(w, "dnat %s to %s . th dport . %s map @", b.fam.word(), b.mark.text, slotText(b.fam, b.source))
	w.ident(balanceSetName(b.fam, b.source))
}

func (b balanceDNAT) lower(*lowering) []expr.Any {
	out := append(b.mark.load(unix.NFT_REG_1),
		&expr.Byteorder{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Payload{DestRegister: unix.NFT_REG32_01, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	)
	addrLen := uint32(b.fam.addrField().size())
	if b.source {
		// The source address is loaded clear of the key's registers, where
		// nft loads it.
		off, reg := uint32(12), uint32(unix.NFT_REG32_06)
		if b.fam == IPv6 {
			off, reg = 8, unix.NFT_REG32_07
		}
		out = append(out,
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen},
			&expr.Hash{SourceRegister: reg, DestRegister: unix.NFT_REG32_02, Length: addrLen,
				Modulus: SlotSpace, Seed: balanceSeed, Type: expr.HashTypeJenkins})
	} else {
		out = append(out, &expr.Numgen{Register: unix.NFT_REG32_02, Modulus: SlotSpace, Type: unix.NFT_NG_RANDOM})
	}
	return append(out,
		&expr.Byteorder{SourceRegister: unix.NFT_REG32_02, DestRegister: unix.NFT_REG32_02, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Lookup{SourceRegister: unix.NFT_REG_1, DestRegister: unix.NFT_REG_1, IsDestRegSet: true, SetName: balanceSetName(b.fam, b.source)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(b.fam.nfproto()), RegAddrMin: unix.NFT_REG_1,
			RegProtoMin: unix.NFT_REG32_00 + addrLen/4, Specified: true},
	)
}

// weights returns the backends' weights.
func weights(f *config.Forward) []int {
	w := make([]int, len(f.Backends))
	for i, b := range f.Backends {
		w[i] = b.Weight
	}
	return w
}

// backendPort is where backend b sends original port p: as Forward.TargetPort.
func backendPort(f *config.Forward, b config.Backend, p uint16) uint16 {
	switch {
	case b.ToPort.IsZero():
		return p
	case b.ToPort.Lo == b.ToPort.Hi:
		return b.ToPort.Lo
	}
	return b.ToPort.Lo + (p - f.Port.Lo)
}

// balanceElems makes a balanced forward's elements: per original port, one
// interval per backend in the kernel (up, or all when none is: fail open).
func balanceElems(f *config.Forward, mark uint32, up []bool) []Element {
	ranges, _ := Slots(weights(f), up)
	markB := binary.BigEndian.AppendUint32(nil, mark)
	out := make([]Element, 0, f.Port.Len()*len(ranges))
	for port := int(f.Port.Lo); port <= int(f.Port.Hi); port++ {
		for _, r := range ranges {
			b := f.Backends[r.Backend]
			key := func(slot uint32) []byte {
				k := binary.BigEndian.AppendUint16(slices.Clone(markB), uint16(port))
				return binary.BigEndian.AppendUint32(append(k, 0, 0), slot)
			}
			d := binary.BigEndian.AppendUint16(b.To.AsSlice(), backendPort(f, b, uint16(port)))
			out = append(out, Element{Key: key(r.Lo), KeyEnd: key(r.Hi), Data: append(d, 0, 0)})
		}
	}
	return out
}

// WithUp returns a copy of m in which forward's backends are in the kernel
// as up says (up[i] for backend i; nil: all). Only that forward's part
// differs, so a Diff against m changes only its balance elements.
func (m *Model) WithUp(forward string, up []bool) *Model {
	p, ok := m.parts[forward]
	if !ok || !p.fwd.Balanced() {
		return m
	}
	c := *m
	c.parts = make(map[string]*part, len(m.parts))
	for k, v := range m.parts {
		c.parts[k] = v
	}
	np := *p
	np.up = slices.Clone(up)
	c.parts[forward] = &np
	c.order = slices.Clone(m.order)
	for i, q := range c.order {
		if q == p {
			c.order[i] = &np
		}
	}
	return &c
}

// Up returns which backends of forward the model puts in the kernel (nil:
// all, or not a balanced forward).
func (m *Model) Up(forward string) []bool {
	if p, ok := m.parts[forward]; ok {
		return slices.Clone(p.up)
	}
	return nil
}
