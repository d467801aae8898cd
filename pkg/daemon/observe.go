package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/metrics"
	"github.com/fwdd/fwdd/pkg/nft"
)

// connLogger writes one journal line per new connection of a forward with
// log = true, at most ratePerSecond lines a second (burst connLogBurst);
// what it drops is counted and reported once a minute.
type connLogger struct {
	log        *zap.Logger
	limiter    *rate.Limiter
	logged     atomic.Pointer[map[string]bool]
	suppressed atomic.Uint64
}

const (
	connLogRate  = 50
	connLogBurst = 200
)

func newConnLogger(log *zap.Logger) *connLogger {
	l := &connLogger{log: log, limiter: rate.NewLimiter(connLogRate, connLogBurst)}
	empty := map[string]bool{}
	l.logged.Store(&empty)
	return l
}

func (l *connLogger) setForwards(fs []config.Forward) {
	m := map[string]bool{}
	for _, f := range fs {
		if f.Log {
			m[f.Name] = true
		}
	}
	l.logged.Store(&m)
}

// logged returns the ids of the forwards with log = true.
func loggedIDs(fs []config.Forward, ids map[string]uint32) []uint32 {
	var out []uint32
	for _, f := range fs {
		if f.Log {
			out = append(out, ids[f.Name])
		}
	}
	return out
}

// onNew is called by the conntrack watcher for each new connection.
func (l *connLogger) onNew(c conntrack.NewConn) {
	if !(*l.logged.Load())[c.Forward] {
		return
	}
	if !l.limiter.Allow() {
		l.suppressed.Add(1)
		return
	}
	proto := "tcp"
	if c.Proto == 17 {
		proto = "udp"
	}
	l.log.Info("new connection",
		zap.String("forward", c.Forward), zap.String("proto", proto),
		zap.Stringer("source", c.Source), zap.Stringer("destination", c.Destination),
		zap.Stringer("backend", c.Backend))
}

// run reports rate-limited lines once a minute.
func (l *connLogger) run(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if n := l.suppressed.Swap(0); n > 0 {
				l.log.Warn("connection log rate-limited", zap.Uint64("suppressed", n), zap.Int("perSecond", connLogRate))
			}
		}
	}
}

// forwardNames maps ct mark ids to forward names for the watcher.
func forwardNames(ids map[string]uint32) map[uint32]string {
	out := make(map[uint32]string, len(ids))
	for name, id := range ids {
		out[id] = name
	}
	return out
}

// tasks are the daemon's background components. None of them does work
// per connection unless a forward has log = true: new connections and
// traffic are counted by the kernel, live connections dumped when asked.
type tasks struct {
	watcher  *conntrack.Watcher // new connections of forwards with log = true
	live     *conntrack.LiveCache
	pressure *conntrack.Pressure
	conns    *connLogger
	inForce  atomic.Pointer[inForce] // for scrapes
	balancer *balancer
}

// inForce is what scrapes need of the config in force.
type inForce struct {
	table  string
	layout ctmark.Layout
	ids    map[string]uint32
}

func newTasks(log *zap.Logger) *tasks {
	t := &tasks{conns: newConnLogger(log), live: conntrack.NewLiveCache(0)}
	t.watcher = conntrack.New(conntrack.Options{Log: log, OnNew: t.conns.onNew})
	t.inForce.Store(&inForce{})
	return t
}

// publish hands a newly applied config to the tasks.
func (t *tasks) publish(cfg *config.Config, ids map[string]uint32) {
	names := forwardNames(ids)
	t.conns.setForwards(cfg.Forwards)
	t.watcher.SetLayout(cfg.Daemon.CtMark)
	t.live.SetLayout(cfg.Daemon.CtMark)
	t.watcher.SetForwards(names, loggedIDs(cfg.Forwards, ids))
	t.live.SetForwards(names)
	t.inForce.Store(&inForce{table: cfg.Daemon.Table, layout: cfg.Daemon.CtMark, ids: ids})
}

// liveStats is the pressure warning's view of the busiest forwards.
func (t *tasks) liveStats() conntrack.Stats {
	st, _ := t.live.Stats()
	return st
}

// metricsSources reads what a scrape shows from the kernel.
func (t *tasks) metricsSources(k Kernel) metrics.Sources {
	return metrics.Sources{
		Forwards: func() map[string]uint32 { return t.inForce.Load().ids },
		Traffic: func(ids map[string]uint32) (map[string]*nft.Traffic, error) {
			f := t.inForce.Load()
			return k.ReadTrafficOf(f.table, f.layout, ids)
		},
		Totals: func() (nft.Totals, error) {
			if f := t.inForce.Load(); f.table != "" {
				return k.ReadTotals(f.table)
			}
			return nft.Totals{}, nil
		},
		Connections: t.live.ByID,
		Overflows:   t.watcher.Overflows,
		Pressure: func() conntrack.PressureStatus {
			if t.pressure == nil {
				return conntrack.PressureStatus{}
			}
			return t.pressure.Last()
		},
	}
}
