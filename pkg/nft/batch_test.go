package nft

import (
	"bytes"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
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
