package nft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"

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
}

// Packets is the sum of both directions.
func (t Traffic) Packets() uint64 { return t.OrigPackets + t.ReplyPackets }

// Bytes is the sum of both directions.
func (t Traffic) Bytes() uint64 { return t.OrigBytes + t.ReplyBytes }

// ReadTraffic reads the per-forward counters of fwdd's table, keyed by
// forward name. It reads the kernel only, so it works without the daemon.
func (k *Netlink) ReadTraffic(table string) (map[string]*Traffic, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	out := map[string]*Traffic{}
	for _, name := range []string{SetTrafficOrig, SetTrafficReply} {
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
			id, ok := ctmark.ID(binary.NativeEndian.Uint32(e.Key))
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
			if name == SetTrafficOrig {
				tr.OrigPackets, tr.OrigBytes = e.Counter.Packets, e.Counter.Bytes
			} else {
				tr.ReplyPackets, tr.ReplyBytes = e.Counter.Packets, e.Counter.Bytes
			}
		}
	}
	return out, nil
}

// ReadIDs returns the forward ids recorded in the kernel's table (empty when
// the table does not exist), so a restarted daemon keeps them.
func (k *Netlink) ReadIDs(table string) (map[string]uint32, error) {
	exists, err := k.TableExists(table)
	if err != nil || !exists {
		return map[string]uint32{}, err
	}
	tr, err := k.ReadTraffic(table)
	if err != nil {
		return nil, err
	}
	ids := make(map[string]uint32, len(tr))
	for name, t := range tr {
		ids[name] = t.ID
	}
	return ids, nil
}
