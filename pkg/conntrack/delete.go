package conntrack

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Selector picks conntrack entries of one forward: those whose ct mark,
// masked with the layout's Mask (fwdd's bits), is Mark and, when set,
// whose protocol is Proto and whose backend (the reply
// direction's source, i.e. where DNAT sent the connection) is Backend with
// a port in [PortFirst, PortLast].
//
// Deleting a UDP entry makes the next datagram of that flow a new
// connection, which the current rules send to the current backend: without
// it a client sending steadily keeps its old, stale translation until the
// entry times out. Deleting a TCP entry cuts the connection (its next
// segment matches nothing and is answered with a reset).
type Selector struct {
	Mark  uint32
	Proto uint8 // 0: any; unix.IPPROTO_TCP, unix.IPPROTO_UDP
	// Backend is zero for any backend.
	Backend netip.Addr
	// PortFirst..PortLast is the backend's port or port range; both 0 mean
	// any port.
	PortFirst, PortLast uint16
}

func (s Selector) String() string {
	out := fmt.Sprintf("mark %#x", s.Mark)
	if s.Proto != 0 {
		out += fmt.Sprintf(" proto %d", s.Proto)
	}
	if s.Backend.IsValid() {
		out += " backend " + s.Backend.String()
		if s.PortFirst != 0 || s.PortLast != 0 {
			out += fmt.Sprintf(" ports %d-%d", s.PortFirst, s.PortLast)
		}
	}
	return out
}

// whole reports whether s selects every entry with its mark.
func (s Selector) whole() bool { return s.Proto == 0 && !s.Backend.IsValid() }

func (s Selector) match(f ct.Flow, mask uint32) bool {
	if f.Mark&mask != s.Mark {
		return false
	}
	if s.Proto != 0 && f.TupleOrig.Proto.Protocol != s.Proto {
		return false
	}
	if s.Backend.IsValid() {
		src := f.TupleReply.IP.SourceAddress.Unmap()
		if src != s.Backend.Unmap() {
			return false
		}
		if p := f.TupleReply.Proto.SourcePort; (s.PortFirst != 0 || s.PortLast != 0) && (p < s.PortFirst || p > s.PortLast) {
			return false
		}
	}
	return true
}

// Delete deletes the conntrack entries that any of sels selects, in the
// network namespace netns (an open fd; 0 means the current one), and
// returns how many it deleted. It reads the entries with one kernel-side
// filtered dump (by the exact mark with one selector, by fwdd's mark tag
// with several), deletes a whole forward's entries with one kernel-side
// filtered flush and others one by one. Entries that end meanwhile are not
// an error; entries created after the dump are not deleted (they already
// follow the rules in force).
func Delete(netns int, l ctmark.Layout, sels ...Selector) (int, error) {
	if len(sels) == 0 {
		return 0, nil
	}
	c, err := ct.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return 0, fmt.Errorf("delete conntrack entries: dial: %w", err)
	}
	defer c.Close()
	filter := ct.NewFilter().Mark(l.Tag).MarkMask(l.TagMask)
	if len(sels) == 1 {
		filter = ct.NewFilter().Mark(sels[0].Mark).MarkMask(l.Mask)
	}
	flows, err := c.DumpFilter(filter, nil)
	if err != nil {
		return 0, fmt.Errorf("delete conntrack entries: dump: %w", err)
	}

	n := 0
	flushed := map[uint32]bool{}
	var errs []error
	for _, s := range sels {
		if !s.whole() || flushed[s.Mark] {
			continue
		}
		for _, f := range flows {
			if f.Mark&l.Mask == s.Mark {
				n++
			}
		}
		if err := c.FlushFilter(ct.NewFilter().Mark(s.Mark).MarkMask(l.Mask)); err != nil {
			errs = append(errs, fmt.Errorf("flush %s: %w", s, err))
		}
		flushed[s.Mark] = true
	}
	for _, f := range flows {
		if flushed[f.Mark&l.Mask] {
			continue
		}
		for _, s := range sels {
			if !s.match(f, l.Mask) {
				continue
			}
			// With the reply tuple too: ti-mo/conntrack sends the request
			// as IPv6 only if both tuples are IPv6 (else the kernel answers
			// EINVAL).
			err := c.Delete(ct.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, Zone: f.Zone})
			switch {
			case err == nil:
				n++
			case errors.Is(err, unix.ENOENT):
				// ended meanwhile
			default:
				errs = append(errs, fmt.Errorf("delete %s entry %v: %w", s, f.TupleOrig, err))
			}
			break
		}
		if len(errs) == 10 {
			break // the socket or the namespace is broken: say so, do not go on
		}
	}
	switch len(errs) {
	case 0:
		return n, nil
	case 1:
		return n, fmt.Errorf("delete conntrack entries: %w", errs[0])
	}
	return n, fmt.Errorf("delete conntrack entries: %d failed, the first: %w", len(errs), errs[0])
}
