package config

import (
	"bytes"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestDiff(t *testing.T) {
	a, err := Parse("a.toml", []byte(`
[daemon]
forward_policy = "accept"
[[forward]]
name = "web"
port = 80
to = "10.0.0.2:8080"
[[forward]]
name = "gone"
port = 81
to = "10.0.0.2"
[[forward]]
name = "same"
port = 82
to = "10.0.0.2"
`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b.toml", []byte(`
[daemon]
forward_policy = "drop"
[sysctl]
conntrack_max = 1000
[[forward]]
name = "new"
proto = ["tcp", "udp"]
port = "90-91"
to = "[fd00::2]:9000-9001"
[[forward]]
name = "same"
port = 82
to = "10.0.0.2"
[[forward]]
name = "web"
proto = "udp"
port = 80
to = "10.0.0.3:8080"
sources = ["192.0.2.0/24"]
snat = "none"
`))
	if err != nil {
		t.Fatal(err)
	}
	fw, settings := Diff(a, b)
	want := []ForwardChange{
		{Name: "new", Kind: "added"},
		{Name: "web", Kind: "changed", Fields: []FieldChange{
			{Field: "proto", Old: `"tcp"`, New: `"udp"`},
			{Field: "to", Old: `"10.0.0.2:8080"`, New: `"10.0.0.3:8080"`},
			{Field: "sources", Old: "[]", New: `["192.0.2.0/24"]`},
			{Field: "snat", Old: `"masquerade"`, New: `"none"`},
		}},
		{Name: "gone", Kind: "removed"},
	}
	if d := cmp.Diff(want, fw); d != "" {
		t.Errorf("forwards (-want +got):\n%s", d)
	}
	wantSettings := []FieldChange{
		{Field: "daemon.forward_policy", Old: "accept", New: "drop"},
		{Field: "sysctl.conntrack_max", Old: "0", New: "1000"},
	}
	if d := cmp.Diff(wantSettings, settings); d != "" {
		t.Errorf("settings (-want +got):\n%s", d)
	}
	if got := ForwardFields(&b.Forwards[0]); got[0][1] != `["tcp", "udp"]` || got[3][1] != `"[fd00::2]:9000-9001"` {
		t.Errorf("fields of new: %v", got)
	}
	if fw, settings := Diff(a, a); len(fw)+len(settings) != 0 {
		t.Errorf("a against itself: %v %v", fw, settings)
	}
}

func TestTOMLRoundTrip(t *testing.T) {
	roundTrip(t, `
[daemon]
table = "gw"
on_stop = "keep"
forward_policy = "drop"
[sysctl]
rp_filter = "loose"
conntrack_buckets = 65536
[conntrack]
warn_percent = 70
[[forward]]
name = "web"
proto = ["tcp", "udp"]
port = "8000-8009"
address = "192.0.2.1"
to = "10.0.0.2:9000-9009"
interface = "eth1"
sources = ["198.51.100.0/24"]
snat = "10.0.0.1"
log = true
[[forward]]
name = "v6"
port = 443
to = "fd00::2"
snat = "none"
`)
}

// TestTOMLRoundTripBalanced checks that the record of the config in force
// keeps several backends, their weights, balance, health and on_change.
func TestTOMLRoundTripBalanced(t *testing.T) {
	roundTrip(t, `
[[forward]]
name = "list"
port = 80
to = ["10.0.0.2", "10.0.0.3:8080"]
balance = "source"
health = { check = "http", interval = "500ms", path = "/health" }
on_change = "cut"
[[forward]]
name = "weights"
port = 81
[[forward.backend]]
to = "[fd00::2]:9000"
weight = 3
[[forward.backend]]
to = "fd00::3"
[[forward]]
name = "port-like"
port = 82
to = ["[2001:db8::1:80]", "2001:db8::2"]
[[forward]]
name = "port-like-alone"
port = 83
to = "[2001:db8::1:80]"
`)
}

// renderTOML is c.WriteTOML's text.
func renderTOML(tb testing.TB, c *Config) []byte {
	tb.Helper()
	var b bytes.Buffer
	if err := c.WriteTOML(&b); err != nil {
		tb.Fatal(err)
	}
	return b.Bytes()
}

// roundTrip checks that a config rendered by WriteTOML parses back to the same
// config: no difference Diff can see, and each forward Equal.
func roundTrip(t *testing.T, text string) {
	t.Helper()
	c, err := Parse("c.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse("back.toml", renderTOML(t, c))
	if err != nil {
		t.Fatalf("%v\n%s", err, renderTOML(t, c))
	}
	if fw, settings := Diff(c, back); len(fw)+len(settings) != 0 {
		t.Errorf("round trip differs: %v %v\n%s", fw, settings, renderTOML(t, c))
	}
	for i := range c.Forwards {
		if !c.Forwards[i].Equal(&back.Forwards[i]) {
			t.Errorf("forward %s differs after the round trip:\n%+v\n%+v\n%s", c.Forwards[i].Name, c.Forwards[i], back.Forwards[i], renderTOML(t, c))
		}
	}
}

// BenchmarkWriteTOML100000 is the record a daemon with 100,000 forwards
// writes after each start and reload, before fwdd reload returns.
func BenchmarkWriteTOML100000(b *testing.B) {
	c, err := Parse("fwdd.toml", generateConfig(100_000))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := c.WriteTOML(io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
