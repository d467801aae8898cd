package daemon

import (
	"fmt"
	"slices"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// applySysctls brings forwarding, rp_filter and conntrack_max to what the
// config asks, logging only real changes.
func (d *Daemon) applySysctls(cfg *config.Config) error {
	if err := sysctl.Apply(d.opts.Sysctls, sysctlPlan(cfg), d.log); err != nil {
		return fmt.Errorf("sysctl: %w", err)
	}
	return nil
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
