package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zapcore"

	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/nft"
)

// Tests of Run: signals, readiness, background tasks.

// logWeb is small with log = true on web, so the conntrack watcher listens.
var logWeb = strings.Replace(small, `name = "web"`, "name = \"web\"\nlog = true", 1)

// failWatcher makes the conntrack watcher's first subscription fail (its
// namespace fd is /dev/null's), so that it ends with an error and never
// becomes ready. It needs a forward with log = true.
func (e *env) failWatcher() {
	e.t.Helper()
	f, err := os.Open(os.DevNull)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { f.Close() })
	e.d.tasks.watcher = conntrack.New(conntrack.Options{NetNS: int(f.Fd()), Log: e.d.log, OnNew: e.d.tasks.conns.onNew})
}

// A stop signal while Run waits for its tasks' readiness (up to 10 s each)
// stops the daemon at once.
func TestStopWhileWaitingForReadiness(t *testing.T) {
	e := newEnv(t, logWeb)
	e.failWatcher()
	e.start()
	stops := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- e.d.Run(context.Background(), nil, stops) }()
	stops <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a SIGTERM during the readiness wait did not stop the daemon within 5s")
	}
	if _, err := e.kernel.Dump("fwdd"); !errors.Is(err, nft.ErrFakeNoTable) {
		t.Errorf("on_stop = flush left the table: %v", err)
	}
}

// A background task that fails is logged as an error and stops none of the
// others: here the conntrack watcher fails at once, and a backend going
// down is still taken out of the kernel.
func TestFailedTaskLeavesOthersRunning(t *testing.T) {
	e := newEnv(t, strings.Replace(poolAB, "port = 80\n", "port = 80\nlog = true\n", 1))
	checks := e.scriptChecks()
	e.failWatcher()
	e.start()
	stops := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- e.d.Run(context.Background(), nil, stops) }()
	defer func() { stops <- syscall.SIGTERM; <-done }()
	e.waitLog("background task failed; the others keep running", 1)
	l := e.logs.FilterMessage("background task failed; the others keep running").All()[0]
	if l.Level != zapcore.ErrorLevel || l.ContextMap()["task"] != "conntrack watcher" {
		t.Errorf("logged at %v with %v, want an error naming the task", l.Level, l.ContextMap())
	}
	checks.set("10.0.2.11:8080", true)
	e.waitLog("backend down", 1)
	if got := e.d.InForce().Up("web"); !cmp.Equal(got, []bool{true, false}) {
		t.Errorf("B down: backends in the kernel %v, want [true false]", got)
	}
}

// A table deleted between the first batch and the start of the guard has
// no event to report it: the guard's first check finds it, long before the
// periodic one.
func TestTableDeletedBeforeGuardStartsIsHealed(t *testing.T) {
	e := newEnv(t, small)
	e.d.opts.CheckInterval = time.Hour
	e.start()
	if err := e.kernel.Behind(&nft.Plan{Table: "fwdd", Ops: []nft.Op{{Kind: nft.OpDeleteTable}}}); err != nil {
		t.Fatal(err)
	}
	stops := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- e.d.Run(context.Background(), nil, stops) }()
	defer func() { stops <- syscall.SIGTERM; <-done }()
	e.waitLog("table re-applied", 1)
	if l := e.logs.FilterMessage("table differs from what fwdd applied; re-applying it").All(); len(l) != 1 || l[0].ContextMap()["check"] != reasonFirstCheck {
		t.Errorf("re-applied after %v, want the first check", l)
	}
	e.holds()
}
