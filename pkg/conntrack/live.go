package conntrack

import (
	"encoding/binary"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Live counts a forward's conntrack entries.
type Live struct {
	// Total is every entry, including closed connections the kernel still
	// remembers (TCP TIME_WAIT, UDP flows until their timeout).
	Total int
	// Established counts TCP connections in state ESTABLISHED and other
	// flows the kernel has marked assured (answered, e.g. UDP).
	Established int
}

// Conntrack netlink constants (linux/netfilter/nfnetlink_conntrack.h) that
// x/sys/unix does not name.
const (
	ipctnlMsgCtGet          = 1
	ctaTupleOrig            = 1
	ctaTupleProto           = 2
	ctaProtoNum             = 1
	ctaStatus               = 3
	ctaProtoinfo            = 4
	ctaProtoinfoTCP         = 1
	ctaProtoinfoTCPState    = 1
	ctaMark                 = 8
	ctaMarkMask             = 21
	ipsAssured              = 1 << 2
	tcpConntrackEstablished = 3
)

// LiveByID counts the conntrack entries of each forward id in a namespace
// (fd 0: the current one) with one dump that the kernel filters by fwdd's
// tag in layout l. It needs no running daemon: `fwdd status` uses it.
func LiveByID(netns int, l ctmark.Layout) (map[uint32]Live, error) {
	return dumpLive(netns, l, l.Tag, l.TagMask)
}

// LiveOf counts the entries of one forward: the kernel sends only those
// (the other bits of the mark, outside l.Mask, do not matter).
func LiveOf(netns int, l ctmark.Layout, id uint32) (Live, error) {
	m, err := dumpLive(netns, l, l.ForID(id), l.Mask)
	return m[id], err
}

// dumpLive counts the entries whose mark&mask is mark, by forward id.
//
// Written against netlink directly because ti-mo/conntrack's Dump decodes
// every attribute of every entry into a Flow and returns them all at once
// (200,000 entries are about 100 MB); here the reply is read one datagram
// at a time and only the mark, status, protocol and TCP state are looked
// at, so memory does not grow with the table.
func dumpLive(netns int, l ctmark.Layout, mark, mask uint32) (map[uint32]Live, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	ae.Uint32(ctaMark, mark)
	ae.Uint32(ctaMarkMask, mask)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_CTNETLINK<<8 | ipctnlMsgCtGet),
			Flags: netlink.Request | netlink.Dump,
		},
		// nfgenmsg: all families, version 0, resource id 0.
		Data: append([]byte{unix.AF_UNSPEC, 0, 0, 0}, attrs...),
	}
	if _, err := c.Send(req); err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	out := map[uint32]Live{}
	for m, err := range c.ReceiveIter() {
		if err != nil {
			return nil, fmt.Errorf("dump conntrack table: %w", err)
		}
		e, ok := decodeEntry(m.Data)
		if !ok || e.mark&mask != mark {
			continue
		}
		id, ok := l.ID(e.mark)
		if !ok {
			continue
		}
		l := out[id]
		l.Total++
		if e.established() {
			l.Established++
		}
		out[id] = l
	}
	return out, nil
}

// entry is what dumpLive reads of a conntrack entry.
type entry struct {
	mark, status uint32
	proto        uint8
	tcpState     uint8
}

func (e entry) established() bool {
	if e.proto == unix.IPPROTO_TCP {
		return e.tcpState == tcpConntrackEstablished
	}
	return e.status&ipsAssured != 0
}

// decodeEntry reads a conntrack message's payload (nfgenmsg, attributes).
func decodeEntry(b []byte) (entry, bool) {
	var e entry
	if len(b) < 4 {
		return e, false
	}
	hasMark := false
	eachAttr(b[4:], func(typ uint16, v []byte) {
		switch typ {
		case ctaMark:
			if len(v) == 4 {
				e.mark, hasMark = binary.BigEndian.Uint32(v), true
			}
		case ctaStatus:
			if len(v) == 4 {
				e.status = binary.BigEndian.Uint32(v)
			}
		case ctaTupleOrig:
			eachAttr(v, func(typ uint16, v []byte) {
				if typ == ctaTupleProto {
					eachAttr(v, func(typ uint16, v []byte) {
						if typ == ctaProtoNum && len(v) == 1 {
							e.proto = v[0]
						}
					})
				}
			})
		case ctaProtoinfo:
			eachAttr(v, func(typ uint16, v []byte) {
				if typ == ctaProtoinfoTCP {
					eachAttr(v, func(typ uint16, v []byte) {
						if typ == ctaProtoinfoTCPState && len(v) == 1 {
							e.tcpState = v[0]
						}
					})
				}
			})
		}
	})
	return e, hasMark
}

// eachAttr calls fn for each netlink attribute in b, with its type (flags
// cleared) and value; it stops at a malformed one.
func eachAttr(b []byte, fn func(typ uint16, v []byte)) {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofNlAttr || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofNlAttr:l])
		b = b[min(len(b), (l+unix.NLA_ALIGNTO-1)&^(unix.NLA_ALIGNTO-1)):]
	}
}

// LiveCache answers "how many connections does each forward hold" with a
// dump of the kernel's table, reused for TTL so that several readers at
// once (a scrape, a pressure warning) cost one dump. At most one dump runs
// at a time.
type LiveCache struct {
	NetNS int
	TTL   time.Duration
	// Names maps ids to forward names; set it with SetForwards.
	mu    sync.Mutex
	names map[uint32]string
	at    time.Time
	last  map[uint32]Live
	err   error
	now   func() time.Time
	dump  func(netns int, l ctmark.Layout) (map[uint32]Live, error)
	// layout is where fwdd's bits are in the ct mark; set with SetLayout.
	layout ctmark.Layout
}

// DefaultLiveTTL is how long a dump is reused.
const DefaultLiveTTL = time.Second

// NewLiveCache returns a cache of namespace netns's counts.
func NewLiveCache(netns int) *LiveCache {
	return &LiveCache{NetNS: netns, TTL: DefaultLiveTTL, now: time.Now, dump: LiveByID, layout: ctmark.Default}
}

// SetLayout sets the ct mark layout of the config in force.
func (c *LiveCache) SetLayout(l ctmark.Layout) {
	c.mu.Lock()
	if c.layout != l {
		c.layout, c.last, c.err = l, nil, nil
	}
	c.mu.Unlock()
}

// SetForwards sets the names reported by Stats (id -> name); safe at any time.
func (c *LiveCache) SetForwards(names map[uint32]string) {
	m := make(map[uint32]string, len(names))
	for id, n := range names {
		m[id] = n
	}
	c.mu.Lock()
	c.names = m
	c.mu.Unlock()
}

// ByID returns the counts by forward id, dumping the table if the last dump
// is older than TTL.
func (c *LiveCache) ByID() (map[uint32]Live, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.byIDLocked()
}

func (c *LiveCache) byIDLocked() (map[uint32]Live, error) {
	if c.last == nil && c.err == nil || c.now().Sub(c.at) >= c.TTL {
		c.last, c.err = c.dump(c.NetNS, c.layout)
		c.at = c.now()
	}
	return c.last, c.err
}

// Stats returns the counts by forward name. Forwards set with SetForwards
// appear even with no entries; ids of no known forward appear as "#<id>".
func (c *LiveCache) Stats() (Stats, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	live, err := c.byIDLocked()
	st := Stats{Forwards: make(map[string]ForwardStats, len(c.names))}
	for id, n := range c.names {
		st.Forwards[n] = ForwardStats{ID: id}
	}
	for id, l := range live {
		name, ok := c.names[id]
		if !ok {
			name = fmt.Sprintf("#%d", id)
		}
		st.Forwards[name] = ForwardStats{ID: id, Live: l}
	}
	return st, err
}
