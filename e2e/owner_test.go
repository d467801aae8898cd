package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// debianFilter is Debian's table inet filter with a drop-by-default input.
const debianFilter = `
table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
	}
	chain forward {
		type filter hook forward priority filter;
	}
}
`

// TestKernelOwnership: with [daemon] table naming another program's table,
// fwdd refuses to start and leaves that table byte-identical; a same-named
// table put in place of fwdd's while it runs is neither replaced by a
// reload or a heal nor deleted at stop.
func TestKernelOwnership(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	nftRun(t, topo, debianFilter)
	before := nftList(t, topo, "ruleset")

	p, err := topo.Gateway.Start(ctxT(t), fwddBin, "run", "-c", writeTemp(t, "[daemon]\ntable = \"filter\"\n"+reloadBefore),
		"--state-dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(20 * time.Second):
		t.Fatalf("fwdd did not refuse the table:\n%s", p.Output())
	}
	if !strings.Contains(p.Output(), "table inet filter exists and was not created by fwdd (chains input, forward)") {
		t.Errorf("no clear refusal:\n%s", p.Output())
	}
	if got := nftList(t, topo, "ruleset"); got != before {
		t.Fatalf("the other table changed:\n%s\nwant:\n%s", got, before)
	}

	d := startFwdd(t, topo, reloadBefore)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend")
	// Another program replaces fwdd's table with its own of the same name.
	nftRun(t, topo, "delete table inet fwdd\ntable inet fwdd {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n")
	theirs := nftList(t, topo, "table", "inet", "fwdd")
	if err := sandbox.Eventually(5*time.Second, func() error {
		if !strings.Contains(d.proc.Output(), "not re-applying the table") {
			return errString("no refusal to heal")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v:\n%s", err, d.proc.Output())
	}
	out, err := d.reload(reloadAfter)
	if err == nil || !strings.Contains(out, "table inet fwdd exists and was not created by fwdd (chains input)") {
		t.Errorf("reload over a foreign table: %v\n%s", err, out)
	}
	d.stop()
	if got := nftList(t, topo, "table", "inet", "fwdd"); got != theirs {
		t.Errorf("their table changed:\n%s\nwant:\n%s", got, theirs)
	}
	if !strings.Contains(d.proc.Output(), "stopped; table not removed") {
		t.Errorf("stop did not say it left the table:\n%s", d.proc.Output())
	}
}

// TestKernelAdoptsOwnTable: a table fwdd left behind (on_stop = "keep", a
// crash) is adopted by the next start, even one of a fwdd before the mark.
func TestKernelAdoptsOwnTable(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	cfg := "[daemon]\non_stop = \"keep\"\n" + reloadBefore
	d := startFwdd(t, topo, cfg)
	d.stop()
	// Remove the mark, as a table of an earlier fwdd would lack it.
	listing := nftList(t, topo, "chain", "inet", "fwdd", "prerouting")
	h := handleOf(t, listing, `comment "managed by fwdd"`)
	gwNft(t, topo, "replace", "rule", "inet", "fwdd", "prerouting", "handle", h, "jump", "dispatch")
	d = startFwdd(t, topo, cfg)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend")
	if !strings.Contains(nftList(t, topo, "chain", "inet", "fwdd", "prerouting"), `comment "managed by fwdd"`) {
		t.Error("the adopted table was not marked")
	}
	d.stop()
}

type errString string

func (e errString) Error() string { return string(e) }

func writeTemp(t *testing.T, text string) string {
	t.Helper()
	path := t.TempDir() + "/fwdd.toml"
	writeConfig(t, path, text)
	return path
}

// handleOf returns the handle of the line of an `nft -a list` containing s.
func handleOf(t *testing.T, listing, s string) string {
	t.Helper()
	for _, l := range strings.Split(listing, "\n") {
		if strings.Contains(l, s) {
			if i := strings.Index(l, "# handle "); i >= 0 {
				return strings.TrimSpace(l[i+len("# handle "):])
			}
		}
	}
	t.Fatalf("no %q in:\n%s", s, listing)
	return ""
}
