package conntrack

import (
	"fmt"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// LiveByID counts the conntrack entries of each forward id in a namespace
// (fd 0: the current one) with one filtered dump. It needs no running
// daemon: `fwdd status` uses it.
func LiveByID(netns int) (map[uint32]int, error) {
	c, err := ct.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	defer c.Close()
	flows, err := c.DumpFilter(ct.NewFilter().Mark(ctmark.Tag).MarkMask(ctmark.Mask), nil)
	if err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	out := map[uint32]int{}
	for i := range flows {
		if id, ok := ctmark.ID(flows[i].Mark); ok {
			out[id]++
		}
	}
	return out, nil
}
