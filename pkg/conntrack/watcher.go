// Package conntrack follows the kernel's connection tracking table to count
// the connections of each fwdd forward, and watches how full the table is.
//
// Forwarded connections carry the ct mark ctmark.Tag|id (see pkg/ctmark), so
// a conntrack event or a dumped entry names its forward by itself.
//
// The event socket overflows under bursts (20,000 new flows are enough, even
// with megabytes of buffer): the kernel drops events and the socket returns
// ENOBUFS. ti-mo/conntrack then ends the listener worker that saw it, and its
// Close blocks until every worker has delivered its pending error and event,
// on unbuffered channels. The Watcher therefore always drains both channels,
// closes a failed socket while still draining, listens again and rebuilds its
// live set from a dump. Live sets are keyed by entry (conntrack ID and
// original tuple), so events that
// race with the dump are applied once and the counts converge on the truth.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Defaults of Options.
const (
	DefaultWorkers    = 4
	DefaultReadBuffer = 16 << 20
)

// closeTimeout bounds how long a failed socket may take to close. Past it
// the socket and its workers are abandoned rather than hanging Run.
const closeTimeout = 5 * time.Second

// Options configure a Watcher. The zero value watches the current network
// namespace with defaults.
type Options struct {
	// NetNS is an open network namespace fd to watch; 0 means the current one.
	// The caller keeps it open while the Watcher runs.
	NetNS int
	// Log receives the Watcher's messages; nil means none.
	Log *zap.Logger
	// Workers is the number of event decoders (default DefaultWorkers).
	Workers uint8
	// ReadBuffer is the event socket's receive buffer in bytes, forced past
	// net.core.rmem_max (fwdd runs with CAP_NET_ADMIN); default
	// DefaultReadBuffer.
	ReadBuffer int
	// OnNew, when set, is called for each new connection of a fwdd forward,
	// from the goroutine that consumes events: it must not block. The daemon
	// logs the connections of forwards configured with log = true here.
	OnNew func(NewConn)
}

// NewConn is a new connection of a forward, from its conntrack NEW event.
type NewConn struct {
	Forward   string // name from SetForwards, or "#<id>" when unknown
	ForwardID uint32
	Proto     uint8 // 6 tcp, 17 udp
	// Source and Destination are the original direction: the client and the
	// address it connected to.
	Source, Destination netip.AddrPort
	// Backend is where the connection went after DNAT: the reply direction's
	// source.
	Backend netip.AddrPort
}

// ForwardStats are one forward's connection counts.
type ForwardStats struct {
	ID uint32
	// Live is the number of conntrack entries the forward holds now.
	Live int
	// New counts the forward's new connections since the Watcher started.
	// After an overflow it includes the connections found by the resync that
	// were not announced; connections that began and ended while events were
	// lost are not counted.
	New uint64
}

// Stats is a Watcher's view at one moment.
type Stats struct {
	// Forwards by name; forward IDs not in the SetForwards table appear as
	// "#<id>". Forwards in the table appear even with zero counts.
	Forwards map[string]ForwardStats
	// Overflows counts event socket overflows (ENOBUFS), each followed by a
	// resync.
	Overflows uint64
	// Restarts counts event listeners restarted for any reason, overflows
	// included.
	Restarts uint64
}

// conn is the part of *ct.Conn the Watcher uses; tests substitute it.
type conn interface {
	Listen(chan<- ct.Event, uint8, []netfilter.NetlinkGroup) (chan error, error)
	DumpFilter(ct.Filter, *ct.DumpOptions) ([]ct.Flow, error)
	SetReadBuffer(int) error
	Close() error
}

// Watcher follows conntrack events and keeps per-forward counts. Create it
// with New, run it with Run.
type Watcher struct {
	opts  Options
	log   *zap.Logger
	dial  func(netns int) (conn, error)
	state *state
	names atomic.Pointer[map[uint32]string]

	overflows atomic.Uint64
	restarts  atomic.Uint64

	ready     chan struct{}
	readyOnce sync.Once

	// retry delays after a failure; variables for tests.
	retryMin, retryMax time.Duration
}

// New returns a Watcher; it does nothing until Run.
func New(opts Options) *Watcher {
	if opts.Workers == 0 {
		opts.Workers = DefaultWorkers
	}
	if opts.ReadBuffer == 0 {
		opts.ReadBuffer = DefaultReadBuffer
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	w := &Watcher{
		opts:     opts,
		log:      log,
		state:    newState(),
		ready:    make(chan struct{}),
		retryMin: 100 * time.Millisecond,
		retryMax: 30 * time.Second,
		dial: func(netns int) (conn, error) {
			return ct.Dial(&netlink.Config{NetNS: netns})
		},
	}
	w.names.Store(&map[uint32]string{})
	return w
}

// SetForwards replaces the table of forward names by forward ID (the id in
// the ct mark). Call it whenever the configuration changes; it is safe
// while Run runs. The Watcher keeps a copy.
func (w *Watcher) SetForwards(names map[uint32]string) {
	m := make(map[uint32]string, len(names))
	for id, n := range names {
		m[id] = n
	}
	w.names.Store(&m)
}

func (w *Watcher) name(id uint32) string {
	if n, ok := (*w.names.Load())[id]; ok {
		return n
	}
	return "#" + strconv.FormatUint(uint64(id), 10)
}

// Ready is closed once the Watcher has subscribed to events and loaded the
// table for the first time.
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Snapshot returns the current counts; safe for concurrent use.
func (w *Watcher) Snapshot() Stats {
	counts := w.state.snapshot()
	names := *w.names.Load()
	st := Stats{
		Forwards:  make(map[string]ForwardStats, len(counts)+len(names)),
		Overflows: w.overflows.Load(),
		Restarts:  w.restarts.Load(),
	}
	for id, n := range names {
		st.Forwards[n] = ForwardStats{ID: id}
	}
	for id, c := range counts {
		if c.live == 0 && c.new == 0 {
			if _, named := names[id]; !named {
				continue
			}
		}
		st.Forwards[w.name(id)] = ForwardStats{ID: id, Live: c.live, New: c.new}
	}
	return st
}

// TopLive returns up to n forwards holding the most conntrack entries, most
// first (ties by name).
func (s Stats) TopLive(n int) []NamedStats {
	var all []NamedStats
	for name, f := range s.Forwards {
		if f.Live > 0 {
			all = append(all, NamedStats{Name: name, ForwardStats: f})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].Live != all[j].Live {
			return all[i].Live > all[j].Live
		}
		return all[i].Name < all[j].Name
	})
	if len(all) > n {
		all = all[:n]
	}
	return all
}

// NamedStats is a forward's stats with its name.
type NamedStats struct {
	Name string
	ForwardStats
}

// Run follows events until ctx is done, then returns nil. If the first
// subscription or dump fails it returns that error (a daemon that cannot
// watch conntrack at all is misconfigured); later failures, overflows
// included, are logged and repaired by listening again and resyncing, so
// Run never gives up and never hangs once started.
func (w *Watcher) Run(ctx context.Context) error {
	delay := w.retryMin
	started := false
	for {
		sess, err := w.start(ctx, !started)
		if ctx.Err() != nil {
			if sess != nil {
				sess.close(w.log)
			}
			return nil
		}
		if err != nil {
			if !started {
				return err
			}
			w.log.Error("conntrack watcher failed to restart; retrying", zap.Error(err), zap.Duration("retryIn", delay))
		} else {
			if !started {
				started = true
				w.readyOnce.Do(func() { close(w.ready) })
			}
			since := time.Now()
			select {
			case <-ctx.Done():
				sess.close(w.log)
				return nil
			case err = <-sess.failed:
			}
			w.restarts.Add(1)
			if errors.Is(err, unix.ENOBUFS) {
				n := w.overflows.Add(1)
				w.log.Warn("conntrack events overflowed; resynchronizing from a dump",
					zap.Uint64("overflows", n))
			} else {
				w.log.Error("conntrack event listener failed; restarting", zap.Error(err))
			}
			sess.close(w.log)
			if time.Since(since) > 10*time.Second {
				// The last session was healthy for a while: restart at once.
				delay = 0
			}
		}
		if delay > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
		} else if ctx.Err() != nil {
			return nil
		}
		delay = min(max(2*delay, w.retryMin), w.retryMax)
	}
}

// session is one event subscription.
type session struct {
	c      conn
	events chan ct.Event
	errs   chan error
	failed chan error // first listener error
	stop   chan struct{}
	wg     sync.WaitGroup
}

// start subscribes to events and rebuilds the live set from a dump.
func (w *Watcher) start(ctx context.Context, initial bool) (*session, error) {
	w.state.beginResync()
	c, err := w.dial(w.opts.NetNS)
	if err != nil {
		w.state.abortResync()
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	if err := c.SetReadBuffer(w.opts.ReadBuffer); err != nil {
		w.log.Warn("cannot set conntrack event buffer size", zap.Int("bytes", w.opts.ReadBuffer), zap.Error(err))
	}
	s := &session{
		c:      c,
		events: make(chan ct.Event, 4096),
		failed: make(chan error, 1),
		stop:   make(chan struct{}),
	}
	s.errs, err = c.Listen(s.events, w.opts.Workers, []netfilter.NetlinkGroup{netfilter.GroupCTNew, netfilter.GroupCTDestroy})
	if err != nil {
		c.Close()
		w.state.abortResync()
		return nil, fmt.Errorf("listen for conntrack events: %w", err)
	}
	s.wg.Add(2)
	go func() { defer s.wg.Done(); w.pump(s) }()
	go func() {
		defer s.wg.Done()
		for {
			select {
			case err := <-s.errs:
				select {
				case s.failed <- err:
				default: // already failing; later errors are the other workers'
				}
			case <-s.stop:
				return
			}
		}
	}()

	t0 := time.Now()
	dumped, err := w.dump(ctx)
	if err != nil {
		w.state.abortResync()
		s.close(w.log)
		return nil, err
	}
	n := len(dumped) // the state owns dumped from here on
	drift := w.state.finishResync(dumped, initial)
	w.log.Debug("conntrack resynchronized", zap.Int("count", n),
		zap.Int("drift", drift), zap.Duration("elapsed", time.Since(t0)))
	return s, nil
}

// dump returns fwdd's conntrack entries (entry -> forward id). It uses its own
// socket: the event socket must not carry dump replies. Cancelling ctx
// closes the socket, which ends a dump in progress.
func (w *Watcher) dump(ctx context.Context) (map[ctKey]uint32, error) {
	c, err := w.dial(w.opts.NetNS)
	if err != nil {
		return nil, fmt.Errorf("dial conntrack for dump: %w", err)
	}
	var closeOnce sync.Once
	closeConn := func() { closeOnce.Do(func() { c.Close() }) }
	defer closeConn()
	stop := context.AfterFunc(ctx, closeConn)
	defer stop()
	flows, err := c.DumpFilter(ct.NewFilter().Mark(ctmark.Tag).MarkMask(ctmark.Mask), nil)
	if err != nil {
		return nil, fmt.Errorf("dump conntrack table: %w", err)
	}
	out := make(map[ctKey]uint32, len(flows))
	for i := range flows {
		if id, ok := ctmark.ID(flows[i].Mark); ok {
			out[keyOf(&flows[i])] = id
		}
	}
	return out, nil
}

// pump feeds events to the state until the session stops.
func (w *Watcher) pump(s *session) {
	for {
		select {
		case e := <-s.events:
			w.handle(e)
		case <-s.stop:
			for {
				select {
				case e := <-s.events:
					w.handle(e)
				default:
					return
				}
			}
		}
	}
}

func (w *Watcher) handle(e ct.Event) {
	if e.Flow == nil {
		return
	}
	var kind evKind
	switch e.Type {
	case ct.EventNew:
		kind = evNew
	case ct.EventDestroy:
		kind = evDestroy
	default:
		return
	}
	fwd, _ := ctmark.ID(e.Flow.Mark)
	w.state.event(ev{kind: kind, key: keyOf(e.Flow), fwdID: fwd})
	if kind == evNew && fwd != 0 && w.opts.OnNew != nil {
		f := e.Flow
		w.opts.OnNew(NewConn{
			Forward:     w.name(fwd),
			ForwardID:   fwd,
			Proto:       f.TupleOrig.Proto.Protocol,
			Source:      netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort),
			Destination: netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
			Backend:     netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort),
		})
	}
}

func keyOf(f *ct.Flow) ctKey {
	o := &f.TupleOrig
	return ctKey{
		id:    f.ID,
		proto: o.Proto.Protocol,
		zone:  f.Zone,
		src:   netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort),
		dst:   netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort),
	}
}

// close closes the socket while the session's goroutines keep draining
// events and errors, without which the library's Close never returns.
func (s *session) close(log *zap.Logger) {
	done := make(chan struct{})
	go func() {
		if err := s.c.Close(); err != nil {
			log.Debug("close conntrack socket", zap.Error(err))
		}
		close(done)
	}()
	select {
	case <-done:
		close(s.stop)
		s.wg.Wait()
	case <-time.After(closeTimeout):
		// Keep draining in the background until Close returns, so the
		// abandoned workers can still finish.
		log.Error("conntrack socket did not close in time; abandoning it", zap.Duration("waited", closeTimeout))
		go func() {
			<-done
			close(s.stop)
		}()
	}
}
