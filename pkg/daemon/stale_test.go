package daemon

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/conntrack"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Parse("fwdd.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStaleFlows(t *testing.T) {
	old := parse(t, `
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
`)
	cur := parse(t, `
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
`)
	ids := map[string]uint32{"same": 1, "logged": 2, "moved": 3, "both": 4, "gone": 5, "tcp": 6}
	got := staleFlows(old, cur, ids)
	want := []staleFlow{
		{"moved", conntrack.Selector{Mark: ctmark.ForID(3)}},
		{"both", conntrack.Selector{Mark: ctmark.ForID(4), Proto: 17}},
		{"gone", conntrack.Selector{Mark: ctmark.ForID(5)}},
	}
	if d := cmp.Diff(want, got, cmp.AllowUnexported(staleFlow{}), cmp.Comparer(func(a, b conntrack.Selector) bool { return a == b })); d != "" {
		t.Errorf("staleFlows (-want +got):\n%s", d)
	}
}
