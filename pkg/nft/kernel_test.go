package nft

import (
	"context"
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Kernel tests: they program nftables in namespaces made by internal/sandbox
// and send real packets through them. They need root; CI runs them.

// manyForwards returns a config of n address forwards on port 80:
// forward i matches 10.(100+i/65536).(i/256%256).(i%256) and goes to
// 10.22.0.2:8000+i%10.
func manyForwards(t testing.TB, n int) *config.Config {
	t.Helper()
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "[[forward]]\nname = \"f%d\"\nport = 80\naddress = \"%s\"\nto = \"10.22.0.2:%d\"\n", i, fwdAddr(i), 8000+i%10)
	}
	cfg, err := config.Parse("many.toml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func fwdAddr(i int) string {
	return fmt.Sprintf("10.%d.%d.%d", 100+i/65536, i/256%256, i%256)
}

// compileCfg compiles cfg keeping the ids of prev (may be nil).
func compileCfg(t testing.TB, cfg *config.Config, prev *Model) *Model {
	t.Helper()
	ids, err := AssignIDs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Compile(cfg, ids)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

type scaleEnv struct {
	topo    *sandbox.Topology
	kernel  *Netlink
	servers []*sandbox.TCPServer
	udp     []*sandbox.UDPServer
}

func newScaleEnv(t *testing.T) *scaleEnv {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	if err := topo.Gateway.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	e := &scaleEnv{topo: topo, kernel: &Netlink{NetNS: topo.Gateway.Fd()}}
	for p := 8000; p < 8010; p++ {
		s, err := topo.Backend.ListenTCP(fmt.Sprintf("10.22.0.2:%d", p))
		if err != nil {
			t.Fatal(err)
		}
		u, err := topo.Backend.ListenUDP(fmt.Sprintf("10.22.0.2:%d", p))
		if err != nil {
			t.Fatal(err)
		}
		e.servers = append(e.servers, s)
		e.udp = append(e.udp, u)
	}
	return e
}

// checkTCP connects to forward i and checks it reached backend port 8000+i%10.
func (e *scaleEnv) checkTCP(t *testing.T, i int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s := e.servers[i%10]
	before := len(s.Peers())
	c, g, err := e.topo.Client.DialTCP(ctx, fwdAddr(i)+":80")
	if err != nil {
		t.Fatalf("forward f%d: %v", i, err)
	}
	c.Close()
	if !strings.HasPrefix(g, "backend 10.22.0.1:") || len(s.Peers()) != before+1 {
		t.Fatalf("forward f%d: greeting %q, backend port %d saw %d new connections", i, g, 8000+i%10, len(s.Peers())-before)
	}
}

func TestKernel100kForwards(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	e := newScaleEnv(t)
	start := time.Now()
	cfg := manyForwards(t, 100_000)
	parsed := time.Since(start)
	m := compileCfg(t, cfg, nil)
	a := &Applier{Backend: e.kernel}
	st, err := a.Apply(m)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("100,000 forwards: parse %v, apply %v, %d messages, %d elements", parsed, st.Elapsed, st.Messages, st.Elements)
	if err := e.kernel.VerifyContent(m); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	sample := []int{0, 99_999, 65_535, 65_536}
	for len(sample) < 60 {
		sample = append(sample, rng.Intn(100_000))
	}
	for _, i := range sample {
		e.checkTCP(t, i)
	}
}

func TestKernelReloadSendsOnlyChanges(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	e := newScaleEnv(t)
	cfg := manyForwards(t, 10_000)
	m := compileCfg(t, cfg, nil)
	a := &Applier{Backend: e.kernel}
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	// Change one forward's backend port: f1234 goes to 8009 instead of 8004.
	cfg2 := manyForwards(t, 10_000)
	cfg2.Forwards[1234].ToPort = config.PortRange{Lo: 8009, Hi: 8009}
	m2 := compileCfg(t, cfg2, m)
	st, err := a.Apply(m2)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reload of one forward among 10,000: %d messages, %d elements, %v", st.Messages, st.Elements, st.Elapsed)
	if st.Full || st.Messages > 12 || st.Elements != 2 {
		t.Errorf("reload batch: full=%v, %d messages, %d elements; want a diff of 2 elements in a few messages", st.Full, st.Messages, st.Elements)
	}
	if err := e.kernel.VerifyContent(m2); err != nil {
		t.Fatal(err)
	}
	// The changed forward follows its new target...
	s := e.servers[9]
	before := len(s.Peers())
	if _, _, err := e.topo.Client.DialTCP(context.Background(), fwdAddr(1234)+":80"); err != nil {
		t.Fatal(err)
	}
	if len(s.Peers()) != before+1 {
		t.Errorf("f1234 did not reach its new backend port 8009")
	}
	// ...and every forward still works: one UDP datagram through each.
	cfgUDP := make([]int, 0, 10_000)
	for i := 0; i < 10_000; i++ {
		if i != 1234 {
			cfgUDP = append(cfgUDP, i)
		}
	}
	// UDP needs the forwards to include udp; check TCP on a sample instead
	// and the full content above.
	var failed []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	work := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				c, g, err := e.topo.Client.DialTCP(ctx, fwdAddr(i)+":80")
				cancel()
				if err == nil {
					c.Close()
				}
				if err != nil || !strings.HasPrefix(g, "backend") {
					mu.Lock()
					failed = append(failed, i)
					mu.Unlock()
				}
			}
		}()
	}
	for _, i := range cfgUDP {
		work <- i
	}
	close(work)
	wg.Wait()
	if len(failed) > 0 {
		t.Errorf("%d of 10,000 forwards failed after the reload, e.g. f%d", len(failed), failed[0])
	}
}

func TestKernelRecoversFromENOBUFS(t *testing.T) {
	e := newScaleEnv(t)
	// A tiny receive buffer: the acks of a big batch overflow it, so Flush
	// reports ENOBUFS although the kernel committed the batch.
	e.kernel.ReceiveBuffer = 4096
	cfg := manyForwards(t, 10_000)
	m := compileCfg(t, cfg, nil)
	a := &Applier{Backend: e.kernel}
	st, err := a.Apply(m)
	if err != nil {
		t.Fatalf("apply with ENOBUFS: %v", err)
	}
	if !st.Recovered {
		t.Fatalf("the batch did not hit ENOBUFS (%d messages); the test proves nothing", st.Messages)
	}
	if a.Last() != m {
		t.Error("applier does not record the recovered model")
	}
	for _, i := range []int{0, 4321, 9999} {
		e.checkTCP(t, i)
	}
	// The next change on the same applier works (no stale acks).
	e.kernel.ReceiveBuffer = 0
	cfg = manyForwards(t, 10_000) // configs are immutable: change a copy
	cfg.Forwards[7].ToPort = config.PortRange{Lo: 8003, Hi: 8003}
	m2 := compileCfg(t, cfg, m)
	if _, err := a.Apply(m2); err != nil {
		t.Fatal(err)
	}
	e.checkTCP(t, 3) // same backend port as f7 now
	s := e.servers[3]
	before := len(s.Peers())
	if _, _, err := e.topo.Client.DialTCP(context.Background(), fwdAddr(7)+":80"); err != nil {
		t.Fatal(err)
	}
	if len(s.Peers()) != before+1 {
		t.Error("f7 did not follow its change after recovery")
	}
}

func TestKernelTamperedTableIsReplaced(t *testing.T) {
	e := newScaleEnv(t)
	cfg := manyForwards(t, 10)
	m := compileCfg(t, cfg, nil)
	a := &Applier{Backend: e.kernel}
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	// Someone flushes fwdd's dispatch chain by hand.
	if out, err := e.topo.Gateway.Run(context.Background(), "nft", "flush", "chain", "inet", "fwdd", "dispatch"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cfg = manyForwards(t, 10)
	cfg.Forwards[0].ToPort = config.PortRange{Lo: 8005, Hi: 8005}
	m2 := compileCfg(t, cfg, m)
	st, err := a.Apply(m2)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full {
		t.Error("a table changed behind fwdd's back was diffed, not replaced")
	}
	e.checkTCP(t, 5)
	e.checkTCP(t, 1)
}

// A reload that adds, changes and removes forwards with their own chains
// (interface/sources) goes through the diff path and leaves the table exact.
func TestKernelRestrictedForwardsReload(t *testing.T) {
	e := newScaleEnv(t)
	a := &Applier{Backend: e.kernel}
	const base = `
[[forward]]
name = "plain"
port = 80
address = "10.100.0.0"
to = "10.22.0.2:8000"
`
	steps := []string{
		base + "[[forward]]\nname = \"lab\"\nport = 81\nto = \"10.22.0.2:8001\"\nsources = [\"10.11.0.0/24\"]\n",
		base + "[[forward]]\nname = \"lab\"\nport = 81\nto = \"10.22.0.2:8002\"\ninterface = \"cli0\"\n",
		base,
	}
	var m *Model
	for i, text := range steps {
		m = compileCfg(t, testutil.Config(t, text), m)
		st, err := a.Apply(m)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if i > 0 && st.Full {
			t.Errorf("step %d: replaced the table instead of a diff", i)
		}
		if err := e.kernel.VerifyContent(m); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	e.checkTCP(t, 0)
	if _, _, err := e.topo.Client.DialTCP(context.Background(), "10.11.0.1:81"); err == nil {
		t.Error("the removed forward still forwards")
	}
}

// A table read back from the kernel (rule tags, elements) reconciles to
// nothing when it holds the model, and to a batch that keeps the table when
// the config changed (what a restart with on_stop = "keep" does).
func TestKernelReconcileReadBack(t *testing.T) {
	e := newScaleEnv(t)
	text := goldenConfig + "[[forward]]\nname = \"many\"\nport = 81\nto = \"10.22.0.2:8001\"\n"
	m := compile(t, text, nil)
	a := &Applier{Backend: e.kernel}
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	tb, err := e.kernel.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Differs(m); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if p := Reconcile(tb, m); !p.Empty() {
		t.Fatalf("the table fwdd programmed reconciles to a batch:\n%s", p)
	}
	if d := cmp.Diff(m.IDs, tb.IDs(ctmark.Default)); d != "" {
		t.Errorf("ids read back (-want +got):\n%s", d)
	}
	changed := strings.Replace(strings.Replace(text, `interface = "eth1"`, `interface = "cli0"`, 1), "10.22.0.2:8001", "10.22.0.2:8002", 1)
	m2 := compile(t, changed, m)
	p := Reconcile(tb, m2)
	if p.Full {
		t.Fatalf("reconcile replaced the table:\n%s", p)
	}
	if _, err := a.Run(p); err != nil {
		t.Fatal(err)
	}
	if err := e.kernel.VerifyContent(m2); err != nil {
		t.Fatal(err)
	}
	s := e.servers[2]
	before := len(s.Peers())
	if _, _, err := e.topo.Client.DialTCP(context.Background(), "10.11.0.1:81"); err != nil {
		t.Fatal(err)
	}
	if len(s.Peers()) != before+1 {
		t.Error("the reconciled forward does not reach its new backend")
	}
}

// kernelHost is one bare namespace, for kernel tests that need no traffic.
func kernelHost(t *testing.T) *sandbox.Host {
	t.Helper()
	topo := sandbox.New(t, sandbox.Options{Bare: true})
	h, err := topo.AddHost("gw")
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// listedPortMaps returns the entries of each anonymous map `nft list chain`
// shows in chain of fwdd's table, sorted, one slice per rule with a map.
func listedPortMaps(t *testing.T, h *sandbox.Host, chain string) [][]string {
	t.Helper()
	out, err := h.Run(context.Background(), "nft", "list", "chain", "inet", "fwdd", chain)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var maps [][]string
	for _, line := range strings.Split(string(out), "\n") {
		_, rest, ok := strings.Cut(line, " map { ")
		if !ok {
			continue
		}
		entries := strings.Split(strings.TrimSuffix(strings.TrimSpace(rest), " }"), ", ")
		slices.Sort(entries)
		maps = append(maps, entries)
	}
	return maps
}

// A 1:1 port range of a forward with interface or sources is an anonymous
// map of one element per port: all of them reach the kernel, however many
// (an element list is limited to 64 KiB per netlink attribute).
func TestKernelRestrictedPortMapComplete(t *testing.T) {
	h := kernelHost(t)
	m := compile(t, `
[[forward]]
name = "lab"
proto = ["tcp", "udp"]
port = "10000-12999"
to = "10.0.0.2:20000-22999"
interface = "eth1"

[[forward]]
name = "lab6"
port = "30000-32999"
to = "[fd00::2]:40000-42999"
sources = ["fd11::/64"]
`, nil)
	if _, err := (&Applier{Backend: &Netlink{NetNS: h.Fd()}}).Apply(m); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"fwd_lab", "fwd_lab6"} {
		var want [][]string
		for _, r := range m.Chain(name).Rules {
			for _, st := range r.Stmts {
				pm, ok := st.(dnatPortMap)
				if !ok {
					continue
				}
				var entries []string
				for _, e := range pm.elems {
					entries = append(entries, renderBytes([]Field{FieldPort}, e.Key)+" : "+renderBytes([]Field{pm.fam.addrField(), FieldPort}, e.Data))
				}
				slices.Sort(entries)
				want = append(want, entries)
			}
		}
		got := listedPortMaps(t, h, name)
		if len(got) != len(want) {
			t.Fatalf("chain %s: nft lists %d port maps, want %d", name, len(got), len(want))
		}
		for i := range want {
			if len(got[i]) != len(want[i]) {
				t.Errorf("chain %s, map %d: nft lists %d entries, want %d", name, i+1, len(got[i]), len(want[i]))
			} else if d := cmp.Diff(want[i], got[i]); d != "" {
				t.Errorf("chain %s, map %d: entries differ (-want +got):\n%s", name, i+1, d)
			}
		}
	}
}

// The kernel holds as many elements as the config's budget counts
// (config.Forward.Elements): named sets read back, anonymous maps as nft
// lists them, for forwards of every shape.
func TestKernelElementsAsCounted(t *testing.T) {
	h := kernelHost(t)
	k := &Netlink{NetNS: h.Fd()}
	cfg := testutil.Config(t, countedForwards)
	if _, err := (&Applier{Backend: k}).Apply(compileCfg(t, cfg, nil)); err != nil {
		t.Fatal(err)
	}
	counted := 0
	for i := range cfg.Forwards {
		counted += cfg.Forwards[i].Elements(cfg.Daemon.CtMark)
	}
	tb, err := k.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, s := range tb.Sets {
		held += len(s.Elements)
	}
	for _, c := range tb.Chains {
		if strings.HasPrefix(c.Name, forwardChainPfx) {
			for _, entries := range listedPortMaps(t, h, c.Name) {
				held += len(entries)
			}
		}
	}
	if held != counted {
		t.Errorf("the kernel holds %d elements, the config counts %d", held, counted)
	}
}

// A restart with another ct_mask over a kept table (on_stop = "keep"), as
// the daemon's start does it: the table read back, reconciled with the new
// model in one batch. The old verdict elements jump to chunk chains the
// new layout has not; the layout's change replaces the table.
func TestKernelRestartWithNewCtMask(t *testing.T) {
	h := kernelHost(t)
	k := &Netlink{NetNS: h.Fd()}
	config := func(mask string) string {
		var b strings.Builder
		b.WriteString("[daemon]\nct_mark = \"0x0d000000/0x0f000000\"\nct_mask = " + mask + "\n")
		for i := range 50 {
			fmt.Fprintf(&b, "[[forward]]\nname = \"f%d\"\nport = %d\nto = \"10.0.0.2:80\"\n", i, 1000+i)
		}
		return b.String()
	}
	if _, err := (&Applier{Backend: k}).Apply(compile(t, config("0x0ffffff0"), nil)); err != nil {
		t.Fatal(err)
	}
	m := compile(t, config("0x0fffffc0"), nil)
	have, err := k.Read(m.Table, true)
	if err != nil {
		t.Fatal(err)
	}
	p := Reconcile(have, m)
	if _, err := (&Applier{Backend: k}).Run(p); err != nil {
		t.Fatalf("restart with the new ct_mask: %v", err)
	}
	if !p.Full {
		t.Error("a change of ct mark layout did not replace the table")
	}
	if err := k.VerifyContent(m); err != nil {
		t.Fatal(err)
	}
}

// Another program adds a chain to fwdd's table and an element jumping to
// it to one of fwdd's verdict maps: the repair deletes both in one batch,
// the element first (the kernel refuses to delete a chain an element still
// jumps to).
func TestKernelRepairDeletesElementBeforeItsChain(t *testing.T) {
	h := kernelHost(t)
	k := &Netlink{NetNS: h.Fd()}
	a := &Applier{Backend: k}
	m := compile(t, partialConfig, nil)
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"nft", "add", "chain", "inet", "fwdd", "extra"},
		{"nft", "add", "element", "inet", "fwdd", "mark4_port", "{ tcp . 9999 : jump extra }"},
	} {
		if out, err := h.Run(context.Background(), cmd...); err != nil {
			t.Fatalf("%v: %v: %s", cmd, err, out)
		}
	}
	st, err := a.Repair()
	if err != nil {
		t.Fatalf("repair: %v", err)
	}
	if st.Full {
		t.Error("the repair replaced the table")
	}
	if err := k.VerifyContent(m); err != nil {
		t.Fatal(err)
	}
}

// fwdd health's check by key (VerifyByKey) of a forward with thousands of
// elements, in a table whose name has the most characters allowed: each get
// request carries the table's name, and 2,048 of them go in one sendmsg.
func TestKernelVerifyByKeyLongTableName(t *testing.T) {
	k := &Netlink{NetNS: kernelHost(t).Fd()}
	m := compile(t, `
[daemon]
table = "fwdd_abcdefghijklmnopqrstuvwxyz0"

[[forward]]
name = "rng"
port = "10000-14999"
address = "fd00::1:1"
to = "[fd00::2]"
`, nil)
	if len(m.Table) != 32 {
		t.Fatalf("table name of %d characters, want 32", len(m.Table))
	}
	if _, err := (&Applier{Backend: k}).Apply(m); err != nil {
		t.Fatal(err)
	}
	if err := k.VerifyByKey(m, []string{"rng"}); err != nil {
		t.Fatalf("VerifyByKey: %v", err)
	}
}

// Another program makes fwdd's table dormant (`nft add table inet fwdd {
// flags dormant; }`): its chains see no packet, nothing is forwarded. The
// table read back says so, and each way fwdd mends its table wakes it up:
// the repair after an edit behind its back and a reload's diff in a batch
// that keeps the rest of the table and its counters, and, for a reload of
// a table that was also edited otherwise, the replace.
func TestKernelDormantTable(t *testing.T) {
	e := newScaleEnv(t)
	m := compileCfg(t, manyForwards(t, 3), nil)
	a := &Applier{Backend: e.kernel}
	if _, err := a.Apply(m); err != nil {
		t.Fatal(err)
	}
	e.checkTCP(t, 1)
	packets := func() uint64 {
		t.Helper()
		tr, err := e.kernel.ReadTraffic("fwdd", m.Layout)
		if err != nil {
			t.Fatal(err)
		}
		if tr["f1"] == nil {
			t.Fatal("no counters of f1")
		}
		return tr["f1"].OrigPackets
	}
	reload := func() (Stats, error) { return a.Apply(m) }
	flush := []string{"nft", "flush", "chain", "inet", "fwdd", "dispatch"}
	for _, tc := range []struct {
		name string
		also []string // another edit behind fwdd's back
		mend func() (Stats, error)
		full bool
	}{
		{name: "repair", mend: a.Repair},
		{name: "reload", mend: reload},
		{name: "repair of a table also flushed", also: flush, mend: a.Repair},
		{name: "reload of a table also flushed", also: flush, mend: reload, full: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if out, err := e.topo.Gateway.Run(ctx, "nft", "add table inet fwdd { flags dormant; }"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			if tc.also != nil {
				if out, err := e.topo.Gateway.Run(ctx, tc.also...); err != nil {
					t.Fatalf("%v: %s", err, out)
				}
			}
			dctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if c, _, err := e.topo.Client.DialTCP(dctx, fwdAddr(1)+":80"); err == nil {
				c.Close()
				t.Fatal("a dormant table forwards")
			}
			if err := e.kernel.VerifyContent(m); err == nil || !strings.Contains(err.Error(), "dormant") {
				t.Fatalf("the dormant table read back: %v", err)
			}
			before := packets()
			st, err := tc.mend()
			if err != nil {
				t.Fatal(err)
			}
			if st.Full != tc.full {
				t.Errorf("full replace %v, want %v", st.Full, tc.full)
			}
			if err := e.kernel.VerifyContent(m); err != nil {
				t.Fatal(err)
			}
			if after := packets(); !tc.full && after < before {
				t.Errorf("f1's counter went from %d to %d packets: the table was replaced", before, after)
			}
			e.checkTCP(t, 1)
		})
	}
}
