package conntrack

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// deleteTopo is cli -- gw where gw DNATs like a forward with several
// backends would:
//
//	forward 3: udp/6000 from source ports < 31005 to .50:7000, others to .51:7000;
//	           tcp/6001 to gw itself, port 7001 (a listener of the test)
//	forward 4: udp/6002 to .52:7002, and over IPv6 to [fd11::52]:7002
//
// .50-.52 and fd11::52 do not exist: a UDP entry is confirmed when its first datagram
// leaves gw, whether or not anyone answers.
func deleteTopo(t *testing.T) (topo *sandbox.Topology, gw int) {
	t.Helper()
	topo = sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	for n, v := range map[string]string{
		"net.ipv4.ip_forward":                           "1",
		"net.ipv6.conf.all.forwarding":                  "1",
		"net.netfilter.nf_conntrack_udp_timeout":        "600",
		"net.netfilter.nf_conntrack_udp_timeout_stream": "600",
	} {
		if err := topo.Gateway.SetSysctl(n, v); err != nil {
			t.Fatal(err)
		}
	}
	m3, m4 := ctmark.Default.ForID(3), ctmark.Default.ForID(4)
	rules := fmt.Sprintf(`table ip test {
	chain pre {
		type nat hook prerouting priority dstnat;
		udp dport 6000 udp sport < 31005 ct mark set %#x dnat to 10.11.0.50:7000
		udp dport 6000 ct mark set %#x dnat to 10.11.0.51:7000
		tcp dport 6001 ct mark set %#x dnat to %s:7001
		udp dport 6002 ct mark set %#x dnat to 10.11.0.52:7002
	}
}
table ip6 test {
	chain pre {
		type nat hook prerouting priority dstnat;
		udp dport 6002 ct mark set %#x dnat to [fd11::52]:7002
	}
}
`, m3, m3, m3, gwAddr, m4, m4)
	// A test fixture, so nft's syntax is the clearest way to write it.
	cmd := exec.Command("ip", "netns", "exec", topo.Gateway.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	return topo, topo.Gateway.Fd()
}

// entryKey summarises an entry for counting.
type entryKey struct {
	mark    uint32
	proto   uint8
	backend netip.AddrPort
}

func dumpEntries(t *testing.T, gw int) map[entryKey]int {
	t.Helper()
	flows := dumpAll(t, gw)
	out := map[entryKey]int{}
	for _, f := range flows {
		if _, ok := ctmark.Default.ID(f.Mark); ok {
			out[entryKey{f.Mark, f.TupleOrig.Proto.Protocol,
				netip.AddrPortFrom(f.TupleReply.IP.SourceAddress, f.TupleReply.Proto.SourcePort)}]++
		}
	}
	return out
}

func TestKernelDeleteEntries(t *testing.T) {
	topo, gw := deleteTopo(t)
	m3, m4 := ctmark.Default.ForID(3), ctmark.Default.ForID(4)
	b50 := netip.MustParseAddrPort("10.11.0.50:7000")
	b51 := netip.MustParseAddrPort("10.11.0.51:7000")
	b52 := netip.MustParseAddrPort("10.11.0.52:7002")
	b52v6 := netip.MustParseAddrPort("[fd11::52]:7002")
	tcpBackend := netip.AddrPortFrom(gwAddr, 7001)

	udpFlows(t, topo, 31000, 10, 6000) // 5 to .50, 5 to .51
	udpFlows(t, topo, 32000, 4, 6002)
	// More than Delete's 10 errors, so that IPv6 entries sent as IPv4
	// (EINVAL) would also stop the deletion of the IPv4 ones.
	udpFlowsTo(t, topo, topo.Gateway.IPv6, 33000, 12, 6002)
	var ln net.Listener
	if err := topo.Gateway.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", tcpBackend.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if ln == nil {
		t.FailNow()
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	if err := topo.Client.Do(func() error {
		for range 3 {
			c, err := net.Dial("tcp4", netip.AddrPortFrom(gwAddr, 6001).String())
			if err != nil {
				return err
			}
			t.Cleanup(func() { c.Close() })
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	want := map[entryKey]int{
		{m3, unix.IPPROTO_UDP, b50}:        5,
		{m3, unix.IPPROTO_UDP, b51}:        5,
		{m3, unix.IPPROTO_TCP, tcpBackend}: 3,
		{m4, unix.IPPROTO_UDP, b52}:        4,
		{m4, unix.IPPROTO_UDP, b52v6}:      12,
	}
	check := func(step string) {
		t.Helper()
		var got map[entryKey]int
		deadline := time.Now().Add(5 * time.Second)
		for {
			got = dumpEntries(t, gw)
			if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: entries = %v, want %v", step, got, want)
		}
	}
	check("before")

	live, err := LiveByBackend(gw, ctmark.Default, nil)
	if err != nil {
		t.Fatal(err)
	}
	count := map[BackendKey]int{}
	for k, l := range live {
		count[k] = l.Total
	}
	wantLive := map[BackendKey]int{{m3, b50}: 5, {m3, b51}: 5, {m3, tcpBackend}: 3, {m4, b52}: 4, {m4, b52v6}: 12}
	if fmt.Sprint(count) != fmt.Sprint(wantLive) {
		t.Errorf("LiveByBackend = %v, want %v", live, wantLive)
	}

	del := func(step string, wantN int, sels ...Selector) {
		t.Helper()
		n, err := Delete(gw, ctmark.Default, sels...)
		if err != nil {
			t.Fatalf("%s: Delete: %v", step, err)
		}
		if n != wantN {
			t.Errorf("%s: Delete = %d, want %d", step, n, wantN)
		}
		check(step)
	}

	// One backend's UDP entries: the other backend's, TCP and forward 4 stay.
	delete(want, entryKey{m3, unix.IPPROTO_UDP, b50})
	del("udp of one backend", 5, Selector{Mark: m3, Proto: unix.IPPROTO_UDP, Backend: b50.Addr()})

	// A port outside the backend's range selects nothing.
	del("other port", 0, Selector{Mark: m3, Proto: unix.IPPROTO_UDP, Backend: b51.Addr(), PortFirst: 7001, PortLast: 7100})

	// The forward's UDP entries, and forward 4's one backend, in one call.
	delete(want, entryKey{m3, unix.IPPROTO_UDP, b51})
	delete(want, entryKey{m4, unix.IPPROTO_UDP, b52})
	del("udp of a forward and a backend of another", 9,
		Selector{Mark: m3, Proto: unix.IPPROTO_UDP},
		Selector{Mark: m4, Backend: b52.Addr(), PortFirst: 7002, PortLast: 7002})

	// The forward's remaining (TCP) entries: a kernel-side flush by mark.
	udpFlows(t, topo, 32100, 2, 6002)
	want[entryKey{m4, unix.IPPROTO_UDP, b52}] = 2
	check("forward 4 again")
	delete(want, entryKey{m3, unix.IPPROTO_TCP, tcpBackend})
	del("whole forward", 3, Selector{Mark: m3})

	// IPv4 and IPv6 entries of a forward in one call, one by one.
	delete(want, entryKey{m4, unix.IPPROTO_UDP, b52})
	delete(want, entryKey{m4, unix.IPPROTO_UDP, b52v6})
	del("udp of a forward, both families", 14, Selector{Mark: m4, Proto: unix.IPPROTO_UDP})

	// Nothing left to select is no error.
	del("nothing", 0, Selector{Mark: m3})
}
