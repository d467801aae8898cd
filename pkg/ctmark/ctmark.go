// Package ctmark defines how fwdd tags the conntrack entries of the
// connections it forwards, so that the kernel's counters, conntrack events
// and fwdd status can attribute each connection to its forward, and so that
// another firewall can accept all of them with one rule.
//
// A Layout says which bits of the 32-bit ct mark are fwdd's (Mask) and,
// within them, which bits tag a connection as fwdd's (TagMask, holding
// Tag); the rest of Mask (IDMask, one run of contiguous bits) carries the
// forward's numeric id, 1..MaxID. A forwarded connection's mark, masked
// with Mask, is Tag | id<<shift. fwdd sets its bits only on connections
// whose bits under Mask are still 0, and leaves the bits outside Mask as
// another component set them.
//
// The default is today's layout: all 32 bits, tag 0xfd in the high byte and
// a 24-bit id (Default).
package ctmark

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Layout is where fwdd's bits are in the ct mark.
type Layout struct {
	Tag     uint32 // the tag's value, within TagMask
	TagMask uint32 // the bits of the tag
	Mask    uint32 // every bit fwdd owns: TagMask and the id bits
}

// Default is the layout fwdd uses unless [daemon] ct_mark/ct_mask say
// otherwise: the whole mark, 0xfd000000 | 24-bit id.
var Default = Layout{Tag: 0xfd000000, TagMask: 0xff000000, Mask: 0xffffffff}

// IDMask selects the forward id's bits.
func (l Layout) IDMask() uint32 { return l.Mask &^ l.TagMask }

func (l Layout) shift() int { return bits.TrailingZeros32(l.IDMask()) }

// IDBits is the width of the id field.
func (l Layout) IDBits() int { return bits.OnesCount32(l.IDMask()) }

// MaxID is the largest forward id the layout can carry (and so the most
// forwards a configuration may have).
func (l Layout) MaxID() uint32 { return l.IDMask() >> l.shift() }

// Whole reports whether fwdd owns the whole mark (as by default): then its
// maps and sets are keyed by the ct mark as it is, and it sets the whole
// mark at once.
func (l Layout) Whole() bool { return l.Mask == 0xffffffff }

// ChunkBits is the most id bits one verdict map sets when fwdd shares the
// mark: pkg/nft splits the id into chunks of at most this width, with a
// chain per chunk value.
const ChunkBits = 8

// MarkMaps is how many mark maps a forward's key can have an element in:
// one when fwdd owns the whole mark, else a verdict map per chunk of the id
// (an id whose chunk is 0 has no element in that chunk's map, except in
// the first).
func (l Layout) MarkMaps() int {
	if l.Whole() {
		return 1
	}
	return (l.IDBits() + ChunkBits - 1) / ChunkBits
}

// ForID returns fwdd's bits for forward id: the value of mark & Mask of its
// connections.
func (l Layout) ForID(id uint32) uint32 { return l.Tag | (id<<l.shift())&l.IDMask() }

// ID returns the forward id a ct mark carries, if fwdd set it.
func (l Layout) ID(mark uint32) (uint32, bool) {
	if mark&l.TagMask != l.Tag || mark&l.IDMask() == 0 {
		return 0, false
	}
	return (mark & l.IDMask()) >> l.shift(), true
}

// Mine reports whether a ct mark carries fwdd's tag.
func (l Layout) Mine(mark uint32) bool { return mark&l.TagMask == l.Tag }

// String describes the layout with the config's keys.
func (l Layout) String() string {
	return fmt.Sprintf("ct_mark %s, ct_mask 0x%08x", l.Connmark(), l.Mask)
}

// MaskWithIDBits returns the ct_mask that gives l n bits of forward id:
// its id field grown (or shrunk) to n bits on the side away from the tag.
func (l Layout) MaskWithIDBits(n int) uint32 {
	id := l.IDMask()
	if l.TagMask > id { // the id bits are below the tag: grow downwards
		top := 32 - bits.LeadingZeros32(id)
		return l.TagMask | uint32((uint64(1)<<n-1)<<max(top-n, 0))
	}
	return l.TagMask | uint32((uint64(1)<<n-1)<<bits.TrailingZeros32(id))
}

// Validate checks a layout. key is the config key at fault: "ct_mark" (the
// tag) or "ct_mask" (fwdd's bits).
func (l Layout) Validate() (key string, err error) {
	switch {
	case l.TagMask == 0:
		return "ct_mark", fmt.Errorf("the mask is 0: the tag needs at least one bit")
	case l.Tag&^l.TagMask != 0:
		return "ct_mark", fmt.Errorf("the value 0x%08x has bits outside the mask 0x%08x", l.Tag, l.TagMask)
	case l.Tag == 0:
		return "ct_mark", fmt.Errorf("the value is 0, but a ct mark of 0 means \"not marked\": the tag needs a bit set")
	case !contiguous(l.TagMask):
		return "ct_mark", fmt.Errorf("the mask 0x%08x is not one run of contiguous bits", l.TagMask)
	case l.Mask&l.TagMask != l.TagMask:
		return "ct_mask", fmt.Errorf("0x%08x does not hold ct_mark's mask 0x%08x: the tag is part of fwdd's bits", l.Mask, l.TagMask)
	case l.IDMask() == 0:
		return "ct_mask", fmt.Errorf("0x%08x leaves no bits for forward ids beside the tag's 0x%08x", l.Mask, l.TagMask)
	case !contiguous(l.IDMask()):
		return "ct_mask", fmt.Errorf("the id bits of 0x%08x (0x%08x: ct_mask without ct_mark's mask) are not one run of contiguous bits", l.Mask, l.IDMask())
	}
	return "", nil
}

func contiguous(m uint32) bool {
	m >>= bits.TrailingZeros32(m)
	return m != 0 && m&(m+1) == 0
}

// ParseMark parses ct_mark's "VALUE/MASK" (hex with 0x, or decimal), the
// form iptables' connmark and conntrack -m take.
func ParseMark(s string) (value, mask uint32, err error) {
	v, m, ok := strings.Cut(s, "/")
	if !ok {
		return 0, 0, fmt.Errorf("want VALUE/MASK, e.g. \"0xfd000000/0xff000000\"")
	}
	if value, err = ParseUint32(v); err != nil {
		return 0, 0, fmt.Errorf("value: %w", err)
	}
	if mask, err = ParseUint32(m); err != nil {
		return 0, 0, fmt.Errorf("mask: %w", err)
	}
	return value, mask, nil
}

// ParseUint32 parses a 32-bit number, hex with 0x or decimal.
func ParseUint32(s string) (uint32, error) {
	digits, base := strings.TrimSpace(s), 10
	if t, ok := strings.CutPrefix(strings.ToLower(digits), "0x"); ok {
		digits, base = t, 16
	}
	n, err := strconv.ParseUint(digits, base, 32)
	if err != nil || digits == "" {
		return 0, fmt.Errorf("%q is not a 32-bit number (hex with 0x, or decimal)", s)
	}
	return uint32(n), nil
}

// Connmark is the VALUE/MASK of fwdd's connections for iptables'
// `-m connmark --mark` and `conntrack -m`.
func (l Layout) Connmark() string { return fmt.Sprintf("0x%08x/0x%08x", l.Tag, l.TagMask) }
