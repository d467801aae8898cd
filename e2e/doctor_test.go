package e2e

import (
	"encoding/json"
	"errors"
	"net"

	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/doctor"
)

// runDoctor runs `fwdd doctor --json` in the gateway and returns its
// results and exit code.
func runDoctor(t *testing.T, topo *sandbox.Topology, cfgPath, stateDir string, args ...string) ([]doctor.Result, int) {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), append([]string{fwddBin, "doctor", "--json", "-c", cfgPath, "--state-dir", stateDir}, args...)...)
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("fwdd doctor: %v\n%s", err, out)
	}
	// The sandbox reports a failed command with its output; the JSON is
	// the output's first and only document.
	text := string(out)
	if i := strings.Index(text, "["); i > 0 {
		text = text[i:]
	}
	var rs []doctor.Result
	if err := json.NewDecoder(strings.NewReader(text)).Decode(&rs); err != nil {
		t.Fatalf("fwdd doctor --json: %v\n%s", err, out)
	}
	return rs, code
}

// want finds the result of check about subject and checks its status.
func want(t *testing.T, rs []doctor.Result, check, subject string, status doctor.Status, fixHas string) {
	t.Helper()
	for _, r := range rs {
		if r.Check == check && r.Subject == subject {
			if r.Status != status || !strings.Contains(r.Fix, fixHas) {
				t.Errorf("%s %s: %s %q (fix %q), want %s with a fix containing %q", check, subject, r.Status, r.Message, r.Fix, status, fixHas)
			}
			return
		}
	}
	t.Errorf("no result for %s %q in:\n%s", check, subject, dump(rs))
}

func dump(rs []doctor.Result) string {
	var b strings.Builder
	_ = doctor.WriteText(&b, rs)
	return b.String()
}

const doctorConfig = `
[sysctl]
rp_filter = "loose"

[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "dns"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

[[forward]]
name = "web6"
port = 81
to = "[fd22::2]:8080"
`

// TestKernelDoctorClean: fwdd running on a healthy gateway, traffic on
// every forward: every check is ok and doctor exits 0.
func TestKernelDoctorClean(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	listenUDP(t, topo.Backend, ":5353")
	d := startFwdd(t, topo, doctorConfig)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend")
	mustAsk(t, topo.Client, "10.11.0.1:53", "backend")
	mustGreet(t, topo.Client, "[fd11::1]:81", "backend")
	rs, code := runDoctor(t, topo, d.cfgPath, d.stateDir, "--probe")
	for _, r := range rs {
		if r.Status != doctor.OK && !(r.Advice && r.Status == doctor.Warn) {
			t.Errorf("%s %s: %s: %s (fix %s)", r.Check, r.Subject, r.Status, r.Message, r.Fix)
		}
	}
	if code != 0 {
		t.Errorf("exit %d on a clean gateway:\n%s", code, dump(rs))
	}
	for _, c := range []string{"ip_forward", "rp_filter", "daemon", "table", "other_firewall", "iptables_legacy",
		"conntrack", "backend", "counters", "rx_drops", "offloads", "conntrack_buckets", "softirq", "rx_queues"} {
		found := false
		for _, r := range rs {
			found = found || r.Check == c
		}
		if !found {
			t.Errorf("check %s missing", c)
		}
	}
	want(t, rs, "backend", "web", doctor.OK, "")
	for _, r := range rs {
		if r.Check == "backend" && r.Subject == "web" && !strings.Contains(r.Message, "tcp connect to 10.22.0.2:8080") {
			t.Errorf("probe result: %s", r.Message)
		}
	}
}

// TestKernelDoctorBroken: a gateway built to trip every check that can be
// tripped inside a network namespace, without fwdd running.
func TestKernelDoctorBroken(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoOther: true})
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "fwdd.toml")
	writeConfig(t, cfgPath, `
[[forward]]
name = "web"
port = 80
interface = "cli0"
to = "10.22.0.2:8080"

[[forward]]
name = "lost"
port = 82
to = "10.99.0.2:8080"

[[forward]]
name = "web6"
port = 81
to = "[fd22::2]:8080"

[[forward]]
name = "side"
port = 83
to = "10.33.0.2:8080"
`)
	gw := topo.Gateway
	for _, kv := range [][2]string{{"net.ipv4.conf.cli0.rp_filter", "1"}} {
		if err := gw.SetSysctl(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	nftRun(t, topo, `
table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
	}
}
table inet firewalld {
	chain filter_FORWARD {
		type filter hook forward priority 10; policy accept;
	}
}
`)
	for _, args := range [][]string{
		{"iptables-legacy", "-P", "FORWARD", "DROP"},
		{"iptables-nft", "-N", "ufw-before-forward"},
	} {
		if out, err := gw.Run(ctxT(t), args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	// The far end of cli1 goes down: cli1 loses its carrier, its route stays.
	if out, err := topo.Client2.Run(ctxT(t), "ip", "link", "set", "eth0", "down"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	sendUnknownFrames(t, topo.Client, 5)

	rs, code := runDoctor(t, topo, cfgPath, filepath.Join(dir, "state"))
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want(t, rs, "ip_forward", "ipv4", doctor.Fail, "sysctl -w net.ipv4.ip_forward=1")
	want(t, rs, "ip_forward", "ipv6", doctor.Fail, "sysctl -w net.ipv6.conf.all.forwarding=1")
	want(t, rs, "rp_filter", "cli0", doctor.Warn, `rp_filter = "loose"`)
	want(t, rs, "daemon", "", doctor.Fail, "systemctl start fwdd")
	want(t, rs, "table", "inet fwdd", doctor.Fail, "systemctl restart fwdd")
	want(t, rs, "other_firewall", "inet filter forward", doctor.Fail,
		"nft insert rule inet filter forward ct mark and 0xff000000 == 0xfd000000 accept")
	// firewalld's forward chain accepts DNATed connections: no warning.
	want(t, rs, "other_firewall", "inet firewalld", doctor.OK, "")
	want(t, rs, "other_firewall", "ip filter", doctor.Warn, "ufw-before-forward -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT")
	want(t, rs, "iptables_legacy", "ip filter", doctor.Fail,
		"iptables-legacy -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT")
	want(t, rs, "backend", "lost", doctor.Fail, "ip route add 10.99.0.2")
	want(t, rs, "backend", "side", doctor.Fail, "check the cable or peer of cli1")
	want(t, rs, "backend", "web", doctor.OK, "")
	want(t, rs, "rx_drops", "cli0", doctor.Warn, "ip -s link show cli0")
	want(t, rs, "rx_drops", "bak0", doctor.OK, "")

	// A table of fwdd's name written by someone else.
	nftRun(t, topo, "table inet fwdd {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t}\n}\n")
	rs, _ = runDoctor(t, topo, cfgPath, filepath.Join(dir, "state"))
	want(t, rs, "table", "inet fwdd", doctor.Fail, "choose another [daemon] table")
}

// TestKernelDoctorRunning: with fwdd running, a forward nobody uses while
// another carries traffic, a backend that refuses connections, and a
// config file changed since the last reload.
func TestKernelDoctorRunning(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	listenTCP(t, topo.Backend, ":8080")
	cfg := `
[[forward]]
name = "busy"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "idle"
port = 81
to = "10.22.0.2:8080"

[[forward]]
name = "closed"
port = 82
to = "10.22.0.2:9999"
`
	d := startFwdd(t, topo, cfg)
	mustGreet(t, topo.Client, "10.11.0.1:80", "backend")
	// Docker's or ufw's IPv6 forward chains: this config forwards no IPv6.
	for _, args := range [][]string{
		{"ip6tables-nft", "-P", "FORWARD", "DROP"},
		{"ip6tables-nft", "-N", "ufw6-before-forward"},
		{"ip6tables-legacy", "-P", "FORWARD", "DROP"},
	} {
		if out, err := topo.Gateway.Run(ctxT(t), args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	rs, code := runDoctor(t, topo, d.cfgPath, d.stateDir, "--probe")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want(t, rs, "other_firewall", "", doctor.OK, "")
	want(t, rs, "iptables_legacy", "ip6 filter", doctor.OK, "")
	want(t, rs, "daemon", "", doctor.OK, "")
	want(t, rs, "table", "inet fwdd", doctor.OK, "")
	want(t, rs, "counters", "busy", doctor.OK, "")
	want(t, rs, "counters", "idle", doctor.Warn, "tcpdump -ni any port 81")
	want(t, rs, "backend", "idle", doctor.OK, "")
	want(t, rs, "backend", "closed", doctor.Fail, "listens on tcp 10.22.0.2:9999")

	writeConfig(t, d.cfgPath, cfg+"\n[[forward]]\nname = \"new\"\nport = 84\nto = \"10.22.0.2:8080\"\n")
	rs, _ = runDoctor(t, topo, d.cfgPath, d.stateDir)
	want(t, rs, "table", "inet fwdd", doctor.Fail, "fwdd reload -c "+d.cfgPath)
}

// sendUnknownFrames sends Ethernet frames of an unassigned ethertype from
// h's eth0: the gateway has no handler for them and counts them as
// received and dropped, which is what a NIC dropping packets looks like in
// `ip -s link`.
func sendUnknownFrames(t *testing.T, h *sandbox.Host, n int) {
	t.Helper()
	err := h.Do(func() error {
		ifc, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		const etherType = 0x88b5 // IEEE local experimental
		frame := make([]byte, 60)
		copy(frame, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		copy(frame[6:], ifc.HardwareAddr)
		frame[12], frame[13] = etherType>>8, etherType&0xff
		to := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: etherType>>8&0xff | etherType&0xff<<8, Halen: 6}
		copy(to.Addr[:], frame[:6])
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, frame, 0, to); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
