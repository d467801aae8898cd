package conntrack

import (
	"fmt"
	"net/netip"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// BackendKey is where one forward's connections went: its ct mark and the
// backend address and port DNAT chose (the reply direction's source).
type BackendKey struct {
	Mark    uint32
	Backend netip.AddrPort
}

// LiveByBackend counts the live conntrack entries of fwdd's forwards by
// forward and backend, from one kernel-side filtered dump of the
// namespace netns (an open fd; 0 means the current one). BackendKey.Mark
// holds fwdd's bits of the mark only (mark & l.Mask).
func LiveByBackend(netns int, l ctmark.Layout) (map[BackendKey]int, error) {
	c, err := ct.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("count connections by backend: dial: %w", err)
	}
	defer c.Close()
	flows, err := c.DumpFilter(ct.NewFilter().Mark(l.Tag).MarkMask(l.TagMask), nil)
	if err != nil {
		return nil, fmt.Errorf("count connections by backend: dump: %w", err)
	}
	out := map[BackendKey]int{}
	for _, f := range flows {
		if _, ok := l.ID(f.Mark); !ok {
			continue
		}
		b := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
		out[BackendKey{Mark: f.Mark & l.Mask, Backend: b}]++
	}
	return out, nil
}
