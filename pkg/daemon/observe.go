package daemon

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
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

// tasks are the daemon's background components.
type tasks struct {
	watcher  *conntrack.Watcher
	pressure *conntrack.Pressure
	conns    *connLogger
	balancer *balancer
}
