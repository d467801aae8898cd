package daemon

import (
	"context"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fwdd/fwdd/pkg/nft"
)

type fakeEvents struct {
	ch     chan nft.Commit
	closed chan struct{}
	once   sync.Once
}

func newFakeEvents() *fakeEvents {
	return &fakeEvents{ch: make(chan nft.Commit, 16), closed: make(chan struct{})}
}

func (f *fakeEvents) Next() (nft.Commit, error) {
	select {
	case c := <-f.ch:
		if c.Gen == 0 {
			return nft.Commit{}, nft.ErrEventsLost
		}
		return c, nil
	case <-f.closed:
		return nft.Commit{}, errors.New("closed")
	}
}

func (f *fakeEvents) Close() error { f.once.Do(func() { close(f.closed) }); return nil }

func TestGuard(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	ev := newFakeEvents()
	var mu sync.Mutex
	var blockers []nft.Blocker
	g := newGuard(guardOptions{
		Log: zap.New(core), Table: "fwdd", Interval: time.Hour,
		Watch: func() (eventSource, error) { return ev, nil },
		Blockers: func() ([]nft.Blocker, error) {
			mu.Lock()
			defer mu.Unlock()
			return blockers, nil
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	<-g.ready
	expect := func(tampered bool) healRequest {
		t.Helper()
		select {
		case r := <-g.requests:
			if r.tampered != tampered {
				t.Fatalf("request %+v, want tampered=%v", r, tampered)
			}
			return r
		case <-time.After(5 * time.Second):
			t.Fatal("no request")
		}
		return healRequest{}
	}
	none := func() {
		t.Helper()
		select {
		case r := <-g.requests:
			t.Fatalf("unexpected request %+v", r)
		case <-time.After(50 * time.Millisecond):
		}
	}
	// The check once subscribed, before any event.
	if r := expect(false); r.reason != reasonFirstCheck {
		t.Errorf("first request %+v, want the first check", r)
	}
	// fwdd's own write: nothing.
	ev.ch <- nft.Commit{Gen: 1, PID: uint32(os.Getpid()), Comm: "fwdd",
		Changes: []nft.Change{{Op: "delete", Object: "table", Family: "inet", Table: "fwdd"}}}
	none()
	// Another table of the same name in another family: nothing.
	ev.ch <- nft.Commit{Gen: 2, PID: 1, Comm: "nft", Changes: []nft.Change{{Op: "delete", Object: "table", Family: "ip", Table: "fwdd"}}}
	none()
	// nft deleting a map element of fwdd's table.
	ev.ch <- nft.Commit{Gen: 3, PID: 1, Comm: "nft",
		Changes: []nft.Change{{Op: "delete", Object: "element", Family: "inet", Table: "fwdd", Name: "dnat4_port"}}}
	r := expect(true)
	if r.reason != "delete element inet fwdd set dnat4_port by nft (pid 1)" {
		t.Errorf("reason %q", r.reason)
	}
	if logs.FilterMessage("table changed behind fwdd's back; re-applying it").FilterField(zap.String("writer", "nft")).Len() != 1 {
		t.Errorf("no warning naming the writer: %v", logs.All())
	}
	// Lost events: a check, not a blind re-apply.
	ev.ch <- nft.Commit{}
	expect(false)
	// A new forward chain with policy drop in another table.
	mu.Lock()
	blockers = []nft.Blocker{{Family: "ip", Table: "filter", Chain: "FORWARD", Reason: "policy drop", Allow: "iptables -I FORWARD ..."}}
	mu.Unlock()
	ev.ch <- nft.Commit{Gen: 4, PID: 2, Comm: "iptables-nft",
		Changes: []nft.Change{{Op: "add", Object: "chain", Family: "ip", Table: "filter", Name: "FORWARD", Hook: "forward", PolicyDrop: true}}}
	deadline := time.Now().Add(5 * time.Second)
	for len(g.Blockers()) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(g.Blockers()) != 1 {
		t.Fatal("blocker not noticed")
	}
	if logs.FilterMessage("another firewall drops fwdd's forwarded connections; add the rule that lets them through").
		FilterField(zap.String("allow", "iptables -I FORWARD ...")).Len() != 1 {
		t.Errorf("no warning with the allow rule: %v", logs.All())
	}
}

// One request is pending at most: the stronger stays, of two alike the
// newer.
func TestGuardRequestCoalesces(t *testing.T) {
	tampered := healRequest{tampered: true, reason: "delete element inet fwdd set dnat4_port by nft (pid 1)"}
	tampered2 := healRequest{tampered: true, reason: "flush chain inet fwdd dispatch by nft (pid 2)"}
	lost := healRequest{elements: true, reason: reasonEventsLost}
	periodic := healRequest{reason: "periodic check"}
	first := healRequest{reason: reasonFirstCheck}
	for _, tc := range []struct {
		name           string
		pending, later healRequest
		want           healRequest
	}{
		{"a check does not replace a re-apply", tampered, periodic, tampered},
		{"lost events do not replace a re-apply", tampered, lost, tampered},
		{"a check without elements does not replace one with them", lost, periodic, lost},
		{"a re-apply replaces lost events", lost, tampered, tampered},
		{"lost events replace a check", periodic, lost, lost},
		{"of two checks the newer", first, periodic, periodic},
		{"of two re-applies the newer", tampered, tampered2, tampered2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard(guardOptions{})
			g.request(tc.pending)
			g.request(tc.later)
			if r := <-g.requests; r != tc.want {
				t.Errorf("request %+v, want %+v", r, tc.want)
			}
			select {
			case r := <-g.requests:
				t.Errorf("second request %+v", r)
			default:
			}
		})
	}
}

// An element edit whose event was lost in an overflow is repaired even
// when the periodic check comes before the daemon's loop took the check
// after the overflow: that check reads the elements, the periodic one does
// not.
func TestLostEventsThenPeriodicCheckRepairElements(t *testing.T) {
	e := newEnv(t, small)
	e.start()
	m := e.d.InForce()
	if err := e.kernel.Behind(&nft.Plan{Table: "fwdd", Ops: []nft.Op{
		{Kind: nft.OpDeleteElements, Set: m.Set("dnat4_port"), Elements: m.Elements("dnat4_port")[:1]},
	}}); err != nil {
		t.Fatal(err)
	}
	g := newGuard(guardOptions{})
	g.request(healRequest{elements: true, reason: reasonEventsLost})
	g.request(healRequest{reason: "periodic check"})
	e.d.heal(<-g.requests)
	e.holds()
}

// The guard starts after the first batch: a change in between has no
// event, so it checks the table once as soon as it is subscribed (or polls
// without events), without waiting for the periodic check.
func TestGuardChecksAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name  string
		watch func() (eventSource, error)
	}{
		{"subscribed", func() (eventSource, error) { return newFakeEvents(), nil }},
		{"without events", func() (eventSource, error) { return nil, errors.New("no netlink") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newGuard(guardOptions{
				Log: zap.NewNop(), Table: "fwdd", Interval: time.Hour, Watch: tc.watch,
				Blockers: func() ([]nft.Blocker, error) { return nil, nil },
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go func() { _ = g.run(ctx) }()
			select {
			case r := <-g.requests:
				if r.tampered || r.reason != reasonFirstCheck {
					t.Errorf("request %+v, want the first check", r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no check when the guard started")
			}
		})
	}
}

// Without events (the subscription failed) the periodic check still runs.
func TestGuardPollsWithoutEvents(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	g := newGuard(guardOptions{
		Log: zap.New(core), Table: "fwdd", Interval: 20 * time.Millisecond,
		Watch:    func() (eventSource, error) { return nil, errors.New("no netlink") },
		Blockers: func() ([]nft.Blocker, error) { return nil, nil },
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = g.run(ctx) }()
	timeout := time.After(5 * time.Second)
	for periodic := false; !periodic; {
		select {
		case r := <-g.requests:
			if r.tampered || r.reason != reasonFirstCheck && r.reason != "periodic check" {
				t.Errorf("request %+v", r)
			}
			periodic = r.reason == "periodic check"
		case <-timeout:
			t.Fatal("no periodic check")
		}
	}
	if logs.FilterMessage("cannot watch nftables events; the table is checked every interval only").Len() != 1 {
		t.Errorf("logs: %v", logs.All())
	}
}
