package nft

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"strings"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Marking with a partial ct_mask.
//
// By default fwdd owns the whole ct mark: dispatch sets it from the mark
// maps in one statement (ct mark set <key> map @mark4_port) and every set
// keyed by the mark takes the mark as it is. With a ct_mask that leaves
// bits to another tool, fwdd must set only its bits:
//
//	ct mark set ct mark & ~mask | <the forward's value>
//
// where the value comes from a map. The kernel's bitwise expression (as
// google/nftables v0.3.0 and nft 1.0.6 know it) combines a register only
// with constants, and the library's expr.Any cannot be extended from
// outside, so that statement cannot be written. What can: OR-ing a
// constant (ct mark set ct mark | 0x00050000), and verdict maps. So the id
// bits are split into chunks of at most 8 bits, and for each chunk value v
// a small chain ORs it in:
//
//	chain ctmark1_05 { ct mark set ct mark | 0x00050000 }
//
// The mark maps become verdict maps, one per chunk (mark4_port,
// mark4_port_1, ...), from the forward's key to a jump to the chain of its
// chunk's value; chunk 0's chains also OR the tag, so chunk 0 has an
// element for every key and the others only where the chunk is not 0.
// Dispatch jumps to mark4/mark6 only while fwdd's bits are all 0:
//
//	meta nfproto ipv4 ct mark and 0xffff0000 == 0x00000000 jump mark4
//	chain mark4 {
//		meta nfproto ipv4 ip daddr . meta l4proto . th dport vmap @mark4_addr
//		meta nfproto ipv4 fib daddr type local meta l4proto . th dport vmap @mark4_port
//	}
//
// The chains are fixed for a layout (at most 256 per chunk, 4 chunks), so
// the cost per forward stays one element per chunk; a new connection costs
// one lookup and one jump per chunk. Everything keyed by the ct mark looks
// up `ct mark and MASK` instead (counters, snat, nosnat, balance maps), and
// a forward with interface or sources ORs its constant value in its own
// chain.

// chunk is a run of id bits set by one verdict map.
type chunk struct {
	shift, width int
}

// maxChunkBits bounds the chains per chunk (2^bits).
const maxChunkBits = ctmark.ChunkBits

// markChunks splits the layout's id bits into chunks of at most
// maxChunkBits, lowest first, widths as even as possible.
func markChunks(l ctmark.Layout) []chunk {
	w := l.IDBits()
	k := (w + maxChunkBits - 1) / maxChunkBits
	shift := bits.TrailingZeros32(l.IDMask())
	out := make([]chunk, k)
	for i := range out {
		cw := w / k
		if i < w%k {
			cw++
		}
		out[i] = chunk{shift, cw}
		shift += cw
	}
	return out
}

// value is the chunk's part of fwdd's bits for mark (ctmark.Layout.ForID).
func (c chunk) value(mark uint32) uint32 { return mark >> c.shift & (1<<c.width - 1) }

func chunkChainName(i int, v uint32) string { return fmt.Sprintf("%s%d_%02x", chunkChainPfx, i, v) }

const chunkChainPfx = "ctmark"

// isLayoutChain reports whether a chain of fwdd's table is one of a
// partial ct_mask's marking chains (mark4, mark6, the chunk chains): fixed
// for a layout, so those of another layout mean the layout changed.
func isLayoutChain(name string) bool {
	return name == markChainName(IPv4) || name == markChainName(IPv6) || strings.HasPrefix(name, chunkChainPfx)
}

func chunkSetName(base string, i int) string {
	if i == 0 {
		return base
	}
	return fmt.Sprintf("%s_%d", base, i)
}

// maxChunks is the most chunks a layout can have: 31 id bits.
const maxChunks = (31 + maxChunkBits - 1) / maxChunkBits

func markChainName(fam Family) string { return fmt.Sprintf("mark%d", fam) }

// chunkChains are the chains that OR each chunk value into the mark.
func chunkChains(l ctmark.Layout) []*Chain {
	var out []*Chain
	for i, c := range markChunks(l) {
		for v := uint32(0); v < 1<<c.width; v++ {
			or := v << c.shift
			if i == 0 {
				or |= l.Tag
			} else if v == 0 {
				continue // nothing to set: no element points here
			}
			out = append(out, &Chain{Name: chunkChainName(i, v), Rules: []Rule{{Stmts: []Stmt{orCtMark{or}}}}})
		}
	}
	out[0].Comment = "set fwdd's bits of the ct mark, a chunk at a time, leaving the other bits alone"
	return out
}

// markChain looks a new connection's key up in each chunk's verdict map of
// one family.
func markChain(l ctmark.Layout, fam Family) *Chain {
	c := &Chain{Name: markChainName(fam), Comment: "fwdd's bits of the ct mark, from one verdict map per chunk of the forward id"}
	byAddr := key{loadDaddr(fam), loadL4Proto, loadDport}
	byPort := key{loadL4Proto, loadDport}
	for i := range markChunks(l) {
		// nft makes an address match in an inet table depend on the
		// family; without it nft would list the key as raw payload.
		c.Rules = append(c.Rules, Rule{Stmts: []Stmt{matchNFProto{fam}, vmap{byAddr, chunkSetName(setName("mark", fam, "addr"), i)}}})
	}
	for i := range markChunks(l) {
		c.Rules = append(c.Rules, Rule{Stmts: []Stmt{matchNFProto{fam}, matchFibLocal{}, vmap{byPort, chunkSetName(setName("mark", fam, "port"), i)}}})
	}
	return c
}

// chunkTarget is one verdict element of a forward's keys: the chunk map
// (by set index) and the chain it jumps to.
type chunkTarget struct {
	set   int
	chain []byte
}

// chunkTargets returns the verdict elements each key of a forward with
// fwdd's bits mark has in the chunk maps of base: the same for every key,
// so made once per forward.
func chunkTargets(l ctmark.Layout, mark uint32, base string) []chunkTarget {
	var out []chunkTarget
	for i, c := range markChunks(l) {
		if v := c.value(mark); i == 0 || v != 0 {
			out = append(out, chunkTarget{setIndex[chunkSetName(base, i)], []byte(chunkChainName(i, v))})
		}
	}
	return out
}

// loadCtMark loads the ct mark as the layout's sets are keyed: whole, or
// only fwdd's bits.
func loadCtMark(l ctmark.Layout) loader {
	if l.Whole() {
		return loadCtMrk
	}
	mask := l.Mask
	return loader{fmt.Sprintf("ct mark and 0x%08x", mask), FieldMark, func(reg uint32) []expr.Any {
		return []expr.Any{
			&expr.Ct{Key: expr.CtKeyMARK, Register: reg},
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
				Mask: binary.NativeEndian.AppendUint32(nil, mask), Xor: make([]byte, 4)},
		}
	}}
}

// unmarked matches connections whose fwdd bits are still 0.
func unmarked(l ctmark.Layout) Stmt {
	if l.Whole() {
		return matchCtMark{0}
	}
	return matchCtMarkMasked{mask: l.Mask, value: 0}
}

// setMark sets fwdd's bits to mark: the whole mark, or OR-ed into the
// other bits (which unmarked checked are 0 under the mask).
func setMark(l ctmark.Layout, mark uint32) Stmt {
	if l.Whole() {
		return setCtMark{mark}
	}
	return orCtMark{mark}
}

// orCtMark sets bits of the ct mark, leaving the others: constant bitwise
// ((mark & ^or) ^ or).
type orCtMark struct{ or uint32 }

func (s orCtMark) render(w *nftText) { fmt.Fprintf(w, "ct mark set ct mark or 0x%08x", s.or) }
func (s orCtMark) lower(*lowering) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binary.NativeEndian.AppendUint32(nil, ^s.or), Xor: binary.NativeEndian.AppendUint32(nil, s.or)},
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// vmap jumps to the chain a verdict map gives for the key (nothing when
// the key is not in it).
type vmap struct {
	key key
	set string
}

func (v vmap) render(w *nftText) {
	w.WriteString(v.key.text() + " vmap @")
	w.ident(v.set)
}

func (v vmap) lower(*lowering) []expr.Any {
	return append(v.key.load(), &expr.Lookup{SourceRegister: 1, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: v.set})
}
