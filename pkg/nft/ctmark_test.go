package nft

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

func TestMarkChunks(t *testing.T) {
	for _, tc := range []struct {
		l    ctmark.Layout
		want []chunk
	}{
		{ctmark.Layout{Tag: 0x00fd0000, TagMask: 0x00ff0000, Mask: 0xffff0000}, []chunk{{24, 8}}},
		{ctmark.Layout{Tag: 0x0d000000, TagMask: 0x0f000000, Mask: 0x0ffffff0}, []chunk{{4, 7}, {11, 7}, {18, 6}}},
		{ctmark.Layout{Tag: 0x80000000, TagMask: 0x80000000, Mask: 0xffffffff}, []chunk{{0, 8}, {8, 8}, {16, 8}, {24, 7}}},
		{ctmark.Layout{Tag: 0x1, TagMask: 0x1, Mask: 0x7}, []chunk{{1, 2}}},
	} {
		got := markChunks(tc.l)
		if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(chunk{})); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.l, diff)
		}
		if len(got) > maxChunks {
			t.Errorf("%s: %d chunks, more than maxChunks", tc.l, len(got))
		}
		if !tc.l.Whole() && tc.l.MarkMaps() != len(got) {
			t.Errorf("%s: MarkMaps %d, but %d chunks", tc.l, tc.l.MarkMaps(), len(got))
		}
	}
}

const partialConfig = `
[daemon]
ct_mark = "0x0d000000/0x0f000000"
ct_mask = 0x0ffffff0

[[forward]]
name = "web"
port = 80
to = "192.168.1.50:8080"

[[forward]]
name = "dns"
proto = ["tcp", "udp"]
port = 53
address = "10.0.0.1"
to = "192.168.1.53"

[[forward]]
name = "range"
port = "10000-10002"
to = "192.168.1.60:20000-20002"

[[forward]]
name = "lab"
port = 2200
to = "192.168.1.70:22"
sources = ["10.1.0.0/16"]

[[forward]]
name = "v6"
port = 443
to = "[fd00::50]:8443"
`

// What the kernel would do with a new connection's mark: for every chunk
// map holding the key, run the chain its element jumps to. Whatever bits
// another tool set outside the mask stay, and fwdd's bits become the
// forward's.
func TestPartialMarkingSetsForwardBits(t *testing.T) {
	m := compile(t, partialConfig, nil)
	l := m.Layout
	all := m.elements()
	orOf := map[string]uint32{}
	for _, c := range m.Chains {
		if len(c.Rules) == 1 && len(c.Rules[0].Stmts) == 1 {
			if or, ok := c.Rules[0].Stmts[0].(orCtMark); ok {
				orOf[c.Name] = or.or
			}
		}
	}
	if len(orOf) != 128+127+63 {
		t.Errorf("%d chunk chains, want %d", len(orOf), 128+127+63)
	}
	for _, fam := range []Family{IPv4, IPv6} {
		for _, suffix := range []string{"addr", "port"} {
			base := setName("mark", fam, suffix)
			marks := map[string]uint32{} // key -> fwdd's bits
			for i := range markChunks(l) {
				s := m.Set(chunkSetName(base, i))
				if s == nil || !s.IsVerdictMap() {
					t.Fatalf("%s is not a verdict map of the model", chunkSetName(base, i))
				}
				for _, e := range setElems(&all, s) {
					or, ok := orOf[string(e.Data)]
					if !ok {
						t.Fatalf("%s: an element jumps to %q, which is not a chunk chain", s.Name, e.Data)
					}
					if i == 0 && marks[string(e.Key)] != 0 || i > 0 && marks[string(e.Key)] == 0 {
						t.Errorf("%s: key %s: chunk 0 must come once, first", s.Name, renderBytes(s.Key, e.Key))
					}
					marks[string(e.Key)] |= or
				}
			}
			for k, mark := range marks {
				id, ok := l.ID(mark | 0xf000000f) // another tool's bits
				if !ok || m.IDs[forwardOf(m, mark)] != id {
					t.Errorf("%s key %x: fwdd's bits 0x%08x carry no forward's id", base, k, mark)
				}
			}
		}
	}
	if n := m.NumElements(); n != countElems(all) {
		t.Errorf("NumElements %d, but %d elements are made", n, countElems(all))
	}
	text := m.String()
	for _, want := range []string{
		"meta nfproto ipv4 ct mark and 0x0ffffff0 == 0x00000000 jump mark4",
		"ct mark and 0x0ffffff0 @traffic_orig counter",
		"dnat ip to ct mark and 0x0ffffff0 . th dport . numgen random",
		"ct mark and 0x0ffffff0 == 0x00000000 ct mark set ct mark or 0x",
		"ct mark and 0x0f000000 == 0x0d000000 masquerade",
		"map mark4_addr_2 {",
		"chain ctmark0_00 {\n\t\t# set fwdd's bits of the ct mark, a chunk at a time, leaving the other bits alone\n\t\tct mark set ct mark or 0x0d000000\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if strings.Contains(text, "ct mark set ip") || strings.Contains(text, "ct mark 0x00000000") {
		t.Errorf("a partial mask must never set the whole mark:\n%s", text)
	}
}

func forwardOf(m *Model, mark uint32) string {
	for name, id := range m.IDs {
		if m.Layout.ForID(id) == mark {
			return name
		}
	}
	return ""
}

func countElems(all [numSets][]Element) int {
	n := 0
	for _, es := range all {
		n += len(es)
	}
	return n
}

// Applied, read back, reloaded and healed with a partial mask, the table
// holds exactly the model; a table of another layout is replaced, never
// patched (its mark maps hold another data type).
func TestPartialMaskPlans(t *testing.T) {
	f := NewFake()
	a := &Applier{Backend: f}
	m := compile(t, partialConfig, nil)
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	check := func(m *Model) {
		t.Helper()
		tb, err := f.Read("fwdd", true)
		if err != nil {
			t.Fatal(err)
		}
		if err := tb.Differs(m); err != nil {
			t.Error(err)
		}
	}
	check(m)
	changed := compile(t, strings.Replace(partialConfig, `name = "web"`, `name = "web2"`, 1), m)
	p := Diff(m, changed)
	if p.Full || p.NumElements() == 0 {
		t.Errorf("renaming one forward: full %v, %d elements", p.Full, p.NumElements())
	}
	if _, err := a.Run(p); err != nil {
		t.Fatal(err)
	}
	check(changed)
	tb, _ := f.Read("fwdd", true)
	if p := Reconcile(tb, changed); !p.Empty() {
		t.Errorf("reconcile of a table that holds the model: %s", p)
	}
	def := compile(t, strings.Replace(partialConfig, "ct_mark = \"0x0d000000/0x0f000000\"\nct_mask = 0x0ffffff0", "", 1), nil)
	if def.Layout != ctmark.Default {
		t.Fatalf("layout %s, want the default", def.Layout)
	}
	if p := Reconcile(tb, def); !p.Full {
		t.Errorf("a table of another layout was patched, not replaced:\n%s", p)
	}
	if p := Diff(changed, def); !p.Full {
		t.Error("a diff to another layout did not replace the table")
	}
	// Another partial layout with as many chunks (so the same sets): its
	// chunk chains differ, and the old verdict elements jump to some the
	// new layout has not. A restart over the kept table replaces it.
	narrower := compile(t, strings.Replace(partialConfig, "ct_mask = 0x0ffffff0", "ct_mask = 0x0fffffc0", 1), nil)
	if len(markChunks(narrower.Layout)) != len(markChunks(changed.Layout)) {
		t.Fatalf("%s and %s have different chunks", narrower.Layout, changed.Layout)
	}
	p = Reconcile(tb, narrower)
	if !p.Full {
		t.Errorf("a table of another partial layout was patched, not replaced:\n%s", p)
	}
	if _, err := a.Run(p); err != nil {
		t.Fatal(err)
	}
	check(narrower)
}

// An element fwdd did not write, in one of its verdict maps, jumps to a
// chain fwdd did not write either: repairing the table deletes the element
// before the chain (the other way round the kernel refuses with EBUSY).
func TestRepairDeletesElementBeforeItsChain(t *testing.T) {
	f := NewFake()
	a := &Applier{Backend: f}
	m := compile(t, partialConfig, nil)
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	extra := Element{Key: concatBytes([]Value{Proto(config.TCP), Port(9999)}), Data: []byte("extra")}
	if err := f.Behind(&Plan{Table: "fwdd", Ops: []Op{
		{Kind: OpAddChain, Chain: &Chain{Name: "extra"}},
		{Kind: OpAddElements, Set: m.Set("mark4_port"), Elements: []Element{extra}},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Repair(); err != nil {
		t.Fatal(err)
	}
	if tb, _ := f.Read("fwdd", true); tb.Differs(m) != nil || tb.chain("extra") != nil {
		t.Errorf("after the repair: %v, chain extra %v", tb.Differs(m), tb.chain("extra"))
	}
}
