package daemon

import (
	"fmt"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

// applySysctls brings forwarding, rp_filter and conntrack_max to what the
// config asks, logging only real changes.
func (d *Daemon) applySysctls(cfg *config.Config) error {
	s := d.opts.Sysctls
	if s == nil {
		s = sysctl.NewFS("")
	}
	if err := sysctl.Apply(s, sysctl.PlanFor(cfg), d.log); err != nil {
		return fmt.Errorf("sysctl: %w", err)
	}
	return nil
}
