package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Traffic is what the kernel counted for one forward.
type Traffic struct {
	Name         string // from the element's comment
	ID           uint32
	OrigPackets  uint64 // client -> backend
	OrigBytes    uint64
	ReplyPackets uint64 // backend -> client
	ReplyBytes   uint64
	// New counts the forward's new connections (first packets seen by the
	// postrouting NAT chain).
	New uint64
}

// Packets is the sum of both directions.
func (t Traffic) Packets() uint64 { return t.OrigPackets + t.ReplyPackets }

// Bytes is the sum of both directions.
func (t Traffic) Bytes() uint64 { return t.OrigBytes + t.ReplyBytes }

// ReadTraffic reads the per-forward counters of fwdd's table, keyed by
// forward name. It reads the kernel only, so it works without the daemon.
func (k *Netlink) ReadTraffic(table string, l ctmark.Layout) (map[string]*Traffic, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	out := map[string]*Traffic{}
	for _, name := range []string{SetTrafficOrig, SetTrafficReply, SetTrafficNew} {
		// The set is described by hand: GetSets mis-decodes some types
		// (FACTS.md), and only key, counter and comment are read here.
		s := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeMark}
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("read set %s of table inet %s: %w", name, table, err)
		}
		for _, e := range elems {
			if len(e.Key) != 4 || e.Comment == "" {
				continue
			}
			id, ok := l.ID(binary.NativeEndian.Uint32(e.Key))
			if !ok {
				continue
			}
			tr := out[e.Comment]
			if tr == nil {
				tr = &Traffic{Name: e.Comment, ID: id}
				out[e.Comment] = tr
			}
			if e.Counter == nil {
				continue
			}
			tr.set(name, e.Counter.Packets, e.Counter.Bytes)
		}
	}
	return out, nil
}

func (t *Traffic) set(set string, packets, bytes uint64) {
	switch set {
	case SetTrafficOrig:
		t.OrigPackets, t.OrigBytes = packets, bytes
	case SetTrafficReply:
		t.ReplyPackets, t.ReplyBytes = packets, bytes
	case SetTrafficNew:
		t.New = packets
	}
}

// Totals are the counters of all forwards together: the rule counters of
// the counting chains, read without walking the per-forward sets.
type Totals struct {
	OrigPackets, OrigBytes   uint64
	ReplyPackets, ReplyBytes uint64
	New                      uint64 // new connections
}

// ReadTotals reads the totals of fwdd's table.
func (k *Netlink) ReadTotals(table string) (Totals, error) {
	var tot Totals
	c, err := k.conn()
	if err != nil {
		return tot, err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	for _, chain := range []string{"count_forward", "count_input", "count_output", "postrouting"} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: chain, Table: t})
		if err != nil {
			return tot, fmt.Errorf("read rules of chain %s in table inet %s: %w", chain, table, err)
		}
		for _, r := range rules {
			var set string
			for _, e := range r.Exprs {
				switch e := e.(type) {
				case *expr.Lookup:
					set = e.SetName
				case *expr.Counter:
					switch set {
					case SetTrafficOrig:
						tot.OrigPackets += e.Packets
						tot.OrigBytes += e.Bytes
					case SetTrafficReply:
						tot.ReplyPackets += e.Packets
						tot.ReplyBytes += e.Bytes
					case SetTrafficNew:
						tot.New += e.Packets
					}
				}
			}
		}
	}
	return tot, nil
}
