package nft

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/config"
)

// TestElementsMessage: fwdd encodes element messages itself (batch.go);
// they must be byte for byte what google/nftables' SetAddElements and
// SetDeleteElements make of the same elements, for every kind of set the
// table has: counter sets with comments, concatenated maps, verdict maps
// (partial ct mask), interval maps (balancing), snat maps.
func TestElementsMessage(t *testing.T) {
	seen := map[string]bool{}
	for _, text := range []string{goldenConfig + balancedConfig, partialConfig + balancedConfig} {
		m := compile(t, text, nil)
		for _, op := range Replace(m).Ops {
			if op.Kind != OpAddElements {
				continue
			}
			for _, kind := range []OpKind{OpAddElements, OpDeleteElements} {
				op.Kind = kind
				seen[op.Set.Name] = true
				want := libraryElements(t, m.Table, &op, 7)
				got, err := elementsMessage(&op, m.Table, 7)
				if err != nil {
					t.Fatal(err)
				}
				if got.Header.Type != want.Header.Type || got.Header.Flags != want.Header.Flags || !bytes.Equal(got.Data, want.Data) {
					t.Errorf("set %s, op %d: fwdd's message differs from google/nftables':\n got %v %v %x\nwant %v %v %x",
						op.Set.Name, kind, got.Header.Type, got.Header.Flags, got.Data, want.Header.Type, want.Header.Flags, want.Data)
				}
			}
		}
	}
	for _, s := range []string{SetTrafficOrig, "mark4_addr", "dnat4_port", "mark4_port_1", "balance4_random", "balance6_source", "snat4", SetNoSNAT} {
		if !seen[s] {
			t.Errorf("no elements of set %s compared", s)
		}
	}
}

// libraryElements is the message google/nftables makes of op.
func libraryElements(t *testing.T, table string, op *Op, id uint32) netlink.Message {
	t.Helper()
	var msgs []netlink.Message
	c, err := batchConn(&msgs)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := kernelSet(&nftables.Table{Name: table, Family: nftables.TableFamilyINet}, op.Set)
	if err != nil {
		t.Fatal(err)
	}
	ks.ID = id
	elems := make([]nftables.SetElement, len(op.Elements))
	for i, e := range op.Elements {
		elems[i] = nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd, Comment: e.Comment}
		switch {
		case op.Set.IsVerdictMap():
			elems[i].VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: string(e.Data)}
		case op.Set.IsMap():
			elems[i].Val = e.Data
		}
	}
	if op.Kind == OpAddElements {
		err = c.SetAddElements(ks, elems)
	} else {
		err = c.SetDeleteElements(ks, elems)
	}
	if err == nil {
		err = c.Flush()
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 {
		t.Fatalf("google/nftables made %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

// TestElemSize: elemSize, by which plans split elements into messages,
// is the size elementsMessage encodes each element in, for every kind of
// set (named and anonymous).
func TestElemSize(t *testing.T) {
	const restricted = `
[[forward]]
name = "lab6"
port = "3000-3001"
to = "[fd00::2]:4000-4001"
interface = "eth1"
`
	for _, text := range []string{goldenConfig + balancedConfig + restricted, partialConfig + balancedConfig} {
		p := Replace(compile(t, text, nil))
		var ops []Op
		for _, op := range p.Ops {
			if op.Kind == OpAddElements {
				ops = append(ops, op)
			}
			for _, a := range op.Anon {
				ops = append(ops, Op{Kind: OpAddElements, Set: a.set(), Elements: a.Elements})
			}
		}
		for _, op := range ops {
			empty, err := elementsMessage(&Op{Kind: op.Kind, Set: op.Set}, p.Table, 7)
			if err != nil {
				t.Fatal(err)
			}
			for i := range op.Elements {
				one, err := elementsMessage(&Op{Kind: op.Kind, Set: op.Set, Elements: op.Elements[i : i+1]}, p.Table, 7)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := elemSize(op.Set, &op.Elements[i]), len(one.Data)-len(empty.Data); got != want {
					t.Errorf("set %s, element %d: elemSize %d, encoded in %d bytes", op.Set.Name, i, got, want)
				}
			}
		}
	}
}

// An element list that does not fit its attribute fails the batch before
// anything is sent, saying which set, once.
func TestElementsTooBigForMessage(t *testing.T) {
	m := compile(t, goldenConfig, nil)
	s := m.Set("dnat4_port")
	es := make([]Element, 2000)
	for i := range es {
		es[i] = Element{Key: []byte{6, 0, 0, 0, byte(i >> 8), byte(i), 0, 0}, Data: []byte{10, 0, 0, 2, 0, 80, 0, 0}}
	}
	p := &Plan{Table: "fwdd", Ops: []Op{{Kind: OpAddTable}, {Kind: OpAddSet, Set: s}, {Kind: OpAddElements, Set: s, Elements: es}}}
	err := (&Netlink{}).Run(p)
	want := "elements of set dnat4_port: netlink attribute of 72004 bytes, more than 65535"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %q", err, want)
	}
}

// kernelMaxBatch is the longest batch the kernel takes on fwdd's sockets:
// twice the send buffer less 32 bytes (see batchSize).
const kernelMaxBatch = 2*DefaultSocketBuffer - 32

// TestMaxElementsFitOneBatch: a configuration at config.MaxElements made
// of the largest elements there are (IPv6 balance intervals of 256
// backends, verdict maps of four chunks, 32-byte names with their fixed
// snat element) compiles to one batch the kernel takes. Applying it takes
// the kernel several seconds, so this encodes it without sending it
// (TestKernelElementsAsCounted applies a smaller one).
func TestMaxElementsFitOneBatch(t *testing.T) {
	if testing.Short() {
		t.Skip("encodes 1.6 million elements")
	}
	var b strings.Builder
	b.WriteString("[daemon]\nct_mark = \"0x80000000/0x80000000\"\nct_mask = 0xfffffffe\n")
	backends := make([]string, 256)
	total := 0
	forward := func(i, ports int) {
		for j := range backends {
			backends[j] = fmt.Sprintf("%q", fmt.Sprintf("[fd00:%x::%x]:80", i+1, j+1))
		}
		fmt.Fprintf(&b, "[[forward]]\nname = \"worst-case-forward-%013d\"\nport = \"1000-%d\"\naddress = \"fd01::%x\"\nto = [%s]\nsnat = \"fd02::1\"\n",
			i, 999+ports, i+1, strings.Join(backends, ", "))
		total += 4 + ports*(256+4)
	}
	for i := range 6 {
		forward(i, 1000)
	}
	forward(6, (config.MaxElements-total-4)/260)
	cfg := testutil.Config(t, b.String())
	counted := 0
	for i := range cfg.Forwards {
		counted += cfg.Forwards[i].Elements(cfg.Daemon.CtMark)
	}
	if counted != total || counted > config.MaxElements || counted < config.MaxElements-300 {
		t.Fatalf("the configuration counts %d elements (%d meant), not just under MaxElements %d", counted, total, config.MaxElements)
	}
	msgs, err := encodeBatch(Replace(compileCfg(t, cfg, nil)))
	if err != nil {
		t.Fatal(err)
	}
	size := batchSize(msgs)
	t.Logf("%d elements: a batch of %d messages, %d bytes (%.0f %% of %d)", counted, len(msgs), size, 100*float64(size)/kernelMaxBatch, kernelMaxBatch)
	if size > kernelMaxBatch*9/10 {
		t.Errorf("a batch of %d bytes at MaxElements: more than 90 %% of the %d the kernel takes", size, kernelMaxBatch)
	}
}
