package daemon

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/health"
	"github.com/fwdd/fwdd/pkg/metrics"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
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
	// program puts the backends of one forward that upSet names into the
	// kernel's balance map. It is called from one goroutine at a time.
	program func(forward string) error
	// deleteFlows deletes conntrack entries (conntrack.Delete in the
	// daemon's namespace).
	deleteFlows func(sels ...conntrack.Selector) (int, error)

	mu    sync.Mutex
	pools map[string]*poolState
	order []string // the pools' forwards, in config order
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

const failOpenMsg = "every backend of the forward is down; sending connections to all of them (fail open)"

// set replaces the pools once a start or reload is in force: pools and
// backends that stay keep their health.
func (b *balancer) set(pools []pool) {
	b.mu.Lock()
	next := make(map[string]*poolState, len(pools))
	order := make([]string, 0, len(pools))
	var targets []health.Target
	for _, p := range pools {
		order = append(order, p.forward)
		up := b.health(p)
		st := &poolState{pool: p, up: up, failOpen: !slices.Contains(up, true)}
		if old, ok := b.pools[p.forward]; st.failOpen && (!ok || !old.failOpen) {
			b.log.Error(failOpenMsg,
				zap.String("forward", p.forward), zap.Int("backends", len(p.backends)))
		}
		next[p.forward] = st
		for _, be := range p.backends {
			targets = append(targets, health.Target{Key: health.Key{Forward: p.forward, Backend: be}, Spec: p.spec})
		}
	}
	b.pools, b.order = next, order
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
	allDown := !slices.Contains(st.up, true)
	wasFailOpen := st.failOpen
	st.failOpen = allDown
	p := st.pool
	b.mu.Unlock()

	if err := b.program(p.forward); err != nil {
		if errors.Is(err, errStopped) {
			return // the daemon said it stopped: it touches the kernel no more
		}
		b.log.Error("cannot update the forward's backends in the kernel",
			zap.String("forward", p.forward), zap.Stringer("backend", c.Backend), zap.Bool("up", c.Up), zap.Error(err))
		return
	}
	if allDown && !wasFailOpen {
		b.log.Error(failOpenMsg,
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
		if !checked(f) {
			continue
		}
		p := pool{forward: f.Name, id: ids[f.Name], mark: cfg.Daemon.CtMark.ForID(ids[f.Name]), portSpan: 1, udp: slices.Contains(f.Protos, config.UDP),
			cut:  f.OnChange == config.OnChangeCut,
			spec: f.Health}
		for _, b := range f.Backends {
			var addr netip.AddrPort
			addr, p.portSpan = BackendAddr(f, b)
			p.backends = append(p.backends, addr)
		}
		out = append(out, p)
	}
	return out
}

// checked says whether forward f has backends the daemon health-checks.
func checked(f *config.Forward) bool { return f.Balanced() && f.Health.Kind != health.KindNone }

// BackendAddr is where backend b of forward f is checked, and how it is
// named in status, metrics and logs: its address and first port (the
// forward's own port for a backend that keeps it); span is the number of
// ports of a range mapped 1:1 onto it (1 otherwise).
func BackendAddr(f *config.Forward, b config.Backend) (addr netip.AddrPort, span int) {
	switch {
	case b.ToPort.IsZero():
		return netip.AddrPortFrom(b.To, f.Port.Lo), f.Port.Len()
	case b.ToPort.Len() > 1:
		return netip.AddrPortFrom(b.To, b.ToPort.Lo), b.ToPort.Len()
	}
	return netip.AddrPortFrom(b.To, b.ToPort.Lo), 1
}

// health returns what the checker knows of p's backends (one it does not
// check yet is up).
func (b *balancer) health(p pool) []bool {
	up := make([]bool, len(p.backends))
	for i, be := range p.backends {
		up[i] = b.checker.Up(health.Key{Forward: p.forward, Backend: be})
	}
	return up
}

// withHealth puts the health the checker knows of pools' backends into a
// freshly compiled model: backends found down stay out across a reload. It
// leaves the balancer as it is: set takes the pools once the model is in
// force, so a reload the kernel rejects changes no health check.
func (b *balancer) withHealth(m *nft.Model, pools []pool) *nft.Model {
	for _, p := range pools {
		if up := b.health(p); slices.Contains(up, false) {
			m = m.WithUp(p.forward, inKernel(up))
		}
	}
	return m
}

// errStopped is programBackends' answer once Stop ran.
var errStopped = errors.New("daemon stopped")

// programBackends is the balancer's program: one batch with only that
// forward's balance elements, against the model in force. It takes the
// backends that are in from the balancer under applyMu, where the pools
// are the model's: a reload that ran since the change was seen may have
// moved, added or removed the forward's backends. After Stop it sends
// nothing: with on_stop = "flush" a batch would put the table back (the
// applier plans a full replace after a delete), with "keep" it would edit
// the table the daemon said it left as it was.
func (d *Daemon) programBackends(forward string) error {
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	if d.stopped {
		return errStopped
	}
	cur := d.applier.Last()
	up, ok := d.tasks.balancer.upSet(forward)
	if cur == nil || !ok {
		return nil // nothing applied yet, or the forward removed by a reload
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
	// At once, not at the next tick: fwdd health compares the kernel with
	// the health recorded there.
	d.writeHealth()
	return nil
}

// backendMetrics reports every health-checked backend for /metrics, with
// its live connections and their traffic from one filtered conntrack dump.
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
	n := 0
	for _, p := range pools {
		n += len(p.backends)
	}
	// Connections and traffic per backend are bounded like the per-forward
	// series: beyond metrics.PerForwardLimit backends only their health.
	var live map[conntrack.BackendKey]conntrack.BackendLive
	if k, ok := d.opts.Kernel.(*nft.Netlink); ok && n <= metrics.PerForwardLimit {
		marks := make([]uint32, len(pools))
		for i, p := range pools {
			marks[i] = p.mark
		}
		live, _ = conntrack.LiveByBackend(k.NetNS, d.InForce().Config.Daemon.CtMark, marks) // unknown on error
	}
	var out []metrics.Backend
	for _, p := range pools {
		for _, be := range p.backends {
			s, ok := st[health.Key{Forward: p.forward, Backend: be}]
			mb := metrics.Backend{Forward: p.forward, Backend: be.String(), Up: !ok || s.Up,
				Checks: s.Checks, Changes: s.Changes, Connections: -1}
			if live != nil {
				l := conntrack.OfBackend(live, p.mark, be, p.portSpan)
				mb.Connections, mb.Established, mb.Packets, mb.Bytes = l.Total, l.Established, l.Packets, l.Bytes
			}
			out = append(out, mb)
		}
	}
	return out
}

// countBackendTraffic turns on conntrack accounting when a forward has
// several backends: `fwdd status` and /metrics sum the packets and bytes
// of a backend's live connections from conntrack, which adds two counters
// to each connection and no rule or lookup per packet (per-backend kernel
// counters would cost a set lookup on every forwarded packet). It is set
// after the table is applied, when conntrack is loaded, and never turned
// off: other tools may read the counters too. A failure costs only those
// figures, so it is a warning.
func (d *Daemon) countBackendTraffic(cfg *config.Config) {
	if !slices.ContainsFunc(cfg.Forwards, func(f config.Forward) bool { return f.Balanced() }) {
		return
	}
	const name = "net.netfilter.nf_conntrack_acct"
	old, changed, err := d.opts.Sysctls.Set(name, "1")
	switch {
	case err != nil:
		d.log.Warn("cannot turn on conntrack accounting; status and metrics show no traffic per backend", zap.String("sysctl", name), zap.Error(err))
	case changed:
		d.log.Info("sysctl changed", zap.String("sysctl", sysctl.Display(name)), zap.String("old", old), zap.String("new", "1"),
			zap.String("why", "traffic per backend"))
	}
}

// BackendHealth is what the daemon knows of one health-checked backend,
// recorded in its state file for `fwdd status`.
type BackendHealth struct {
	Forward string `json:"forward"`
	Backend string `json:"backend"`
	// Health is "up", "down" or "unchecked" (no check has ended yet; a
	// backend starts up).
	Health string `json:"health"`
	// Reason is the last check's result: "connected", "refused",
	// "timeout", "http status 500", ...
	Reason string    `json:"reason,omitempty"`
	Error  string    `json:"error,omitempty"`
	Since  time.Time `json:"since,omitzero"` // when the last check's result last changed
}

// backendHealth lists the health of every checked backend, in config
// order. Since stays as recorded in prev while the result is the same.
func (b *balancer) backendHealth(prev []BackendHealth) []BackendHealth {
	b.mu.Lock()
	if len(b.order) == 0 {
		b.mu.Unlock()
		return nil
	}
	pools := make([]pool, len(b.order))
	for i, name := range b.order {
		pools[i] = b.pools[name].pool
	}
	b.mu.Unlock()
	st := b.checker.Status()
	old := map[string]BackendHealth{}
	for _, h := range prev {
		old[h.Forward+"/"+h.Backend] = h
	}
	var out []BackendHealth
	for _, p := range pools {
		for _, be := range p.backends {
			s := st[health.Key{Forward: p.forward, Backend: be}]
			h := BackendHealth{Forward: p.forward, Backend: be.String(), Health: "unchecked"}
			if s.Checked {
				h.Health, h.Reason, h.Error, h.Since = "down", s.Last.Reason, s.Last.Err, s.Last.At
				if s.Up {
					h.Health = "up"
				}
			}
			if o, ok := old[h.Forward+"/"+h.Backend]; ok && o.Health == h.Health && o.Reason == h.Reason {
				h.Since = o.Since
			}
			out = append(out, h)
		}
	}
	return out
}

// WithHealth leaves out of m's balance maps the backends that health (a
// daemon's record) says are down, as the daemon does in the kernel (all of
// a forward's backends in when none is up: fail open). Readers of the
// table (status, fwdd health) compare it with this model, so that a backend
// the daemon took out is not a table that differs.
func WithHealth(m *nft.Model, health []BackendHealth) *nft.Model {
	down := map[string]bool{}
	for _, h := range health {
		if h.Health == "down" {
			down[h.Forward+"/"+h.Backend] = true
		}
	}
	if len(down) == 0 {
		return m
	}
	for i := range m.Config.Forwards {
		f := &m.Config.Forwards[i]
		if !checked(f) {
			continue
		}
		up := make([]bool, len(f.Backends))
		for j, b := range f.Backends {
			addr, _ := BackendAddr(f, b)
			up[j] = !down[f.Name+"/"+addr.String()]
		}
		if slices.Contains(up, false) {
			m = m.WithUp(f.Name, inKernel(up))
		}
	}
	return m
}

// recordHealth writes the daemon's state file, every period, when a
// backend's last check result changed since it was last written (a change
// of health is written at once, by programBackends): `fwdd status` and
// `fwdd health` read the backends' health there. A check that
// ends as the one before changes nothing, so 1,000 healthy backends cost
// no write at all.
func (d *Daemon) recordHealth(ctx context.Context, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.writeHealth()
	}
}

// writeHealth records the backends' health in the state file if it changed.
func (d *Daemon) writeHealth() {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	next := d.tasks.balancer.backendHealth(d.state.Backends)
	if slices.Equal(next, d.state.Backends) {
		return
	}
	d.state.Backends = next
	if err := WriteState(d.opts.StateDir, d.state); err != nil {
		d.log.Warn("cannot record daemon state", zap.Error(err))
	}
}
