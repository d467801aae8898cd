package conntrack

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// After the event socket fails, a Watcher listens again until it works,
// waiting longer each time up to its bound, and says so once per streak.
func TestWatcherRetriesListen(t *testing.T) {
	const failures = 12 // unbounded doubling from 1 ms would take 4 s
	core, logs := observer.New(zapcore.DebugLevel)
	w := New(Options{Log: zap.New(core)})
	w.retryMin, w.retryMax = time.Millisecond, 4*time.Millisecond

	var mu sync.Mutex
	var socks []*eventSocket
	var calls []time.Time
	w.listen = func() (*eventSocket, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		if n := len(calls); n > 1 && n <= 1+failures {
			return nil, errors.New("injected")
		}
		done := make(chan struct{})
		close(done) // no reader
		s := &eventSocket{c: nltest.Dial(func([]netlink.Message) ([]netlink.Message, error) { return nil, nil }),
			failed: make(chan error, 1), done: done}
		socks = append(socks, s)
		return s, nil
	}
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(calls), len(socks)
	}

	w.SetForwards(map[uint32]string{1: "web"}, []uint32{1})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	<-w.Ready()
	mu.Lock()
	socks[0].failed <- errors.New("injected socket error")
	mu.Unlock()

	deadline := time.Now().Add(2 * time.Second)
	for {
		if _, s := count(); s == 2 {
			break
		}
		if time.Now().After(deadline) {
			c, _ := count()
			t.Fatalf("listen called %d times in 2 s after the socket failed, want %d (%d failing)", c, failures+2, failures)
		}
		time.Sleep(time.Millisecond)
	}

	mu.Lock()
	for i, want := 1, w.retryMin; i < len(calls); i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < want {
			t.Errorf("attempt %d came %v after the previous one, want at least %v", i+1, gap, want)
		}
		want = min(2*want, w.retryMax)
	}
	mu.Unlock()
	if n := logs.FilterMessageSnippet("cannot listen").Len(); n != 1 {
		t.Errorf("%d errors for one streak of failed listens, want 1", n)
	}
	again := logs.FilterMessage("listening for conntrack events again").All()
	if len(again) != 1 || again[0].ContextMap()["failedAttempts"] != int64(failures) {
		t.Errorf("recovery logged as %v, want once with failedAttempts %d", again, failures)
	}
}
