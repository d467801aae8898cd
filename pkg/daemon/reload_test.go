package daemon

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Unit tests of the daemon's start, reload and stop against nft.Fake and
// sysctl.Fake: no root, no kernel.

type env struct {
	t       *testing.T
	kernel  *nft.Fake
	sysctls *sysctl.Fake
	logs    *observer.ObservedLogs
	d       *Daemon
	mu      sync.Mutex
	text    string // the config "file"
}

func newEnv(t *testing.T, text string) *env {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	e := &env{t: t, kernel: nft.NewFake(), logs: logs, text: text,
		sysctls: sysctl.NewFake(map[string]string{"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0"})}
	e.d = New(Options{
		ConfigPath: "fwdd.toml",
		StateDir:   t.TempDir(),
		Log:        zap.New(core),
		Kernel:     e.kernel,
		Sysctls:    e.sysctls,
		Load:       e.load,
	})
	return e
}

func (e *env) load() (*config.Config, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return config.Parse("fwdd.toml", []byte(e.text))
}

func (e *env) write(text string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.text = text
}

func (e *env) start() {
	e.t.Helper()
	if err := e.d.Start(); err != nil {
		e.t.Fatal(err)
	}
}

// dump is the fake kernel's table as nft text.
func (e *env) dump() string {
	e.t.Helper()
	s, err := e.kernel.Dump("fwdd")
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// lastPlan is the last batch the daemon sent.
func (e *env) lastPlan() *nft.Plan {
	e.t.Helper()
	ps := e.kernel.Plans()
	if len(ps) == 0 {
		e.t.Fatal("no batch was sent")
	}
	return ps[len(ps)-1]
}

// holds checks that the kernel's table is exactly the config in force, and
// that the daemon recorded that config.
func (e *env) holds() {
	e.t.Helper()
	m := e.d.InForce()
	tb, err := e.kernel.Read(m.Table, true)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := tb.Differs(m); err != nil {
		e.t.Fatalf("the kernel's table is not the config in force: %v", err)
	}
	// fwdd diff compares with the record of the config in force.
	rec, err := ReadApplied(e.d.opts.StateDir)
	if err != nil {
		e.t.Fatal(err)
	}
	if fw, settings := config.Diff(m.Config, rec); len(fw)+len(settings) > 0 {
		e.t.Errorf("the record of the config in force differs from it: %v %v", fw, settings)
	}
}

func forwards(n int, changed int, target string) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		to := fmt.Sprintf("10.22.0.2:%d", 8000+i%10)
		if i == changed {
			to = target
		}
		fmt.Fprintf(&b, "[[forward]]\nname = \"f%d\"\nport = 80\naddress = \"10.%d.%d.%d\"\nto = %q\n", i, 100+i/65536, i/256%256, i%256, to)
	}
	return b.String()
}

const small = `
[daemon]
on_stop = "flush"
[[forward]]
name = "web"
port = 80
to = "10.0.2.10:8080"
[[forward]]
name = "dns"
proto = ["tcp", "udp"]
port = 53
to = "10.0.2.53"
snat = "none"
[[forward]]
name = "lab"
port = 2222
to = "10.0.2.22:22"
interface = "eth1"
sources = ["10.1.0.0/16"]
`

func TestStart(t *testing.T) {
	e := newEnv(t, small)
	e.start()
	p := e.lastPlan()
	if !p.Full || len(e.kernel.Plans()) != 1 {
		t.Errorf("start sent %d batches (last full=%v), want one full replace", len(e.kernel.Plans()), p.Full)
	}
	e.holds()
	if got := e.sysctls.Values()["net/ipv4/ip_forward"]; got != "1" {
		t.Errorf("ip_forward = %q, want 1", got)
	}
	want, err := nft.AssignIDs(e.d.Config()) // a function of the file
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, e.d.IDs()); d != "" {
		t.Errorf("ids (-want +got):\n%s", d)
	}
	// The daemon logs every batch at debug level, in nft syntax.
	logged := e.logs.FilterMessage("sending batch").All()
	if len(logged) != 1 || logged[0].ContextMap()["plan"] != p.String() {
		t.Errorf("the batch was not logged at debug level as nft text: %v", logged)
	}
	st, err := ReadState(e.d.opts.StateDir)
	if err != nil || !st.OK || st.Forwards != 3 {
		t.Errorf("state = %+v, %v", st, err)
	}
}

func TestReloadOneForwardOfMany(t *testing.T) {
	e := newEnv(t, forwards(10_000, -1, ""))
	e.start()
	e.write(forwards(10_000, 1234, "10.22.0.2:8009"))
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	p := e.lastPlan()
	var kinds []nft.OpKind
	for _, op := range p.Ops {
		kinds = append(kinds, op.Kind)
		if len(op.Elements) != 1 || op.Set.Name != "dnat4_addr" {
			t.Errorf("operation %v on %v with %d elements, want one dnat4_addr element", op.Kind, op.Set, len(op.Elements))
		}
	}
	if d := cmp.Diff([]nft.OpKind{nft.OpDeleteElements, nft.OpAddElements}, kinds); d != "" {
		t.Errorf("reload plan (-want +got):\n%s\n%s", d, p)
	}
	if p.Full || p.Messages() != 4 {
		t.Errorf("full=%v, %d messages; want a diff in 4", p.Full, p.Messages())
	}
	e.holds()
	line := e.logs.FilterMessage("reloaded").All()
	if len(line) != 1 {
		t.Fatalf("%d reloaded lines", len(line))
	}
	f := line[0].ContextMap()
	if fmt.Sprint(f["changed"], f["added"], f["removed"], f["messages"], f["elements"]) != "[f1234] [] [] 4 2" {
		t.Errorf("reloaded line: %v", f)
	}
}

// The reloaded line names at most maxNamesLogged forwards of each kind.
func TestReloadLogsFewNames(t *testing.T) {
	e := newEnv(t, forwards(30, -1, ""))
	e.start()
	e.write(forwards(30+maxNamesLogged+10, -1, ""))
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	added := e.logs.FilterMessage("reloaded").All()[0].ContextMap()["added"].([]any)
	if len(added) != maxNamesLogged+1 || added[0] != "f30" || added[maxNamesLogged] != "... 10 more" {
		t.Errorf("added = %v", added)
	}
}

func TestReloadFailedChangesNothing(t *testing.T) {
	e := newEnv(t, small)
	e.start()
	before, sent := e.dump(), len(e.kernel.Plans())
	cfg := e.d.Config()

	// A bad file: nothing is sent.
	e.write(small + "\n[[forward]]\nname = \"web\"\nport = 81\nto = \"10.0.2.10\"\n")
	if err := e.d.Reload(); err == nil || !strings.Contains(err.Error(), "web") {
		t.Errorf("reload of a duplicate forward: %v", err)
	}
	if len(e.kernel.Plans()) != sent {
		t.Error("a bad file sent a batch")
	}
	// The kernel rejects the batch: nothing is applied, the old config
	// stays in force.
	e.write(strings.Replace(small, "10.0.2.10:8080", "10.0.2.11:8080", 1))
	e.kernel.FailNext(unix.EINVAL)
	if err := e.d.Reload(); !errors.Is(err, unix.EINVAL) {
		t.Errorf("reload with a rejected batch: %v", err)
	}
	if got := e.dump(); got != before {
		t.Errorf("a rejected batch changed the table:\n%s", cmp.Diff(before, got))
	}
	if e.d.Config() != cfg {
		t.Error("the rejected config is in force")
	}
	st, _ := ReadState(e.d.opts.StateDir)
	if st.OK || !strings.Contains(st.Error, "invalid argument") {
		t.Errorf("state after a failed reload: %+v", st)
	}
	// The next reload starts over with the whole table.
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	if !e.lastPlan().Full {
		t.Error("the reload after a failure did not replace the table")
	}
	e.holds()
}

func TestReloadReplacesTableChangedBehindItsBack(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit []nft.Op
	}{
		{"flush a chain", []nft.Op{{Kind: nft.OpFlushChain, Chain: &nft.Chain{Name: "dispatch"}}}},
		{"delete the table", []nft.Op{{Kind: nft.OpDeleteTable}}},
		{"add a chain", []nft.Op{{Kind: nft.OpAddChain, Chain: &nft.Chain{Name: "other"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, small)
			e.start()
			if err := e.kernel.Behind(&nft.Plan{Table: "fwdd", Ops: tc.edit}); err != nil {
				t.Fatal(err)
			}
			e.write(strings.Replace(small, "10.0.2.10:8080", "10.0.2.11:8080", 1))
			if err := e.d.Reload(); err != nil {
				t.Fatal(err)
			}
			if !e.lastPlan().Full {
				t.Errorf("the table was diffed, not replaced:\n%s", e.lastPlan())
			}
			e.holds()
		})
	}
}

func TestReloadRecoversFromUnknownOutcome(t *testing.T) {
	for _, commit := range []bool{true, false} {
		t.Run(fmt.Sprint("committed=", commit), func(t *testing.T) {
			e := newEnv(t, small)
			e.start()
			sent := len(e.kernel.Plans())
			e.write(strings.Replace(small, "10.0.2.10:8080", "10.0.2.11:8080", 1))
			e.kernel.LoseAckNext(commit)
			if err := e.d.Reload(); err != nil {
				t.Fatal(err)
			}
			e.holds()
			// Read back: a batch that went in is not sent again; one that
			// did not is followed by a full replace.
			want := 1
			if !commit {
				want = 2
			}
			if got := len(e.kernel.Plans()) - sent; got != want {
				t.Errorf("%d batches sent, want %d", got, want)
			}
			if !commit && !e.lastPlan().Full {
				t.Error("the recovery did not replace the table")
			}
			f := e.logs.FilterMessage("reloaded").All()[0].ContextMap()
			if f["recovered"] != true {
				t.Errorf("reloaded line: %v", f)
			}
		})
	}
}

func TestStartAdoptsExistingTable(t *testing.T) {
	e := newEnv(t, strings.Replace(small, `"flush"`, `"keep"`, 1))
	e.start()
	if err := e.d.Stop(); err != nil {
		t.Fatal(err)
	}
	ids := e.d.IDs()
	// A new daemon on the same kernel with a changed file: it keeps the
	// table and its ids, and sends only what changed, in one batch.
	changed := strings.Replace(strings.Replace(small, "10.0.2.10:8080", "10.0.2.11:8080", 1), `interface = "eth1"`, `interface = "eth2"`, 1)
	e2 := newEnv(t, changed)
	e2.kernel = e.kernel
	e2.d.opts.Kernel, e2.d.applier.Backend = e.kernel, e.kernel
	e2.start()
	p := e2.lastPlan()
	if p.Full {
		t.Fatalf("start replaced an existing table of fwdd's:\n%s", p)
	}
	for _, op := range p.Ops {
		if op.Kind == nft.OpDeleteTable || op.Kind == nft.OpDeleteChain {
			t.Errorf("adoption deletes: %v", op)
		}
	}
	if d := cmp.Diff(ids, e2.d.IDs()); d != "" {
		t.Errorf("ids (-before +after):\n%s", d)
	}
	e2.holds()
}

func TestStop(t *testing.T) {
	for _, onStop := range []string{"keep", "flush"} {
		t.Run(onStop, func(t *testing.T) {
			e := newEnv(t, strings.Replace(small, `"flush"`, fmt.Sprintf("%q", onStop), 1))
			e.start()
			before := e.dump()
			if err := e.d.Stop(); err != nil {
				t.Fatal(err)
			}
			got, err := e.kernel.Dump("fwdd")
			switch onStop {
			case "keep":
				if err != nil || got != before {
					t.Errorf("on_stop = keep changed the table: %v\n%s", err, cmp.Diff(before, got))
				}
			case "flush":
				if !errors.Is(err, nft.ErrFakeNoTable) {
					t.Errorf("on_stop = flush left the table:\n%s", got)
				}
			}
		})
	}
}

// The metrics and the accessors of what is in force are read from other
// goroutines while reloads replace it (go test -race).
func TestMetricsAndStatusDuringReloads(t *testing.T) {
	e := newEnv(t, small)
	e.start()
	srv := httptest.NewServer(e.d.Metrics().Handler())
	defer srv.Close()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				resp, err := srv.Client().Get(srv.URL + "/metrics")
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable {
					continue // the other goroutine's scrape: one at a time
				}
				if !strings.Contains(string(b), `fwdd_forward_packets_total{direction="original",forward="web"}`) {
					t.Errorf("scrape lacks forward web:\n%s", b)
					return
				}
				if cfg, ids := e.d.Config(), e.d.IDs(); len(cfg.Forwards) < 3 || ids["web"] == 0 {
					t.Errorf("in force: %d forwards, ids %v", len(cfg.Forwards), ids)
					return
				}
			}
		}()
	}
	for i := range 50 {
		e.write(strings.Replace(small, "10.0.2.10:8080", fmt.Sprintf("10.0.2.%d:8080", 10+i%2), 1) +
			fmt.Sprintf("[[forward]]\nname = \"extra%d\"\nport = %d\nto = \"10.0.2.30\"\n", i, 9000+i))
		if err := e.d.Reload(); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	e.holds()
}

// Repair puts the table in force back in one batch, keeping what is right.
func TestRepair(t *testing.T) {
	e := newEnv(t, small)
	e.start()
	m := e.d.InForce()
	// One element deleted behind fwdd's back: only it is added again.
	if err := e.kernel.Behind(&nft.Plan{Table: "fwdd", Ops: []nft.Op{
		{Kind: nft.OpDeleteElements, Set: m.Set("dnat4_port"), Elements: m.Elements("dnat4_port")[:1]},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Repair(); err != nil {
		t.Fatal(err)
	}
	if p := e.lastPlan(); p.Full || len(p.Ops) != 1 || p.Ops[0].Kind != nft.OpAddElements {
		t.Errorf("repair of one element:\n%s", p)
	}
	e.holds()
	// The table deleted (nft flush ruleset): it comes back whole.
	if err := e.kernel.Behind(&nft.Plan{Table: "fwdd", Ops: []nft.Op{{Kind: nft.OpDeleteTable}}}); err != nil {
		t.Fatal(err)
	}
	if err := e.d.Repair(); err != nil {
		t.Fatal(err)
	}
	if !e.lastPlan().Full {
		t.Error("a deleted table was not replaced")
	}
	e.holds()
}

// A table made dormant behind fwdd's back (its chains see no packet) is
// found by the periodic check, by the check after an event and by a reload,
// and each wakes it up with one message that keeps the rest of the table.
func TestDormantTableWokenUp(t *testing.T) {
	for _, tc := range []struct {
		name string
		mend func(e *env)
	}{
		{"periodic check", func(e *env) { e.d.heal(healRequest{reason: "periodic check"}) }},
		{"event", func(e *env) { e.d.heal(healRequest{tampered: true, reason: "add table inet fwdd by nft (pid 1)"}) }},
		{"reload", func(e *env) {
			if err := e.d.Reload(); err != nil {
				e.t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, small)
			e.start()
			if err := e.kernel.SetFlags("fwdd", nft.TableDormant); err != nil {
				t.Fatal(err)
			}
			tb, err := e.kernel.Read("fwdd", false)
			if err != nil {
				t.Fatal(err)
			}
			if err := tb.Differs(e.d.InForce()); err == nil || !strings.Contains(err.Error(), "dormant") {
				t.Fatalf("a dormant table read back: %v", err)
			}
			n := len(e.kernel.Plans())
			tc.mend(e)
			if len(e.kernel.Plans()) != n+1 {
				t.Fatalf("%d batches sent, want 1", len(e.kernel.Plans())-n)
			}
			if p := e.lastPlan(); p.Full || len(p.Ops) != 1 || p.Ops[0].Kind != nft.OpAddTable {
				t.Errorf("the batch that wakes the table:\n%s", p)
			}
			e.holds()
		})
	}
}

// A daemon with a partial ct_mask starts, reloads by diff and keeps the
// table exact; changing the layout is refused (live connections carry the
// marks of the layout in force) and changes nothing.
func TestReloadPartialCtMask(t *testing.T) {
	partial := strings.Replace(small, "[daemon]\n", "[daemon]\nct_mark = \"0x00fd0000/0x00ff0000\"\nct_mask = 0xffff0000\n", 1)
	e := newEnv(t, partial)
	e.start()
	e.holds()
	e.write(strings.Replace(partial, "10.0.2.10:8080", "10.0.2.11:8080", 1))
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	if p := e.lastPlan(); p.Full || p.NumElements() == 0 {
		t.Errorf("a changed target: full %v, %d elements", p.Full, p.NumElements())
	}
	e.holds()
	before, sent := e.dump(), len(e.kernel.Plans())
	e.write(strings.Replace(partial, "ct_mask = 0xffff0000", "ct_mask = 0x7fff0000", 1))
	err := e.d.Reload()
	if err == nil || !strings.Contains(err.Error(), "ct_mark, ct_mask: changing the ct mark layout from ct_mark 0x00fd0000/0x00ff0000, ct_mask 0xffff0000 to ct_mark 0x00fd0000/0x00ff0000, ct_mask 0x7fff0000 needs a restart") {
		t.Errorf("reload with another layout: %v", err)
	}
	if len(e.kernel.Plans()) != sent || e.dump() != before {
		t.Error("a refused layout change sent a batch")
	}
}

// The state says when the config of its result was read, for fwdd reload
// (Running.Reload): a start or reload sets it, a repair, which reads no
// config, leaves it.
func TestStateSaysWhenTheConfigWasRead(t *testing.T) {
	e := newEnv(t, small)
	loaded := func() int64 {
		t.Helper()
		st, err := ReadState(e.d.opts.StateDir)
		if err != nil {
			t.Fatal(err)
		}
		return st.Loaded
	}
	before := monotonicUsec()
	e.start()
	if l := loaded(); l < before || l > monotonicUsec() {
		t.Errorf("after start: loaded %d, want between %d and now", l, before)
	}
	before = monotonicUsec()
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	reloaded := loaded()
	if reloaded < before {
		t.Errorf("after a reload: loaded %d, want at least %d", reloaded, before)
	}
	if err := e.d.Repair(); err != nil {
		t.Fatal(err)
	}
	if l := loaded(); l != reloaded {
		t.Errorf("after a repair: loaded %d, want the reload's %d", l, reloaded)
	}
}
