package daemon

import (
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/nft"
)

// eventWatcher is a Kernel that reports nftables changes (nft.Netlink).
type eventWatcher interface {
	WatchEvents() (*nft.Events, error)
}

// guardTable returns the guard of the table in force, which watches
// nftables events for the daemon's life (see guard.go).
func (d *Daemon) guardTable() *guard {
	table := d.InForce().Table
	return newGuard(guardOptions{
		Log:      d.log,
		Table:    table,
		Interval: d.opts.CheckInterval,
		Watch: func() (eventSource, error) {
			w, ok := d.opts.Kernel.(eventWatcher)
			if !ok {
				return nil, errNoEvents
			}
			return w.WatchEvents()
		},
		Blockers: func() ([]nft.Blocker, error) {
			// The forwards in force: a reload may add or drop a family.
			return d.opts.Kernel.ForeignBlockers(table, nft.ForwardedBy(d.InForce().Config))
		},
		OnBlockers: d.metrics.Blockers,
	})
}

var errNoEvents = errors.New("this backend reports no nftables events")

// healRequests is where the guard asks the daemon's loop to act; nil (never
// ready) before the guard starts.
func (d *Daemon) healRequests() <-chan healRequest {
	if d.guard == nil {
		return nil
	}
	return d.guard.requests
}

// heal brings the table back to the model in force, in one batch, when
// another process changed it (or, for a check, when it no longer holds what
// fwdd applied). The batch reconciles: what is still as fwdd wrote it (and
// its counters) stays. Established connections keep flowing: their NAT is
// in conntrack.
func (d *Daemon) heal(r healRequest) {
	d.applyMu.Lock() // one batch at a time with reloads and health changes
	defer d.applyMu.Unlock()
	m := d.InForce()
	if m == nil {
		return
	}
	trigger := "event"
	if !r.tampered {
		trigger = "check"
	}
	// The periodic check reads chains, rules and sets only (cheap); the
	// elements are read when something is known or found to differ.
	elements := r.tampered || r.elements
	have, err := d.opts.Kernel.Read(m.Table, elements)
	if err == nil && have.Differs(m) == nil {
		return
	}
	if err == nil && !elements {
		have, err = d.opts.Kernel.Read(m.Table, true)
	}
	if err != nil {
		d.log.Error("cannot read the table; retrying at the next check", zap.String("table", "inet "+m.Table), zap.Error(err))
		return
	}
	why := have.Differs(m)
	if why == nil {
		return
	}
	if !r.tampered {
		d.log.Warn("table differs from what fwdd applied; re-applying it",
			zap.String("table", "inet "+m.Table), zap.String("check", r.reason), zap.Error(why))
	}
	if err := d.opts.Kernel.CheckOwner(m.Table); err != nil {
		d.log.Error("not re-applying the table", zap.Error(err))
		return
	}
	start := time.Now()
	st, err := d.applier.Run(nft.Reconcile(have, m))
	if err != nil {
		d.log.Error("cannot re-apply the table; retrying at the next check", zap.String("table", "inet "+m.Table), zap.Error(err))
		return
	}
	d.metrics.Healed(trigger)
	d.log.Warn("table re-applied", zap.String("table", "inet "+m.Table), zap.String("cause", r.reason),
		zap.Bool("fullReplace", st.Full), zap.Int("messages", st.Messages), zap.Duration("elapsed", time.Since(start)))
}
