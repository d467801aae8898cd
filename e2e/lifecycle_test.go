package e2e

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const foreignTable = `
table ip filter {
	chain forward {
		type filter hook forward priority 0; policy accept;
		tcp dport 9999 counter accept
	}
}
`

const reloadBefore = `
[[forward]]
name = "keep"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "moves"
port = 81
to = "10.22.0.2:8081"

[[forward]]
name = "goes"
port = 82
to = "10.22.0.2:8080"
`

const reloadAfter = `
[[forward]]
name = "keep"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "moves"
port = 81
to = "10.22.0.2:8082"

[[forward]]
name = "new"
port = 83
to = "10.22.0.2:8080"
`

func TestKernelReload(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	be := topo.Backend
	listenTCP(t, be, "10.22.0.2:8080")
	s8081 := listenTCP(t, be, "10.22.0.2:8081")
	s8082 := listenTCP(t, be, "10.22.0.2:8082")
	nftRun(t, topo, foreignTable)
	foreign := nftList(t, topo, "table", "ip", "filter")

	d := startFwdd(t, topo, reloadBefore)
	if got := nftList(t, topo, "table", "ip", "filter"); got != foreign {
		t.Errorf("foreign table changed at start:\n%s\nwant:\n%s", got, foreign)
	}
	mustGreet(t, topo.Client, "10.11.0.1:81", "backend")
	if len(s8081.Peers()) != 1 {
		t.Fatalf("8081 saw %d connections before reload", len(s8081.Peers()))
	}

	// A connection of an unchanged forward, held open across the reload.
	held, _, err := topo.Client.DialTCP(ctxT(t), "10.11.0.1:80")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	echo := func(msg string) error { return sandbox.Echo(held, msg) }
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	t.Run("good change", func(t *testing.T) {
		out, err := d.reload(reloadAfter)
		if err != nil {
			t.Fatalf("fwdd reload: %v\n%s", err, out)
		}
		mustGreet(t, topo.Client, "10.11.0.1:81", "backend")
		if len(s8082.Peers()) != 1 || len(s8081.Peers()) != 1 {
			t.Errorf("after reload: 8081 saw %d, 8082 saw %d connections; want 1 and 1", len(s8081.Peers()), len(s8082.Peers()))
		}
		mustGreet(t, topo.Client, "10.11.0.1:83", "backend")
		mustNotReach(t, topo.Client, "10.11.0.1:82")
		if err := echo("after"); err != nil {
			t.Errorf("held connection of an unchanged forward broke across the reload: %v", err)
		}
		if !strings.Contains(d.proc.Output(), `"added": ["new"], "removed": ["goes"], "changed": ["moves"]`) {
			t.Errorf("reload log does not name the changes:\n%s", d.proc.Output())
		}
		if got := nftList(t, topo, "table", "ip", "filter"); got != foreign {
			t.Errorf("foreign table changed by reload:\n%s", got)
		}
	})

	t.Run("broken file", func(t *testing.T) {
		before := nftList(t, topo, "ruleset")
		out, err := d.reload(reloadAfter + "\n[[forward]]\nname = \"bad\"\nport = 70000\nto = \"10.22.0.2\"\n")
		if err == nil {
			t.Fatalf("fwdd reload accepted a broken file:\n%s", out)
		}
		if !strings.Contains(out, "port") || !strings.Contains(out, "bad") {
			t.Errorf("reload error does not say what is wrong:\n%s", out)
		}
		// Signal the daemon directly too: it must refuse, log and keep running.
		if l, err := d.Reload(); err == nil || l.Msg != "reload failed; the running rules are unchanged" || !strings.Contains(err.Error(), "port") {
			t.Fatalf("SIGHUP with a broken file: %v; logged %q", err, l.Text)
		}
		if after := nftList(t, topo, "ruleset"); after != before {
			t.Errorf("ruleset changed by a broken reload:\n--- before\n%s\n--- after\n%s", before, after)
		}
		select {
		case <-d.proc.Done():
			t.Fatalf("daemon died on a broken reload:\n%s", d.proc.Output())
		default:
		}
		mustGreet(t, topo.Client, "10.11.0.1:83", "backend")
		if err := echo("still"); err != nil {
			t.Errorf("held connection broke: %v", err)
		}
	})

	t.Run("stop flushes", func(t *testing.T) {
		d.stop()
		if got := nftList(t, topo, "table", "inet", "fwdd"); got != "" {
			t.Errorf("table still there after stop with on_stop = flush:\n%s", got)
		}
		if got := nftList(t, topo, "table", "ip", "filter"); got != foreign {
			t.Errorf("foreign table changed by stop:\n%s", got)
		}
	})
}

func TestKernelOnStopKeep(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	cfg := "[daemon]\non_stop = \"keep\"\n" + reloadBefore
	d := startFwdd(t, topo, cfg)
	table := nftList(t, topo, "table", "inet", "fwdd")
	d.stop()
	if got := nftList(t, topo, "table", "inet", "fwdd"); got == "" {
		t.Fatal("table removed although on_stop = keep")
	}
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend")
	// A restart takes the kept table over, with the same forward ids.
	if err := d.Restart(); err != nil {
		t.Fatal(err)
	}
	if got := nftList(t, topo, "table", "inet", "fwdd"); stripCounters(got) != stripCounters(table) {
		t.Errorf("restart changed the table:\n%s\nwant:\n%s", got, table)
	}
	d.stop()
}

// stripCounters drops counter values and handles, which differ between runs.
func stripCounters(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(s, "\n") {
		if i := strings.Index(l, " # handle"); i >= 0 {
			l = l[:i]
		}
		if i := strings.Index(l, "counter packets"); i >= 0 {
			l = l[:i]
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// A drop-by-default forward chain in another table: fwdd warns, and the
// accept rule the README recommends lets its connections through.
func TestKernelForeignDropPolicy(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	nftRun(t, topo, `
table ip strict {
	chain forward {
		type filter hook forward priority 0; policy drop;
	}
}
`)
	d := startFwdd(t, topo, reloadBefore)
	// The warning comes before "ready", which may follow the "forwarding"
	// line startFwdd waits for.
	if err := sandbox.Eventually(5*time.Second, func() error {
		if out := d.proc.Output(); !strings.Contains(out, "another firewall drops fwdd's forwarded connections") ||
			!strings.Contains(out, "table ip strict chain forward") {
			return errors.New("not yet")
		}
		return nil
	}); err != nil {
		t.Errorf("no warning about the foreign drop policy:\n%s", d.proc.Output())
	}
	mustNotReach(t, topo.Client, "10.11.0.1:80")
	nftRun(t, topo, "add rule ip strict forward ct mark and 0xff000000 == 0xfd000000 accept\n")
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
}

// forward_policy = "drop": the drop-by-default FORWARD chain of the manual
// procedure, owned by fwdd: only fwdd's connections are forwarded.
func TestKernelForwardPolicyDrop(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true})
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	listenTCP(t, topo.Other, "10.44.0.2:80")
	cfg := "[daemon]\nforward_policy = \"drop\"\n" + reloadBefore
	d := startFwdd(t, topo, cfg)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	mustNotReach(t, topo.Client, "10.44.0.2:80") // transit: not fwdd's, dropped
	printed, err := fwdd(t, topo, "print", "-c", d.cfgPath)
	if err != nil || !strings.Contains(printed, "policy drop;") {
		t.Fatalf("fwdd print: %v\n%s", err, printed)
	}
	script := filepath.Join(t.TempDir(), "print.nft")
	writeConfig(t, script, printed)
	if res, err := topo.Gateway.Run(ctxT(t), "nft", "-c", "-f", script); err != nil {
		t.Fatalf("nft -c -f rejects fwdd print with forward_policy = drop: %v\n%s", err, res)
	}

	out, err := d.reload(reloadBefore) // back to the default, accept
	if err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	mustGreet(t, topo.Client, "10.44.0.2:80", "other 10.11.0.2:")
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	if !strings.Contains(d.proc.Output(), `"fullReplace": true`) {
		t.Errorf("a policy change was not applied by replacing the table:\n%s", d.proc.Output())
	}
}
