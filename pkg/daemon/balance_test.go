package daemon

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/health"
	"github.com/fwdd/fwdd/pkg/nft"
)

// TestBalancer: a backend going down is taken out of the kernel and its
// UDP entries deleted; all down is fail open (every backend in, an error
// logged, no entries deleted); a backend coming back is put in again.
func TestBalancer(t *testing.T) {
	ln1, ln2 := testutil.ListenTCP(t, "127.0.0.1:0"), testutil.ListenTCP(t, "127.0.0.1:0")
	a1 := netip.MustParseAddrPort(ln1.Addr().String())
	a2 := netip.MustParseAddrPort(ln2.Addr().String())
	core, logs := observer.New(zapcore.InfoLevel)
	b := newBalancer(zap.New(core), nil)
	events := make(chan []bool, 10)
	deleted := make(chan []conntrack.Selector, 10)
	b.program = func(forward string) error {
		if forward != "dns" {
			t.Errorf("program(%q)", forward)
		}
		up, _ := b.upSet(forward)
		events <- up
		return nil
	}
	b.deleteFlows = func(sels ...conntrack.Selector) (int, error) {
		deleted <- sels
		return 1, nil
	}
	spec := health.Spec{Kind: health.KindTCP, Interval: 20 * time.Millisecond, Timeout: 200 * time.Millisecond, Fall: 2, Rise: 2}
	b.set([]pool{{forward: "dns", id: 7, mark: ctmark.Default.ForID(7), backends: []netip.AddrPort{a1, a2}, portSpan: 1, spec: spec, udp: true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.run(ctx) }()
	defer func() { cancel(); <-done }()

	next := func() []bool {
		t.Helper()
		select {
		case up := <-events:
			return up
		case <-time.After(5 * time.Second):
			t.Fatal("no kernel update within 5s")
			return nil
		}
	}
	ln1.Close()
	if up := next(); !cmp.Equal(up, []bool{false, true}) {
		t.Fatalf("after backend 1 went down: program(%v)", up)
	}
	var got []conntrack.Selector
	select {
	case got = <-deleted:
	case <-time.After(5 * time.Second):
		t.Fatal("no entries deleted within 5s of backend 1 going down")
	}
	want := []conntrack.Selector{{Mark: ctmark.Default.ForID(7), Proto: 17, Backend: a1.Addr(), PortFirst: a1.Port(), PortLast: a1.Port()}}
	if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("deleted (-want +got):\n%s", d)
	}

	ln2.Close()
	if up := next(); !cmp.Equal(up, []bool{true, true}) {
		t.Fatalf("all down: program(%v), want every backend in (fail open)", up)
	}
	// The line follows the kernel update the test just saw: wait for it.
	logged := func(snippet string, level zapcore.Level) int {
		n := 0
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if n = logs.FilterMessageSnippet(snippet).FilterLevelExact(level).Len(); n > 0 {
				break
			}
		}
		return n
	}
	if n := logged("fail open", zapcore.ErrorLevel); n != 1 {
		t.Errorf("%d fail-open errors logged, want 1", n)
	}
	// A reload in fail open stays in it: no second error, and its end is
	// still told.
	b.set([]pool{{forward: "dns", id: 7, mark: ctmark.Default.ForID(7), backends: []netip.AddrPort{a1, a2}, portSpan: 1, spec: spec, udp: true}})

	testutil.ListenTCP(t, a1.String())
	if up := next(); !cmp.Equal(up, []bool{true, false}) {
		t.Fatalf("backend 1 back: program(%v)", up)
	}
	select {
	case sels := <-deleted:
		t.Errorf("entries deleted in fail open or when a backend came back: %v", sels)
	default:
	}
	if n := logged("fail open ends", zapcore.InfoLevel); n != 1 {
		t.Errorf("%d 'fail open ends' lines, want 1", n)
	}
	if n := logs.FilterMessageSnippet("fail open").FilterLevelExact(zapcore.ErrorLevel).Len(); n != 1 {
		t.Errorf("%d fail-open errors logged after a reload in fail open, want 1", n)
	}
	if up, _ := b.upSet("dns"); !cmp.Equal(up, []bool{true, false}) {
		t.Errorf("upSet = %v", up)
	}

	// A reload keeping the pool keeps its health.
	b.set([]pool{{forward: "dns", id: 7, mark: ctmark.Default.ForID(7), backends: []netip.AddrPort{a1, a2}, portSpan: 1, spec: spec, udp: true}})
	if up, _ := b.upSet("dns"); !cmp.Equal(up, []bool{true, false}) {
		t.Errorf("upSet after set = %v, want the health kept", up)
	}
}

// poolAB is a forward with two health-checked backends, A (10.0.2.10) and
// B (10.0.2.11), checked every 100ms and taken out at the first failure.
const poolAB = `
[daemon]
on_stop = "flush"
[[forward]]
name = "web"
port = 80
to = ["10.0.2.10:8080", "10.0.2.11:8080"]
health = { check = "tcp", interval = "100ms", fall = 1, rise = 1 }
`

// checks is a health.DialFunc whose outcome the test sets per backend.
type checks struct {
	mu   sync.Mutex
	fail map[string]bool
}

func (c *checks) set(addr string, fail bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fail[addr] = fail
}

func (c *checks) dial(_ context.Context, _, addr string) (net.Conn, error) {
	c.mu.Lock()
	fail := c.fail[addr]
	c.mu.Unlock()
	if fail {
		return nil, syscall.ECONNREFUSED
	}
	conn, peer := net.Pipe()
	peer.Close()
	return conn, nil
}

// scriptChecks makes the daemon's health checks dial through a checks; call
// it before start.
func (e *env) scriptChecks() *checks {
	c := &checks{fail: map[string]bool{}}
	b := e.d.tasks.balancer
	b.checker = health.New(health.Options{Dial: c.dial, OnChange: b.onChange, Log: e.d.log})
	return c
}

// runChecks runs the balancer's health checks until the test ends (the
// daemon's tasks run until Run returns, after Stop).
func (e *env) runChecks() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.d.tasks.balancer.run(ctx) }()
	e.t.Cleanup(func() { cancel(); <-done })
}

// waitLog waits up to 5s for n lines with the message msg.
func (e *env) waitLog(msg string, n int) {
	e.t.Helper()
	for deadline := time.Now().Add(5 * time.Second); e.logs.FilterMessage(msg).Len() < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			e.t.Fatalf("%d %q lines within 5s, want %d", e.logs.FilterMessage(msg).Len(), msg, n)
		}
	}
}

// A health change after Stop programs nothing: with on_stop = "flush" it
// does not put the table back, with "keep" it does not edit the table the
// daemon left.
func TestHealthChangeAfterStop(t *testing.T) {
	for _, onStop := range []string{"keep", "flush"} {
		t.Run(onStop, func(t *testing.T) {
			e := newEnv(t, strings.Replace(poolAB, `"flush"`, strconv.Quote(onStop), 1))
			checks := e.scriptChecks()
			e.start()
			e.runChecks()
			if err := e.d.Stop(); err != nil {
				t.Fatal(err)
			}
			before, _ := e.kernel.Dump("fwdd")
			sent := len(e.kernel.Plans())
			checks.set("10.0.2.11:8080", true)
			e.waitLog("backend down", 1) // logged once the change was handled
			if n := len(e.kernel.Plans()) - sent; n != 0 {
				t.Errorf("%d batches sent after Stop (the last a full replace: %v)", n, e.lastPlan().Full)
			}
			if after, _ := e.kernel.Dump("fwdd"); after != before {
				t.Errorf("the table changed after Stop:\n%s", cmp.Diff(before, after))
			}
		})
	}
}

// targets are the backends the checker checks.
func (e *env) targets() []string {
	var out []string
	for k := range e.d.tasks.balancer.checker.Status() {
		out = append(out, k.String())
	}
	slices.Sort(out)
	return out
}

// A reload the kernel rejects leaves the old table, and so the old
// backends' health checks: a backend of the table in force going down is
// still taken out of it. The next reload that goes in checks the new ones.
func TestReloadFailedKeepsHealthChecks(t *testing.T) {
	e := newEnv(t, poolAB)
	checks := e.scriptChecks()
	e.start()
	old := []string{"web/10.0.2.10:8080", "web/10.0.2.11:8080"}
	// C in front of A and B: the backends' positions move.
	withC := strings.Replace(poolAB, `to = [`, `to = ["10.0.2.12:8080", `, 1)
	e.write(withC)
	e.kernel.FailNext(unix.EINVAL)
	if err := e.d.Reload(); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("reload with a rejected batch: %v", err)
	}
	if d := cmp.Diff(old, e.targets()); d != "" {
		t.Errorf("checked after a failed reload (-want +got):\n%s", d)
	}
	e.runChecks()
	checks.set("10.0.2.11:8080", true)
	e.waitLog("backend down", 1)
	if got := e.d.InForce().Up("web"); !cmp.Equal(got, []bool{true, false}) {
		t.Errorf("B down: backends in the kernel %v, want [true false]", got)
	}
	if err := e.d.Reload(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"web/10.0.2.10:8080", "web/10.0.2.11:8080", "web/10.0.2.12:8080"}, e.targets()); d != "" {
		t.Errorf("checked after a reload (-want +got):\n%s", d)
	}
	if got := e.d.InForce().Up("web"); !cmp.Equal(got, []bool{true, true, false}) {
		t.Errorf("after the reload: backends in the kernel %v, want [true true false] (B still down)", got)
	}
	e.holds()
}

// heldBackend holds its first batch until release is closed.
type heldBackend struct {
	nft.Backend
	once             sync.Once
	sending, release chan struct{}
}

func (h *heldBackend) Run(p *nft.Plan) error {
	h.once.Do(func() { close(h.sending); <-h.release })
	return h.Backend.Run(p)
}

// A backend going down while a reload that moves the backends is being
// applied is taken out by its place in the reloaded forward, not by its
// place before the reload.
func TestHealthChangeDuringReload(t *testing.T) {
	e := newEnv(t, poolAB)
	checks := e.scriptChecks()
	e.start()
	e.runChecks()
	held := &heldBackend{Backend: e.kernel, sending: make(chan struct{}), release: make(chan struct{})}
	e.d.applier.Backend = held
	e.write(strings.Replace(poolAB, `to = [`, `to = ["10.0.2.12:8080", `, 1)) // [C A B]
	reloaded := make(chan error, 1)
	go func() { reloaded <- e.d.Reload() }()
	<-held.sending // the reload's batch is on its way
	checks.set("10.0.2.11:8080", true)
	// The balancer has seen B go down, and waits for the reload to program it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if up, _ := e.d.tasks.balancer.upSet("web"); cmp.Equal(up, []bool{true, false}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("B not seen down within 5s")
		}
	}
	close(held.release)
	if err := <-reloaded; err != nil {
		t.Fatal(err)
	}
	e.waitLog("backend down", 1)
	if got := e.d.InForce().Up("web"); !cmp.Equal(got, []bool{true, true, false}) {
		t.Errorf("backends of [C A B] in the kernel %v, want [true true false] (B down)", got)
	}
	e.holds()
}
