package config

import (
	"container/heap"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// checkOverlaps reports forwards that would match the same packets: same
// family and protocol, intersecting ports, overlapping destination address,
// interface and sources.
//
// Files hold up to ~100,000 forwards, so this must not compare all pairs.
// Forwards are grouped by family and protocol; within a group, forwards for a
// specific address are grouped by address (they can only overlap each other
// and the "any local address" forwards), and each comparison is a sweep over
// forwards sorted by first port that only looks at forwards whose port ranges
// are still open. The cost is O(n log n) plus the number of candidates that
// share port, address and interface but differ in sources.
func checkOverlaps(ps *problems, fwds []Forward, valid []bool) {
	// One group per family and protocol: IPv4 TCP, IPv4 UDP, IPv6 TCP, IPv6 UDP.
	var groups [4]struct{ local, specific []int }
	for i := range fwds {
		if !valid[i] {
			continue
		}
		f := &fwds[i]
		for _, p := range f.Protos {
			k := 0
			if f.IPv6() {
				k = 2
			}
			if p == UDP {
				k++
			}
			if g := &groups[k]; f.Local() {
				g.local = append(g.local, i)
			} else {
				g.specific = append(g.specific, i)
			}
		}
	}
	o := &overlapChecker{ps: ps, fwds: fwds, reported: make(map[[2]int]bool)}
	for k := range groups {
		g := &groups[k]
		o.sortByPort(g.local)
		o.sweep(g.local, nil)
		if len(g.local) > 0 {
			// A specific address may be one of the host's, so it overlaps
			// "any local address".
			byPort := slices.Clone(g.specific)
			o.sortByPort(byPort)
			o.sweep(g.local, byPort)
		}
		// Forwards for the same address are adjacent once sorted by address,
		// and sorted by port within each run.
		slices.SortFunc(g.specific, func(a, b int) int {
			if c := fwds[a].Address.Compare(fwds[b].Address); c != 0 {
				return c
			}
			return o.comparePorts(a, b)
		})
		for run := g.specific; len(run) > 0; {
			n := 1
			for n < len(run) && fwds[run[n]].Address == fwds[run[0]].Address {
				n++
			}
			if n > 1 {
				o.sweep(run[:n], nil)
			}
			run = run[n:]
		}
	}
}

type overlapChecker struct {
	ps       *problems
	fwds     []Forward
	reported map[[2]int]bool // pairs of forward indexes, lower first
}

func (o *overlapChecker) sortByPort(idx []int) { slices.SortFunc(idx, o.comparePorts) }

// comparePorts orders forwards by first port, then file order.
func (o *overlapChecker) comparePorts(a, b int) int {
	if c := int(o.fwds[a].Port.Lo) - int(o.fwds[b].Port.Lo); c != 0 {
		return c
	}
	return a - b
}

// sweep finds overlapping pairs within a (b == nil) or between a and b. Both
// are sorted by first port, and addresses are already known to overlap. Each
// forward is reported with at most one partner per sweep, so a file of
// identical forwards yields n-1 messages, not n².
func (o *overlapChecker) sweep(a, b []int) {
	var open [2]portHeap // forwards whose port range may still intersect
	open[0].fwds, open[1].fwds = o.fwds, o.fwds
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		side, c := 0, 0
		if j < len(b) && (i == len(a) || o.fwds[b[j]].Port.Lo < o.fwds[a[i]].Port.Lo) {
			side, c = 1, b[j]
			j++
		} else {
			c = a[i]
			i++
		}
		other := &open[1-side]
		if b == nil {
			other = &open[0]
		}
		other.popBelow(o.fwds[c].Port.Lo)
		for _, x := range other.idx {
			if o.match(&o.fwds[x], &o.fwds[c]) {
				o.report(x, c)
				break
			}
		}
		heap.Push(&open[side], c)
	}
}

// match checks what the sweep has not: interface and sources.
func (o *overlapChecker) match(f, g *Forward) bool {
	if f.Interface != "" && g.Interface != "" && f.Interface != g.Interface {
		return false
	}
	_, ok := sourcesOverlap(f.Sources, g.Sources)
	return ok
}

// sourcesOverlap returns a prefix in both source lists (nil = any). Both lists
// are sorted and disjoint, so one walk suffices.
func sourcesOverlap(a, b []netip.Prefix) (netip.Prefix, bool) {
	switch {
	case len(a) == 0 && len(b) == 0:
		return netip.Prefix{}, true
	case len(a) == 0:
		return b[0], true
	case len(b) == 0:
		return a[0], true
	}
	for i, j := 0, 0; i < len(a) && j < len(b); {
		if a[i].Overlaps(b[j]) {
			if a[i].Bits() > b[j].Bits() {
				return a[i], true
			}
			return b[j], true
		}
		// Disjoint: the one that starts first also ends first.
		if a[i].Addr().Less(b[j].Addr()) {
			i++
		} else {
			j++
		}
	}
	return netip.Prefix{}, false
}

func (o *overlapChecker) report(x, y int) {
	first, later := min(x, y), max(x, y)
	if o.reported[[2]int{first, later}] {
		return
	}
	o.reported[[2]int{first, later}] = true
	f, g := &o.fwds[first], &o.fwds[later]
	other := fmt.Sprintf("forward #%d", first+1)
	switch {
	case f.Line > 0 && f.File != g.File:
		other = fmt.Sprintf("%s:%d", messageName(f.File), f.Line)
	case f.Line > 0:
		other = fmt.Sprintf("line %d", f.Line)
	}
	o.ps.addIn(messageName(g.File), g.Line, "forward "+quote(g.Name), "", "overlaps forward %s (%s): both match %s",
		quote(f.Name), other, describeOverlap(f, g))
}

// describeOverlap says which packets two overlapping forwards both match,
// e.g. "tcp port 80 on any local address".
func describeOverlap(f, g *Forward) string {
	var protos []string
	for _, p := range f.Protos {
		if slices.Contains(g.Protos, p) {
			protos = append(protos, p.String())
		}
	}
	ports := PortRange{max(f.Port.Lo, g.Port.Lo), min(f.Port.Hi, g.Port.Hi)}
	var b strings.Builder
	b.WriteString(strings.Join(protos, " and "))
	if ports.Len() == 1 {
		fmt.Fprintf(&b, " port %s", ports)
	} else {
		fmt.Fprintf(&b, " ports %s", ports)
	}
	switch {
	case !f.Local():
		fmt.Fprintf(&b, " on %s", f.Address)
	case !g.Local():
		fmt.Fprintf(&b, " on %s", g.Address)
	default:
		b.WriteString(" on any local address")
	}
	if iface := max(f.Interface, g.Interface); iface != "" {
		fmt.Fprintf(&b, " arriving on %s", iface)
	}
	if len(f.Sources) > 0 || len(g.Sources) > 0 {
		if p, ok := sourcesOverlap(f.Sources, g.Sources); ok {
			fmt.Fprintf(&b, " from %s", p)
		}
	}
	return b.String()
}

// portHeap is a min-heap (container/heap) of forward indexes by last port.
type portHeap struct {
	idx  []int
	fwds []Forward
}

func (h *portHeap) Len() int           { return len(h.idx) }
func (h *portHeap) Less(i, j int) bool { return h.fwds[h.idx[i]].Port.Hi < h.fwds[h.idx[j]].Port.Hi }
func (h *portHeap) Swap(i, j int)      { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *portHeap) Push(x any)         { h.idx = append(h.idx, x.(int)) }
func (h *portHeap) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// popBelow removes the forwards whose port range ends before port.
func (h *portHeap) popBelow(port uint16) {
	for len(h.idx) > 0 && h.fwds[h.idx[0]].Port.Hi < port {
		heap.Pop(h)
	}
}
