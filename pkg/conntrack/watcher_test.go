package conntrack

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// fakeKernel is a conntrack table with event sockets that behave like
// ti-mo/conntrack's: workers send on unbuffered error channels and on the
// event channel without select, so Close hangs unless both are drained.
type fakeKernel struct {
	mu        sync.Mutex
	flows     map[uint32]ct.Flow // by ID
	listeners map[*fakeConn]bool
	dials     int
}

type item struct {
	ev  ct.Event
	err error
}

type fakeConn struct {
	k    *fakeKernel
	feed chan item
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{flows: map[uint32]ct.Flow{}, listeners: map[*fakeConn]bool{}}
}

func (k *fakeKernel) dial(int) (conn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dials++
	return &fakeConn{k: k, feed: make(chan item, 100000), stop: make(chan struct{})}, nil
}

func (c *fakeConn) SetReadBuffer(int) error { return nil }

func (c *fakeConn) Listen(evCh chan<- ct.Event, workers uint8, _ []netfilter.NetlinkGroup) (chan error, error) {
	errCh := make(chan error)
	c.k.mu.Lock()
	c.k.listeners[c] = true
	c.k.mu.Unlock()
	for range workers {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			for {
				select {
				case it := <-c.feed:
					if it.err != nil {
						errCh <- it.err // blocks like the library's worker
						return
					}
					evCh <- it.ev
				case <-c.stop:
					return
				}
			}
		}()
	}
	return errCh, nil
}

func (c *fakeConn) DumpFilter(ct.Filter, *ct.DumpOptions) ([]ct.Flow, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	var out []ct.Flow
	for _, f := range c.k.flows {
		if f.Mark&ctmark.Mask == ctmark.Tag {
			out = append(out, f)
		}
	}
	return out, nil
}

func (c *fakeConn) Close() error {
	c.once.Do(func() {
		c.k.mu.Lock()
		delete(c.k.listeners, c)
		c.k.mu.Unlock()
		close(c.stop)
	})
	c.wg.Wait()
	return nil
}

// emit delivers an event to every listener, unless lost.
func (k *fakeKernel) emit(typ ct.Event, lost bool) {
	if lost {
		return
	}
	for l := range k.listeners {
		l.feed <- item{ev: typ}
	}
}

func (k *fakeKernel) create(id, mark uint32, lost bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	// Distinct tuples per entry, as in the kernel.
	sport := uint16(10000 + id)
	f := ct.Flow{ID: id, Mark: mark,
		TupleOrig: ct.Tuple{
			IP:    ct.IPTuple{SourceAddress: netip.MustParseAddr("192.0.2.1"), DestinationAddress: netip.MustParseAddr("198.51.100.1")},
			Proto: ct.ProtoTuple{Protocol: 17, SourcePort: sport, DestinationPort: 53},
		},
		TupleReply: ct.Tuple{
			IP:    ct.IPTuple{SourceAddress: netip.MustParseAddr("10.0.0.2"), DestinationAddress: netip.MustParseAddr("192.0.2.1")},
			Proto: ct.ProtoTuple{Protocol: 17, SourcePort: 5353, DestinationPort: sport},
		},
	}
	k.flows[id] = f
	k.emit(ct.Event{Type: ct.EventNew, Flow: &f}, lost)
}

func (k *fakeKernel) destroy(id uint32, lost bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f := k.flows[id]
	delete(k.flows, id)
	k.emit(ct.Event{Type: ct.EventDestroy, Flow: &f}, lost)
}

// overflow makes one worker of every listener fail with ENOBUFS.
func (k *fakeKernel) overflow() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for l := range k.listeners {
		l.feed <- item{err: fmt.Errorf("Receive() netlink error, closing worker 0: %w", unix.ENOBUFS)}
	}
}

func newFakeWatcher(t *testing.T, k *fakeKernel, opts Options) (*Watcher, *observer.ObservedLogs, func() error) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	opts.Log = zap.New(core)
	w := New(opts)
	w.dial = k.dial
	w.retryMin = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(5 * time.Second):
				t.Error("Run did not return within 5s of cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-w.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("watcher not ready")
	}
	return w, logs, stop
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestWatcherCountsAndOverflow(t *testing.T) {
	k := newFakeKernel()
	k.create(1, ctmark.ForID(1), false) // exists before start: live, not new
	k.create(2, 0x1234, false)          // not fwdd's
	var mu sync.Mutex
	var news []NewConn
	w, logs, stop := newFakeWatcher(t, k, Options{OnNew: func(c NewConn) {
		mu.Lock()
		news = append(news, c)
		mu.Unlock()
	}})
	w.SetForwards(map[uint32]string{1: "web", 2: "dns", 3: "idle"})

	k.create(10, ctmark.ForID(2), false)
	k.create(11, ctmark.ForID(2), false)
	k.create(12, ctmark.ForID(1), false)
	k.destroy(11, false)
	k.create(13, ctmark.ForID(9), false) // unnamed forward id
	waitFor(t, "events", func() bool {
		f := w.Snapshot().Forwards
		return f["dns"].Live == 1 && f["web"].Live == 2 && f["#9"].Live == 1
	})
	s := w.Snapshot()
	if s.Forwards["dns"].New != 2 || s.Forwards["web"].New != 1 || s.Forwards["idle"] != (ForwardStats{ID: 3}) {
		t.Errorf("snapshot = %+v", s.Forwards)
	}
	mu.Lock()
	want := NewConn{Forward: "dns", ForwardID: 2, Proto: 17, Source: netip.MustParseAddrPort("192.0.2.1:10010"),
		Destination: netip.MustParseAddrPort("198.51.100.1:53"), Backend: netip.MustParseAddrPort("10.0.0.2:5353")}
	if len(news) != 4 || !slices.Contains(news, want) {
		t.Errorf("OnNew got %+v, want 4 including %+v", news, want)
	}
	mu.Unlock()

	// Events lost, then the overflow: the watcher must rebuild from a dump.
	for id := uint32(100); id < 150; id++ {
		k.create(id, ctmark.ForID(1), true)
	}
	k.destroy(12, true)
	k.destroy(10, true)
	k.overflow()
	waitFor(t, "resync", func() bool {
		s := w.Snapshot()
		return s.Overflows == 1 && s.Forwards["web"].Live == 51 && s.Forwards["dns"].Live == 0
	})
	if n := logs.FilterMessage("conntrack events overflowed; resynchronizing from a dump").FilterField(zap.Uint64("overflows", 1)).Len(); n != 1 {
		t.Errorf("overflow logged %d times, want 1", n)
	}
	if got := w.Snapshot().Forwards["web"].New; got != 51 {
		t.Errorf("web new = %d, want 51 (1 seen + 50 found by resync)", got)
	}

	// Still alive after the restart.
	k.create(200, ctmark.ForID(2), false)
	waitFor(t, "event after restart", func() bool { return w.Snapshot().Forwards["dns"].Live == 1 })

	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestWatcherCancelDuringBacklog proves Run returns promptly when cancelled
// while workers are blocked delivering events and errors.
func TestWatcherCancelDuringBacklog(t *testing.T) {
	k := newFakeKernel()
	w, _, stop := newFakeWatcher(t, k, Options{Workers: 4, OnNew: func(NewConn) { time.Sleep(time.Microsecond) }})
	_ = w
	for id := uint32(1); id < 20000; id++ {
		k.create(id, ctmark.ForID(1), false)
	}
	k.overflow()
	k.overflow()
	start := time.Now()
	if err := stop(); err != nil {
		t.Errorf("Run = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Run took %v to return", d)
	}
}

func TestWatcherStartFailure(t *testing.T) {
	w := New(Options{})
	w.dial = func(int) (conn, error) { return nil, unix.EPERM }
	err := w.Run(context.Background())
	if err == nil || err.Error() != "dial conntrack: operation not permitted" {
		t.Errorf("Run = %v", err)
	}
}

func TestTopLive(t *testing.T) {
	s := Stats{Forwards: map[string]ForwardStats{
		"a": {Live: 5}, "b": {Live: 50}, "c": {Live: 5}, "d": {Live: 1}, "e": {},
	}}
	var got []string
	for _, f := range s.TopLive(3) {
		got = append(got, fmt.Sprintf("%s=%d", f.Name, f.Live))
	}
	if fmt.Sprint(got) != "[b=50 a=5 c=5]" {
		t.Errorf("TopLive = %v", got)
	}
}
