package daemon

import (
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// applySysctls brings forwarding, rp_filter, conntrack_max and
// conntrack_buckets to what the config asks, logging only real changes.
// Start and reload call it after everything that can refuse the config but
// the batch, and just before sending it: forwarding is then on when the
// rules go in. If the batch fails, they call undo, which sets back what
// applySysctls changed; if a sysctl fails, applySysctls sets back the
// others itself. So a failed start or reload leaves the sysctls as it found
// them (a value that cannot be set back is logged as an error).
//
// One exception in the order: conntrack_max and conntrack_buckets are
// parameters of nf_conntrack, which a modular kernel loads for the first
// rule that uses conntrack; early in boot nothing may have, and fwdd's
// batch is what loads it. When they do not exist yet, they are left for
// after the batch: once it went in, the caller calls after, which writes
// them. A failure there is logged as an error and fails nothing, as the
// batch cannot be taken back.
func (d *Daemon) applySysctls(cfg *config.Config) (undo, after func(), err error) {
	u := &undoable{Sysctls: d.opts.Sysctls}
	undo = func() { u.undo(d.log) }
	later, err := sysctl.Apply(u, sysctlPlan(cfg), d.log)
	if err != nil {
		undo()
		return nil, nil, fmt.Errorf("sysctl: %w", err)
	}
	after = func() {
		if later.Empty() {
			return
		}
		if err := later.Apply(d.opts.Sysctls, d.log); err != nil {
			d.log.Error("cannot set a sysctl after the batch that loaded nf_conntrack; forwarding without it",
				zap.Error(err))
		}
	}
	return undo, after, nil
}

// undoable is a Sysctls that remembers the values its writes replaced.
type undoable struct {
	sysctl.Sysctls
	written []written
}

type written struct{ name, old, value string }

func (u *undoable) Set(name, value string) (string, bool, error) {
	old, changed, err := u.Sysctls.Set(name, value)
	if changed {
		u.written = append(u.written, written{name, old, value})
	}
	return old, changed, err
}

// undo sets back what Set changed, last first.
func (u *undoable) undo(log *zap.Logger) {
	for _, w := range slices.Backward(u.written) {
		if _, _, err := u.Sysctls.Set(w.name, w.old); err != nil {
			log.Error("cannot set a sysctl back", zap.String("sysctl", sysctl.Display(w.name)),
				zap.String("value", w.value), zap.String("wanted", w.old), zap.Error(err))
			continue
		}
		log.Info("sysctl set back", zap.String("sysctl", sysctl.Display(w.name)), zap.String("old", w.value), zap.String("new", w.old))
	}
	u.written = nil
}

// sysctlPlan derives what a validated configuration wants of the kernel:
// IPv6 forwarding when forwarding is wanted and any forward is IPv6, and
// rp_filter for the interfaces forwards name.
func sysctlPlan(c *config.Config) sysctl.Plan {
	p := sysctl.Plan{
		IPForward:        c.Sysctl.IPForward,
		RPFilter:         sysctl.RPFilter(c.Sysctl.RPFilter),
		ConntrackMax:     c.Sysctl.ConntrackMax,
		ConntrackBuckets: c.Sysctl.ConntrackBuckets,
	}
	for i := range c.Forwards {
		f := &c.Forwards[i]
		if f.IPv6() && c.Sysctl.IPForward {
			p.IPv6Forward = true
		}
		if f.Interface != "" && !slices.Contains(p.Interfaces, f.Interface) {
			p.Interfaces = append(p.Interfaces, f.Interface)
		}
	}
	slices.Sort(p.Interfaces)
	return p
}
