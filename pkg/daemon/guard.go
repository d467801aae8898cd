package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/nft"
)

// The guard watches the namespace's nftables events. Another process
// deleting, flushing or editing fwdd's table makes the daemon re-apply the
// whole table in one batch; another table's forward chain starting to drop
// fwdd's connections is logged with the rule that lets them through. A
// periodic check of the table backs up the events (they can be lost when
// the socket overflows). The guard starts after the first batch, so it
// checks the table once as soon as it watches (subscribed, or polling when
// it cannot): a change made between that batch and the subscription has no
// event to report it.

// eventSource is nft.Events (an interface for tests).
type eventSource interface {
	Next() (nft.Commit, error)
	Close() error
}

// healRequest asks the daemon's loop to re-apply the table (tampered) or to
// check it first (after lost events or on the periodic check).
type healRequest struct {
	tampered bool
	// elements: the check reads every element (after lost events, which
	// may have been element edits), not only chains, rules and sets.
	elements bool
	reason   string
}

// rank orders requests by what they make the daemon read: a re-apply and
// a check of the elements read the whole table, a check without elements
// only its chains, rules and sets.
func (r healRequest) rank() int {
	switch {
	case r.tampered:
		return 2
	case r.elements:
		return 1
	}
	return 0
}

type guardOptions struct {
	Log   *zap.Logger
	Table string
	// Watch subscribes to the events.
	Watch func() (eventSource, error)
	// Blockers lists other tables' chains that drop fwdd's connections.
	Blockers func() ([]nft.Blocker, error)
	// Interval of the periodic check (default DefaultCheckInterval).
	Interval time.Duration
	// OnBlockers is called with the number of blocking chains (a metric).
	OnBlockers func(int)
}

// DefaultCheckInterval is how often the table is compared with the model
// when no event says it changed.
const DefaultCheckInterval = 30 * time.Second

// blockerSettle lets a burst of rule changes in other tables (a firewall
// reload) finish before their forward chains are judged.
const blockerSettle = 100 * time.Millisecond

type guard struct {
	opts     guardOptions
	requests chan healRequest
	ready    chan struct{}

	mu       sync.Mutex
	blockers []nft.Blocker
}

func newGuard(opts guardOptions) *guard {
	if opts.Interval == 0 {
		opts.Interval = DefaultCheckInterval
	}
	return &guard{opts: opts, requests: make(chan healRequest, 1), ready: make(chan struct{})}
}

// Blockers returns the other tables' chains that drop fwdd's connections,
// as of the latest check.
func (g *guard) Blockers() []nft.Blocker {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.blockers)
}

// request queues r for the daemon's loop. One request is pending at most:
// the stronger of r and the pending one stays (a check never replaces a
// re-apply, a check without elements never one with them), and of two
// alike the newer.
func (g *guard) request(r healRequest) {
	for {
		select {
		case g.requests <- r:
			return
		case old := <-g.requests:
			if old.rank() > r.rank() {
				r = old
			}
		}
	}
}

// tampered returns the changes a commit made to fwdd's table (inet table),
// unless fwdd committed it itself.
func tampered(c nft.Commit, table string) []nft.Change {
	if c.FromThisProcess() {
		return nil
	}
	var out []nft.Change
	for _, ch := range c.Changes {
		if ch.Family == "inet" && ch.Table == table {
			out = append(out, ch)
		}
	}
	return out
}

// touchesOtherFilters reports whether a commit changed chains or rules of
// tables that can filter forwarded IP traffic, other than fwdd's.
func touchesOtherFilters(c nft.Commit, table string) bool {
	for _, ch := range c.Changes {
		if ch.Family == "inet" && ch.Table == table {
			continue
		}
		if (ch.Family == "ip" || ch.Family == "ip6" || ch.Family == "inet") &&
			(ch.Object == "chain" || ch.Object == "rule" || ch.Object == "table") {
			return true
		}
	}
	return false
}

// objectOrder puts the changes that explain the rest first: a deleted
// table takes its chains, sets and rules with it.
var objectOrder = map[string]int{"table": 0, "chain": 1, "set": 2, "object": 3, "rule": 4, "element": 5}

func describe(changes []nft.Change) []string {
	const most = 10
	changes = slices.Clone(changes)
	slices.SortStableFunc(changes, func(a, b nft.Change) int { return objectOrder[a.Object] - objectOrder[b.Object] })
	out := make([]string, 0, min(len(changes), most+1))
	for i, c := range changes {
		if i == most {
			out = append(out, fmt.Sprintf("... %d more", len(changes)-most))
			break
		}
		out = append(out, c.String())
	}
	return out
}

func (g *guard) run(ctx context.Context) error {
	src, err := g.opts.Watch()
	if err != nil {
		close(g.ready)
		g.opts.Log.Warn("cannot watch nftables events; the table is checked every interval only",
			zap.Error(err), zap.Duration("interval", g.opts.Interval))
		return g.poll(ctx)
	}
	commits := make(chan nft.Commit, 64)
	lost := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		for {
			c, err := src.Next()
			switch {
			case errors.Is(err, nft.ErrEventsLost):
				select {
				case lost <- struct{}{}:
				default:
				}
				continue
			case err != nil:
				done <- err
				return
			}
			select {
			case commits <- c:
			case <-ctx.Done():
				done <- nil
				return
			}
		}
	}()
	defer func() { _ = src.Close() }()
	g.request(healRequest{reason: reasonFirstCheck}) // events cover what follows
	g.checkBlockers()
	close(g.ready)
	tick := time.NewTicker(g.opts.Interval)
	defer tick.Stop()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			if ctx.Err() != nil {
				return nil
			}
			g.opts.Log.Warn("nftables event watch ended; the table is checked every interval only", zap.Error(err))
			return g.poll(ctx)
		case c := <-commits:
			if changes := tampered(c, g.opts.Table); len(changes) > 0 {
				g.opts.Log.Warn("table changed behind fwdd's back; re-applying it",
					zap.String("table", "inet "+g.opts.Table), zap.Strings("changes", describe(changes)),
					zap.Int("numChanges", len(changes)), zap.Uint32("writerPid", c.PID), zap.String("writer", c.Comm),
					zap.Uint32("generation", c.Gen))
				g.request(healRequest{tampered: true, reason: fmt.Sprintf("%s by %s (pid %d)", describe(changes)[0], c.Comm, c.PID)})
			}
			if touchesOtherFilters(c, g.opts.Table) && settle == nil {
				settle = time.After(blockerSettle)
			}
		case <-lost:
			g.opts.Log.Warn("nftables events lost; checking the table")
			g.request(healRequest{elements: true, reason: reasonEventsLost})
			settle = time.After(blockerSettle)
		case <-settle:
			settle = nil
			g.checkBlockers()
		case <-tick.C:
			g.request(healRequest{reason: "periodic check"})
		}
	}
}

// poll is the guard without events: the periodic check alone, and one
// check at once (nothing reports what changed before).
func (g *guard) poll(ctx context.Context) error {
	g.request(healRequest{reason: reasonFirstCheck})
	tick := time.NewTicker(g.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			g.request(healRequest{reason: "periodic check"})
			g.checkBlockers()
		}
	}
}

// checkBlockers lists the other tables' chains that drop fwdd's connections
// and warns once about each new one.
func (g *guard) checkBlockers() {
	bs, err := g.opts.Blockers()
	if err != nil {
		g.opts.Log.Debug("cannot list other tables' chains", zap.Error(err))
		return
	}
	g.mu.Lock()
	old := g.blockers
	g.blockers = bs
	g.mu.Unlock()
	for _, b := range bs {
		if slices.Contains(old, b) {
			continue
		}
		g.opts.Log.Warn("another firewall drops fwdd's forwarded connections; add the rule that lets them through",
			zap.String("chain", fmt.Sprintf("table %s %s chain %s", b.Family, b.Table, b.Chain)),
			zap.String("reason", b.Reason), zap.String("allow", b.Allow))
	}
	for _, b := range old {
		if !slices.Contains(bs, b) {
			g.opts.Log.Info("another firewall no longer drops fwdd's connections",
				zap.String("chain", fmt.Sprintf("table %s %s chain %s", b.Family, b.Table, b.Chain)))
		}
	}
	if g.opts.OnBlockers != nil {
		g.opts.OnBlockers(len(bs))
	}
}

// reasonEventsLost is the reason of the check after an event overflow.
const reasonEventsLost = "events lost"

// reasonFirstCheck is the reason of the check when the guard starts
// watching (subscribed to events, or polling without them).
const reasonFirstCheck = "first check"
