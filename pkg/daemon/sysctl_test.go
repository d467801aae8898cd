package daemon

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

func TestSysctlPlan(t *testing.T) {
	addr := netip.MustParseAddr
	c := &config.Config{
		Sysctl: config.Sysctl{IPForward: true, RPFilter: config.RPFilterLoose, ConntrackMax: 1 << 20},
		Forwards: []config.Forward{
			{Name: "a", Interface: "eth1", To: addr("10.0.0.1")},
			{Name: "b", Interface: "eth0.100", To: addr("fd00::1")},
			{Name: "c", Interface: "eth1", To: addr("10.0.0.2")},
			{Name: "d", To: addr("10.0.0.3")},
		},
	}
	want := sysctl.Plan{IPForward: true, IPv6Forward: true, RPFilter: sysctl.RPFilterLoose,
		Interfaces: []string{"eth0.100", "eth1"}, ConntrackMax: 1 << 20}
	if diff := cmp.Diff(want, sysctlPlan(c)); diff != "" {
		t.Errorf("sysctlPlan (-want +got):\n%s", diff)
	}
	c.Sysctl.IPForward = false
	if sysctlPlan(c).IPv6Forward {
		t.Errorf("IPv6Forward without IPForward")
	}
}
