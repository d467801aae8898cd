// Package daemon is fwdd's main loop: load the config, set sysctls, apply
// the table, then reload on SIGHUP and clean up on SIGTERM.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
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
	// Kernel is nftables: by default over netlink in the daemon's own
	// namespace; tests pass an *nft.Fake.
	Kernel Kernel
	// Sysctls defaults to /proc/sys of the daemon's own namespace.
	Sysctls sysctl.Sysctls
	// Load reads the config (default: the file at ConfigPath, decoding only
	// the blocks that changed since the last load); tests load from memory.
	Load func() (*config.Config, error)
	// DeleteFlows deletes conntrack entries (default: conntrack.Delete in
	// the namespace of a *nft.Netlink Kernel; nothing with another Kernel).
	DeleteFlows func(sels ...conntrack.Selector) (int, error)
	// PressureInterval is how often the conntrack table fill is read
	// (default conntrack.DefaultPressureInterval).
	PressureInterval time.Duration
	// CheckInterval is how often the table is checked when no nftables
	// event says it changed (default DefaultCheckInterval).
	CheckInterval time.Duration
}

// Kernel is what the daemon needs of nftables: run plans and read its
// table back (nft.Backend), read the per-forward counters, list other
// tables' forward chains that drop fwdd's connections, and tell whether a
// table of fwdd's name is fwdd's. A Kernel that also has
// WatchEvents() (*nft.Events, error) is watched for changes (see guard.go).
type Kernel interface {
	nft.Backend
	ReadTraffic(table string, l ctmark.Layout) (map[string]*nft.Traffic, error)
	ReadTrafficOf(table string, l ctmark.Layout, ids map[string]uint32) (map[string]*nft.Traffic, error)
	ReadTotals(table string) (nft.Totals, error)
	ForeignBlockers(own string, fw nft.Forwarded) ([]nft.Blocker, error)
	CheckOwner(table string) error
}

// Daemon owns fwdd's table for as long as it runs. What is in force (the
// config, the forward ids, the table) is the applier's last model, read by
// the metrics and tests from other goroutines.
type Daemon struct {
	opts    Options
	log     *zap.Logger
	applier nft.Applier
	// stateMu guards state: applies and the backends' health write it.
	stateMu sync.Mutex
	state   State
	metrics *metrics.Metrics
	tasks   *tasks
	guard   *guard // nil until Run
	// applyMu serialises the batches of reloads and of health changes.
	applyMu sync.Mutex
	// stopped (under applyMu): Stop ran, so no health change may program
	// the kernel again (the checker runs until Run returns).
	stopped bool
	// loaded is when the latest start or reload began to read the config
	// (State.Loaded); set and read by the goroutine that reloads.
	loaded int64
	// parser keeps the decoded [[forward]] blocks of the last file, so a
	// reload decodes only the blocks that changed.
	parser config.Parser
}

// parserCacheLimit: up to this many forwards a reload decodes only the
// [[forward]] blocks that changed (the cache costs ~400 bytes a forward);
// beyond it every block is decoded again, in parallel (about 1 s of CPU at
// 100,000), which keeps a 100,000-forward daemon under 100 MB.
const parserCacheLimit = 50_000

// New returns a daemon; nothing touches the kernel before Start.
func New(opts Options) *Daemon {
	if opts.Kernel == nil {
		opts.Kernel = &nft.Netlink{}
	}
	if opts.Notify == nil {
		opts.Notify = func(string) {}
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	if opts.Sysctls == nil {
		opts.Sysctls = sysctl.NewFS("")
	}
	d := &Daemon{opts: opts, log: opts.Log, applier: nft.Applier{Backend: opts.Kernel},
		state: NewState(opts.ConfigPath)}
	d.applier.Observe = d.logPlan
	d.parser.CacheLimit = parserCacheLimit
	if d.opts.Load == nil {
		d.opts.Load = func() (*config.Config, error) { return d.parser.Load(d.opts.ConfigPath) }
	}
	d.tasks = newTasks(opts.Log)
	d.tasks.balancer = newBalancer(opts.Log, nil)
	d.tasks.balancer.program = d.programBackends
	d.tasks.balancer.deleteFlows = d.deleteFlows
	src := d.tasks.metricsSources(opts.Kernel)
	src.Backends = d.backendMetrics
	d.metrics = metrics.New(src)
	return d
}

// Metrics returns the daemon's metrics (for tests).
func (d *Daemon) Metrics() *metrics.Metrics { return d.metrics }

// publish tells the background tasks about the model now in force.
func (d *Daemon) publish(m *nft.Model, st nft.Stats, reload bool) {
	d.tasks.publish(m.Config, m.IDs)
	d.metrics.Applied(reload, len(m.Config.Forwards), m.NumElements(), st.Elapsed)
	d.countBackendTraffic(m.Config)
}

// logPlan logs every batch at debug level, in nft syntax.
func (d *Daemon) logPlan(p *nft.Plan) {
	if ce := d.log.Check(zap.DebugLevel, "sending batch"); ce != nil {
		ce.Write(zap.String("table", "inet "+p.Table), zap.Bool("fullReplace", p.Full),
			zap.Int("messages", p.Messages()), zap.Int("elements", p.NumElements()), zap.String("plan", p.String()))
	}
}

// InForce returns the model in force (config, forward ids, table), or nil
// before the first apply. Safe from any goroutine.
func (d *Daemon) InForce() *nft.Model { return d.applier.Last() }

// Config returns the configuration in force, or nil.
func (d *Daemon) Config() *config.Config {
	if m := d.InForce(); m != nil {
		return m.Config
	}
	return nil
}

// IDs returns the forward ids in force, or nil.
func (d *Daemon) IDs() map[string]uint32 {
	if m := d.InForce(); m != nil {
		return m.IDs
	}
	return nil
}

func (d *Daemon) record(err error) {
	d.stateMu.Lock()
	defer d.stateMu.Unlock()
	d.state.Applies++
	d.state.Loaded = d.loaded
	d.state.OK = err == nil
	d.state.Error = ""
	if err != nil {
		d.state.Error = err.Error()
	}
	if cfg := d.Config(); cfg != nil {
		d.state.Forwards = len(cfg.Forwards)
	}
	d.state.Time = time.Now()
	d.state.Backends = d.tasks.balancer.backendHealth(d.state.Backends)
	if werr := WriteState(d.opts.StateDir, d.state); werr != nil {
		d.log.Warn("cannot record daemon state", zap.Error(werr))
	}
}

// Start loads the config and programs the kernel. An error here is fatal.
func (d *Daemon) Start() error {
	d.loaded = monotonicUsec()
	cfg, err := d.opts.Load()
	if err != nil {
		d.record(err)
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("config warning", zap.String("problem", w.Error()))
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
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		d.record(err)
		return err
	}
	m, err := nft.Compile(cfg, ids)
	if err != nil {
		d.record(err)
		return fmt.Errorf("compile table: %w", err)
	}
	// A table left by an earlier run (on_stop = "keep", a crash) is taken
	// over and reconciled with the config in one batch, which keeps the
	// counters of what did not change. Forward ids are a function of the
	// file, so its live connections stay attributed (and so do those
	// conntrackd replicated from the other node of an HA pair).
	have, err := d.opts.Kernel.Read(cfg.Daemon.Table, true)
	if err != nil {
		d.log.Warn("cannot read the existing table; replacing it", zap.Error(err))
		have = nil
	}
	// Sysctls just before the batch, set back if it fails; those of a
	// conntrack not loaded yet right after it (applySysctls).
	undo, after, err := d.applySysctls(cfg)
	if err != nil {
		d.record(err)
		return err
	}
	st, err := d.applier.Run(nft.Reconcile(have, m))
	if err != nil {
		undo()
		d.record(err)
		return fmt.Errorf("apply table: %w", err)
	}
	after()
	d.tasks.balancer.set(poolsOf(cfg, ids))
	d.publish(m, st, false)
	d.log.Info("forwarding",
		zap.String("config", cfg.Path), zap.String("table", "inet "+cfg.Daemon.Table),
		zap.Int("numForwards", len(cfg.Forwards)), zap.Int("elements", m.NumElements()),
		zap.Bool("adopted", have != nil && !st.Full),
		zap.Int("messages", st.Messages), zap.Duration("elapsed", st.Elapsed))
	// The records for fwdd diff and fwdd reload, once the table is live.
	d.recordApplied(cfg)
	d.record(nil)
	// Building the first batch is the daemon's peak: give that memory back.
	debug.FreeOSMemory()
	return nil
}

// Reload re-reads the config and applies the changes in one transaction.
// On any error the running table stays exactly as it was.
func (d *Daemon) Reload() error {
	start := time.Now()
	d.loaded = monotonicUsec()
	err := d.reload(start)
	d.record(err)
	if err != nil {
		d.metrics.ReloadFailed()
		d.log.Error("reload failed; the running rules are unchanged", zap.Error(err))
	}
	return err
}

// freeDelay is how long after a reload its memory goes back to the OS
// (debug.FreeOSMemory, a full collection): not at once, because the next
// reload would then fault every page of its working set in again, which
// took longer than the reload's own work; reloads often come in bursts.
const freeDelay = 2 * time.Second

func (d *Daemon) reload(start time.Time) error {
	cfg, err := d.opts.Load()
	if err != nil {
		return err
	}
	for _, w := range cfg.Warnings {
		d.log.Warn("config warning", zap.String("problem", w.Error()))
	}
	cur := d.InForce()
	if cfg.Daemon.Table != cur.Table {
		return fmt.Errorf("daemon: table: changing the table name from %q to %q needs a restart", cur.Table, cfg.Daemon.Table)
	}
	if l := cfg.Daemon.CtMark; l != cur.Config.Daemon.CtMark {
		// Live connections keep the marks they were given: attributing
		// them needs the layout they were marked with.
		return fmt.Errorf("daemon: ct_mark, ct_mask: changing the ct mark layout from %s to %s needs a restart", cur.Config.Daemon.CtMark, l)
	}
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		return err
	}
	m, err := nft.Compile(cfg, ids)
	if err != nil {
		return fmt.Errorf("compile table: %w", err)
	}
	if err := d.opts.Kernel.CheckOwner(cfg.Daemon.Table); err != nil {
		return err
	}
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	pools := poolsOf(cfg, ids)
	m = d.tasks.balancer.withHealth(m, pools)
	applyStart := time.Now()
	p, err := d.applier.Plan(m)
	if err != nil {
		return fmt.Errorf("plan table: %w", err)
	}
	// Sysctls just before the batch, set back if it fails; those of a
	// conntrack not loaded yet right after it (applySysctls).
	undo, after, err := d.applySysctls(cfg)
	if err != nil {
		return err
	}
	st, err := d.applier.Run(p)
	st.Elapsed = time.Since(applyStart) // the check of the kernel's table included
	if err != nil {
		undo()
		return fmt.Errorf("apply table: %w", err)
	}
	after()
	d.tasks.balancer.set(pools) // the backends of the table now in force
	if d.opts.SetLevel != nil {
		if err := d.opts.SetLevel(cfg.Daemon.LogLevel); err != nil {
			d.log.Warn("cannot change log level", zap.Error(err))
		}
	}
	if cfg.Daemon.Metrics != cur.Config.Daemon.Metrics || cfg.Conntrack != cur.Config.Conntrack {
		d.log.Warn("changes to [daemon] metrics and [conntrack] take effect at the next restart")
	}
	d.publish(m, st, true)
	d.deleteStaleFlows(staleFlows(cur.Config, cfg, cur.IDs))
	d.log.Info("reloaded",
		zap.Int("numForwards", len(cfg.Forwards)),
		zap.Strings("added", atMost(p.Changes.Added)), zap.Strings("removed", atMost(p.Changes.Removed)),
		zap.Strings("changed", atMost(p.Changes.Changed)),
		zap.Bool("fullReplace", st.Full), zap.Bool("recovered", st.Recovered),
		zap.Int("messages", st.Messages), zap.Int("elements", st.Elements),
		zap.Duration("applyElapsed", st.Elapsed), zap.Duration("elapsed", time.Since(start)))
	d.recordApplied(cfg) // for fwdd diff; before record, which fwdd reload waits for
	return nil
}

// maxNamesLogged bounds the forward names a log line lists: a reload that
// adds 10,000 forwards must not write a 100 KB line (journald splits lines
// longer than 48 KB).
const maxNamesLogged = 20

// atMost returns names, or its first maxNamesLogged and how many more.
func atMost(names []string) []string {
	if len(names) <= maxNamesLogged {
		return names
	}
	return append(names[:maxNamesLogged:maxNamesLogged], fmt.Sprintf("... %d more", len(names)-maxNamesLogged))
}

// Repair applies what is in force again after fwdd's table was changed
// behind its back (self-healing), in one batch that keeps what is still
// right. Call it from the goroutine that reloads.
func (d *Daemon) Repair() error {
	st, err := d.applier.Repair()
	d.record(err)
	if err != nil {
		return fmt.Errorf("repair table: %w", err)
	}
	d.log.Info("table repaired", zap.String("table", "inet "+d.InForce().Table),
		zap.Bool("fullReplace", st.Full), zap.Int("messages", st.Messages), zap.Int("elements", st.Elements),
		zap.Duration("elapsed", st.Elapsed))
	return nil
}

// Stop honours on_stop: remove the table, or leave it in the kernel.
func (d *Daemon) Stop() error {
	// After the health checker's batches, and none after it (programBackends).
	d.applyMu.Lock()
	defer d.applyMu.Unlock()
	d.stopped = true
	cur := d.InForce()
	if cur == nil {
		return nil
	}
	if cur.Config.Daemon.OnStop == config.OnStopKeep {
		d.log.Info("stopping; rules stay in the kernel (on_stop = \"keep\")", zap.String("table", "inet "+cur.Table))
		return nil
	}
	if err := d.opts.Kernel.CheckOwner(cur.Table); err != nil {
		d.log.Warn("stopped; table not removed", zap.Error(err))
		return nil
	}
	if err := d.applier.Delete(cur.Table); err != nil {
		return fmt.Errorf("remove table on stop: %w", err)
	}
	d.log.Info("stopped; table removed", zap.String("table", "inet "+cur.Table))
	return nil
}

// Run serves signals until ctx ends or a stop signal (SIGTERM, SIGINT)
// arrives on stops, also while it waits for its tasks to be ready; each
// signal on reloads (SIGHUP) reloads. A second stop signal while stopping
// exits at once.
func (d *Daemon) Run(ctx context.Context, reloads, stops <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(ctx)
	var tasks sync.WaitGroup
	defer func() {
		cancel()
		tasks.Wait()
	}()
	d.startTasks(ctx, &tasks)
	// A stop does not wait for readiness; a reload does, in its channel.
	for _, task := range []struct {
		ready <-chan struct{}
		late  string
	}{
		{d.tasks.watcher.Ready(), "conntrack watcher not ready after 10s; forwarding works, connection counts may lag"},
		{d.guard.ready, ""}, // other firewalls' drops are logged before ready
	} {
		select {
		case <-task.ready:
		case <-time.After(10 * time.Second):
			if task.late != "" {
				d.log.Warn(task.late)
			}
		case <-stops:
			return d.stop(stops)
		case <-ctx.Done():
			return d.stop(stops)
		}
	}
	d.opts.Notify("READY=1")
	d.log.Info("ready", zap.Int("pid", os.Getpid()))
	var free <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return d.stop(stops)
		case <-stops:
			return d.stop(stops)
		case <-reloads:
			d.opts.Notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
			_ = d.Reload()
			d.opts.Notify("READY=1")
			free = time.After(freeDelay)
		case r := <-d.healRequests():
			d.heal(r)
		case <-free:
			free = nil
			debug.FreeOSMemory()
		}
	}
}

// startTasks starts the background tasks; they run until ctx ends. A task
// that fails is logged as an error and the others go on: what an operator
// relies on (health checks, self-healing, the state file, metrics) must not
// end, unseen, with a lesser one, such as the conntrack watcher that logs
// the connections of log = true forwards, while the daemon still serves
// reloads. Exiting instead would cost more than the task: with on_stop =
// "flush" the stop breaks every forwarded connection.
func (d *Daemon) startTasks(ctx context.Context, wg *sync.WaitGroup) {
	run := func(name string, task func(context.Context) error) {
		wg.Go(func() {
			if err := task(ctx); err != nil {
				d.log.Error("background task failed; the others keep running", zap.String("task", name), zap.Error(err))
			}
		})
	}
	cfg := d.Config()
	d.tasks.pressure = conntrack.NewPressure(conntrack.PressureOptions{
		WarnPercent:     float64(cfg.Conntrack.WarnPercent),
		CriticalPercent: float64(cfg.Conntrack.CriticalPercent),
		Interval:        d.opts.PressureInterval,
		Sysctls:         d.opts.Sysctls,
		Stats:           d.tasks.liveStats,
		Log:             d.log,
	})
	run("conntrack watcher", d.tasks.watcher.Run)
	run("conntrack pressure", d.tasks.pressure.Run)
	run("connection log", d.tasks.conns.run)
	d.guard = d.guardTable()
	run("table guard", d.guard.run)
	run("health checks", d.tasks.balancer.run)
	run("health record", func(ctx context.Context) error { d.recordHealth(ctx, time.Second); return nil })
	if addr := cfg.Daemon.Metrics; addr != "" {
		run("metrics", func(ctx context.Context) error { return d.metrics.Serve(ctx, addr, d.log) })
	}
}

// ErrSecondSignal is returned when a second stop signal cut the stop short.
var ErrSecondSignal = errors.New("second stop signal: exiting at once")

func (d *Daemon) stop(stops <-chan os.Signal) error {
	d.opts.Notify("STOPPING=1")
	done := make(chan error, 1)
	go func() { done <- d.Stop() }()
	select {
	case err := <-done:
		return err
	case <-stops:
		return ErrSecondSignal
	}
}

// monotonicUsec reads CLOCK_MONOTONIC, which systemd expects in
// MONOTONIC_USEC.
func monotonicUsec() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Sec*1e6 + ts.Nsec/1e3
}
