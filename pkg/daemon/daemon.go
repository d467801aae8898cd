// Package daemon is fwdd's main loop: load the config, set sysctls, apply
// the table, then reload on SIGHUP and clean up on SIGTERM.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"syscall"
	"time"

	"go.uber.org/zap"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/metrics"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Options wire a Daemon to its environment.
type Options struct {
	ConfigPath string
	StateDir   string
	Log        *zap.Logger
	// SetLevel changes the log level to the config's (may be nil).
	SetLevel func(string) error
	// Notify sends a state to systemd (sd_notify); may be nil.
	Notify func(state string)
	// Kernel programs nftables; its NetNS is 0 in production.
	Kernel *nft.Kernel
	// Sysctls defaults to /proc/sys of the daemon's own namespace.
	Sysctls sysctl.Sysctls
	// PressureInterval is how often the conntrack table fill is read
	// (default conntrack.DefaultPressureInterval).
	PressureInterval time.Duration
	// CheckInterval is how often the table is checked when no nftables
	// event says it changed (default DefaultCheckInterval).
	CheckInterval time.Duration
}

// Daemon owns fwdd's table for as long as it runs.
type Daemon struct {
	opts    Options
	log     *zap.Logger
	applier nft.Applier
	cfg     *config.Config
	ids     map[string]uint32
	state   State
	metrics *metrics.Metrics
	tasks   tasks
	guard   *guard // nil until Run
	// parser keeps the decoded [[forward]] blocks of the last file, so a
	// reload decodes only the blocks that changed.
	parser config.Parser
}

// parserCacheLimit: up to this many forwards a reload decodes only the
// [[forward]] blocks that changed (the cache costs ~400 bytes a forward);
// beyond it the whole file is decoded again (about 0.5 s at 100,000), which
// keeps a 100,000-forward daemon under 100 MB.
const parserCacheLimit = 50_000

// New returns a daemon; nothing touches the kernel before Start.
func New(opts Options) *Daemon {
	if opts.Kernel == nil {
		opts.Kernel = &nft.Kernel{}
	}
	if opts.Notify == nil {
		opts.Notify = func(string) {}
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	d := &Daemon{opts: opts, log: opts.Log, applier: nft.Applier{Kernel: opts.Kernel},
		state: State{PID: os.Getpid()}}
	d.parser.CacheLimit = parserCacheLimit
	d.tasks.conns = newConnLogger(opts.Log)
	d.tasks.watcher = conntrack.New(conntrack.Options{Log: opts.Log, OnNew: d.tasks.conns.onNew})
	d.metrics = metrics.New(metrics.Sources{
		Traffic: func() (map[string]*nft.Traffic, error) {
			if d.cfg == nil {
				return nil, nil
			}
			return d.opts.Kernel.ReadTraffic(d.cfg.Daemon.Table)
		},
		Connections: d.tasks.watcher.Snapshot,
		Pressure: func() conntrack.PressureStatus {
			if d.tasks.pressure == nil {
				return conntrack.PressureStatus{}
			}
			return d.tasks.pressure.Last()
		},
	})
	return d
}

// Metrics returns the daemon's metrics (for tests).
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// inForce publishes a newly applied config to the background tasks.
func (d *Daemon) inForce(cfg *config.Config, ids map[string]uint32, m *nft.Model, st nft.Stats, reload bool) {
	d.cfg, d.ids = cfg, ids
	d.tasks.watcher.SetForwards(forwardNames(ids))
	d.tasks.conns.setForwards(cfg.Forwards)
	d.metrics.Applied(reload, len(cfg.Forwards), m.NumElements(), st.Elapsed)
}

// Config returns the configuration in force.
func (d *Daemon) Config() *config.Config { return d.cfg }

// IDs returns the forward ids in force.
func (d *Daemon) IDs() map[string]uint32 { return d.ids }

func (d *Daemon) record(err error) {
	d.state.Applies++
	d.state.OK = err == nil
	d.state.Error = ""
	if err != nil {
		d.state.Error = err.Error()
	}
	if d.cfg != nil {
		d.state.Forwards = len(d.cfg.Forwards)
	}
	d.state.Time = time.Now()
	if werr := WriteState(d.opts.StateDir, d.state); werr != nil {
		d.log.Warn("cannot record daemon state", zap.Error(werr))
	}
}

// Start loads the config and programs the kernel. An error here is fatal.
func (d *Daemon) Start() error {
	cfg, data, err := d.load()
	if err != nil {
		d.record(err)
		return err
	}
	if d.opts.SetLevel != nil {
		if err := d.opts.SetLevel(cfg.Daemon.LogLevel); err != nil {
			return err
		}
	}
	// A table of that name that fwdd did not create is left alone.
	if err := d.opts.Kernel.CheckOwner(cfg.Daemon.Table); err != nil {
		d.record(err)
		return err
	}
	if err := d.applySysctls(cfg); err != nil {
		d.record(err)
		return err
	}
	// Keep the ids of a table left by an earlier run (on_stop = "keep"), so
	// its live connections stay attributed.
	prev, err := d.opts.Kernel.ReadIDs(cfg.Daemon.Table)
	if err != nil {
		d.log.Warn("cannot read forward ids of the existing table; assigning new ones", zap.Error(err))
		prev = nil
	}
	ids, err := nft.AssignIDs(prev, cfg)
	if err != nil {
		d.record(err)
		return err
	}
	m, err := nft.Compile(cfg, ids, nil)
	if err != nil {
		d.record(err)
		return fmt.Errorf("compile table: %w", err)
	}
	st, err := d.applier.Apply(m)
	if err != nil {
		d.record(err)
		return fmt.Errorf("apply table: %w", err)
	}
	d.inForce(cfg, ids, m, st, false)
	if err := d.recordApplied(data); err != nil {
		d.log.Warn("fwdd diff will not know the config in force", zap.Error(err))
	}
	d.record(nil)
	// Building the first batch is the daemon's peak: give that memory back.
	debug.FreeOSMemory()
	d.log.Info("forwarding",
		zap.String("config", cfg.Path), zap.String("table", "inet "+cfg.Daemon.Table),
		zap.Int("numForwards", len(cfg.Forwards)), zap.Int("elements", m.NumElements()),
		zap.Int("messages", st.Messages), zap.Duration("elapsed", st.Elapsed))
	return nil
}

// Reload re-reads the config and applies the changes in one transaction.
// On any error the running table stays exactly as it was.
func (d *Daemon) Reload() error {
	start := time.Now()
	err := d.reload(start)
	d.record(err)
	if err != nil {
		d.metrics.ReloadFailed()
		d.log.Error("reload failed; the running rules are unchanged", zap.Error(err))
	}
	debug.FreeOSMemory() // after the verdict is recorded: not in the reload's latency
	return err
}

func (d *Daemon) reload(start time.Time) error {
	cfg, data, err := d.load()
	if err != nil {
		return err
	}
	if cfg.Daemon.Table != d.cfg.Daemon.Table {
		return fmt.Errorf("daemon: table: changing the table name from %q to %q needs a restart", d.cfg.Daemon.Table, cfg.Daemon.Table)
	}
	ids, err := nft.AssignIDs(d.ids, cfg)
	if err != nil {
		return err
	}
	m, err := nft.Compile(cfg, ids, d.applier.Last())
	if err != nil {
		return fmt.Errorf("compile table: %w", err)
	}
	if err := d.opts.Kernel.CheckOwner(cfg.Daemon.Table); err != nil {
		return err
	}
	if err := d.applySysctls(cfg); err != nil {
		return err
	}
	st, err := d.applier.Apply(m)
	if err != nil {
		return fmt.Errorf("apply table: %w", err)
	}
	added, removed, changed := diffForwards(d.cfg, cfg)
	if d.opts.SetLevel != nil {
		if err := d.opts.SetLevel(cfg.Daemon.LogLevel); err != nil {
			d.log.Warn("cannot change log level", zap.Error(err))
		}
	}
	if cfg.Daemon.Metrics != d.cfg.Daemon.Metrics || cfg.Conntrack != d.cfg.Conntrack {
		d.log.Warn("changes to [daemon] metrics and [conntrack] take effect at the next restart")
	}
	d.inForce(cfg, ids, m, st, true)
	if err := d.recordApplied(data); err != nil {
		d.log.Warn("fwdd diff will not know the config in force", zap.Error(err))
	}
	d.log.Info("reloaded",
		zap.Int("numForwards", len(cfg.Forwards)),
		zap.Strings("added", added), zap.Strings("removed", removed), zap.Strings("changed", changed),
		zap.Bool("fullReplace", st.Full), zap.Bool("recovered", st.Recovered),
		zap.Int("messages", st.Messages), zap.Int("elements", st.Elements),
		zap.Duration("applyElapsed", st.Elapsed), zap.Duration("elapsed", time.Since(start)))
	return nil
}

// diffForwards names the forwards added, removed and changed between a and b.
func diffForwards(a, b *config.Config) (added, removed, changed []string) {
	old := map[string]*config.Forward{}
	for i := range a.Forwards {
		old[a.Forwards[i].Name] = &a.Forwards[i]
	}
	seen := map[string]bool{}
	for i := range b.Forwards {
		f := &b.Forwards[i]
		seen[f.Name] = true
		switch o, ok := old[f.Name]; {
		case !ok:
			added = append(added, f.Name)
		case !o.Equal(f):
			changed = append(changed, f.Name)
		}
	}
	for name := range old {
		if !seen[name] {
			removed = append(removed, name)
		}
	}
	sort.Strings(removed)
	return added, removed, changed
}

// Stop honours on_stop: remove the table, or leave it in the kernel.
func (d *Daemon) Stop() error {
	if d.cfg == nil {
		return nil
	}
	if d.cfg.Daemon.OnStop == config.OnStopKeep {
		d.log.Info("stopping; rules stay in the kernel (on_stop = \"keep\")", zap.String("table", "inet "+d.cfg.Daemon.Table))
		return nil
	}
	if err := d.opts.Kernel.CheckOwner(d.cfg.Daemon.Table); err != nil {
		d.log.Warn("stopped; table not removed", zap.Error(err))
		return nil
	}
	if err := d.opts.Kernel.Delete(d.cfg.Daemon.Table); err != nil {
		return fmt.Errorf("remove table on stop: %w", err)
	}
	d.log.Info("stopped; table removed", zap.String("table", "inet "+d.cfg.Daemon.Table))
	return nil
}

// Run serves signals until ctx ends or SIGTERM/SIGINT arrives: SIGHUP
// reloads. A second stop signal while stopping exits at once.
func (d *Daemon) Run(ctx context.Context, sigs <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(ctx)
	defer func() {
		cancel()
		if err := g.Wait(); err != nil {
			d.log.Warn("background task ended", zap.Error(err))
		}
	}()
	d.startTasks(gctx, g)
	select {
	case <-d.tasks.watcher.Ready():
	case <-time.After(10 * time.Second):
		d.log.Warn("conntrack watcher not ready after 10s; forwarding works, connection counts may lag")
	}
	select {
	case <-d.guard.ready: // other firewalls' drops are logged before ready
	case <-time.After(10 * time.Second):
	}
	d.opts.Notify("READY=1")
	d.log.Info("ready", zap.Int("pid", os.Getpid()))
	for {
		select {
		case <-ctx.Done():
			return d.stop(sigs)
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP:
				d.opts.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
				_ = d.Reload()
				d.opts.Notify("READY=1")
			case syscall.SIGTERM, syscall.SIGINT:
				return d.stop(sigs)
			}
		case r := <-d.healRequests():
			d.heal(r)
		}
	}
}

func (d *Daemon) startTasks(ctx context.Context, g *errgroup.Group) {
	d.tasks.pressure = conntrack.NewPressure(conntrack.PressureOptions{
		WarnPercent:     float64(d.cfg.Conntrack.WarnPercent),
		CriticalPercent: float64(d.cfg.Conntrack.CriticalPercent),
		Interval:        d.opts.PressureInterval,
		Sysctls:         d.opts.Sysctls,
		Stats:           d.tasks.watcher.Snapshot,
		Log:             d.log,
	})
	g.Go(func() error { return d.tasks.watcher.Run(ctx) })
	g.Go(func() error { return d.tasks.pressure.Run(ctx) })
	g.Go(func() error { return d.tasks.conns.run(ctx) })
	d.startGuard(ctx, g)
	if addr := d.cfg.Daemon.Metrics; addr != "" {
		g.Go(func() error {
			// A metrics endpoint that cannot listen is logged, not fatal:
			// forwarding matters more.
			if err := d.metrics.Serve(ctx, addr, d.log); err != nil {
				d.log.Error("metrics disabled", zap.Error(err))
			}
			return nil
		})
	}
}

// ErrSecondSignal is returned when a second stop signal cut the stop short.
var ErrSecondSignal = errors.New("second stop signal: exiting at once")

func (d *Daemon) stop(sigs <-chan os.Signal) error {
	d.opts.Notify("STOPPING=1")
	done := make(chan error, 1)
	go func() { done <- d.Stop() }()
	for {
		select {
		case err := <-done:
			return err
		case sig := <-sigs:
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				return ErrSecondSignal
			}
		}
	}
}

// monotonicUsec reads CLOCK_MONOTONIC, which systemd expects in
// MONOTONIC_USEC.
func monotonicUsec() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Sec*1e6 + ts.Nsec/1e3
}
