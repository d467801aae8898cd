package daemon

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

func TestStaleFlows(t *testing.T) {
	old := testutil.Config(t, `
[[forward]]
name = "same"
proto = "udp"
port = 53
to = "10.0.0.1"
[[forward]]
name = "logged"
proto = "udp"
port = 54
to = "10.0.0.1"
[[forward]]
name = "moved"
proto = "udp"
port = 55
to = "10.0.0.1"
[[forward]]
name = "both"
proto = ["tcp", "udp"]
port = 56
to = "10.0.0.1"
[[forward]]
name = "gone"
proto = "udp"
port = 57
to = "10.0.0.1"
[[forward]]
name = "tcp"
port = 58
to = "10.0.0.1"
[[forward]]
name = "cut"
port = 59
to = "10.0.0.1"
on_change = "cut"
[[forward]]
name = "pool"
proto = "udp"
port = 60
to = ["10.0.0.1:60", "10.0.0.2:60", "10.0.0.3:60"]
[[forward]]
name = "weights"
proto = "udp"
port = 61
to = ["10.0.0.1:61", "10.0.0.2:61"]
`)
	cur := testutil.Config(t, `
[[forward]]
name = "tcp"
port = 58
to = "10.0.0.9"
[[forward]]
name = "same"
proto = "udp"
port = 53
to = "10.0.0.1"
[[forward]]
name = "logged"
proto = "udp"
port = 54
to = "10.0.0.1"
log = true
[[forward]]
name = "moved"
proto = "udp"
port = 55
to = "10.0.0.2:5555"
[[forward]]
name = "both"
proto = ["tcp", "udp"]
port = 56
to = "10.0.0.2"
[[forward]]
name = "cut"
port = 59
to = "10.0.0.2"
on_change = "cut"
[[forward]]
name = "pool"
proto = "udp"
port = 60
to = ["10.0.0.1:60", "10.0.0.3:60", "10.0.0.4:60"]
[[forward]]
name = "weights"
proto = "udp"
port = 61
health = { check = "tcp" }
[[forward.backend]]
to = "10.0.0.1:61"
weight = 5
[[forward.backend]]
to = "10.0.0.2:61"
`)
	ids := map[string]uint32{"same": 1, "logged": 2, "moved": 3, "both": 4, "gone": 5, "tcp": 6, "cut": 7, "pool": 8, "weights": 9}
	got := staleFlows(old, cur, ids)
	want := []staleFlow{
		{"moved", conntrack.Selector{Mark: ctmark.Default.ForID(3)}},
		{"both", conntrack.Selector{Mark: ctmark.Default.ForID(4), Proto: 17}},
		{"gone", conntrack.Selector{Mark: ctmark.Default.ForID(5)}},
		// on_change = "cut": TCP too.
		{"cut", conntrack.Selector{Mark: ctmark.Default.ForID(7)}},
		// Only the backend that left; weights and health change nothing.
		{"pool", conntrack.Selector{Mark: ctmark.Default.ForID(8), Proto: 17, Backend: netip.MustParseAddr("10.0.0.2"), PortFirst: 60, PortLast: 60}},
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(staleFlow{}), cmp.Comparer(func(a, b conntrack.Selector) bool { return a == b })); d != "" {
		t.Errorf("staleFlows (-want +got):\n%s", d)
	}
}
