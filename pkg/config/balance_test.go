package config

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/pkg/health"
	"github.com/google/go-cmp/cmp"
)

// withOneBackend fills in what every forward of the older tests has: its
// one backend and the balancing defaults.
func withOneBackend(c *Config) *Config {
	if c == nil {
		return nil
	}
	out := *c
	out.Forwards = append([]Forward(nil), c.Forwards...)
	for i := range out.Forwards {
		f := &out.Forwards[i]
		if f.Backends == nil {
			f.Backends = []Backend{{To: f.To, ToPort: f.ToPort, Weight: 1}}
		}
		if f.Balance == "" {
			f.Balance = BalanceRandom
		}
		if f.Health == (health.Spec{}) {
			f.Health = defaultHealth
		}
		if f.OnChange == "" {
			f.OnChange = OnChangeKeep
		}
	}
	return &out
}

func TestParseBalancing(t *testing.T) {
	cfg, err := Parse("fwdd.toml", []byte(`
[[forward]]
name = "web"
port = 80
to = ["10.0.2.10:8080", "10.0.2.11:8080", "10.0.2.12:8080"]
balance = "random"
health = { check = "tcp", interval = "2s", timeout = "1s", fall = 3, rise = 2 }

[[forward]]
name = "api"
port = 443
balance = "source"
on_change = "cut"
health = { check = "http", interval = "500ms" }
[[forward.backend]]
to = "10.0.2.20:443"
weight = 3
[[forward.backend]]
to = "10.0.2.21:443"

[[forward]]
name = "range"
port = "1000-1009"
to = ["10.0.3.1:2000-2009", "10.0.3.2:3000-3009"]

[[forward]]
name = "one"
port = 81
to = "10.0.2.10"
`))
	if err != nil {
		t.Fatal(err)
	}
	ap := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	want := []struct {
		backends []Backend
		balance  Balance
		health   health.Spec
		onChange OnChange
	}{
		{[]Backend{{ap("10.0.2.10"), PortRange{8080, 8080}, 1}, {ap("10.0.2.11"), PortRange{8080, 8080}, 1}, {ap("10.0.2.12"), PortRange{8080, 8080}, 1}},
			BalanceRandom, health.Spec{Kind: health.KindTCP, Interval: 2 * time.Second, Timeout: time.Second, Fall: 3, Rise: 2}, OnChangeKeep},
		{[]Backend{{ap("10.0.2.20"), PortRange{443, 443}, 3}, {ap("10.0.2.21"), PortRange{443, 443}, 1}},
			BalanceSource, health.Spec{Kind: health.KindHTTP, Interval: 500 * time.Millisecond, Timeout: 500 * time.Millisecond, Fall: 3, Rise: 2, Path: "/"}, OnChangeCut},
		{[]Backend{{ap("10.0.3.1"), PortRange{2000, 2009}, 1}, {ap("10.0.3.2"), PortRange{3000, 3009}, 1}},
			BalanceRandom, defaultHealth, OnChangeKeep},
		{[]Backend{{ap("10.0.2.10"), PortRange{}, 1}}, BalanceRandom, defaultHealth, OnChangeKeep},
	}
	for i, w := range want {
		f := cfg.Forwards[i]
		if d := cmp.Diff(w.backends, f.Backends, cmpOpts); d != "" {
			t.Errorf("%s: backends (-want +got):\n%s", f.Name, d)
		}
		if f.Balance != w.balance || f.Health != w.health || f.OnChange != w.onChange {
			t.Errorf("%s: balance %q health %+v on_change %q; want %q %+v %q", f.Name, f.Balance, f.Health, f.OnChange, w.balance, w.health, w.onChange)
		}
		if f.To != f.Backends[0].To || f.ToPort != f.Backends[0].ToPort {
			t.Errorf("%s: To %v ToPort %v, want the first backend's", f.Name, f.To, f.ToPort)
		}
		if f.Balanced() != (len(w.backends) > 1) {
			t.Errorf("%s: Balanced = %v", f.Name, f.Balanced())
		}
	}
}

func TestParseBalancingBad(t *testing.T) {
	fwd := func(lines ...string) string {
		return "[[forward]]\nname = \"web\"\nport = 80\n" + strings.Join(lines, "\n") + "\n"
	}
	two := `to = ["10.0.0.1:80", "10.0.0.2:80"]`
	for _, tc := range []struct{ name, in, want string }{
		{"empty list", fwd(`to = []`), `fwdd.toml:4: forward "web": to: empty list; give at least one backend`},
		{"mixed families", fwd(`to = ["10.0.0.1:80", "[fd00::1]:80"]`), `fwdd.toml:4: forward "web": to: backend [fd00::1]:80 is IPv6 but backend 10.0.0.1:80 is IPv4; all backends of a forward must be one family`},
		{"mixed families in tables", fwd("[[forward.backend]]", `to = "10.0.0.1:80"`, "[[forward.backend]]", `to = "[fd00::1]:80"`), `fwdd.toml:7: forward "web": to: backend [fd00::1]:80 is IPv6`},
		{"weight 0", fwd("[[forward.backend]]", `to = "10.0.0.1:80"`, "weight = 0"), `fwdd.toml:6: forward "web": weight: 0 is out of range; must be between 1 and 100`},
		{"weight 101", fwd("[[forward.backend]]", `to = "10.0.0.1:80"`, "weight = 101"), `fwdd.toml:6: forward "web": weight: 101 is out of range; must be between 1 and 100`},
		{"list and tables", fwd(two, "[[forward.backend]]", `to = "10.0.0.3:80"`), `fwdd.toml:5: forward "web": backend: to and [[forward.backend]] are exclusive`},
		{"backend without to", fwd("[[forward.backend]]", "weight = 2"), `fwdd.toml:4: forward "web": to: required in every [[forward.backend]]`},
		{"unknown backend key", fwd("[[forward.backend]]", `to = "10.0.0.1:80"`, "wieght = 2"), `fwdd.toml:6: forward "web": wieght: unknown key "wieght" in [[forward.backend]]; allowed: to, weight`},
		{"duplicate", fwd(`to = ["10.0.0.1:80", "10.0.0.1:80"]`), `backend 10.0.0.1:80 is listed twice`},
		{"duplicate written two ways", fwd(`to = ["10.0.0.1", "10.0.0.1:80"]`), `fwdd.toml:4: forward "web": to: backend 10.0.0.1:80 is backend 10.0.0.1 again: with port 80 both get the same connections; list it once`},
		{"http path with a bad escape", fwd(two, `health = { check = "http", path = "/status%zz" }`), `fwdd.toml:5: forward "web": health: path "/status%zz" is not a URL path: invalid URL escape "%zz"; it must start with / and hold printable ASCII only`},
		{"http path with a control byte", fwd(two, `health = { check = "http", path = "/a\u0007b" }`), `health: path "/a\ab" has the byte '\a'`},
		{"http path not absolute", fwd(two, `health = { check = "http", path = "health" }`), `health: path "health" does not start with /`},
		{"not strings", fwd(`to = ["10.0.0.1:80", 5]`), `to: list elements must be backend addresses`},
		{"unknown check", fwd(two, `health = { check = "ping" }`), `fwdd.toml:5: forward "web": health: check "ping" is not allowed; must be "none", "tcp" or "http"`},
		{"interval below timeout", fwd(two, `health = { check = "tcp", interval = "1s", timeout = "2s" }`), `fwdd.toml:5: forward "web": health: interval 1s is below timeout 2s; timeout must be at most interval`},
		{"path without http", fwd(two, `health = { check = "tcp", path = "/x" }`), `fwdd.toml:5: forward "web": health: path is only for check = "http"`},
		{"bad duration", fwd(two, `health = { check = "tcp", interval = "2" }`), `health: interval "2" is not a duration`},
		{"unknown health key", fwd(two, `health = { check = "tcp", inter = "2s" }`), `health: unknown key "inter" in health; allowed: check, interval, timeout, fall, rise, path`},
		{"fall 0", fwd(two, `health = { check = "tcp", fall = 0 }`), `health: fall must be an integer between 1 and 100`},
		{"balance", fwd(two, `balance = "roundrobin"`), `fwdd.toml:5: forward "web": balance: "roundrobin" is not allowed; must be "random" or "source"`},
		{"on_change", fwd(two, `on_change = "reset"`), `on_change: "reset" is not allowed; must be "keep" or "cut"`},
		{"range mapped differently", "[[forward]]\nname = \"r\"\nport = \"1000-1009\"\nto = [\"10.0.0.1:2000-2009\", \"10.0.0.2:80\"]\n",
			`forward "r": to: backend 10.0.0.2:80 maps the port range 1000-1009 differently from backend 10.0.0.1:2000-2009`},
		{"range length", "[[forward]]\nname = \"r\"\nport = \"1000-1009\"\nto = [\"10.0.0.1:2000-2009\", \"10.0.0.2:3000-3001\"]\n",
			`port range 1000-1009 has 10 ports but to range 3000-3001 has 2`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("fwdd.toml", []byte(tc.in))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.in)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error:\n%v\nwant it to contain:\n%s", err, tc.want)
			}
		})
	}
}
