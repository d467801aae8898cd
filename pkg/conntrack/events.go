// Package conntrack reads the kernel's connection tracking table for fwdd:
// live connections per forward on demand (a dump the kernel filters by
// fwdd's ct mark), how full the table is, and the new connections of the
// forwards whose connections are logged.
//
// Forwarded connections carry the ct mark ctmark.Tag|id (see pkg/ctmark), so
// a conntrack entry or event names its forward by itself.
//
// Nothing here runs per connection unless a forward has log = true: new
// connections are counted by the kernel (pkg/nft), live ones are counted
// when asked. For logged forwards an event socket is opened with a socket
// filter that passes only NEW events whose mark is one of theirs, so the
// connections of other forwards never reach user space.
//
// The event socket overflows under bursts (the kernel drops events and the
// socket returns ENOBUFS). Nothing is derived from the events but log
// lines, so an overflow is counted and reading goes on: no resync needed.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"go.uber.org/zap"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// DefaultReadBuffer is the event socket's receive buffer.
const DefaultReadBuffer = 4 << 20

// Options configure a Watcher. The zero value watches the current network
// namespace with defaults.
type Options struct {
	// NetNS is an open network namespace fd to watch; 0 means the current one.
	// The caller keeps it open while the Watcher runs.
	NetNS int
	// Log receives the Watcher's messages; nil means none.
	Log *zap.Logger
	// ReadBuffer is the event socket's receive buffer in bytes, forced past
	// net.core.rmem_max (fwdd runs with CAP_NET_ADMIN); default
	// DefaultReadBuffer.
	ReadBuffer int
	// OnNew is called for each new connection of a watched forward, from
	// the Watcher's goroutine: it must not block.
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
	Live
}

// Stats are connection counts by forward name.
type Stats struct {
	Forwards map[string]ForwardStats
}

// TopLive returns up to n forwards holding the most conntrack entries, most
// first (ties by name).
func (s Stats) TopLive(n int) []NamedStats {
	var all []NamedStats
	for name, f := range s.Forwards {
		if f.Total > 0 {
			all = append(all, NamedStats{Name: name, ForwardStats: f})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].Total != all[j].Total {
			return all[i].Total > all[j].Total
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

// maxFilterMarks is how many marks the socket filter compares one by one
// (two instructions each; the kernel allows 4096). With more watched
// forwards the filter passes every fwdd mark and the rest is dropped here.
const maxFilterMarks = 1500

// Watcher delivers the new connections of chosen forwards. Create it with
// New, run it with Run, choose forwards with SetForwards.
type Watcher struct {
	opts Options
	log  *zap.Logger

	mu      sync.Mutex
	names   map[uint32]string
	watched map[uint32]bool
	layout  ctmark.Layout
	changed chan struct{} // signalled by SetForwards

	overflows atomic.Uint64
	received  atomic.Uint64

	ready     chan struct{}
	readyOnce sync.Once

	// listen opens the event socket (openSocket; replaced in tests). After
	// a failure it is tried again after retryMin, then twice as long each
	// time up to retryMax.
	listen             func() (*eventSocket, error)
	retryMin, retryMax time.Duration
}

// New returns a Watcher; it does nothing until Run.
func New(opts Options) *Watcher {
	if opts.ReadBuffer == 0 {
		opts.ReadBuffer = DefaultReadBuffer
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	w := &Watcher{opts: opts, log: log, names: map[uint32]string{}, watched: map[uint32]bool{}, layout: ctmark.Default,
		changed: make(chan struct{}, 1), ready: make(chan struct{}), retryMin: time.Second, retryMax: time.Minute}
	w.listen = w.openSocket
	return w
}

// SetForwards sets the forward names (id -> name) and the ids whose new
// connections are delivered; safe while Run runs. With none watched the
// Watcher holds no socket at all.
func (w *Watcher) SetForwards(names map[uint32]string, watched []uint32) {
	n := make(map[uint32]string, len(names))
	for id, name := range names {
		n[id] = name
	}
	ws := make(map[uint32]bool, len(watched))
	for _, id := range watched {
		ws[id] = true
	}
	w.mu.Lock()
	w.names, w.watched = n, ws
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// SetLayout sets the ct mark layout of the config in force; call it before
// SetForwards.
func (w *Watcher) SetLayout(l ctmark.Layout) {
	w.mu.Lock()
	w.layout = l
	w.mu.Unlock()
}

func (w *Watcher) forwards() (map[uint32]string, map[uint32]bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.names, w.watched
}

func (w *Watcher) markLayout() ctmark.Layout {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.layout
}

// Ready is closed once the Watcher listens for the forwards set before Run
// (at once when there are none).
func (w *Watcher) Ready() <-chan struct{} { return w.ready }

// Overflows counts event socket overflows: events the kernel dropped.
func (w *Watcher) Overflows() uint64 { return w.overflows.Load() }

// Received counts the events that passed the socket filter.
func (w *Watcher) Received() uint64 { return w.received.Load() }

// Run delivers events until ctx is done, then returns nil. If the first
// subscription fails it returns that error; later failures are logged and
// retried, after 1 s and then twice as long each time, up to 1 min.
func (w *Watcher) Run(ctx context.Context) error {
	var sock *eventSocket
	defer func() {
		if sock != nil {
			sock.close()
		}
	}()
	first := true
	var retry <-chan time.Time // set while waiting to listen again
	var delay time.Duration    // the last wait before listening again
	failures := 0              // listens failed in a row
	for {
		_, watched := w.forwards()
		switch {
		case len(watched) == 0:
			if sock != nil {
				sock.close()
				sock = nil
			}
			retry, delay, failures = nil, 0, 0
		case sock == nil && retry == nil:
			var err error
			if sock, err = w.listen(); err != nil {
				sock = nil
				if first {
					return err
				}
				delay = min(max(2*delay, w.retryMin), w.retryMax)
				retry = time.After(delay)
				if failures++; failures == 1 {
					w.log.Error("cannot listen for conntrack events; connections are not logged until it works again",
						zap.Error(err), zap.Duration("retryIn", delay))
				}
				break
			}
			if failures > 0 {
				w.log.Info("listening for conntrack events again", zap.Int("failedAttempts", failures))
			}
			delay, failures = 0, 0
		case sock != nil:
			if err := sock.setFilter(w.markLayout(), watched); err != nil {
				w.log.Error("cannot filter conntrack events", zap.Error(err))
			}
		}
		if first {
			first = false
			w.readyOnce.Do(func() { close(w.ready) })
		}
		var failed <-chan error
		if sock != nil {
			failed = sock.failed
		}
		select {
		case <-ctx.Done():
			return nil
		case <-w.changed:
		case <-retry:
			retry = nil
		case err := <-failed:
			w.log.Error("conntrack event socket failed; listening again", zap.Error(err))
			sock.close()
			sock = nil
			delay = w.retryMin
			retry = time.After(delay)
		}
	}
}

// eventSocket is one subscription to conntrack NEW events.
type eventSocket struct {
	c       *netlink.Conn
	failed  chan error
	done    chan struct{}
	closing atomic.Bool
}

// openSocket opens the event socket with the filter of the watched forwards
// and starts reading it.
//
// ti-mo/conntrack's Listen cannot attach a socket filter, so the socket is
// opened with mdlayher/netlink and each message decoded by ct.Event.
func (w *Watcher) openSocket() (*eventSocket, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: w.opts.NetNS})
	if err != nil {
		return nil, fmt.Errorf("dial conntrack: %w", err)
	}
	s := &eventSocket{c: c, failed: make(chan error, 1), done: make(chan struct{})}
	_, watched := w.forwards()
	if err := s.setFilter(w.markLayout(), watched); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.SetReadBuffer(w.opts.ReadBuffer); err != nil {
		w.log.Warn("cannot set conntrack event buffer size", zap.Int("bytes", w.opts.ReadBuffer), zap.Error(err))
	}
	if err := c.JoinGroup(uint32(netfilter.GroupCTNew)); err != nil {
		c.Close()
		return nil, fmt.Errorf("listen for conntrack events: %w", err)
	}
	go w.read(s)
	return s, nil
}

func (s *eventSocket) setFilter(l ctmark.Layout, watched map[uint32]bool) error {
	marks := make([]uint32, 0, len(watched))
	for id := range watched {
		marks = append(marks, l.ForID(id))
	}
	sort.Slice(marks, func(i, j int) bool { return marks[i] < marks[j] })
	prog, err := bpf.Assemble(markFilter(l, marks))
	if err != nil {
		return fmt.Errorf("assemble conntrack event filter: %w", err)
	}
	if err := s.c.SetBPF(prog); err != nil {
		return fmt.Errorf("attach conntrack event filter: %w", err)
	}
	return nil
}

// passAll is a filter's verdict to keep the whole message.
const passAll = 0xffffffff

// markFilter is a classic BPF program for a ctnetlink event socket that
// passes only messages whose CTA_MARK, masked with l.Mask, is one of marks
// (like libnetfilter_conntrack's nfct_filter). The kernel's netlink
// attribute search (SKF_AD_NLATTR) finds the mark among the message's
// attributes.
func markFilter(l ctmark.Layout, marks []uint32) []bpf.Instruction {
	const attrsOffset = unix.NLMSG_HDRLEN + 4 // nlmsghdr, nfgenmsg
	prog := []bpf.Instruction{
		bpf.LoadConstant{Dst: bpf.RegA, Val: attrsOffset},
		bpf.LoadConstant{Dst: bpf.RegX, Val: ctaMark},
		bpf.LoadExtension{Num: bpf.ExtNetlinkAttr}, // A = offset of CTA_MARK, or 0
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipFalse: 1},
		bpf.RetConstant{Val: 0}, // no mark: not fwdd's
		bpf.TAX{},
		bpf.LoadIndirect{Off: unix.SizeofNlAttr, Size: 4}, // the mark, big-endian like the packet loads
	}
	if len(marks) > maxFilterMarks {
		return append(prog,
			bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: l.TagMask},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: l.Tag, SkipFalse: 1},
			bpf.RetConstant{Val: passAll},
			bpf.RetConstant{Val: 0},
		)
	}
	if !l.Whole() {
		prog = append(prog, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: l.Mask})
	}
	for _, m := range marks {
		prog = append(prog,
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: m, SkipTrue: 1},
			bpf.RetConstant{Val: passAll},
		)
	}
	return append(prog, bpf.RetConstant{Val: 0})
}

// read decodes events until the socket is closed.
func (w *Watcher) read(s *eventSocket) {
	defer close(s.done)
	for {
		msgs, err := s.c.Receive()
		if err != nil {
			if errors.Is(err, unix.ENOBUFS) {
				// Events were lost; the socket is still good.
				if n := w.overflows.Add(1); n == 1 || n%100 == 0 {
					w.log.Warn("conntrack events overflowed; some new connections were not logged", zap.Uint64("overflows", n))
				}
				continue
			}
			if s.closing.Load() {
				return
			}
			select {
			case s.failed <- err:
			default:
			}
			return
		}
		for _, m := range msgs {
			w.received.Add(1)
			w.handle(m)
		}
	}
}

func (w *Watcher) handle(m netlink.Message) {
	var e ct.Event
	if err := e.Unmarshal(m); err != nil || e.Flow == nil || e.Type != ct.EventNew {
		return
	}
	id, ok := w.markLayout().ID(e.Flow.Mark)
	if !ok {
		return
	}
	names, watched := w.forwards()
	if !watched[id] || w.opts.OnNew == nil {
		return
	}
	name, ok := names[id]
	if !ok {
		name = fmt.Sprintf("#%d", id)
	}
	f := e.Flow
	w.opts.OnNew(NewConn{
		Forward:     name,
		ForwardID:   id,
		Proto:       f.TupleOrig.Proto.Protocol,
		Source:      netip.AddrPortFrom(f.TupleOrig.IP.SourceAddress, f.TupleOrig.Proto.SourcePort),
		Destination: netip.AddrPortFrom(f.TupleOrig.IP.DestinationAddress, f.TupleOrig.Proto.DestinationPort),
		Backend:     netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort),
	})
}

func (s *eventSocket) close() {
	s.closing.Store(true)
	s.c.Close()
	<-s.done
}
