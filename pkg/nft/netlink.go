package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elementListBytes bounds the encoded elements of one netlink message
// (elemSize): the kernel truncates an element list's length to 16 bits
// (FACTS.md), at most 65,535 bytes with the list's own 4, so large sets are
// sent in chunks, all in the same batch. Chunks are cut by bytes, as
// elements differ in size: an IPv6 balance interval takes 72 bytes, an
// IPv4 counter with a short name 32.
const elementListBytes = 60_000

// DefaultSocketBuffer is the send and receive buffer of fwdd's nftables
// sockets: big batches fail with EMSGSIZE on the default send buffer, and
// the acks of a big batch overflow the default receive buffer (ENOBUFS).
const DefaultSocketBuffer = 64 << 20

func datatype(f Field) nftables.SetDatatype {
	switch f {
	case FieldIPv4:
		return nftables.TypeIPAddr
	case FieldIPv6:
		return nftables.TypeIP6Addr
	case FieldProto:
		return nftables.TypeInetProto
	case FieldPort:
		return nftables.TypeInetService
	case FieldMark, FieldMarkBE:
		return nftables.TypeMark
	case FieldSlot:
		return nftables.TypeInteger
	case FieldVerdict:
		return nftables.TypeVerdict
	}
	return nftables.TypeInvalid
}

func concatType(fs []Field) (nftables.SetDatatype, error) {
	if len(fs) == 1 {
		return datatype(fs[0]), nil
	}
	ts := make([]nftables.SetDatatype, len(fs))
	for i, f := range fs {
		ts[i] = datatype(f)
	}
	return nftables.ConcatSetType(ts...)
}

// kernelSet describes a named set for google/nftables.
func kernelSet(t *nftables.Table, s *Set) (*nftables.Set, error) {
	kt, err := concatType(s.Key)
	if err != nil {
		return nil, fmt.Errorf("key type of set %s: %w", s.Name, err)
	}
	ks := &nftables.Set{Table: t, Name: s.Name, KeyType: kt, Concatenation: len(s.Key) > 1,
		Counter: s.Counter, Comment: s.Comment, Interval: s.Interval}
	if len(s.Key) == 1 && s.Key[0] == FieldMark {
		ks.KeyByteOrder = binaryutil.NativeEndian
	}
	if s.IsMap() {
		ks.IsMap = true
		if ks.DataType, err = concatType(s.Data); err != nil {
			return nil, fmt.Errorf("data type of map %s: %w", s.Name, err)
		}
	}
	return ks, nil
}

func kernelChain(t *nftables.Table, c *Chain) *nftables.Chain {
	kc := &nftables.Chain{Name: c.Name, Table: t}
	if c.Hook != nil {
		kc.Type = nftables.ChainType(c.Hook.Type)
		kc.Hooknum = map[string]*nftables.ChainHook{
			"prerouting": nftables.ChainHookPrerouting, "input": nftables.ChainHookInput,
			"forward": nftables.ChainHookForward, "output": nftables.ChainHookOutput,
			"postrouting": nftables.ChainHookPostrouting,
		}[c.Hook.Hook]
		kc.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(c.Hook.Priority))
		policy := nftables.ChainPolicyAccept
		if c.Hook.Drop {
			policy = nftables.ChainPolicyDrop
		}
		kc.Policy = &policy
	}
	return kc
}

// Stats describes one applied batch.
type Stats struct {
	Full     bool          // the whole table was replaced
	Messages int           // netlink messages in the batch
	Elements int           // set elements added or deleted
	Elapsed  time.Duration // from building the batch to the kernel's answer
	// Recovered is set when the first attempt's outcome was unknown (ENOBUFS)
	// and the table was then read back (and replaced if it differed).
	Recovered bool
}

// Netlink is the Backend that programs the nftables of one network
// namespace over netlink (google/nftables).
type Netlink struct {
	// NetNS is an open fd of the namespace, 0 for the current one. It must
	// stay open while the Netlink is used.
	NetNS int
	// SendBuffer and ReceiveBuffer override DefaultSocketBuffer (tests
	// shrink the receive buffer to provoke ENOBUFS).
	SendBuffer, ReceiveBuffer int
}

func (k *Netlink) conn() (*nftables.Conn, error) { return k.dial(false) }

// readConn is one lasting socket for a series of reads (Read): dialing per
// request costs more than the requests. Close it with CloseLasting.
func (k *Netlink) readConn() (*nftables.Conn, error) { return k.dial(true) }

// setBuffers sizes a socket's buffers. SetWriteBuffer/SetReadBuffer use
// SO_SNDBUFFORCE/SO_RCVBUFFORCE (CAP_NET_ADMIN), so the size is not capped
// by net.core.*mem_max.
func (k *Netlink) setBuffers(c *netlink.Conn) error {
	snd, rcv := k.SendBuffer, k.ReceiveBuffer
	if snd == 0 {
		snd = DefaultSocketBuffer
	}
	if rcv == 0 {
		rcv = DefaultSocketBuffer
	}
	if err := c.SetWriteBuffer(snd); err != nil {
		return fmt.Errorf("set netlink send buffer: %w", err)
	}
	if err := c.SetReadBuffer(rcv); err != nil {
		return fmt.Errorf("set netlink receive buffer: %w", err)
	}
	return nil
}

// dialNetlink opens a netfilter netlink socket in the namespace, with
// fwdd's buffers: one per batch, so leftover acks of an earlier batch can
// never be mistaken for this one's (FACTS.md: "mismatched sequence").
func (k *Netlink) dialNetlink() (*netlink.Conn, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: k.NetNS})
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	if err := k.setBuffers(c); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (k *Netlink) dial(lasting bool) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithNetNSFd(k.NetNS), nftables.WithSockOptions(k.setBuffers)}
	if lasting {
		opts = append(opts, nftables.AsLasting())
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return c, nil
}

// ErrOutcomeUnknown wraps a failed batch whose effect is unknown: the kernel
// may have committed it although an ack was lost (ENOBUFS).
var ErrOutcomeUnknown = errors.New("outcome of the batch unknown")

// ruleTagType is the user data type of a rule's tag. nft shows only the
// comment (type 0) and ignores types it does not know.
const ruleTagType userdata.Type = 0xfd

// Run sends the plan as one batch on a fresh socket: encodeBatch encodes
// it, sendBatch sends it (see batch.go).
func (k *Netlink) Run(p *Plan) error {
	if p.Empty() {
		return nil
	}
	msgs, err := encodeBatch(p)
	if err != nil {
		return err
	}
	if err := k.sendBatch(msgs); err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("table inet %s: %w: %w", p.Table, ErrOutcomeUnknown, err)
		}
		return fmt.Errorf("table inet %s: %w", p.Table, err)
	}
	return nil
}

// encodeBatch encodes the plan's batch, begin and end included:
// google/nftables the table, chain, set and rule messages, elementsMessage
// the element messages.
func encodeBatch(p *Plan) ([]netlink.Message, error) {
	msgs := []netlink.Message{batchMark(unix.NFNL_MSG_BATCH_BEGIN)}
	c, err := batchConn(&msgs)
	if err != nil {
		return nil, err
	}
	t := &nftables.Table{Name: p.Table, Family: nftables.TableFamilyINet}
	// Named sets get ids above the plan's anonymous ones: a lookup by id
	// must find the set its rule means.
	nextID := uint32(0)
	for _, op := range p.Ops {
		for _, a := range op.Anon {
			nextID = max(nextID, a.ID)
		}
	}
	sets := map[string]*nftables.Set{}
	set := func(s *Set) (*nftables.Set, error) {
		if ks := sets[s.Name]; ks != nil {
			return ks, nil
		}
		ks, err := kernelSet(t, s)
		if err != nil {
			return nil, err
		}
		nextID++
		ks.ID = nextID
		sets[s.Name] = ks
		return ks, nil
	}
	for _, op := range p.Ops {
		switch op.Kind {
		case OpAddTable:
			c.AddTable(t)
		case OpDeleteTable:
			c.DelTable(t)
		case OpAddSet:
			ks, err := set(op.Set)
			if err == nil {
				err = c.AddSet(ks, nil)
			}
			if err != nil {
				return nil, fmt.Errorf("add set %s: %w", op.Set.Name, err)
			}
		case OpAddElements, OpDeleteElements:
			ks, err := set(op.Set)
			if err == nil {
				err = c.Flush() // the library's messages before these
			}
			var m netlink.Message
			if err == nil {
				m, err = elementsMessage(&op, p.Table, ks.ID)
			}
			if err != nil {
				return nil, fmt.Errorf("elements of set %s: %w", op.Set.Name, err)
			}
			msgs = append(msgs, m)
		case OpAddChain:
			c.AddChain(kernelChain(t, op.Chain))
		case OpFlushChain:
			c.FlushChain(&nftables.Chain{Name: op.Chain.Name, Table: t})
		case OpDeleteChain:
			c.DelChain(&nftables.Chain{Name: op.Chain.Name, Table: t})
		case OpAddRule:
			for i := range op.Anon {
				if err := addAnonSet(c, &msgs, t, &op.Anon[i]); err != nil {
					return nil, fmt.Errorf("chain %s: add anonymous set: %w", op.Chain.Name, err)
				}
			}
			var ud []byte
			if op.Rule.Comment != "" {
				ud = userdata.AppendString(ud, userdata.TypeComment, op.Rule.Comment)
			}
			ud = userdata.Append(ud, ruleTagType, binary.BigEndian.AppendUint64(nil, op.Tag))
			c.AddRule(&nftables.Rule{Table: t, Chain: &nftables.Chain{Name: op.Chain.Name, Table: t},
				Exprs: op.Exprs, UserData: ud})
		default:
			return nil, fmt.Errorf("run plan: unknown operation %d", op.Kind)
		}
	}
	if err := c.Flush(); err != nil { // only encodes: an encoding error
		return nil, fmt.Errorf("table inet %s: encode batch: %w", p.Table, err)
	}
	return append(msgs, batchMark(unix.NFNL_MSG_BATCH_END)), nil
}

// addAnonSet appends an anonymous set to the batch: added empty, then
// filled in chunks like a named set, as AddSet would put all its elements
// into one attribute, whose length the kernel truncates (FACTS.md). The
// kernel takes elements for an anonymous set until a rule is bound to it:
// the rule that follows.
func addAnonSet(c *nftables.Conn, msgs *[]netlink.Message, t *nftables.Table, a *AnonSet) error {
	if err := c.AddSet(anonSet(t, a), nil); err != nil {
		return err
	}
	if err := c.Flush(); err != nil { // the set's message before its elements
		return err
	}
	s := a.set()
	for _, chunk := range splitElems(s, a.Elements) {
		m, err := elementsMessage(&Op{Kind: OpAddElements, Set: s, Elements: chunk}, t.Name, a.ID)
		if err != nil {
			return err
		}
		*msgs = append(*msgs, m)
	}
	return nil
}

// anonSet describes an anonymous set for google/nftables, without its
// elements. Size declares how many will be added, as the library (and nft)
// declare a constant set's elements when they come with it.
func anonSet(t *nftables.Table, a *AnonSet) *nftables.Set {
	kt, _ := concatType(a.Key)
	s := &nftables.Set{Table: t, Anonymous: true, Constant: true, ID: a.ID, Name: a.set().Name, KeyType: kt,
		Size: uint32(len(a.Elements))}
	if len(a.Data) > 0 {
		s.IsMap = true
		s.DataType, _ = concatType(a.Data)
	}
	return s
}

var hookNames = map[nftables.ChainHook]string{
	*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input",
	*nftables.ChainHookForward: "forward", *nftables.ChainHookOutput: "output",
	*nftables.ChainHookPostrouting: "postrouting",
}

// Read reads fwdd's table back (nil when it does not exist): its flags, its
// chains with their hooks and rule tags, its named sets, and with elements also
// every element. Dumps are flow-controlled by the reader, so this works
// where a batch's acks did not.
func (k *Netlink) Read(table string, elements bool) (*Table, error) {
	kt, err := k.table(table)
	if err != nil || kt == nil {
		return nil, err
	}
	c, err := k.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	nt := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	// google/nftables v0.3.0 decodes NFTA_TABLE_FLAGS, which the kernel
	// sends big endian, in host order (dormant read as 0x1000000 here).
	flags := binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, kt.Flags))
	t := &Table{Name: table, Flags: flags, Elements: elements}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		tc := TableChain{Name: ch.Name}
		if ch.Hooknum != nil {
			tc.Hook = &Hook{Type: string(ch.Type), Hook: hookNames[*ch.Hooknum]}
			if ch.Priority != nil {
				tc.Hook.Priority = int(*ch.Priority)
			}
			tc.Hook.Drop = ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
		}
		rules, err := c.GetRules(nt, ch)
		if err != nil {
			return nil, fmt.Errorf("list rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			var tag uint64
			if b := userdata.Get(r.UserData, ruleTagType); len(b) == 8 {
				tag = binary.BigEndian.Uint64(b)
			}
			tc.Rules = append(tc.Rules, tag)
		}
		t.Chains = append(t.Chains, tc)
	}
	sets, err := c.GetSets(nt)
	if err != nil {
		return nil, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if s.Anonymous {
			continue
		}
		// GetSets decodes a verdict map's data type as its key type
		// (FACTS.md); either says it is one.
		ts := TableSet{Name: s.Name, Verdict: s.KeyType.Name == nftables.TypeVerdict.Name || s.DataType.Name == nftables.TypeVerdict.Name}
		if i, ok := setIndex[s.Name]; ok && elements {
			// Described from fwdd's own declaration: GetSets mis-decodes
			// some types (FACTS.md).
			decl := allSets[i]
			ks, err := kernelSet(nt, decl)
			if err != nil {
				return nil, err
			}
			elems, err := c.GetSetElements(ks)
			if err != nil {
				return nil, fmt.Errorf("read set %s: %w", s.Name, err)
			}
			ts.Elements = make([]Element, len(elems))
			for j, e := range elems {
				ts.Elements[j] = Element{Key: e.Key, KeyEnd: e.KeyEnd, Comment: e.Comment}
				switch {
				case ts.Verdict:
					ts.Elements[j].Data = []byte(verdictChain(e.Val))
				case decl.IsMap():
					ts.Elements[j].Data = e.Val
				}
			}
		}
		t.Sets = append(t.Sets, ts)
	}
	return t, nil
}

// VerifyContent reads the whole table back and says how it differs from m
// (nil: it holds exactly m).
func (k *Netlink) VerifyContent(m *Model) error {
	t, err := k.Read(m.Table, true)
	if err != nil {
		return err
	}
	return t.Differs(m)
}

// TableExists reports whether table inet <table> exists.
func (k *Netlink) TableExists(table string) (bool, error) {
	t, err := k.table(table)
	return t != nil, err
}

// table returns table inet <table> as the kernel lists it (name, flags),
// nil when it does not exist.
func (k *Netlink) table(table string) (*nftables.Table, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == table {
			return t, nil
		}
	}
	return nil, nil
}

// verdictChain returns the chain of a jump or goto verdict as the kernel
// encodes it (NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN): google/nftables
// leaves a verdict map element's data undecoded (FACTS.md).
func verdictChain(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	chain := ""
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			chain = ad.String()
		}
	}
	return chain
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	}
	return fmt.Sprint(uint8(f))
}
