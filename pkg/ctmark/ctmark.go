// Package ctmark defines how fwdd tags the conntrack entries of the
// connections it forwards, so that the kernel's counters, conntrack events
// and fwdd status can attribute each connection to its forward.
//
// A forwarded connection's ct mark is Tag|id, where id is the forward's
// numeric id (1..MaxID). fwdd sets the mark only on connections whose mark is
// still 0 when its DNAT runs: a mark another component set first is left alone.
package ctmark

// Tag marks the high byte of every ct mark fwdd sets.
const Tag uint32 = 0xfd000000

// Mask selects the tag byte; IDMask selects the forward id.
const (
	Mask   uint32 = 0xff000000
	IDMask uint32 = 0x00ffffff
	MaxID         = IDMask
)

// ForID returns the ct mark of forward id.
func ForID(id uint32) uint32 { return Tag | (id & IDMask) }

// ID returns the forward id carried by a ct mark, if fwdd set it.
func ID(mark uint32) (uint32, bool) {
	if mark&Mask != Tag || mark&IDMask == 0 {
		return 0, false
	}
	return mark & IDMask, true
}
