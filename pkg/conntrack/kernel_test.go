package conntrack

// Kernel tests: they need root and build their own network namespaces,
// never touching the host's. Topology:
//
//	cli (10.213.0.1) --veth-- gw (10.213.0.2)
//
// gw's prerouting marks udp/5000 and tcp/5001 with forward 1's ct mark and
// udp/5002 with forward 2's, like fwdd's table would. The Watcher watches
// gw through a namespace fd, without moving the test process.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

var (
	cliAddr = netip.MustParseAddr("10.213.0.1")
	gwAddr  = netip.MustParseAddr("10.213.0.2")
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// netNS creates a named namespace that t.Cleanup removes, and opens it.
func netNS(t *testing.T, role string) (name string, fd int) {
	t.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name = "fwddtest-" + role + "-" + hex.EncodeToString(b)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	// No IPv6: its neighbour discovery would add conntrack entries of its own.
	s := sysctl.InNetNS(fd, sysctl.NewFS(""))
	for _, n := range []string{"net.ipv6.conf.all.disable_ipv6", "net.ipv6.conf.default.disable_ipv6"} {
		if _, _, err := s.Set(n, "1"); err != nil {
			t.Fatal(err)
		}
	}
	return name, fd
}

// inNS runs fn on a locked thread inside the namespace; sockets fn creates
// stay there. A thread that cannot be moved back is discarded.
func inNS(t *testing.T, fd int, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

type topo struct{ cli, gw int }

func newTopo(t *testing.T) topo {
	t.Helper()
	cliName, cli := netNS(t, "cli")
	gwName, gw := netNS(t, "gw")
	run(t, "ip", "-n", cliName, "link", "add", "vc", "type", "veth", "peer", "name", "vg", "netns", gwName)
	run(t, "ip", "-n", cliName, "addr", "add", cliAddr.String()+"/24", "dev", "vc")
	run(t, "ip", "-n", gwName, "addr", "add", gwAddr.String()+"/24", "dev", "vg")
	for _, ns := range []string{cliName, gwName} {
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", cliName, "link", "set", "vc", "up")
	run(t, "ip", "-n", gwName, "link", "set", "vg", "up")
	// Long UDP timeouts: no entry may expire while counts are compared.
	s := sysctl.InNetNS(gw, sysctl.NewFS(""))
	for _, n := range []string{"net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"} {
		if _, _, err := s.Set(n, "600"); err != nil {
			t.Fatal(err)
		}
	}
	markRules(t, gw)
	return topo{cli: cli, gw: gw}
}

// markRules sets ct marks in gw like fwdd would, with google/nftables
// directly (pkg/nft is not a dependency of this package).
func markRules(t *testing.T, fd int) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "test"})
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	for _, r := range []struct {
		proto byte
		port  uint16
		fwd   uint32
	}{{unix.IPPROTO_UDP, 5000, 1}, {unix.IPPROTO_TCP, 5001, 1}, {unix.IPPROTO_UDP, 5002, 2}} {
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, r.port)},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, ctmark.ForID(r.fwd))},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("install mark rules: %v", err)
	}
}

// udpFlows sends one datagram from each of n source ports starting at
// firstPort, so that gw tracks n distinct flows.
func udpFlows(t *testing.T, cli int, firstPort, n int, dport uint16) {
	t.Helper()
	var err error
	inNS(t, cli, func() {
		dst := &unix.SockaddrInet4{Port: int(dport), Addr: gwAddr.As4()}
		for i := range n {
			var s int
			s, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return
			}
			err = unix.Bind(s, &unix.SockaddrInet4{Port: firstPort + i, Addr: cliAddr.As4()})
			if err == nil {
				err = unix.Sendto(s, []byte("x"), 0, dst)
			}
			unix.Close(s)
			if err != nil {
				return
			}
		}
	})
	if err != nil {
		t.Fatalf("send udp flows: %v", err)
	}
}

// dumpCount counts gw's conntrack entries per forward, from the kernel.
func dumpCount(t *testing.T, gw int) map[uint32]int {
	t.Helper()
	c, err := ct.Dial(&netlink.Config{NetNS: gw})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint32]int{}
	for _, f := range flows {
		if id, ok := ctmark.ID(f.Mark); ok {
			out[id]++
		}
	}
	return out
}

func flushMark(t *testing.T, gw int, mark uint32) {
	t.Helper()
	c, err := ct.Dial(&netlink.Config{NetNS: gw})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.FlushFilter(ct.NewFilter().Mark(mark)); err != nil {
		t.Fatal(err)
	}
}

// startWatcher runs a Watcher on gw until the test ends; stop cancels it
// and reports how long Run took to return.
func startWatcher(t *testing.T, gw int, opts Options) (w *Watcher, logs *observer.ObservedLogs, stop func() time.Duration) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	opts.NetNS = gw
	opts.Log = zap.New(core)
	w = New(opts)
	w.SetForwards(map[uint32]string{1: "web", 2: "dns"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			t0 := time.Now()
			cancel()
			select {
			case err := <-done:
				took = time.Since(t0)
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Run did not return within 10s of cancel")
				took = 10 * time.Second
			}
		})
		return took
	}
	t.Cleanup(func() { stop() })
	select {
	case <-w.Ready():
	case err := <-done:
		t.Fatalf("Run = %v before ready", err)
	case <-time.After(10 * time.Second):
		t.Fatal("watcher not ready after 10s")
	}
	return w, logs, stop
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > timeout {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(t0)
}

func TestKernelWatcherLiveAndDestroy(t *testing.T) {
	requireRoot(t)
	tp := newTopo(t)

	// Entries from before the start are found by the initial dump.
	udpFlows(t, tp.cli, 30000, 3, 5002)
	eventually(t, 5*time.Second, "flows before start", func() bool { return dumpCount(t, tp.gw)[2] == 3 })

	var mu sync.Mutex
	var news []NewConn
	w, _, _ := startWatcher(t, tp.gw, Options{OnNew: func(c NewConn) {
		mu.Lock()
		news = append(news, c)
		mu.Unlock()
	}})
	if got := w.Snapshot().Forwards["dns"]; got.Live != 3 || got.New != 0 {
		t.Errorf("after initial dump dns = %+v, want Live 3, New 0", got)
	}

	// N TCP connections held open.
	const n = 10
	var ln net.Listener
	inNS(t, tp.gw, func() {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(gwAddr, 5001).String())
		if err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	var conns []net.Conn
	inNS(t, tp.cli, func() {
		for range n {
			c, err := net.Dial("tcp4", netip.AddrPortFrom(gwAddr, 5001).String())
			if err != nil {
				t.Error(err)
				return
			}
			conns = append(conns, c)
		}
	})
	eventually(t, 5*time.Second, "web Live == 10", func() bool { return w.Snapshot().Forwards["web"].Live == n })
	if got := w.Snapshot().Forwards["web"].New; got != n {
		t.Errorf("web New = %d, want %d", got, n)
	}
	mu.Lock()
	if len(news) != n {
		t.Errorf("OnNew called %d times, want %d", len(news), n)
	} else if c := news[0]; c.Forward != "web" || c.Proto != unix.IPPROTO_TCP || c.Source.Addr() != cliAddr ||
		c.Destination != netip.AddrPortFrom(gwAddr, 5001) || c.Backend != netip.AddrPortFrom(gwAddr, 5001) {
		t.Errorf("OnNew got %+v", c)
	}
	mu.Unlock()

	// Closed TCP connections linger in TIME_WAIT; delete the entries to get
	// their DESTROY events now.
	for _, c := range conns {
		c.Close()
	}
	flushMark(t, tp.gw, ctmark.ForID(1))
	eventually(t, 5*time.Second, "web Live == 0", func() bool { return w.Snapshot().Forwards["web"].Live == 0 })
	if got := w.Snapshot().Forwards["dns"].Live; got != 3 {
		t.Errorf("dns Live = %d after flushing web, want 3", got)
	}
}

func TestKernelWatcherOverflowBurst(t *testing.T) {
	requireRoot(t)
	for _, tc := range []struct {
		name   string
		buffer int
	}{
		{"defaultBuffer", 0},
		{"smallBuffer", 64 << 10}, // forces overflows: the recovery path
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := newTopo(t)
			w, _, stop := startWatcher(t, tp.gw, Options{ReadBuffer: tc.buffer})

			const burst = 20000
			t0 := time.Now()
			udpFlows(t, tp.cli, 20000, burst, 5000)
			sent := time.Since(t0)

			// The kernel may drop some datagrams of the burst (device
			// backlog) when the machine is busy: the truth is the dump,
			// once it has stopped changing.
			truth, live, prev := 0, 0, -1
			t1 := time.Now()
			for {
				truth, live = dumpCount(t, tp.gw)[1], w.Snapshot().Forwards["web"].Live
				if truth > 0 && truth == prev && live == truth {
					break
				}
				if time.Since(t1) > 30*time.Second {
					t.Fatalf("not converged after 30s: dump has %d flows, watcher %d; %+v", truth, live, w.Snapshot())
				}
				prev = truth
				time.Sleep(20 * time.Millisecond)
			}
			conv := time.Since(t1)
			s := w.Snapshot()
			t.Logf("%d flows sent in %v, %d tracked; converged %v after; overflows %d, restarts %d, web %+v",
				burst, sent.Round(time.Millisecond), truth, conv.Round(time.Millisecond), s.Overflows, s.Restarts, s.Forwards["web"])
			if truth < burst/2 {
				t.Errorf("only %d of %d flows tracked: not much of a burst", truth, burst)
			}
			if tc.buffer != 0 && s.Overflows == 0 {
				t.Errorf("no overflow with a %d byte buffer: the recovery path went untested", tc.buffer)
			}

			// Still alive: a later flow is counted.
			udpFlows(t, tp.cli, 45000, 1, 5000)
			eventually(t, 5*time.Second, "later flow counted", func() bool {
				return w.Snapshot().Forwards["web"].Live == truth+1
			})
			if d := stop(); d > 2*time.Second {
				t.Errorf("Run took %v to return", d)
			}
		})
	}
}

// TestKernelWatcherCancelAfterOverflow cancels while the event socket is
// overflowing and the watcher recovering: Run must return promptly.
func TestKernelWatcherCancelAfterOverflow(t *testing.T) {
	requireRoot(t)
	tp := newTopo(t)
	w, _, stop := startWatcher(t, tp.gw, Options{ReadBuffer: 32 << 10, Workers: 2})
	udpFlows(t, tp.cli, 20000, 20000, 5000)
	eventually(t, 10*time.Second, "an overflow", func() bool { return w.Snapshot().Overflows > 0 })
	d := stop()
	t.Logf("Run returned %v after cancel; overflows %d", d.Round(time.Millisecond), w.Snapshot().Overflows)
	if d > 2*time.Second {
		t.Errorf("Run took %v to return", d)
	}
}

func TestKernelPressure(t *testing.T) {
	requireRoot(t)
	tp := newTopo(t)
	w, _, _ := startWatcher(t, tp.gw, Options{})
	s := sysctl.InNetNS(tp.gw, sysctl.NewFS(""))
	_, max, err := CountFrom(s)
	if err != nil {
		t.Fatal(err)
	}
	// Thresholds low enough that a handful of real flows cross them.
	core, logs := observer.New(zapcore.DebugLevel)
	p := NewPressure(PressureOptions{
		WarnPercent:     100 * 4.5 / float64(max),
		CriticalPercent: 100 * 1000 / float64(max),
		Interval:        20 * time.Millisecond,
		Sysctls:         s,
		Stats:           w.Snapshot,
		Log:             zap.New(core),
	})
	p.Check(time.Now())
	if p.Last().Time.IsZero() {
		t.Fatal("no reading")
	}
	if n := logs.Len(); n != 0 {
		t.Errorf("%d lines logged below the threshold: %v", n, logs.All()[0].Message)
	}
	udpFlows(t, tp.cli, 30000, 5, 5002)
	eventually(t, 5*time.Second, "watcher sees the flows", func() bool { return w.Snapshot().Forwards["dns"].Live == 5 })

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, 5*time.Second, "a warning", func() bool { return logs.FilterLevelExact(zapcore.WarnLevel).Len() > 0 })
	time.Sleep(100 * time.Millisecond) // several more intervals: no repeats
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) != 1 {
		t.Errorf("%d warnings, want 1", len(warns))
	}
	m := warns[0].ContextMap()
	if m["count"] != int64(5) || m["max"] != int64(max) || m["topForwards"] != "dns (5)" {
		t.Errorf("warning fields = %v", m)
	}
	if l := p.Last(); l.Count != 5 || l.Max != max || l.Level != LevelWarn {
		t.Errorf("Last = %+v", l)
	}
}
