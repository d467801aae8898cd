package doctor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jsimonetti/rtnetlink/v2"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

func TestConntrackResult(t *testing.T) {
	c := config.Conntrack{WarnPercent: 80, CriticalPercent: 95}
	for _, tc := range []struct {
		count, max int
		want       Status
	}{{10, 100, OK}, {79, 100, OK}, {80, 100, Warn}, {95, 100, Fail}, {100, 100, Fail}, {5, 0, OK}} {
		r := conntrackResult(tc.count, tc.max, c, true)
		if r.Status != tc.want {
			t.Errorf("%d/%d: %s, want %s", tc.count, tc.max, r.Status, tc.want)
		}
		if r.Status != OK && !strings.Contains(r.Fix, "[sysctl] conntrack_max = ") {
			t.Errorf("%d/%d: fix %q", tc.count, tc.max, r.Fix)
		}
	}
	// Where nf_conntrack_max is read-only (a child network namespace, a
	// container), the config key would make fwdd refuse to start.
	r := conntrackResult(90, 100, c, false)
	if r.Status != Warn || strings.Contains(r.Fix, "[sysctl] conntrack_max = ") ||
		!strings.Contains(r.Fix, "on the host (sysctl -w net.netfilter.nf_conntrack_max=200 there") {
		t.Errorf("read-only: %+v", r)
	}
}

func TestBucketsResult(t *testing.T) {
	if r := bucketsResult(262144, 262144, true); r.Status != OK {
		t.Errorf("equal: %+v", r)
	}
	r := bucketsResult(1048576, 65536, true)
	if r.Status != Warn || !strings.Contains(r.Fix, "[sysctl] conntrack_buckets = 1048576") {
		t.Errorf("16 per bucket: %+v", r)
	}
	r = bucketsResult(1048576, 65536, false)
	if r.Status != Warn || strings.Contains(r.Fix, "[sysctl] conntrack_buckets = ") ||
		!strings.Contains(r.Fix, "sysctl -w net.netfilter.nf_conntrack_buckets=1048576 on the host") {
		t.Errorf("16 per bucket, read-only: %+v", r)
	}
}

// TestConntrackChecksReadOnly: where nf_conntrack_max and
// nf_conntrack_buckets are read-only (0444, as in a child network
// namespace), neither check suggests the [sysctl] key that would make fwdd
// refuse to start there; where they are writable, both do.
func TestConntrackChecksReadOnly(t *testing.T) {
	for _, mode := range []os.FileMode{0o444, 0o644} {
		proc := t.TempDir()
		dir := filepath.Join(proc, "sys", "net", "netfilter")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		values := map[string]string{"nf_conntrack_count": "900000", "nf_conntrack_max": "1000000", "nf_conntrack_buckets": "65536"}
		for name, v := range values {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
				t.Fatal(err)
			}
		}
		e := &Env{Cfg: testutil.Config(t, ""), Proc: proc, Sysctls: sysctl.NewFS(filepath.Join(proc, "sys"))}
		for _, r := range append(checkConntrack(e), checkBuckets(e)...) {
			key := strings.Contains(r.Fix, "[sysctl] conntrack_")
			if r.Status != Warn || key != (mode == 0o644) || !strings.Contains(r.Fix, "sysctl -w net.netfilter.nf_conntrack_") {
				t.Errorf("mode %#o: %s: %s (fix %q)", mode, r.Status, r.Message, r.Fix)
			}
		}
	}
}

// TestSettable reads the mode of a sysctl laid out under a fake /proc.
func TestSettable(t *testing.T) {
	proc := t.TempDir()
	dir := filepath.Join(proc, "sys", "net", "netfilter")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"nf_conntrack_max": 0o644, "nf_conntrack_buckets": 0o444} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("262144\n"), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(dir, name), mode); err != nil {
			t.Fatal(err)
		}
	}
	e := &Env{Proc: proc}
	if !e.settable("net.netfilter.nf_conntrack_max") {
		t.Error("0644: not settable")
	}
	if e.settable("net.netfilter.nf_conntrack_buckets") {
		t.Error("0444: settable")
	}
	if e.settable("net.netfilter.nf_conntrack_missing") {
		t.Error("missing: settable")
	}
}

// TestKernelSettable: in a child network namespace the kernel makes
// nf_conntrack_max and nf_conntrack_buckets read-only.
func TestKernelSettable(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	e := &Env{Proc: "/proc"}
	err := topo.Gateway.Do(func() error {
		for _, name := range []string{"net.netfilter.nf_conntrack_max", "net.netfilter.nf_conntrack_buckets"} {
			if e.settable(name) {
				return fmt.Errorf("%s settable in a child network namespace", name)
			}
		}
		if !e.settable("net.netfilter.nf_conntrack_tcp_timeout_established") {
			return fmt.Errorf("nf_conntrack_tcp_timeout_established (per namespace) not settable")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSoftirqShare(t *testing.T) {
	before := "cpu  100 0 100 700 0 0 100 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
	after := "cpu  110 0 110 720 0 0 160 0 5 5\n"
	got, err := softirqShare(before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got != 60 { // 60 softirq jiffies of 100
		t.Errorf("share %v, want 60", got)
	}
	if r := softirqResult(got, time.Second); r.Status != Warn || !strings.Contains(r.Fix, "rps_cpus") {
		t.Errorf("result %+v", r)
	}
	if r := softirqResult(3, time.Second); r.Status != OK {
		t.Errorf("result %+v", r)
	}
	if _, err := softirqShare("intr 1 2\n", after); err == nil {
		t.Error("no cpu line: no error")
	}
}

const interrupts = `           CPU0       CPU1
 24:     120000          0   PCI-MSI 1048576-edge      eth0-rx-0
 25:      50000          0   PCI-MSI 1048577-edge      eth0-rx-1
 26:          3          0   PCI-MSI 1048578-edge      eth10-rx-0
 27:          0          0   PCI-MSI 1048579-edge      virtio0-config
`

func TestQueues(t *testing.T) {
	irqs := irqCounts(interrupts, "eth0")
	if len(irqs) != 2 || irqs["24"][0] != 120000 {
		t.Fatalf("irqCounts: %v", irqs)
	}
	if r := queuesResult("eth0", 2, 2, irqs, true); r.Status != Warn || !strings.Contains(r.Fix, "irqbalance") {
		t.Errorf("one CPU: %+v", r)
	}
	if r := queuesResult("eth0", 1, 4, nil, false); r.Status != Warn || !strings.Contains(r.Fix, "echo f > /sys/class/net/eth0/queues/rx-0/rps_cpus") {
		t.Errorf("one queue: %+v", r)
	}
	spread := map[string][]uint64{"24": {5, 0}, "25": {0, 7}}
	if r := queuesResult("eth0", 2, 2, spread, true); r.Status != OK {
		t.Errorf("spread: %+v", r)
	}
}

func TestZeroCounters(t *testing.T) {
	cfg := testutil.Config(t, "[[forward]]\nname = \"a\"\nport = 80\nto = \"10.0.0.2\"\n[[forward]]\nname = \"b\"\nport = 81\nto = \"10.0.0.2\"\n")
	rs := zeroCounters(cfg, map[string]uint64{"a": 10, "b": 0})
	if len(rs) != 2 || rs[0].Status != OK || rs[1].Status != Warn || !strings.Contains(rs[1].Fix, "port 81") {
		t.Errorf("one moves: %+v", rs)
	}
	for _, r := range zeroCounters(cfg, map[string]uint64{"a": 0, "b": 0}) {
		if r.Status != OK {
			t.Errorf("all idle is not a problem: %+v", r)
		}
	}
}

func TestOffloadResult(t *testing.T) {
	if r := offloadResult("flannel.1", "vxlan", true, true, [2]int{5, 4}); r.Status != Fail || r.Fix != "ethtool -K flannel.1 tx-checksum-ip-generic off" {
		t.Errorf("old kernel: %+v", r)
	}
	if r := offloadResult("flannel.1", "vxlan", true, true, [2]int{6, 1}); r.Status != OK {
		t.Errorf("fixed kernel: %+v", r)
	}
	if r := offloadResult("flannel.1", "vxlan", false, true, [2]int{5, 4}); r.Status != OK {
		t.Errorf("offload off: %+v", r)
	}
}

func TestDropsResult(t *testing.T) {
	if r := dropsResult("eth0", rtnetlink.LinkStats64{RXPackets: 10}); r.Status != OK {
		t.Errorf("%+v", r)
	}
	r := dropsResult("eth0", rtnetlink.LinkStats64{RXPackets: 10, RXDropped: 2, RXOverErrors: 1})
	if r.Status != Warn || r.Message != "receive: 2 dropped, 1 overruns of 10 packets since it came up" {
		t.Errorf("%+v", r)
	}
}

func TestRPInterfaces(t *testing.T) {
	cfg := testutil.Config(t, "[[forward]]\nname = \"a\"\nport = 80\ninterface = \"eth1\"\nto = \"10.0.0.2\"\n"+
		"[[forward]]\nname = \"b\"\nport = 81\naddress = \"192.0.2.1\"\nto = \"10.0.0.2\"\n"+
		"[[forward]]\nname = \"c\"\nport = 82\nto = \"[fd00::2]:80\"\n")
	n := &netInfo{links: []*link{
		{name: "lo", up: true, loopback: true},
		{name: "eth0", up: true},
		{name: "eth2", up: true, addrs: nil},
		{name: "eth3", up: true},
	}}
	n.links[3].addrs = append(n.links[3].addrs, mustAddr(t, "192.0.2.1"))
	got := strings.Join(rpInterfaces(cfg, n), ",")
	if got != "eth1,eth3" {
		t.Errorf("rpInterfaces = %s, want eth1,eth3", got)
	}
}

func TestWriteText(t *testing.T) {
	var b strings.Builder
	rs := []Result{
		{Check: "ip_forward", Subject: "ipv4", Status: Fail, Message: "off", Fix: "sysctl -w net.ipv4.ip_forward=1"},
		{Check: "softirq", Status: Warn, Advice: true, Message: "high", Fix: "spread"},
		{Check: "table", Status: OK, Message: "fine"},
	}
	if err := WriteText(&b, rs); err != nil {
		t.Fatal(err)
	}
	want := `fail   ip_forward ipv4: off
       fix: sysctl -w net.ipv4.ip_forward=1
advice softirq: high
       fix: spread
ok     table: fine
3 results: 1 failed, 1 warnings
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	if !Failed(rs) || Failed(rs[1:]) {
		t.Error("Failed")
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestBackendsEveryOne: the backend check looks at every backend of a
// forward, --probe connects to each, and a hint to fix to = names the file
// the forward is in (a config directory's, here) and its line.
func TestBackendsEveryOne(t *testing.T) {
	cfg := testutil.Config(t, "[[forward]]\nname = \"one\"\nport = 80\nto = \"10.0.0.2:8080\"\n"+
		"[[forward]]\nname = \"web\"\nproto = \"udp\"\nport = 53\nto = [\"10.0.0.3\", \"10.0.1.4:5353\", \"10.0.9.9\"]\n")
	cfg.Forwards[1].File, cfg.Forwards[1].Line = "/etc/fwdd/fwdd.d/web.toml", 7
	eth0 := &link{name: "eth0", up: true, running: true}
	var dialed []string
	e := &Env{Cfg: cfg, Probe: true, ProbeTimeout: time.Second,
		net: &netInfo{links: []*link{eth0}, lookup: func(dst netip.Addr) (*link, netip.Addr, error) {
			if dst == mustAddr(t, "10.0.9.9") {
				return nil, netip.Addr{}, errors.New("network is unreachable")
			}
			return eth0, netip.Addr{}, nil
		}},
		dial: func(network, address string, _ time.Duration) (net.Conn, error) {
			dialed = append(dialed, network+" "+address)
			if address == "10.0.1.4:5353" {
				return nil, errors.New("connection refused")
			}
			client, server := net.Pipe()
			go func() { // an answer to a datagram, then closed with the probe
				defer server.Close()
				if _, err := server.Read(make([]byte, 64)); err == nil {
					_, _ = server.Write([]byte("x"))
				}
			}()
			return client, nil
		},
	}
	rs := checkBackends(e)
	if want := []string{"tcp 10.0.0.2:8080", "udp 10.0.0.3:53", "udp 10.0.1.4:5353"}; !slices.Equal(dialed, want) {
		t.Errorf("probed %q, want %q", dialed, want)
	}
	var got []string
	for _, r := range rs {
		got = append(got, fmt.Sprintf("%s %s: %s", r.Status, r.Subject, r.Message))
	}
	want := []string{
		"ok one: tcp connect to 10.0.0.2:8080 via eth0 in",
		"ok web: udp datagram to 10.0.0.3:53 via eth0 sent, no ICMP error",
		"fail web: udp connect to 10.0.1.4:5353 via eth0 failed after",
		"fail web: no route to backend 10.0.9.9: network is unreachable",
	}
	if len(got) != len(want) {
		t.Fatalf("results:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("result %d: %q, want it to begin %q", i, got[i], want[i])
		}
	}
	if fix := rs[3].Fix; !strings.HasSuffix(fix, "fix to = in the [[forward]] at /etc/fwdd/fwdd.d/web.toml line 7") {
		t.Errorf("fix %q does not name the forward's file and line", fix)
	}
}
