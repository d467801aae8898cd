package conntrack

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Count reads how many conntrack entries exist and how many may, from the
// sysctl tree at nsRoot ("" means /proc/sys, which shows the calling
// thread's network namespace). The count is per namespace, the max is
// host-wide. It reads files rather than asking over netlink: the library's
// global stats request never returns on this kernel.
func Count(nsRoot string) (count, max int, err error) {
	return CountFrom(sysctl.NewFS(nsRoot))
}

// CountFrom is Count over any Sysctls, e.g. sysctl.InNetNS for another
// namespace.
func CountFrom(s sysctl.Sysctls) (count, max int, err error) {
	read := func(name string) (int, error) {
		v, err := s.Get(name)
		if err != nil {
			return 0, err
		}
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return 0, fmt.Errorf("parse %s: %w", name, err)
		}
		return n, nil
	}
	if count, err = read("net.netfilter.nf_conntrack_count"); err != nil {
		return 0, 0, fmt.Errorf("read conntrack count: %w", err)
	}
	if max, err = read("net.netfilter.nf_conntrack_max"); err != nil {
		return 0, 0, fmt.Errorf("read conntrack max: %w", err)
	}
	return count, max, nil
}

// Level is how full the conntrack table is.
type Level int

const (
	LevelOK Level = iota
	LevelWarn
	LevelCritical
)

func (l Level) String() string {
	switch l {
	case LevelWarn:
		return "warn"
	case LevelCritical:
		return "critical"
	}
	return "ok"
}

// Defaults of PressureOptions.
const (
	DefaultPressureInterval = 5 * time.Second
	DefaultMargin           = 5
	DefaultRepeat           = 15 * time.Minute
)

// PressureOptions configure a Pressure task.
type PressureOptions struct {
	// WarnPercent and CriticalPercent are the fill levels (of
	// nf_conntrack_max) at or above which a warning and an error are logged;
	// config's [conntrack] warn_percent and critical_percent. A value <= 0
	// disables that level.
	WarnPercent, CriticalPercent float64
	// Margin is how many points below a level's threshold the fill must
	// drop before the level counts as left (default DefaultMargin).
	Margin float64
	// Repeat is how often the message is repeated while a level lasts
	// (default DefaultRepeat).
	Repeat time.Duration
	// Interval between reads (default DefaultPressureInterval).
	Interval time.Duration
	// Sysctls to read the count from; default sysctl.NewFS("").
	Sysctls sysctl.Sysctls
	// Stats, when set, names the forwards holding the most entries
	// (usually (*LiveCache).Stats); it is called only when a message is
	// logged.
	Stats func() Stats
	Log   *zap.Logger
}

// PressureStatus is the last reading.
type PressureStatus struct {
	Count, Max int
	Percent    float64
	Level      Level
	Time       time.Time // zero before the first successful read
}

// Pressure watches how full the conntrack table is and says so in the log,
// without flooding it: once on entering a level, again every Repeat while in
// it, and once when the fill has dropped Margin points below it.
type Pressure struct {
	opts PressureOptions
	log  *zap.Logger

	mu      sync.Mutex
	last    PressureStatus
	h       hysteresis
	readErr bool
}

// NewPressure returns a Pressure task; it does nothing until Run.
func NewPressure(opts PressureOptions) *Pressure {
	if opts.Margin == 0 {
		opts.Margin = DefaultMargin
	}
	if opts.Repeat == 0 {
		opts.Repeat = DefaultRepeat
	}
	if opts.Interval == 0 {
		opts.Interval = DefaultPressureInterval
	}
	if opts.Sysctls == nil {
		opts.Sysctls = sysctl.NewFS("")
	}
	log := opts.Log
	if log == nil {
		log = zap.NewNop()
	}
	return &Pressure{opts: opts, log: log, h: hysteresis{
		warn: opts.WarnPercent, crit: opts.CriticalPercent, margin: opts.Margin, repeat: opts.Repeat,
	}}
}

// Last returns the last reading, for metrics and status.
func (p *Pressure) Last() PressureStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// Run checks at once and then every Interval until ctx is done; it returns
// nil then. Read errors are logged (once until reads work again), not fatal.
func (p *Pressure) Run(ctx context.Context) error {
	t := time.NewTicker(p.opts.Interval)
	defer t.Stop()
	for {
		p.Check(time.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Check reads the table once and logs as the hysteresis says.
func (p *Pressure) Check(now time.Time) {
	count, max, err := CountFrom(p.opts.Sysctls)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		if !p.readErr {
			p.log.Error("cannot read conntrack table size", zap.Error(err))
		}
		p.readErr = true
		return
	}
	p.readErr = false
	pct := 0.0
	if max > 0 {
		pct = 100 * float64(count) / float64(max)
	}
	level, say := p.h.step(pct, now)
	p.last = PressureStatus{Count: count, Max: max, Percent: pct, Level: level, Time: now}
	if !say {
		return
	}
	fields := []zap.Field{
		zap.Int("count", count), zap.Int("max", max),
		zap.Float64("percent", round1(pct)), zap.Stringer("level", level),
	}
	if level != LevelOK && p.opts.Stats != nil {
		fields = append(fields, zap.String("topForwards", topForwards(p.opts.Stats(), 3)))
	}
	const advice = "raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"
	switch level {
	case LevelCritical:
		p.log.Error(fmt.Sprintf("conntrack table %.0f%% full: new connections are dropped when it is full; %s", pct, advice), fields...)
	case LevelWarn:
		p.log.Warn(fmt.Sprintf("conntrack table %.0f%% full; %s", pct, advice), fields...)
	default:
		p.log.Info("conntrack table usage back to normal", fields...)
	}
}

func round1(f float64) float64 { return float64(int64(f*10+0.5)) / 10 }

func topForwards(s Stats, n int) string {
	top := s.TopLive(n)
	if len(top) == 0 {
		return "none of fwdd's forwards"
	}
	parts := make([]string, len(top))
	for i, f := range top {
		parts[i] = fmt.Sprintf("%s (%d)", f.Name, f.Total)
	}
	return strings.Join(parts, ", ")
}

// hysteresis decides when a fill level is worth a log line.
type hysteresis struct {
	warn, crit, margin float64
	repeat             time.Duration

	level  Level
	logged time.Time // when the current level was last logged
}

func (h *hysteresis) threshold(l Level) float64 {
	switch l {
	case LevelCritical:
		return h.crit
	case LevelWarn:
		return h.warn
	}
	return 0
}

// raw is the level of pct without memory.
func (h *hysteresis) raw(pct float64) Level {
	switch {
	case h.crit > 0 && pct >= h.crit:
		return LevelCritical
	case h.warn > 0 && pct >= h.warn:
		return LevelWarn
	}
	return LevelOK
}

// step takes a reading and returns the level now in force and whether to
// log it. Up moves are immediate; a level is left only once pct is margin
// points below its threshold, and then for the level pct is in.
func (h *hysteresis) step(pct float64, now time.Time) (Level, bool) {
	r := h.raw(pct)
	switch {
	case r > h.level:
		h.level, h.logged = r, now
		return r, true
	case r < h.level && pct < h.threshold(h.level)-h.margin:
		// Leaving: settle on the highest level whose exit margin pct has
		// not also cleared.
		next := r
		for l := h.level - 1; l > r; l-- {
			if pct >= h.threshold(l)-h.margin {
				next = l
				break
			}
		}
		h.level, h.logged = next, now
		return next, true
	case h.level != LevelOK && now.Sub(h.logged) >= h.repeat:
		h.logged = now
		return h.level, true
	}
	return h.level, false
}
