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

// BackendLive is what conntrack holds of the connections to one backend.
type BackendLive struct {
	Live
	// Packets and Bytes are the traffic of these connections, both
	// directions, as conntrack accounting counted it
	// (net.netfilter.nf_conntrack_acct, which the daemon turns on for
	// forwards with several backends; 0 for entries made while it was off).
	// Connections that ended are no longer in them.
	Packets, Bytes uint64
}

// Add adds o to b.
func (b *BackendLive) Add(o BackendLive) {
	b.Total += o.Total
	b.Established += o.Established
	b.Packets += o.Packets
	b.Bytes += o.Bytes
}

// perMarkDumps: up to this many forwards asked for, LiveByBackend dumps
// each forward's entries alone (the kernel filters by its mark) rather than
// all of fwdd's entries.
const perMarkDumps = 8

// LiveByBackend sums the live conntrack entries of the forwards with the
// given ct marks (l.ForID; nil: all of fwdd's) by forward and backend, from
// kernel-side filtered dumps of the namespace netns (an open fd; 0 means
// the current one). BackendKey.Mark holds fwdd's bits of the mark only
// (mark & l.Mask).
func LiveByBackend(netns int, l ctmark.Layout, marks []uint32) (map[BackendKey]BackendLive, error) {
	c, err := ct.Dial(&netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("count connections by backend: dial: %w", err)
	}
	defer c.Close()
	filters := []ct.Filter{ct.NewFilter().Mark(l.Tag).MarkMask(l.TagMask)}
	if len(marks) > 0 && len(marks) <= perMarkDumps {
		filters = filters[:0]
		for _, m := range marks {
			filters = append(filters, ct.NewFilter().Mark(m).MarkMask(l.Mask))
		}
	}
	var flows []ct.Flow
	for _, f := range filters {
		fl, err := c.DumpFilter(f, nil)
		if err != nil {
			return nil, fmt.Errorf("count connections by backend: dump: %w", err)
		}
		flows = append(flows, fl...)
	}
	out := map[BackendKey]BackendLive{}
	for _, f := range flows {
		if _, ok := l.ID(f.Mark); !ok {
			continue
		}
		b := netip.AddrPortFrom(f.TupleReply.IP.SourceAddress.Unmap(), f.TupleReply.Proto.SourcePort)
		e := BackendLive{Live: Live{Total: 1},
			Packets: f.CountersOrig.Packets + f.CountersReply.Packets,
			Bytes:   f.CountersOrig.Bytes + f.CountersReply.Bytes}
		// As dumpLive counts: TCP in state ESTABLISHED, other flows assured.
		if f.ProtoInfo.TCP != nil && f.TupleOrig.Proto.Protocol == 6 {
			if f.ProtoInfo.TCP.State == tcpConntrackEstablished {
				e.Established = 1
			}
		} else if f.Status.Assured() {
			e.Established = 1
		}
		k := BackendKey{Mark: f.Mark & l.Mask, Backend: b}
		sum := out[k]
		sum.Add(e)
		out[k] = sum
	}
	return out, nil
}

// OfBackend sums the entries in live of the forward with ct mark mark that
// went to backend be, or to the ports be.Port() .. be.Port()+span-1 of its
// address (a backend of a port range mapped 1:1).
func OfBackend(live map[BackendKey]BackendLive, mark uint32, be netip.AddrPort, span int) BackendLive {
	var sum BackendLive
	for k, l := range live {
		if k.Mark == mark && k.Backend.Addr() == be.Addr() &&
			k.Backend.Port() >= be.Port() && int(k.Backend.Port()) < int(be.Port())+max(span, 1) {
			sum.Add(l)
		}
	}
	return sum
}
