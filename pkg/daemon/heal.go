package daemon

import (
	"context"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/fwmark"
	"github.com/fwdd/fwdd/pkg/nft"
)

// startGuard watches nftables events for the daemon's life (see guard.go).
func (d *Daemon) startGuard(ctx context.Context, g *errgroup.Group) {
	tag, mask := ctMarkBits(d.cfg)
	table := d.cfg.Daemon.Table
	d.guard = newGuard(guardOptions{
		Log:      d.log,
		Table:    table,
		Interval: d.opts.CheckInterval,
		Watch: func() (eventSource, error) {
			return d.opts.Kernel.WatchEvents()
		},
		Blockers: func() ([]nft.Blocker, error) {
			return d.opts.Kernel.ForeignBlockers(table, tag, mask)
		},
		OnBlockers: d.metrics.Blockers,
	})
	g.Go(func() error { return d.guard.run(ctx) })
}

// healRequests is where the guard asks the daemon's loop to act; nil (never
// ready) before the guard starts.
func (d *Daemon) healRequests() <-chan healRequest {
	if d.guard == nil {
		return nil
	}
	return d.guard.requests
}

// heal re-applies the table in force as a whole, in one batch, when another
// process changed it (or, for a check, when it no longer holds what fwdd
// applied). Established connections keep flowing: their NAT is in conntrack.
func (d *Daemon) heal(r healRequest) {
	m := d.applier.Last()
	if m == nil {
		return // the last apply failed: the next reload replaces the table anyway
	}
	trigger := "event"
	if !r.tampered {
		trigger = "check"
		verify := d.opts.Kernel.Verify // chains, rules, sets: cheap enough to run often
		if r.reason == "events lost" {
			verify = d.opts.Kernel.VerifyContent
		}
		err := verify(m)
		if err == nil {
			return
		}
		d.log.Warn("table differs from what fwdd applied; re-applying it",
			zap.String("table", "inet "+m.Table), zap.String("check", r.reason), zap.Error(err))
	}
	if err := d.opts.Kernel.CheckOwner(m.Table); err != nil {
		d.log.Error("not re-applying the table", zap.Error(err))
		return
	}
	start := time.Now()
	d.applier.Forget()
	st, err := d.applier.Apply(m)
	if err != nil {
		d.log.Error("cannot re-apply the table; retrying at the next check", zap.String("table", "inet "+m.Table), zap.Error(err))
		return
	}
	d.metrics.Healed(trigger)
	d.log.Warn("table re-applied", zap.String("table", "inet "+m.Table), zap.String("cause", r.reason),
		zap.Int("messages", st.Messages), zap.Duration("elapsed", time.Since(start)))
}

// ctMarkBits are the ct mark bits of fwdd's connections.
func ctMarkBits(*config.Config) (tag, mask uint32) { return fwmark.Tag, fwmark.Mask }
