// Package health checks the backends of fwdd's forwards.
//
// A Checker runs the checks of any number of backends from the daemon's own
// network namespace (the gateway's): one scheduler goroutine keeps the
// targets in a heap ordered by when each is due and starts a goroutine for
// each due check, so 1,000 backends checked every 2 s cost the checks in
// flight, not 1,000 goroutines. A target has at most one check in
// flight; the next one is due Interval (with a few percent of jitter, so
// targets added together drift apart) after the previous one ended, which is
// what HAProxy's inter means. A slow round therefore delays checks rather
// than piling them up.
//
// Every backend starts up (HAProxy's init-state fully-up): a reload or a
// restart never takes a backend out before it has failed Fall checks. Each
// change of state is reported once, through Options.OnChange, from one
// goroutine in the order the changes happened.
//
// No library does this: HAProxy's and keepalived's checkers are programs,
// and Go's health-check packages check the caller's own dependencies rather
// than thousands of remote addresses on a schedule.
package health

import (
	"container/heap"
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// DefaultWorkers is how many checks may run at once when Options.Workers
// is 0. A check that answers takes well under a millisecond, but one that
// times out holds its place for the whole timeout: with fewer places than
// backends that time out together (a partition, a switch gone), the checks
// queue, and every forward's backends, not only theirs, are taken out and
// back late (with 32 places, 600 unreachable backends delayed noticing
// another one down from 0.6 s to 5 s). A check in flight holds one socket.
const DefaultWorkers = 4096

// jitter is the fraction by which each interval is randomly shortened or
// lengthened.
const jitter = 0.05

// Key names one backend of one forward.
type Key struct {
	Forward string
	Backend netip.AddrPort
}

func (k Key) String() string { return k.Forward + "/" + k.Backend.String() }

// Target is a backend to check and how.
type Target struct {
	Key
	Spec Spec
}

// Result is the outcome of one check.
type Result struct {
	OK     bool
	Reason string // "connected", "refused", "timeout", "http status 500", ...
	Err    string // the error, when not OK
	At     time.Time
	Took   time.Duration
}

// Change is a backend going up or down.
type Change struct {
	Key
	Up     bool
	Result Result // the check that decided it
}

// Status is what the Checker knows of one backend.
type Status struct {
	Up      bool
	Checked bool   // at least one check has ended
	Last    Result // the last check, if Checked
	Checks  uint64 // checks run
	Changes uint64 // times it went up or down
}

// Options configure a Checker.
type Options struct {
	// Workers is the number of checks that may run at once (default
	// DefaultWorkers).
	Workers int
	// Dial opens check connections (default: a net.Dialer in the current
	// network namespace).
	Dial DialFunc
	// OnChange is called once for every change of state, from a single
	// goroutine, in order. It may block (e.g. to program the kernel);
	// later changes wait.
	OnChange func(Change)
	// Log receives one line per change (nil: none).
	Log *zap.Logger
}

// Checker checks backends on a schedule. Create it with New, give it
// targets with Set, and call Run.
type Checker struct {
	opts   Options
	prober *prober

	mu      sync.Mutex
	targets map[Key]*target
	due     dueHeap
	changes []Change // waiting for OnChange

	wake    chan struct{} // the heap's head changed
	notify  chan struct{} // changes waiting
	running chan struct{} // closed when Run started
	once    sync.Once
}

type target struct {
	Target
	status    Status
	good, bad int // consecutive results
	next      time.Time
	inFlight  bool
	index     int // in the heap; -1 when not in it
}

// New returns a Checker with no targets.
func New(opts Options) *Checker {
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	return &Checker{
		opts:    opts,
		prober:  newProber(opts.Dial),
		targets: map[Key]*target{},
		wake:    make(chan struct{}, 1),
		notify:  make(chan struct{}, 1),
		running: make(chan struct{}),
	}
}

// Set replaces the set of targets. Targets whose Key stays keep their state
// (a changed Spec applies from the next check on); new ones start up and
// are first checked at a random point within their first interval, so that
// many targets do not all fire at once. Targets with KindNone are not
// checked and always up.
func (c *Checker) Set(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	keep := make(map[Key]bool, len(targets))
	for _, tg := range targets {
		tg.Spec = tg.Spec.withDefaults()
		if tg.Spec.Kind == KindNone {
			continue
		}
		keep[tg.Key] = true
		if t, ok := c.targets[tg.Key]; ok {
			if t.Spec != tg.Spec {
				t.Spec = tg.Spec
				t.good, t.bad = 0, 0
				c.schedule(t, now.Add(randDuration(tg.Spec.Interval)))
			}
			continue
		}
		t := &target{Target: tg, status: Status{Up: true}, index: -1}
		c.targets[tg.Key] = t
		c.schedule(t, now.Add(randDuration(tg.Spec.Interval)))
	}
	for k, t := range c.targets {
		if !keep[k] {
			if t.index >= 0 {
				heap.Remove(&c.due, t.index)
			}
			delete(c.targets, k)
		}
	}
	c.poke(c.wake)
}

// Status returns the state of every checked backend.
func (c *Checker) Status() map[Key]Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[Key]Status, len(c.targets))
	for k, t := range c.targets {
		out[k] = t.status
	}
	return out
}

// Up reports whether a backend is up. Backends that are not checked are.
func (c *Checker) Up(k Key) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.targets[k]
	return !ok || t.status.Up
}

// Running is closed once Run has started.
func (c *Checker) Running() <-chan struct{} { return c.running }

// Run checks until ctx is done; it returns nil then. Checks in flight are
// cancelled and waited for.
func (c *Checker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	places := make(chan struct{}, c.opts.Workers) // the checks in flight
	var wg sync.WaitGroup
	wg.Go(func() { c.deliver(ctx) })
	c.once.Do(func() { close(c.running) })

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		c.mu.Lock()
		now := time.Now()
		var ready []*target
		for c.due.Len() > 0 && !c.due[0].next.After(now) {
			t := heap.Pop(&c.due).(*target)
			t.inFlight = true
			ready = append(ready, t)
		}
		wait := time.Hour
		if c.due.Len() > 0 {
			wait = c.due[0].next.Sub(now)
		}
		c.mu.Unlock()

		for _, t := range ready {
			select {
			case places <- struct{}{}:
				wg.Go(func() {
					c.check(ctx, t)
					<-places
				})
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			wg.Wait()
			return nil
		}
		if len(ready) > 0 {
			continue // handing out took time: look again
		}
		timer.Reset(wait)
		select {
		case <-timer.C:
		case <-c.wake:
			if !timer.Stop() {
				<-timer.C
			}
		case <-ctx.Done():
			wg.Wait()
			return nil
		}
	}
}

// check runs one check of t and records it.
func (c *Checker) check(ctx context.Context, t *target) {
	c.mu.Lock()
	spec, addr := t.Spec, t.Backend
	c.mu.Unlock()
	if ctx.Err() != nil {
		return
	}
	start := time.Now()
	reason, err := c.prober.probe(ctx, spec, addr)
	if ctx.Err() != nil {
		return // stopping: a cancelled check says nothing of the backend
	}
	r := Result{OK: err == nil, Reason: reason, At: start, Took: time.Since(start)}
	if err != nil {
		r.Err = err.Error()
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	t.inFlight = false
	if c.targets[t.Key] != t {
		return // removed meanwhile
	}
	t.status.Checked, t.status.Last = true, r
	t.status.Checks++
	if r.OK {
		t.good, t.bad = t.good+1, 0
	} else {
		t.good, t.bad = 0, t.bad+1
	}
	switch {
	case t.status.Up && t.bad >= t.Spec.Fall:
		c.change(t, false, r)
	case !t.status.Up && t.good >= t.Spec.Rise:
		c.change(t, true, r)
	}
	c.schedule(t, time.Now().Add(jittered(t.Spec.Interval)))
	if t.index == 0 {
		c.poke(c.wake) // it is due before whatever the scheduler waits for
	}
}

// change records a change of t's state; c.mu is held.
func (c *Checker) change(t *target, up bool, r Result) {
	t.status.Up = up
	t.status.Changes++
	t.good, t.bad = 0, 0
	c.changes = append(c.changes, Change{Key: t.Key, Up: up, Result: r})
	c.poke(c.notify)
}

// deliver calls OnChange for each change, in order, until ctx is done.
func (c *Checker) deliver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.notify:
		}
		c.mu.Lock()
		batch := c.changes
		c.changes = nil
		c.mu.Unlock()
		for _, ch := range batch {
			// The line follows the callback, so it tells of a change
			// already in force.
			if c.opts.OnChange != nil {
				c.opts.OnChange(ch)
			}
			state, level := "up", zap.InfoLevel
			if !ch.Up {
				state, level = "down", zap.WarnLevel
			}
			c.opts.Log.Check(level, "backend "+state).Write(
				zap.String("forward", ch.Forward),
				zap.Stringer("backend", ch.Backend),
				zap.String("reason", ch.Result.Reason),
				zap.String("error", ch.Result.Err),
			)
		}
	}
}

// schedule (re)inserts t to be due at next; c.mu is held. A target with a
// check in flight is rescheduled when that check ends.
func (c *Checker) schedule(t *target, next time.Time) {
	t.next = next
	if t.inFlight {
		return
	}
	if t.index >= 0 {
		heap.Fix(&c.due, t.index)
		return
	}
	heap.Push(&c.due, t)
}

func (c *Checker) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// jittered returns d shortened or lengthened by up to jitter.
func jittered(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 - jitter + 2*jitter*rand.Float64()))
}

// randDuration returns a random duration in [0, d).
func randDuration(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// dueHeap orders targets by when they are due.
type dueHeap []*target

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *dueHeap) Push(x any) {
	t := x.(*target)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *dueHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	t.index = -1
	*h = old[:len(old)-1]
	return t
}
