package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

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
