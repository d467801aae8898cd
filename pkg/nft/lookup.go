package nft

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Reading set elements by key.
//
// A dump of a set (GetSetElements, `nft list set`) costs the kernel time
// quadratic in the set's size: each dump message resumes by walking past
// every element already sent. At 100,000 forwards one counter set took
// about 2 s of kernel CPU and google/nftables another 3 s to decode it. A get
// of one element by key is a hash lookup, so reading the elements of k
// forwards costs O(k) whatever the table's size. google/nftables has no get
// by key, and mdlayher/netlink's receive loop stops at the first error
// message of a datagram (a missing element is an ENOENT answer among
// others), so requests are sent with netlink.Conn and the answers read from
// its socket here.

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS (linux/netfilter/nf_tables.h),
// which x/sys/unix lacks: the expressions of an element with more than one.
const nftaSetElemExpressions = 11

// lookupChunk is how many get requests are in flight at once: each answer is
// a socket buffer of its own (a few KB of receive buffer).
const lookupChunk = 2048

// KernelElem is an element read from the kernel.
type KernelElem struct {
	Data           []byte // a map's value, nil for a set
	Packets, Bytes uint64 // its counter, if it has one
	Comment        string
	HasCounter     bool
}

// lookupElems reads the elements of set with the given keys. The result
// has an entry for each key found, keyed by string(key); missing keys are
// absent.
func (k *Netlink) lookupElems(table, set string, keys [][]byte) (map[string]KernelElem, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: k.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	defer c.Close()
	// lookupChunk requests go in one sendmsg, 70 to 120 bytes each (the
	// table's and the set's names are in each, and the key): with a long
	// table name more than the default send buffer takes (EMSGSIZE), so it
	// is raised as a batch's is.
	if err := c.SetWriteBuffer(DefaultSocketBuffer); err != nil {
		return nil, fmt.Errorf("set netlink send buffer: %w", err)
	}
	if err := c.SetReadBuffer(DefaultSocketBuffer); err != nil {
		return nil, fmt.Errorf("set netlink receive buffer: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("nftables netlink socket: %w", err)
	}
	out := make(map[string]KernelElem, len(keys))
	buf := make([]byte, 1<<16)
	for len(keys) > 0 {
		n := min(len(keys), lookupChunk)
		chunk := keys[:n]
		keys = keys[n:]
		msgs := make([]netlink.Message, n)
		for i, key := range chunk {
			if msgs[i], err = getElemMessage(table, set, key); err != nil {
				return nil, err
			}
		}
		sent, err := c.SendMessages(msgs)
		if err != nil {
			return nil, fmt.Errorf("get elements of set %s: %w", set, err)
		}
		first := sent[0].Header.Sequence
		for answered := 0; answered < n; {
			var rn int
			var rerr error
			if err := rc.Read(func(fd uintptr) bool {
				rn, _, _, _, rerr = unix.Recvmsg(int(fd), buf, nil, 0)
				return rerr != unix.EAGAIN
			}); err != nil {
				return nil, fmt.Errorf("get elements of set %s: read answers: %w", set, err)
			}
			if rerr != nil {
				return nil, fmt.Errorf("get elements of set %s: %w", set, rerr)
			}
			for b := buf[:rn]; len(b) >= unix.NLMSG_HDRLEN; {
				l := int(binary.NativeEndian.Uint32(b))
				if l < unix.NLMSG_HDRLEN || l > len(b) {
					return nil, fmt.Errorf("get elements of set %s: malformed netlink message", set)
				}
				typ := binary.NativeEndian.Uint16(b[4:])
				seq := binary.NativeEndian.Uint32(b[8:])
				data := b[unix.NLMSG_HDRLEN:l]
				b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
				i := int(seq - first)
				if i < 0 || i >= n {
					continue // not an answer to this chunk
				}
				answered++
				if typ == unix.NLMSG_ERROR {
					if len(data) >= 4 {
						if errno := unix.Errno(-int32(binary.NativeEndian.Uint32(data))); errno != 0 && errno != unix.ENOENT {
							return nil, fmt.Errorf("get element of set %s: %w", set, errno)
						}
					}
					continue
				}
				e, err := decodeElemMessage(data)
				if err != nil {
					return nil, fmt.Errorf("decode element of set %s: %w", set, err)
				}
				out[string(chunk[i])] = e
			}
		}
	}
	return out, nil
}

func getElemMessage(table, set string, key []byte) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(unix.NFTA_LIST_ELEM, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(unix.NFTA_SET_ELEM_KEY, func(ae *netlink.AttributeEncoder) error {
				ae.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, err
	}
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request,
		},
		// nfgenmsg: family inet, version 0, resource id 0.
		Data: append([]byte{unix.NFPROTO_INET, 0, 0, 0}, attrs...),
	}, nil
}

// decodeElemMessage decodes the one element of a NEWSETELEM answer.
func decodeElemMessage(b []byte) (KernelElem, error) {
	var e KernelElem
	if len(b) < 4 {
		return e, errors.New("short message")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return e, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(ad *netlink.AttributeDecoder) error {
			for ad.Next() {
				if ad.Type() == unix.NFTA_LIST_ELEM {
					ad.Nested(func(ad *netlink.AttributeDecoder) error { return e.decode(ad) })
				}
			}
			return nil
		})
	}
	return e, ad.Err()
}

func (e *KernelElem) decode(ad *netlink.AttributeDecoder) error {
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_DATA:
			ad.Nested(func(ad *netlink.AttributeDecoder) error {
				for ad.Next() {
					switch ad.Type() {
					case unix.NFTA_DATA_VALUE:
						e.Data = ad.Bytes()
					case unix.NFTA_DATA_VERDICT:
						e.Data = []byte(verdictChain(ad.Bytes()))
					}
				}
				return nil
			})
		case unix.NFTA_SET_ELEM_EXPR:
			ad.Nested(e.decodeExpr)
		case nftaSetElemExpressions:
			ad.Nested(func(ad *netlink.AttributeDecoder) error {
				for ad.Next() {
					if ad.Type() == unix.NFTA_LIST_ELEM {
						ad.Nested(e.decodeExpr)
					}
				}
				return nil
			})
		case unix.NFTA_SET_ELEM_USERDATA:
			if c, ok := userdata.GetString(ad.Bytes(), userdata.NFTNL_UDATA_SET_ELEM_COMMENT); ok {
				e.Comment = c
			}
		}
	}
	return nil
}

func (e *KernelElem) decodeExpr(ad *netlink.AttributeDecoder) error {
	var name string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			if name != "counter" {
				continue
			}
			ad.Nested(func(ad *netlink.AttributeDecoder) error {
				for ad.Next() {
					switch ad.Type() {
					case unix.NFTA_COUNTER_PACKETS:
						e.Packets = ad.Uint64()
					case unix.NFTA_COUNTER_BYTES:
						e.Bytes = ad.Uint64()
					}
				}
				e.HasCounter = true
				return nil
			})
		}
	}
	return nil
}

// ReadTrafficOf reads the counters of the forwards in ids (name -> id) by
// key: its cost is proportional to len(ids), not to the table. A forward
// whose elements are missing, or carry another forward's name (ids that are
// not the kernel's), is absent from the result.
func (k *Netlink) ReadTrafficOf(table string, l ctmark.Layout, ids map[string]uint32) (map[string]*Traffic, error) {
	names := make([]string, 0, len(ids))
	keys := make([][]byte, 0, len(ids))
	for name, id := range ids {
		names = append(names, name)
		keys = append(keys, binary.NativeEndian.AppendUint32(nil, l.ForID(id)))
	}
	out := make(map[string]*Traffic, len(ids))
	found := make(map[string]int, len(ids))
	for _, set := range []string{SetTrafficOrig, SetTrafficReply, SetTrafficNew} {
		got, err := k.lookupElems(table, set, keys)
		if err != nil {
			return nil, err
		}
		for i, name := range names {
			e, ok := got[string(keys[i])]
			if !ok || e.Comment != name {
				continue
			}
			t := out[name]
			if t == nil {
				t = &Traffic{Name: name, ID: ids[name]}
				out[name] = t
			}
			t.set(set, e.Packets, e.Bytes)
			found[name]++
		}
	}
	for name := range out {
		if found[name] != 3 { // only forwards with all their counters
			delete(out, name)
		}
	}
	return out, nil
}

// VerifyForwards checks by key that the elements the named forwards have in
// m's maps and sets (the counter sets aside: ReadTrafficOf reads them) are
// in the kernel with the same data: a cost proportional to the forwards
// named, where VerifyContent reads every element of the table. Elements
// the kernel holds beyond m's are not looked for.
func (k *Netlink) VerifyForwards(m *Model, names []string) error {
	type owned struct {
		e     Element
		owner string
	}
	var bySet [numSets][]owned
	for _, name := range names {
		p := m.parts[name]
		if p == nil {
			continue
		}
		var es [numSets][]Element
		p.elements(m.Layout, &es)
		for i := range es {
			for _, e := range es[i] {
				bySet[i] = append(bySet[i], owned{e, name})
			}
		}
	}
	for _, s := range m.Sets {
		i := setIndex[s.Name]
		if s.Counter || len(bySet[i]) == 0 {
			continue
		}
		keys := make([][]byte, len(bySet[i]))
		for j, o := range bySet[i] {
			keys[j] = o.e.Key
		}
		got, err := k.lookupElems(m.Table, s.Name, keys)
		if err != nil {
			return err
		}
		for _, o := range bySet[i] {
			g, ok := got[string(o.e.Key)]
			switch {
			case !ok:
				return fmt.Errorf("set %s lacks the element %s of forward %s", s.Name, renderBytes(s.Key, o.e.Key), o.owner)
			case s.IsMap() && string(g.Data) != string(o.e.Data):
				return fmt.Errorf("map %s maps %s of forward %s to %s, want %s", s.Name, renderBytes(s.Key, o.e.Key), o.owner,
					renderBytes(s.Data, g.Data), renderBytes(s.Data, o.e.Data))
			case o.e.Comment != "" && g.Comment != o.e.Comment:
				return fmt.Errorf("set %s has element %s for %q, want %q", s.Name, renderBytes(s.Key, o.e.Key), g.Comment, o.e.Comment)
			}
		}
	}
	return nil
}

// VerifyByKey checks that the kernel's table holds m at a cost that grows
// with the forwards named, not with the table: a read of its chains, rules
// and sets without elements, then by key the elements and counters of the
// forwards named. An element the kernel holds beyond m's is not looked for.
func (k *Netlink) VerifyByKey(m *Model, names []string) error {
	t, err := k.Read(m.Table, false)
	if err != nil {
		return err
	}
	if err := t.Differs(m); err != nil {
		return err
	}
	if err := k.VerifyForwards(m, names); err != nil {
		return err
	}
	ids := make(map[string]uint32, len(names))
	for _, name := range names {
		if id, ok := m.IDs[name]; ok {
			ids[name] = id
		}
	}
	traffic, err := k.ReadTrafficOf(m.Table, m.Layout, ids)
	if err != nil {
		return err
	}
	for name := range ids {
		if traffic[name] == nil {
			return fmt.Errorf("the counters of forward %s are missing from %s, %s or %s", name, SetTrafficOrig, SetTrafficReply, SetTrafficNew)
		}
	}
	return nil
}
