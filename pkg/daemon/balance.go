package daemon

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/health"
	"github.com/fwdd/fwdd/pkg/metrics"
	"github.com/fwdd/fwdd/pkg/nft"
)

// pool is a forward with several backends, as the balancer sees it.
type pool struct {
	forward  string
	id       uint32
	mark     uint32           // fwdd's bits of its connections' ct mark (ctmark.Layout.ForID)
	backends []netip.AddrPort // port 0: the original port is kept
	// portSpan is the number of ports of a 1:1 mapped range (1 otherwise):
	// backend i's connections use ports backends[i].Port() .. +portSpan-1.
	portSpan int
	spec     health.Spec
	udp      bool // the forward carries UDP
	cut      bool // on_change = "cut": delete TCP entries of a down backend too
}

// balancer runs the health checks of the forwards with several backends
// and turns each change into a small update of that forward's backend
// elements (through program) and the deletion of a down backend's UDP
// conntrack entries.
type balancer struct {
	log     *zap.Logger
	checker *health.Checker
	// program sets the backends of one forward that are in the kernel's
	// balance map: up[i] says whether backend i is in. It is called from
	// one goroutine at a time.
	program func(forward string, up []bool) error
	// deleteFlows deletes conntrack entries (conntrack.Delete in the
	// daemon's namespace).
	deleteFlows func(sels ...conntrack.Selector) (int, error)

	mu    sync.Mutex
	pools map[string]*poolState
}

type poolState struct {
	pool
	up       []bool // health of each backend
	failOpen bool
}

func newBalancer(log *zap.Logger, dial health.DialFunc) *balancer {
	b := &balancer{log: log, pools: map[string]*poolState{}}
	b.checker = health.New(health.Options{Dial: dial, OnChange: b.onChange, Log: log})
	return b
}

// run checks until ctx is done.
func (b *balancer) run(ctx context.Context) error { return b.checker.Run(ctx) }

// set replaces the pools (after a start or reload): pools and backends
// that stay keep their health.
func (b *balancer) set(pools []pool) {
	b.mu.Lock()
	next := make(map[string]*poolState, len(pools))
	var targets []health.Target
	for _, p := range pools {
		st := &poolState{pool: p, up: make([]bool, len(p.backends))}
		for i, be := range p.backends {
			st.up[i] = b.checker.Up(health.Key{Forward: p.forward, Backend: be})
			targets = append(targets, health.Target{Key: health.Key{Forward: p.forward, Backend: be}, Spec: p.spec})
		}
		next[p.forward] = st
	}
	b.pools = next
	b.mu.Unlock()
	b.checker.Set(targets)
}

// upSet returns the backends of forward that should be in the kernel:
// those up, or all of them when none is (fail open).
func (b *balancer) upSet(forward string) (up []bool, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.pools[forward]
	if !ok {
		return nil, false
	}
	return inKernel(st.up), true
}

// inKernel returns which backends go into the kernel: the ones up, or all
// when none is (fail open).
func inKernel(up []bool) []bool {
	if !slices.Contains(up, true) {
		all := make([]bool, len(up))
		for i := range all {
			all[i] = true
		}
		return all
	}
	return slices.Clone(up)
}

// onChange is the checker's callback: one backend went up or down.
func (b *balancer) onChange(c health.Change) {
	b.mu.Lock()
	st, ok := b.pools[c.Forward]
	idx := -1
	if ok {
		idx = slices.Index(st.backends, c.Backend)
	}
	if idx < 0 {
		b.mu.Unlock()
		return // removed by a reload meanwhile
	}
	st.up[idx] = c.Up
	inK := inKernel(st.up)
	allDown := !slices.Contains(st.up, true)
	wasFailOpen := st.failOpen
	st.failOpen = allDown
	p := st.pool
	b.mu.Unlock()

	if err := b.program(p.forward, inK); err != nil {
		b.log.Error("cannot update the forward's backends in the kernel",
			zap.String("forward", p.forward), zap.Stringer("backend", c.Backend), zap.Bool("up", c.Up), zap.Error(err))
		return
	}
	if allDown && !wasFailOpen {
		b.log.Error("every backend of the forward is down; sending connections to all of them (fail open)",
			zap.String("forward", p.forward), zap.Int("backends", len(p.backends)))
	} else if wasFailOpen && !allDown {
		b.log.Info("a backend of the forward is up again; fail open ends",
			zap.String("forward", p.forward), zap.Stringer("backend", c.Backend))
	}
	if c.Up || allDown {
		return // in fail open the backend still receives connections
	}
	sel := conntrack.Selector{Mark: p.mark, Backend: c.Backend.Addr()}
	if port := c.Backend.Port(); port != 0 {
		sel.PortFirst, sel.PortLast = port, port+uint16(max(p.portSpan, 1)-1)
	}
	if !p.cut {
		if !p.udp {
			return
		}
		sel.Proto = 17
	}
	n, err := b.deleteFlows(sel)
	if err != nil {
		b.log.Warn("cannot delete the conntrack entries of a down backend",
			zap.String("forward", p.forward), zap.Stringer("backend", c.Backend), zap.Int("deleted", n), zap.Error(err))
		return
	}
	b.log.Info("deleted the conntrack entries of a down backend",
		zap.String("forward", p.forward), zap.Stringer("backend", c.Backend), zap.Bool("tcpToo", p.cut), zap.Int("deleted", n))
}

// poolsOf returns the health-checked forwards of cfg with several
// backends. A backend is checked at its port (the forward's own for one
// that keeps the port; the first of a range); a UDP forward's checks
// connect over TCP to the same address and port.
func poolsOf(cfg *config.Config, ids map[string]uint32) []pool {
	var out []pool
	for i := range cfg.Forwards {
		f := &cfg.Forwards[i]
		if !f.Balanced() || f.Health.Check == config.CheckNone {
			continue
		}
		p := pool{forward: f.Name, id: ids[f.Name], mark: cfg.Daemon.CtMark.ForID(ids[f.Name]), portSpan: 1, udp: slices.Contains(f.Protos, config.UDP),
			cut: f.OnChange == config.OnChangeCut,
			spec: health.Spec{Kind: health.Kind(f.Health.Check), Interval: f.Health.Interval, Timeout: f.Health.Timeout,
				Fall: f.Health.Fall, Rise: f.Health.Rise, Path: f.Health.Path}}
		for _, b := range f.Backends {
			port := b.ToPort.Lo
			switch {
			case b.ToPort.IsZero():
				port, p.portSpan = f.Port.Lo, f.Port.Len()
			case b.ToPort.Len() > 1:
				p.portSpan = b.ToPort.Len()
			}
			p.backends = append(p.backends, netip.AddrPortFrom(b.To, port))
		}
		out = append(out, p)
	}
	return out
}

// withHealth puts the health the balancer knows into a freshly compiled
// model: backends found down stay out across a reload.
func (b *balancer) withHealth(m *nft.Model) *nft.Model {
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, st := range b.pools {
		if slices.Contains(st.up, false) {
			m = m.WithUp(name, inKernel(st.up))
		}
	}
	return m
}

// programBackends is the balancer's program: one batch with only that
// forward's balance elements, against the model in force.
func (d *Daemon) programBackends(forward string, up []bool) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	cur := d.applier.Last()
	if cur == nil {
		return nil
	}
	p, err := d.applier.Plan(cur.WithUp(forward, up))
	if err != nil {
		return err
	}
	st, err := d.applier.Run(p)
	if err != nil {
		return err
	}
	d.log.Debug("backends updated", zap.String("forward", forward), zap.Int("elements", st.Elements), zap.Duration("elapsed", st.Elapsed))
	return nil
}

// backendMetrics reports every health-checked backend for /metrics, with
// its live connections from one filtered conntrack dump.
func (d *Daemon) backendMetrics() []metrics.Backend {
	b := d.tasks.balancer
	st := b.checker.Status()
	b.mu.Lock()
	pools := make([]pool, 0, len(b.pools))
	for _, p := range b.pools {
		pools = append(pools, p.pool)
	}
	b.mu.Unlock()
	if len(pools) == 0 {
		return nil
	}
	var live map[conntrack.BackendKey]int
	if k, ok := d.opts.Kernel.(*nft.Netlink); ok {
		live, _ = conntrack.LiveByBackend(k.NetNS, d.InForce().Config.Daemon.CtMark) // unknown on error
	}
	var out []metrics.Backend
	for _, p := range pools {
		for _, be := range p.backends {
			s, ok := st[health.Key{Forward: p.forward, Backend: be}]
			mb := metrics.Backend{Forward: p.forward, Backend: be.String(), Up: !ok || s.Up,
				Checks: s.Checks, Changes: s.Changes, Connections: -1}
			if live != nil {
				mb.Connections = 0
				for k, n := range live {
					if k.Mark == p.mark && k.Backend.Addr() == be.Addr() &&
						k.Backend.Port() >= be.Port() && int(k.Backend.Port()) < int(be.Port())+max(p.portSpan, 1) {
						mb.Connections += n
					}
				}
			}
			out = append(out, mb)
		}
	}
	return out
}
