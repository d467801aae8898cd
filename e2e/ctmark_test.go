package e2e

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/doctor"
	"github.com/fwdd/fwdd/pkg/nft"
)

// fwdd owns the high 16 bits of the ct mark (tag 0xfd in bits 16-23, the
// forward id in bits 24-31); another tool owns the low 16.
const sharedMarkConfig = `
[daemon]
ct_mark = "0x00fd0000/0x00ff0000"
ct_mask = 0xffff0000

[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"
log = true

[[forward]]
name = "dgram"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

[[forward]]
name = "lab"
port = 81
to = "10.22.0.2:8080"
sources = ["10.11.0.0/24"]

[[forward]]
name = "plain"
port = 82
to = "10.22.0.2:8080"

[[forward]]
name = "clash"
port = 83
to = "10.22.0.2:8080"
`

// The other tool: before fwdd's DNAT (priority -150, after conntrack) it
// sets its own bits, 0xbeef, on the connections to ports 53, 80 and 81, and
// a bit inside fwdd's mask on those to port 83; its forward chain drops
// everything it is not told to accept.
const otherTool = `
table inet other {
	chain pre {
		type filter hook prerouting priority -150; policy accept;
		th dport { 53, 80, 81 } ct state new ct mark set ct mark or 0x0000beef
		tcp dport 83 ct state new ct mark set ct mark or 0x00010000
	}
	chain forward {
		type filter hook forward priority 0; policy drop;
	}
}
`

var conntrackLine = regexp.MustCompile(`^(tcp|udp)\s.*?dport=(\d+) .* mark=(\d+)`)

// marksByPort returns the ct marks of the gateway's conntrack entries by
// protocol and original destination port.
func marksByPort(t *testing.T, topo *sandbox.Topology) map[string][]uint32 {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), "conntrack", "-L")
	if err != nil {
		t.Fatalf("conntrack -L: %v\n%s", err, out)
	}
	m := map[string][]uint32{}
	for _, l := range strings.Split(string(out), "\n") {
		if g := conntrackLine.FindStringSubmatch(l); g != nil {
			v, _ := strconv.ParseUint(g[3], 10, 32)
			m[g[1]+"/"+g[2]] = append(m[g[1]+"/"+g[2]], uint32(v))
		}
	}
	return m
}

// With a partial ct_mask, fwdd sets only its bits: connections another
// tool marked first carry both tools' bits, fwdd attributes and counts
// them by its bits alone, the other tool's bits and table are untouched,
// and the one rule fwdd publishes (from doctor's advice) lets them through
// the other tool's drop policy.
func TestKernelCtMarkShared(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, "10.22.0.2:8080")
	listenUDP(t, topo.Backend, "10.22.0.2:5353")
	nftRun(t, topo, otherTool)
	d := startFwdd(t, topo, sharedMarkConfig)

	cfg, err := config.Load(d.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Daemon.CtMark
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range ids {
		if id < 1 || id > 255 {
			t.Fatalf("%s: id %d does not fit 8 id bits", name, id)
		}
	}

	// The published rule, for the chain at hand, with the configured bits.
	const allow = "nft insert rule inet other forward ct mark and 0x00ff0000 == 0x00fd0000 accept"
	rs, _ := runDoctor(t, topo, d.cfgPath, d.stateDir)
	want(t, rs, "other_firewall", "inet other forward", doctor.Fail, allow)
	mustNotReach(t, topo.Client, "10.11.0.1:82")
	if out, err := topo.Gateway.Run(ctxT(t), strings.Fields(allow)...); err != nil {
		t.Fatalf("%s: %v\n%s", allow, err, out)
	}
	before := nftList(t, topo, "table", "inet", "other")

	// Real traffic: held TCP connections, UDP datagrams, a restricted
	// forward's connection, one the other tool left alone, and one it
	// marked inside fwdd's bits.
	const n, k = 3, 4
	for i := 0; i < n; i++ {
		c, _, err := topo.Client.DialTCP(ctxT(t), "10.11.0.1:80")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for i := 0; i < k; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := topo.Client.AskUDP(ctx, "10.11.0.1:53", []byte("ping"), sandbox.FromPort(40000))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, port := range []string{"81", "82"} {
		c, _, err := topo.Client.DialTCP(ctxT(t), "10.11.0.1:"+port)
		if err != nil {
			t.Fatalf("port %s: %v", port, err)
		}
		defer c.Close()
	}
	// fwdd does not mark it, so the published rule does not accept it: the
	// other tool's policy drops it.
	mustNotReach(t, topo.Client, "10.11.0.1:83")

	marks := marksByPort(t, topo)
	for key, c := range map[string]struct {
		forward string
		other   uint32
		count   int
	}{"tcp/80": {"web", 0xbeef, n}, "udp/53": {"dgram", 0xbeef, 1}, "tcp/81": {"lab", 0xbeef, 1}, "tcp/82": {"plain", 0, 1}} {
		got := marks[key]
		if len(got) != c.count {
			t.Errorf("%s: %d conntrack entries, want %d (all: %v)", key, len(got), c.count, marks)
		}
		for _, m := range got {
			if m&^l.Mask != c.other || m&l.Mask != l.ForID(ids[c.forward]) {
				t.Errorf("%s: ct mark 0x%08x, want the other tool's 0x%04x and fwdd's 0x%08x (forward %s)", key, m, c.other, l.ForID(ids[c.forward]), c.forward)
			}
		}
	}
	for _, m := range marks["tcp/83"] {
		if m != 0x00010000 {
			t.Errorf("tcp/83: ct mark 0x%08x; fwdd must leave a mark with its bits set alone", m)
		}
	}

	st := readStatus(t, topo, d.cfgPath)
	if !st.Table.Present || !st.Table.MatchesConfig {
		t.Errorf("status: table present %v, matches %v", st.Table.Present, st.Table.MatchesConfig)
	}
	for _, f := range st.Forwards {
		wantConns := map[string]int{"web": n, "dgram": 1, "lab": 1, "plain": 1}[f.Name]
		if f.Connections != wantConns || f.NewConnections != uint64(wantConns) {
			t.Errorf("%s: %d live and %d new connections, want %d", f.Name, f.Connections, f.NewConnections, wantConns)
		}
		if wantConns > 0 && (f.PacketsOriginal == 0 || f.PacketsReply == 0) {
			t.Errorf("%s: packets %d/%d, want both directions counted", f.Name, f.PacketsOriginal, f.PacketsReply)
		}
	}
	if _, pr, _, _, _ := forwardStatus(st, "dgram"); pr != k {
		t.Errorf("dgram: %d reply packets, want %d", pr, k)
	}
	// The event filter matches fwdd's bits only.
	if err := sandbox.Eventually(5*time.Second, func() error {
		if got := strings.Count(d.proc.Output(), `"forward": "web"`); got < n {
			return fmt.Errorf("%d connection log lines for web, want %d", got, n)
		}
		return nil
	}); err != nil {
		t.Errorf("%v:\n%s", err, d.proc.Output())
	}
	if after := nftList(t, topo, "table", "inet", "other"); after != before {
		t.Errorf("the other tool's table changed:\n%s\nwas:\n%s", after, before)
	}

	// A reload that moves the UDP forward deletes its conntrack entry,
	// found by fwdd's bits whatever the other tool's: the same client flow
	// reaches the new backend at once. The held TCP connections stay.
	moved := listenUDP(t, topo.Backend, "10.22.0.2:6353")
	if out, err := d.reload(strings.Replace(sharedMarkConfig, "10.22.0.2:5353", "10.22.0.2:6353", 1)); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if _, err := topo.Client.AskUDP(ctx, "10.11.0.1:53", []byte("ping"), sandbox.FromPort(40000)); err != nil || countFrom(moved, 40000) != 1 {
		t.Errorf("after the reload the UDP flow did not reach the new backend (%v; %d datagrams there)", err, countFrom(moved, 40000))
	}
	if got := marksByPort(t, topo)["tcp/80"]; len(got) != n {
		t.Errorf("after the reload %d entries of web, want %d", len(got), n)
	}
}
