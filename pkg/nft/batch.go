package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// fwdd sends its batches itself; google/nftables only encodes them.
//
// Why by hand: google/nftables' Flush hands the batch to mdlayher/netlink,
// which marshals every message into a buffer of its own and appends it to
// one growing buffer. A start with 100,000 forwards is one batch of about
// 560 messages and 25 MB (500,000 elements): that assembly, its copies and
// the page faults of the buffers it outgrows cost about as much CPU as the
// kernel's own work on the batch (measured with pprof on `fwdd run`, see
// README.md). Here the messages are written once into a buffer of the
// right size and sent with one sendmsg, as nft does; the acks are read
// back as Flush would (one per message; the first error is returned).

// batchConn is a google/nftables connection that appends the messages its
// Flush would send to *msgs instead of sending them (through the library's
// dialer hook, nltest), without the batch's begin and end: Flush then
// returns at once, expecting no acks. Flushing it between operations
// keeps the order of its messages and those fwdd adds itself.
func batchConn(msgs *[]netlink.Message) (*nftables.Conn, error) {
	return nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		if req == nil {
			return nil, io.EOF // Flush reading an ack: there is none
		}
		if len(req) >= 2 {
			*msgs = append(*msgs, req[1:len(req)-1]...) // without begin and end
		}
		return nil, nil
	}))
}

// batchMark is the begin or end message of a batch.
func batchMark(typ uint16) netlink.Message {
	return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}}
}

// Netlink attributes, appended to b: a flat one, and a nested one whose
// length is written when it ends.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	return append(b, make([]byte, nlmsgAlign(len(data))-len(data))...)
}

func beginNested(b []byte, typ uint16) ([]byte, int) {
	return binary.NativeEndian.AppendUint16(append(b, 0, 0), typ|unix.NLA_F_NESTED), len(b)
}

func endNested(b []byte, start int) ([]byte, error) {
	n := len(b) - start
	if n > 0xffff {
		return nil, fmt.Errorf("netlink attribute of %d bytes, more than 65535", n)
	}
	binary.NativeEndian.PutUint16(b[start:], uint16(n))
	return b, nil
}

// elementsMessage encodes the elements of an OpAddElements or
// OpDeleteElements as google/nftables' SetAddElements and
// SetDeleteElements do (TestElementsMessage compares the bytes), but in
// one buffer: the library builds several small buffers and attribute
// lists per element, which for the 500,000 elements of 100,000 forwards
// cost more CPU than the kernel spends inserting them.
func elementsMessage(op *Op, table string, setID uint32) (netlink.Message, error) {
	typ := unix.NFT_MSG_NEWSETELEM
	if op.Kind == OpDeleteElements {
		typ = unix.NFT_MSG_DELSETELEM
	}
	s := op.Set
	size := 64
	if len(op.Elements) > 0 { // the first element's size, as an estimate
		e := &op.Elements[0]
		size += len(op.Elements) * (48 + len(e.Key) + len(e.KeyEnd) + len(e.Data) + len(e.Comment))
	}
	b := make([]byte, 0, size)
	b = append(b, byte(nftables.TableFamilyINet), unix.NFNETLINK_V0, 0, 0)
	b = appendAttr(b, unix.NFTA_SET_NAME, append([]byte(s.Name), 0))
	b = appendAttr(b, unix.NFTA_LOOKUP_SET_ID, binary.BigEndian.AppendUint32(nil, setID))
	b = appendAttr(b, unix.NFTA_SET_TABLE, append([]byte(table), 0))
	b, list := beginNested(b, unix.NFTA_SET_ELEM_LIST_ELEMENTS)
	var err error
	for i, e := range op.Elements {
		var el, n int
		b, el = beginNested(b, uint16(i+1))
		b, n = beginNested(b, unix.NFTA_SET_ELEM_KEY)
		b = appendAttr(b, unix.NFTA_DATA_VALUE, e.Key)
		b, _ = endNested(b, n)
		if len(e.KeyEnd) > 0 {
			b, n = beginNested(b, nftables.NFTA_SET_ELEM_KEY_END)
			b = appendAttr(b, unix.NFTA_DATA_VALUE, e.KeyEnd)
			b, _ = endNested(b, n)
		}
		switch {
		case s.IsVerdictMap():
			// As the library nests it: data { data { code, chain } }.
			var inner int
			b, n = beginNested(b, unix.NFTA_SET_ELEM_DATA)
			b, inner = beginNested(b, unix.NFTA_SET_ELEM_DATA)
			b = appendAttr(b, unix.NFTA_DATA_VALUE, binary.BigEndian.AppendUint32(nil, 1<<32+unix.NFT_JUMP))
			b = appendAttr(b, unix.NFTA_SET_ELEM_DATA, append(slices.Clip(e.Data), 0))
			b, _ = endNested(b, inner)
			b, _ = endNested(b, n)
		case s.IsMap():
			b, n = beginNested(b, unix.NFTA_SET_ELEM_DATA)
			b = appendAttr(b, unix.NFTA_DATA_VALUE, e.Data)
			b, _ = endNested(b, n)
		}
		if e.Comment != "" {
			b = appendAttr(b, unix.NFTA_SET_ELEM_USERDATA, userdata.AppendString(nil, userdata.NFTNL_UDATA_SET_ELEM_COMMENT, e.Comment))
		}
		if b, err = endNested(b, el); err != nil {
			return netlink.Message{}, fmt.Errorf("element %d: %w", i+1, err)
		}
	}
	if b, err = endNested(b, list); err != nil { // the caller names the set
		return netlink.Message{}, err
	}
	return netlink.Message{Header: netlink.Header{
		Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | typ),
		Flags: netlink.Request | netlink.Acknowledge | netlink.Create,
	}, Data: b}, nil
}

// elemSize is the bytes elementsMessage encodes element e of set s in:
// what splitElems counts (TestElemSize compares the two).
func elemSize(s *Set, e *Element) int {
	n := 4 + 8 + nlmsgAlign(len(e.Key)) // the element { key { value } }
	if len(e.KeyEnd) > 0 {
		n += 8 + nlmsgAlign(len(e.KeyEnd))
	}
	switch {
	case s.IsVerdictMap(): // data { data { code, chain } }
		n += 8 + 8 + 4 + nlmsgAlign(len(e.Data)+1)
	case s.IsMap():
		n += 8 + nlmsgAlign(len(e.Data))
	}
	if e.Comment != "" { // user data: type, length, the string and its 0
		n += 4 + nlmsgAlign(2+len(e.Comment)+1)
	}
	return n
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// batchSize is the bytes sendBatch sends msgs in. The kernel takes a batch
// of at most twice the socket's send buffer less 32 bytes (it doubles the
// size set; netlink refuses a longer message): 134,217,696 bytes with
// DefaultSocketBuffer, which config.MaxElements is derived from.
func batchSize(msgs []netlink.Message) int {
	size := 0
	for _, m := range msgs {
		size += nlmsgAlign(unix.NLMSG_HDRLEN + len(m.Data))
	}
	return size
}

// sendBatch sends msgs (a whole batch, as batchConn recorded it) in one
// sendmsg on a fresh socket and waits for the ack of every message that
// asks for one. A failed message's errno is returned (the kernel then
// applied none of the batch); ENOBUFS means acks were lost.
func (k *Netlink) sendBatch(msgs []netlink.Message) error {
	size := batchSize(msgs)
	buf := make([]byte, size)
	off, acks := 0, 0
	for i, m := range msgs {
		n := nlmsgAlign(unix.NLMSG_HDRLEN + len(m.Data))
		h := buf[off : off+unix.NLMSG_HDRLEN]
		binary.NativeEndian.PutUint32(h[0:], uint32(n))
		binary.NativeEndian.PutUint16(h[4:], uint16(m.Header.Type))
		binary.NativeEndian.PutUint16(h[6:], uint16(m.Header.Flags))
		binary.NativeEndian.PutUint32(h[8:], uint32(i+1)) // sequence; port id 0
		copy(buf[off+unix.NLMSG_HDRLEN:], m.Data)
		off += n
		if m.Header.Flags&netlink.Acknowledge != 0 {
			acks++
		}
	}
	c, err := k.dialNetlink()
	if err != nil {
		return err
	}
	defer c.Close()
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("nftables netlink socket: %w", err)
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	}); err != nil {
		return fmt.Errorf("send batch: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("send batch of %d bytes: %w", size, serr)
	}
	for acks > 0 {
		replies, err := c.Receive() // an error message comes back as err
		if err != nil {
			return err
		}
		if len(replies) == 0 {
			return errors.New("receive acks: empty reply")
		}
		acks -= len(replies)
	}
	return nil
}
