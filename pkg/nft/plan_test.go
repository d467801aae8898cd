package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// hostile returns a one-forward config whose interface is iface, built
// directly so that the renderer is tested whatever the config accepts.
func hostile(iface, name string) *config.Config {
	return &config.Config{
		Daemon: config.Daemon{Table: "fwdd", CtMark: ctmark.Default},
		Forwards: []config.Forward{{
			Name: name, Protos: []config.Proto{config.TCP}, Port: config.PortRange{Lo: 80, Hi: 80},
			To: netip.MustParseAddr("10.0.0.2"), ToPort: config.PortRange{Lo: 8080, Hi: 8080},
			Interface: iface, SNAT: config.SNAT{Kind: config.SNATMasquerade},
		}},
	}
}

// nft strings have no escapes: what cannot be written exactly is refused,
// by fwdd print and by Plan.Render alike, never printed.
func TestRenderRefusesWhatNftCannotExpress(t *testing.T) {
	for _, tc := range []struct{ iface, name, want string }{
		{`x";drop#`, "web", `forward "web": cannot write interface name "x\";drop#": it contains '"'`},
		{`eth*`, "web", `nft would read '*' as a wildcard`},
		{`a\b`, "web", `it contains '\'`},
		{"a\nb", "web", "byte 0x0a"},
		{"abcdefghijklmnop", "web", "must be 1-15 bytes"},
		{"eth0", `web" drop`, `cannot write "web\" drop" as an nft string`},
		{"eth0", "web;x", "cannot write \"fwd_web;x\" as an nft name"},
	} {
		cfg := hostile(tc.iface, tc.name)
		m, err := Compile(cfg, map[string]uint32{tc.name: 1})
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		err = m.Render(&out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("interface %q name %q: render error %v, want %q", tc.iface, tc.name, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("interface %q: a refused render wrote %q", tc.iface, out.String())
		}
		if err := Replace(m).Render(&out); err == nil || out.Len() != 0 {
			t.Errorf("interface %q: plan render: %v, wrote %d bytes", tc.iface, err, out.Len())
		}
	}
	// What nft can express is printed as is.
	m, err := Compile(hostile("a#b;c{d}$e@f", "0-drop_x"), map[string]uint32{"0-drop_x": 1})
	if err != nil {
		t.Fatal(err)
	}
	if s := m.String(); !strings.Contains(s, `iifname "a#b;c{d}$e@f"`) || !strings.Contains(s, `comment "0-drop_x"`) {
		t.Errorf("render:\n%s", s)
	}
}

func TestReplacePlanText(t *testing.T) {
	m := compile(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\ninterface = \"eth1\"\n", nil)
	p := Replace(m)
	s := p.String()
	for _, want := range []string{
		"add table inet fwdd\ndelete table inet fwdd\nadd table inet fwdd\n",
		"add map inet fwdd dnat4_addr { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }\n",
		`add set inet fwdd traffic_orig { type mark; counter; comment "packets client -> backend"; }` + "\n",
		fmt.Sprintf(`add element inet fwdd traffic_orig { 0x%08x counter packets 0 bytes 0 comment "web" }`+"\n", ctmark.Default.ForID(m.IDs["web"])),
		"add chain inet fwdd prerouting { type nat hook prerouting priority -100; policy accept; }\n",
		"add chain inet fwdd fwd_web\n",
		`add rule inet fwdd dispatch meta nfproto ipv4 iifname "eth1" fib daddr type local meta l4proto tcp th dport 80 goto fwd_web comment "web"` + "\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("replace plan lacks %q:\n%s", want, s)
		}
	}
	if p.Messages() != len(p.Ops)+2 {
		t.Errorf("%d messages for %d operations", p.Messages(), len(p.Ops))
	}
}

// Big sets are sent in operations of as many elements as fit one message
// (an element list of at most 65,535 bytes), whatever an element's size:
// IPv4 address forwards, IPv6 balance intervals (72 bytes each) and the
// verdict elements of a partial ct_mask (68 bytes each for IPv6 addresses).
func TestPlanSplitsElementsByBytes(t *testing.T) {
	var balanced6, partial6 strings.Builder
	for i := range 460 {
		fmt.Fprintf(&balanced6, "[[forward]]\nname = \"b%d\"\nport = %d\nto = [\"[fd00::2]:80\", \"[fd00::3]:80\"]\n", i, 1000+i)
	}
	partial6.WriteString("[daemon]\nct_mark = \"0x0d000000/0x0f000000\"\nct_mask = 0x0ffffff0\n")
	for i := range 1000 {
		fmt.Fprintf(&partial6, "[[forward]]\nname = \"v%d\"\nport = 443\naddress = \"fd00::1:%x\"\nto = \"[fd00::2]:80\"\n", i, i+1)
	}
	for _, tc := range []struct {
		name string
		m    *Model
		set  string // a set that must take several operations
	}{
		{"2,500 IPv4 forwards", compileCfg(t, manyForwards(t, 2500), nil), "dnat4_addr"},
		{"460 balanced IPv6 forwards", compile(t, balanced6.String(), nil), "balance6_random"},
		{"1,000 IPv6 forwards, partial ct_mask", compile(t, partial6.String(), nil), "mark6_addr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Replace(tc.m)
			ops := 0
			for i := range p.Ops {
				op := &p.Ops[i]
				if op.Kind != OpAddElements {
					continue
				}
				if _, err := elementsMessage(op, p.Table, 1); err != nil {
					t.Fatalf("set %s: %v", op.Set.Name, err)
				}
				if op.Set.Name != tc.set {
					continue
				}
				ops++
				size := 0
				for j := range op.Elements {
					size += elemSize(op.Set, &op.Elements[j])
				}
				last := i+1 == len(p.Ops) || p.Ops[i+1].Set != op.Set
				if size > elementListBytes || !last && size+elemSize(op.Set, &p.Ops[i+1].Elements[0]) <= elementListBytes {
					t.Errorf("set %s: an operation of %d elements, %d bytes (elementListBytes %d)", op.Set.Name, len(op.Elements), size, elementListBytes)
				}
			}
			if ops < 2 {
				t.Errorf("set %s in %d operations, want several", tc.set, ops)
			}
		})
	}
}

func TestFakeAppliesAllOrNothing(t *testing.T) {
	f := NewFake()
	m := compile(t, goldenConfig, nil)
	if err := f.Run(Replace(m)); err != nil {
		t.Fatal(err)
	}
	before, _ := f.Dump("fwdd")
	if want := m.String(); !strings.Contains(want, strings.TrimPrefix(before, "table inet fwdd {\n")) {
		t.Errorf("fake dump differs from the model's rendering:\n%s", cmp.Diff(want, before))
	}
	web := m.Set("dnat4_port")
	elem := m.Elements("dnat4_port")[0]
	other := elem
	other.Data = append([]byte(nil), elem.Data...)
	other.Data[0]++
	for _, tc := range []struct {
		name string
		ops  []Op
		want error
	}{
		{"element with other data", []Op{{Kind: OpAddElements, Set: web, Elements: []Element{other}}}, unix.EEXIST},
		{"missing element", []Op{{Kind: OpDeleteElements, Set: web, Elements: []Element{elem}}, {Kind: OpDeleteElements, Set: web, Elements: []Element{elem}}}, unix.ENOENT},
		{"missing chain", []Op{{Kind: OpFlushChain, Chain: &Chain{Name: "nope"}}}, unix.ENOENT},
		{"chain still referenced", []Op{{Kind: OpDeleteChain, Chain: &Chain{Name: "fwd_lab"}}}, unix.EBUSY},
		{"rule on a missing set", []Op{{Kind: OpAddRule, Chain: &Chain{Name: "dispatch"}, Rule: &Rule{Stmts: []Stmt{matchSet{key{loadCtMrk}, "nope"}}}}}, unix.ENOENT},
	} {
		// A valid first operation, so that all-or-nothing is tested.
		ops := append([]Op{{Kind: OpAddElements, Set: m.Set(SetNoSNAT), Elements: []Element{elem4Mark(0xfd0000ff)}}}, tc.ops...)
		if err := f.Run(&Plan{Table: "fwdd", Ops: ops}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if after, _ := f.Dump("fwdd"); after != before {
			t.Errorf("%s: a rejected batch changed the table:\n%s", tc.name, cmp.Diff(before, after))
		}
	}
	// Adding an identical element again is accepted, like the kernel does.
	if err := f.Run(&Plan{Table: "fwdd", Ops: []Op{{Kind: OpAddElements, Set: web, Elements: []Element{elem}}}}); err != nil {
		t.Errorf("identical element: %v", err)
	}
	// Flushing the referrer first frees the chain.
	if err := f.Run(&Plan{Table: "fwdd", Ops: []Op{{Kind: OpFlushChain, Chain: &Chain{Name: "dispatch"}}, {Kind: OpDeleteChain, Chain: &Chain{Name: "fwd_lab"}}}}); err != nil {
		t.Errorf("flush then delete: %v", err)
	}
	f.FailNext(unix.EPERM)
	if err := f.Run(Replace(m)); !errors.Is(err, unix.EPERM) {
		t.Errorf("injected rejection: %v", err)
	}
	f.LoseAckNext(true)
	if err := f.Run(Replace(m)); !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, unix.ENOBUFS) {
		t.Errorf("injected unknown outcome: %v", err)
	}
	if after, _ := f.Dump("fwdd"); after != before {
		t.Errorf("the committed batch of an unknown outcome is not in the table")
	}
}

func elem4Mark(m uint32) Element { return elem([]Value{Mark(m)}, nil, "") }

// Reconcile keeps what is right in a table read back and fixes the rest,
// without replacing it.
func TestReconcile(t *testing.T) {
	old := compile(t, goldenConfig, nil)
	f := NewFake()
	if err := f.Run(Replace(old)); err != nil {
		t.Fatal(err)
	}
	// Behind fwdd's back: a rule added to dispatch, an element deleted.
	behind := &Plan{Table: "fwdd", Ops: []Op{
		{Kind: OpAddRule, Chain: &Chain{Name: "dispatch"}, Rule: &Rule{Stmts: []Stmt{accept}}},
		{Kind: OpDeleteElements, Set: old.Set("dnat4_port"), Elements: old.Elements("dnat4_port")[:1]},
	}}
	if err := f.Behind(behind); err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(goldenConfig, `to = "192.168.1.70:22"`, `to = "192.168.1.71:22"`, 1)
	m := compile(t, changed, old)
	tb, err := f.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	if tb.Differs(m) == nil {
		t.Fatal("a changed table reads back as equal")
	}
	p := Reconcile(tb, m)
	if p.Full {
		t.Fatalf("reconcile replaced the table:\n%s", p)
	}
	var got []string
	for _, op := range p.Ops {
		switch op.Kind {
		case OpFlushChain, OpAddChain, OpDeleteChain:
			got = append(got, op.Chain.Name)
		case OpAddElements, OpDeleteElements:
			got = append(got, op.Set.Name)
		}
	}
	if d := cmp.Diff([]string{"dispatch", "fwd_lab", "dnat4_port"}, got); d != "" {
		t.Errorf("reconcile touches (-want +got):\n%s\n%s", d, p)
	}
	if err := f.Run(p); err != nil {
		t.Fatal(err)
	}
	if tb, _ = f.Read("fwdd", true); tb.Differs(m) != nil {
		t.Errorf("after reconcile: %v", tb.Differs(m))
	}
	// Other base chains: replaced.
	drop := compile(t, strings.Replace(changed, "[daemon]\n", "[daemon]\nforward_policy = \"drop\"\n", 1), m)
	if p := Reconcile(tb, drop); !p.Full {
		t.Error("a table with another forward policy was reconciled, not replaced")
	}
	if p := Reconcile(nil, m); !p.Full {
		t.Error("no table: not a full replace")
	}
}

// snat_guard exists only with fixed snat addresses (an empty base chain
// costs a call per packet the host receives); a reload that adds or removes
// the first such address adds or deletes the chain, keeping the rest of the
// table and its counters.
func TestSNATGuardOnlyWithFixedSNAT(t *testing.T) {
	const plain = "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n"
	fixed := plain + "snat = \"10.0.0.1\"\n"
	a := compile(t, plain, nil)
	if a.Chain(chainSNATGuard) != nil {
		t.Fatalf("snat_guard without a fixed snat address:\n%s", a)
	}
	b := compile(t, fixed, a)
	if c := b.Chain(chainSNATGuard); c == nil || len(c.Rules) != 1 {
		t.Fatalf("no snat_guard rule for a fixed snat address:\n%s", b)
	}
	f := NewFake()
	if err := f.Run(Replace(a)); err != nil {
		t.Fatal(err)
	}
	chainOps := func(p *Plan) []string {
		var got []string
		for _, op := range p.Ops {
			switch op.Kind {
			case OpAddChain, OpDeleteChain:
				got = append(got, fmt.Sprintf("%d %s", op.Kind, op.Chain.Name))
			}
		}
		return got
	}
	for _, step := range []struct {
		from, to *Model
		want     Op
	}{
		{a, b, Op{Kind: OpAddChain}},
		{b, a, Op{Kind: OpDeleteChain}},
	} {
		p := Diff(step.from, step.to)
		if p.Full {
			t.Fatalf("adding or removing snat_guard replaced the table:\n%s", p)
		}
		if d := cmp.Diff([]string{fmt.Sprintf("%d %s", step.want.Kind, chainSNATGuard)}, chainOps(p)); d != "" {
			t.Errorf("chain ops (-want +got):\n%s\n%s", d, p)
		}
		if err := f.Run(p); err != nil {
			t.Fatal(err)
		}
		if tb, err := f.Read("fwdd", true); err != nil || tb.Differs(step.to) != nil {
			t.Fatalf("after the diff: %v %v", err, tb.Differs(step.to))
		}
	}
	// A table of an earlier version, with an empty snat_guard, is
	// reconciled: the chain is deleted, nothing replaced.
	old := compile(t, fixed, nil)
	if err := f.Run(Replace(old)); err != nil {
		t.Fatal(err)
	}
	if err := f.Behind(&Plan{Table: "fwdd", Ops: []Op{{Kind: OpFlushChain, Chain: old.Chain(chainSNATGuard)}}}); err != nil {
		t.Fatal(err)
	}
	tb, err := f.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	p := Reconcile(tb, a)
	if p.Full {
		t.Fatalf("a table with an empty snat_guard was replaced:\n%s", p)
	}
	if d := cmp.Diff([]string{fmt.Sprintf("%d %s", OpDeleteChain, chainSNATGuard)}, chainOps(p)); d != "" {
		t.Errorf("reconcile chain ops (-want +got):\n%s\n%s", d, p)
	}
	if err := f.Run(p); err != nil {
		t.Fatal(err)
	}
	if tb, err := f.Read("fwdd", true); err != nil || tb.Differs(a) != nil {
		t.Fatalf("after reconcile: %v %v", err, tb.Differs(a))
	}
}
