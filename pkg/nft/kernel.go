package nft

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// elementsPerMessage bounds the elements sent in one netlink message: the
// kernel truncates an element list's length to 16 bits (FACTS.md), so large
// sets are sent in chunks, all in the same batch.
const elementsPerMessage = 1000

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
	case FieldMark:
		return nftables.TypeMark
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
		Counter: s.Counter, Comment: s.Comment}
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

func kernelElems(s *Set, es []Element) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		out[i] = nftables.SetElement{Key: e.Key, Comment: e.Comment}
		if s.IsMap() {
			out[i].Val = e.Data
		}
	}
	return out
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

// batch collects the operations of one transaction and counts its messages.
type batch struct {
	conn     *nftables.Conn
	table    *nftables.Table
	sets     map[string]*nftables.Set
	messages int
	elements int
}

func (b *batch) addElems(s *Set, es []Element, del bool) error {
	ks := b.sets[s.Name]
	for len(es) > 0 {
		n := min(len(es), elementsPerMessage)
		var err error
		if del {
			err = b.conn.SetDeleteElements(ks, kernelElems(s, es[:n]))
		} else {
			err = b.conn.SetAddElements(ks, kernelElems(s, es[:n]))
		}
		if err != nil {
			return fmt.Errorf("elements of set %s: %w", s.Name, err)
		}
		b.messages++
		b.elements += n
		es = es[n:]
	}
	return nil
}

func (b *batch) addSet(s *Set, elems []Element) error {
	ks, err := kernelSet(b.table, s)
	if err != nil {
		return err
	}
	if err := b.conn.AddSet(ks, nil); err != nil {
		return fmt.Errorf("add set %s: %w", s.Name, err)
	}
	b.messages++
	b.sets[s.Name] = ks
	return b.addElems(s, elems, false)
}

func (b *batch) addRules(c *Chain) error {
	kc := &nftables.Chain{Name: c.Name, Table: b.table}
	ctx := &compileCtx{table: b.table, sets: b.sets, addSet: func(s *nftables.Set, es []nftables.SetElement) error {
		b.messages++
		return b.conn.AddSet(s, es)
	}}
	for i, r := range c.Rules {
		kr := &nftables.Rule{Table: b.table, Chain: kc}
		for _, st := range r.Stmts {
			ex, err := st.exprs(ctx)
			if err != nil {
				return fmt.Errorf("chain %s rule %d: %w", c.Name, i+1, err)
			}
			kr.Exprs = append(kr.Exprs, ex...)
		}
		if r.Comment != "" {
			kr.UserData = userdata.AppendString(nil, userdata.TypeComment, r.Comment)
		}
		b.conn.AddRule(kr)
		b.messages++
	}
	return nil
}

// Stats describes one applied batch.
type Stats struct {
	Full     bool          // the whole table was replaced
	Messages int           // netlink messages in the batch
	Elements int           // set elements added or deleted
	Elapsed  time.Duration // from building the batch to the kernel's answer
	// Recovered is set when the first attempt's outcome was unknown (ENOBUFS)
	// and the table was then replaced as a whole.
	Recovered bool
}

// Kernel talks to the nftables of one network namespace.
type Kernel struct {
	// NetNS is an open fd of the namespace, 0 for the current one. It must
	// stay open while the Kernel is used.
	NetNS int
	// SendBuffer and ReceiveBuffer override DefaultSocketBuffer (tests
	// shrink the receive buffer to provoke ENOBUFS).
	SendBuffer, ReceiveBuffer int
}

func (k *Kernel) conn() (*nftables.Conn, error) { return k.dial(false) }

// readConn is one lasting socket for a series of reads (Verify): dialing
// per request costs more than the requests. Close it with CloseLasting.
func (k *Kernel) readConn() (*nftables.Conn, error) { return k.dial(true) }

func (k *Kernel) dial(lasting bool) (*nftables.Conn, error) {
	snd, rcv := k.SendBuffer, k.ReceiveBuffer
	if snd == 0 {
		snd = DefaultSocketBuffer
	}
	if rcv == 0 {
		rcv = DefaultSocketBuffer
	}
	// SetWriteBuffer/SetReadBuffer use SO_SNDBUFFORCE/SO_RCVBUFFORCE
	// (CAP_NET_ADMIN), so the size is not capped by net.core.*mem_max.
	setBuf := func(c *netlink.Conn) error {
		if err := c.SetWriteBuffer(snd); err != nil {
			return fmt.Errorf("set netlink send buffer: %w", err)
		}
		if err := c.SetReadBuffer(rcv); err != nil {
			return fmt.Errorf("set netlink receive buffer: %w", err)
		}
		return nil
	}
	// A fresh socket per batch: leftover acks of an earlier batch can never
	// be mistaken for this one's (FACTS.md: "mismatched sequence").
	opts := []nftables.ConnOption{nftables.WithNetNSFd(k.NetNS), nftables.WithSockOptions(setBuf)}
	if lasting {
		opts = append(opts, nftables.AsLasting())
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	return c, nil
}

func (k *Kernel) newBatch(table string) (*batch, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	return &batch{conn: c, table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet},
		sets: map[string]*nftables.Set{}}, nil
}

// ErrOutcomeUnknown wraps a failed Flush whose effect is unknown: the kernel
// may have committed the batch although an ack was lost (ENOBUFS).
var ErrOutcomeUnknown = errors.New("outcome of the batch unknown")

func (b *batch) flush() error {
	b.messages += 2 // batch begin and end
	if err := b.conn.Flush(); err != nil {
		if errors.Is(err, unix.ENOBUFS) {
			return fmt.Errorf("%w: %w", ErrOutcomeUnknown, err)
		}
		return err
	}
	return nil
}

// Replace replaces fwdd's table with the model in one transaction. Whether
// the table exists or not, the kernel sees add, delete, add: the old table
// and its state go, the new one appears atomically.
func (k *Kernel) Replace(m *Model) (Stats, error) {
	start := time.Now()
	b, err := k.newBatch(m.Table)
	if err != nil {
		return Stats{}, err
	}
	b.conn.AddTable(b.table)
	b.conn.DelTable(b.table)
	b.conn.AddTable(b.table)
	b.messages += 3
	all := m.elements()
	for i, s := range m.Sets {
		if err := b.addSet(s, all[i]); err != nil {
			return Stats{}, err
		}
	}
	for _, c := range m.Chains {
		b.conn.AddChain(kernelChain(b.table, c))
		b.messages++
	}
	for _, c := range m.Chains {
		if err := b.addRules(c); err != nil {
			return Stats{}, err
		}
	}
	err = b.flush()
	st := Stats{Full: true, Messages: b.messages, Elements: b.elements, Elapsed: time.Since(start)}
	if err != nil {
		return st, fmt.Errorf("replace table inet %s: %w", m.Table, err)
	}
	return st, nil
}

// Update changes the table from old (what fwdd last applied) to m in one
// transaction that carries only the differences: changed elements, and the
// rules of chains whose rules changed.
func (k *Kernel) Update(old, m *Model) (Stats, error) {
	start := time.Now()
	b, err := k.newBatch(m.Table)
	if err != nil {
		return Stats{}, err
	}
	d := diff(old, m)
	for _, s := range m.Sets {
		ks, err := kernelSet(b.table, s)
		if err != nil {
			return Stats{}, err
		}
		b.sets[s.Name] = ks
	}
	// Chains whose rules change are flushed first, so that chains no longer
	// referenced can be deleted in the same batch.
	for _, c := range d.flushChains {
		b.conn.FlushChain(&nftables.Chain{Name: c.Name, Table: b.table})
		b.messages++
	}
	for _, c := range d.delChains {
		b.conn.DelChain(&nftables.Chain{Name: c.Name, Table: b.table})
		b.messages++
	}
	for _, c := range d.addChains {
		b.conn.AddChain(kernelChain(b.table, c))
		b.messages++
	}
	for _, sd := range d.sets {
		if err := b.addElems(sd.set, sd.del, true); err != nil {
			return Stats{}, err
		}
	}
	for _, sd := range d.sets {
		if err := b.addElems(sd.set, sd.add, false); err != nil {
			return Stats{}, err
		}
	}
	for _, c := range append(d.flushChains, d.addChains...) {
		if err := b.addRules(c); err != nil {
			return Stats{}, err
		}
	}
	if b.messages == 0 {
		return Stats{Elapsed: time.Since(start)}, nil
	}
	err = b.flush()
	st := Stats{Messages: b.messages, Elements: b.elements, Elapsed: time.Since(start)}
	if err != nil {
		return st, fmt.Errorf("update table inet %s: %w", m.Table, err)
	}
	return st, nil
}

// Delete removes fwdd's table if it exists.
func (k *Kernel) Delete(table string) error {
	exists, err := k.TableExists(table)
	if err != nil || !exists {
		return err
	}
	b, err := k.newBatch(table)
	if err != nil {
		return err
	}
	b.conn.DelTable(b.table)
	if err := b.flush(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", table, err)
	}
	return nil
}

// TableExists reports whether table inet <table> exists.
func (k *Kernel) TableExists(table string) (bool, error) {
	c, err := k.conn()
	if err != nil {
		return false, err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == table {
			return true, nil
		}
	}
	return false, nil
}

// ForeignDropPolicies lists base chains of other tables on the forward hook
// whose policy is drop: every table's chains see each packet, so such a
// chain drops fwdd's forwarded connections unless it accepts them. It only
// reads.
func (k *Kernel) ForeignDropPolicies(own string) ([]string, error) {
	c, err := k.conn()
	if err != nil {
		return nil, err
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	var out []string
	for _, ch := range chains {
		if ch.Table == nil || ch.Hooknum == nil || ch.Policy == nil {
			continue
		}
		if ch.Table.Name == own && ch.Table.Family == nftables.TableFamilyINet {
			continue
		}
		if *ch.Hooknum == *nftables.ChainHookForward && *ch.Policy == nftables.ChainPolicyDrop &&
			(ch.Table.Family == nftables.TableFamilyINet || ch.Table.Family == nftables.TableFamilyIPv4 || ch.Table.Family == nftables.TableFamilyIPv6) {
			out = append(out, fmt.Sprintf("table %s %s chain %s", familyName(ch.Table.Family), ch.Table.Name, ch.Name))
		}
	}
	return out, nil
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
