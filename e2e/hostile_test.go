package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// TestKernelHostileReloads sends the daemon one file of each class the config
// refuses, directly by SIGHUP (fwdd reload would check it first): each is
// refused with its reason and leaves the ruleset byte-identical.
func TestKernelHostileReloads(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	const good = "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.22.0.2:8080\"\n"
	fwd := func(lines ...string) string {
		return "[[forward]]\nname = \"x\"\nport = 81\n" + strings.Join(lines, "\n") + "\n"
	}
	d := startFwdd(t, topo, good)
	before := nftList(t, topo, "ruleset")
	for _, tt := range []struct{ name, cfg, want string }{
		{"key case", good + "Port = 81\n", `unknown key \"Port\" (keys are lower case: port)`},
		{"table case", "[daemon]\nTABLE = \"other\"\n" + good, `unknown key \"TABLE\"`},
		{"section case", "[Daemon]\ntable = \"other\"\n" + good, `unknown key \"Daemon\"`},
		{"loopback to", good + fwd(`to = "127.0.0.1:8080"`), "CVE-2020-8558"},
		{"link-local to", good + fwd(`to = "[fe80::1]:8080"`), "link-local"},
		{"multicast snat", good + fwd(`to = "10.22.0.2"`, `snat = "224.0.0.1"`), "cannot be a source address"},
		{"port-like last group", good + fwd(`to = "fd22::2:8080"`), `write \"[fd22::2]:8080\"`},
		{"host bits", good + fwd(`to = "10.22.0.2"`, `sources = ["10.11.0.5/24"]`), "write 10.11.0.0/24"},
		{"interface wildcard", good + fwd(`to = "10.22.0.2"`, `interface = "cli*"`), "wildcards"},
		{"interface injection", good + fwd(`to = "10.22.0.2"`, `interface = 'x";drop#'`), "is not a valid interface name"},
		{"metrics host", "[daemon]\nmetrics = \"not a host:9641\"\n" + good, "is not an IP address"},
		{"unclosed header", good + "[[forward]\nname = \"y\"\n", ":5: invalid TOML: the header is not closed"},
		{"top-level forward key", "forward.name = \"y\"\n", ":1: forward: must be an array of tables"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			writeConfig(t, d.cfgPath, tt.cfg)
			n := strings.Count(d.proc.Output(), "reload failed")
			if err := d.proc.Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			if err := sandbox.Eventually(10*time.Second, func() error {
				if strings.Count(d.proc.Output(), "reload failed") == n {
					return fmt.Errorf("no verdict yet")
				}
				return nil
			}); err != nil {
				t.Fatalf("no reload error logged:\n%s", d.proc.Output())
			}
			if out := d.proc.Output(); !strings.Contains(out[strings.LastIndex(out, "reload failed"):], tt.want) {
				t.Errorf("reload error does not say %s:\n%s", tt.want, out[strings.LastIndex(out, "reload failed"):])
			}
			if after := nftList(t, topo, "ruleset"); after != before {
				t.Errorf("ruleset changed by a refused reload:\n--- before\n%s\n--- after\n%s", before, after)
			}
		})
	}
	select {
	case <-d.proc.Done():
		t.Fatalf("daemon died:\n%s", d.proc.Output())
	default:
	}
}
