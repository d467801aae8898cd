package nft

// Balancing: a forward with several backends picks one per new connection
// in the kernel. A number in [0, SlotSpace) is drawn per connection
// (numgen random, or jhash of the source address for balance = "source"),
// and the forward's backend map holds one interval of that space per
// backend that is up, as wide as its share of the weight:
//
//	dnat ip to ct mark . th dport . numgen random mod 1048576 map @balance4
//
// One modulus for every forward keeps the rule independent of the number
// of forwards and backends (kube-proxy's nftables mode writes one rule per
// service with its own modulus instead); the rounding error of a share is
// at most 1/SlotSpace.

// SlotSpace is the modulus of the number drawn per new connection.
const SlotSpace = 1 << 20

// SlotRange is the part [Lo, Hi] of the slot space that goes to backend
// Backend (an index into the forward's backends).
type SlotRange struct {
	Backend int
	Lo, Hi  uint32
}

// Slots splits the slot space among the backends that are up, in
// proportion to their weights (weights of 0 or less count as 1). When none
// is up it splits it among all of them and reports failOpen: connections
// keep being sent to every backend rather than nowhere.
func Slots(weights []int, up []bool) (ranges []SlotRange, failOpen bool) {
	in := func(i int) bool { return i >= len(up) || up[i] }
	total := 0
	for i, w := range weights {
		if in(i) {
			total += max(w, 1)
		}
	}
	if total == 0 && len(weights) > 0 {
		failOpen = true
		in = func(int) bool { return true }
		for _, w := range weights {
			total += max(w, 1)
		}
	}
	if total == 0 {
		return nil, false
	}
	var lo uint64
	sum := 0
	for i, w := range weights {
		if !in(i) {
			continue
		}
		sum += max(w, 1)
		hi := uint64(SlotSpace) * uint64(sum) / uint64(total) // exclusive
		if hi > lo {
			ranges = append(ranges, SlotRange{Backend: i, Lo: uint32(lo), Hi: uint32(hi - 1)})
		}
		lo = hi
	}
	return ranges, failOpen
}
