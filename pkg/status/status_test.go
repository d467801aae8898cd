package status

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/config"
)

func TestDescriptions(t *testing.T) {
	cfg := testutil.Config(t, `
[[forward]]
name = "web"
port = 80
to = "192.168.1.50:8080"

[[forward]]
name = "dns"
proto = ["tcp", "udp"]
port = 53
address = "10.0.0.1"
to = "192.168.1.53"
snat = "none"

[[forward]]
name = "lab"
port = "2200-2201"
to = "[fd00::7]:22"
interface = "eth1"
sources = ["fd01::/64"]
snat = "fd00::1"
`)
	for i, want := range [][3]string{
		{"tcp 80 on any local address", "192.168.1.50:8080", "masquerade"},
		{"tcp,udp 53 on 10.0.0.1", "192.168.1.53 (same port)", "none"},
		{"tcp 2200-2201 on any local address via eth1 from fd01::/64", "[fd00::7]:22", "fd00::1"},
	} {
		f := &cfg.Forwards[i]
		if got := [3]string{Match(f), Target(f), SNAT(f)}; got != want {
			t.Errorf("%s: got %q, want %q", f.Name, got, want)
		}
	}
}

func TestWriteText(t *testing.T) {
	r := &Report{Config: "/etc/fwdd/fwdd.toml", Table: Table{Name: "inet fwdd", Present: true, MatchesConfig: true},
		IPForward: true, Conntrack: Conntrack{Count: 10, Max: 1000},
		Forwards: []Forward{{Name: "web", Match: "tcp 80 on any local address", Target: "10.0.0.2:8080", SNAT: "masquerade",
			Packets: 12, Bytes: 3 << 20, Connections: 3, Established: 2, NewConnections: 40}}}
	textHas(t, r,
		"table inet fwdd: present, matches /etc/fwdd/fwdd.toml",
		"forwarding: ipv4 on, ipv6 off",
		"conntrack: 10 of 1000 entries (1.0%)",
		"FORWARD  MATCH                        TARGET         SNAT        ESTAB  CONNS  NEW  PACKETS  BYTES",
		"web      tcp 80 on any local address  10.0.0.2:8080  masquerade  2      3      40   12       3.0 MiB",
	)
}

// textHas fails t unless r's text holds each of wants.
func textHas(t *testing.T, r *Report, wants ...string) {
	t.Helper()
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range wants {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status text lacks %q:\n%s", want, b.String())
		}
	}
}

func TestSelectForwards(t *testing.T) {
	cfg := testutil.Config(t, `
[[forward]]
name = "a"
port = 80
to = "192.168.1.50"

[[forward]]
name = "b"
port = 81
to = "192.168.1.50"

[[forward]]
name = "c"
port = 82
to = "192.168.1.50"
`)
	names := func(fs []*config.Forward) (out []string) {
		for _, f := range fs {
			out = append(out, f.Name)
		}
		return out
	}
	if got, err := selectForwards(cfg, nil); err != nil || strings.Join(names(got), ",") != "a,b,c" {
		t.Errorf("all: %v %v", names(got), err)
	}
	if got, err := selectForwards(cfg, []string{"c", "a"}); err != nil || strings.Join(names(got), ",") != "a,c" {
		t.Errorf("c, a: %v %v", names(got), err)
	}
	if _, err := selectForwards(cfg, []string{"a", "nope"}); err == nil || !strings.Contains(err.Error(), `no forward "nope" in fwdd.toml`) {
		t.Errorf("unknown forward: %v", err)
	}
}

func TestWriteTextBackends(t *testing.T) {
	since := time.Date(2026, 12, 1, 10, 0, 0, 0, time.Local)
	r := &Report{Config: "/etc/fwdd/fwdd.toml", Table: Table{Name: "inet fwdd", Present: true, MatchesConfig: true},
		Forwards: []Forward{{Name: "web", Match: "tcp 80 on any local address", Target: "10.0.2.10:8080", SNAT: "masquerade",
			Backends: []Backend{
				{Address: "10.0.2.10:8080", Weight: 3, Health: "up", Reason: "connected", Since: &since, Connections: 4, Established: 2, Packets: 40, Bytes: 2048},
				{Address: "10.0.2.11:8080", Weight: 1, Health: "down", Reason: "refused", Since: &since},
			}}}}
	textHas(t, r,
		"2 backends",
		"FORWARD  BACKEND         WEIGHT  HEALTH  LAST CHECK",
		"web      10.0.2.10:8080  3       up      connected since 2026-12-01 10:00:00  2      4      40            2.0 KiB",
		"web      10.0.2.11:8080  1       down    refused since 2026-12-01 10:00:00    0      0      0             0 B",
	)
}
