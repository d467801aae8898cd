package conntrack

// Kernel tests: they need root and build their own network namespaces with
// internal/sandbox, never touching the host's. The client (10.11.0.2) sends
// to the gateway (10.11.0.1), whose prerouting marks udp/5000 and tcp/5001
// with forward 1's ct mark and udp/5002 with forward 2's, like fwdd's table
// would. Everything reads the gateway through its namespace fd.

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
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

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

var (
	cliAddr = netip.MustParseAddr("10.11.0.2")
	gwAddr  = netip.MustParseAddr("10.11.0.1")
)

func newTopo(t *testing.T) *sandbox.Topology {
	t.Helper()
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	// Long UDP timeouts: no entry may expire while counts are compared.
	for _, n := range []string{"net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"} {
		if err := topo.Gateway.SetSysctl(n, "600"); err != nil {
			t.Fatal(err)
		}
	}
	markRules(t, topo.Gateway.Fd())
	return topo
}

// markRules sets ct marks in the gateway like fwdd would, with
// google/nftables directly (pkg/nft is not a dependency of this package).
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
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, ctmark.Default.ForID(r.fwd))},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("install mark rules: %v", err)
	}
}

// udpFlows sends one datagram from each of n source ports starting at
// firstPort, so that the gateway tracks n distinct flows.
func udpFlows(t *testing.T, topo *sandbox.Topology, firstPort, n int, dport uint16) {
	t.Helper()
	udpFlowsTo(t, topo, gwAddr, firstPort, n, dport)
}

// udpFlowsTo is udpFlows to dst, an IPv4 or IPv6 address of the gateway,
// from the client's address of the same family.
func udpFlowsTo(t *testing.T, topo *sandbox.Topology, dst netip.Addr, firstPort, n int, dport uint16) {
	t.Helper()
	sockaddr := func(a netip.Addr, port int) unix.Sockaddr {
		if a.Is4() {
			return &unix.SockaddrInet4{Port: port, Addr: a.As4()}
		}
		return &unix.SockaddrInet6{Port: port, Addr: a.As16()}
	}
	family, src := unix.AF_INET, cliAddr
	if dst.Is6() {
		family, src = unix.AF_INET6, topo.Client.IPv6
	}
	err := topo.Client.Do(func() error {
		for i := range n {
			s, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			err = unix.Bind(s, sockaddr(src, firstPort+i))
			if err == nil {
				err = unix.Sendto(s, []byte("x"), 0, sockaddr(dst, int(dport)))
			}
			unix.Close(s)
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("send udp flows: %v", err)
	}
}

// dumpAll returns every conntrack entry of the gateway namespace, read
// with ti-mo/conntrack's full dump, independently of the code under test.
func dumpAll(t *testing.T, gw int) []ct.Flow {
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
	return flows
}

// truth counts the gateway's entries per forward with ti-mo/conntrack's
// full dump, independently of the code under test.
func truth(t *testing.T, gw int) map[uint32]Live {
	t.Helper()
	flows := dumpAll(t, gw)
	out := map[uint32]Live{}
	for _, f := range flows {
		if id, ok := ctmark.Default.ID(f.Mark); ok {
			l := out[id]
			l.Total++
			if f.TupleOrig.Proto.Protocol == unix.IPPROTO_TCP && f.ProtoInfo.TCP != nil && f.ProtoInfo.TCP.State == tcpConntrackEstablished ||
				f.TupleOrig.Proto.Protocol != unix.IPPROTO_TCP && f.Status.Assured() {
				l.Established++
			}
			out[id] = l
		}
	}
	return out
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := sandbox.Eventually(timeout, func() error {
		if !cond() {
			return context.DeadlineExceeded
		}
		return nil
	}); err != nil {
		t.Fatalf("timed out after %v waiting for %s", timeout, what)
	}
}

// holdTCP opens n connections from the client to the gateway's tcp/5001 and
// keeps them open until the test ends (or close is called).
func holdTCP(t *testing.T, topo *sandbox.Topology, n int) (close func()) {
	t.Helper()
	var ln net.Listener
	if err := topo.Gateway.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(gwAddr, 5001).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var accepted []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	}()
	var conns []net.Conn
	if err := topo.Client.Do(func() error {
		for range n {
			c, err := net.Dial("tcp4", netip.AddrPortFrom(gwAddr, 5001).String())
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	close = func() {
		once.Do(func() {
			for _, c := range conns {
				c.Close()
			}
			ln.Close()
			mu.Lock()
			for _, c := range accepted {
				c.Close()
			}
			mu.Unlock()
		})
	}
	t.Cleanup(close)
	return close
}

func TestKernelLive(t *testing.T) {
	topo := newTopo(t)
	gw := topo.Gateway.Fd()
	udpFlows(t, topo, 30000, 3, 5002)
	const n = 10
	closeTCP := holdTCP(t, topo, n)

	want := map[uint32]Live{1: {Total: n, Established: n}, 2: {Total: 3}}
	eventually(t, 5*time.Second, "the kernel's table to hold the flows", func() bool {
		got := truth(t, gw)
		return got[1] == want[1] && got[2] == want[2]
	})
	got, err := LiveByID(gw, ctmark.Default)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[1] != want[1] || got[2] != want[2] {
		t.Errorf("LiveByID = %+v, want %+v", got, want)
	}
	if l, err := LiveOf(gw, ctmark.Default, 2); err != nil || l != want[2] {
		t.Errorf("LiveOf(2) = %+v, %v; want %+v", l, err, want[2])
	}
	if l, err := LiveOf(gw, ctmark.Default, 3); err != nil || l != (Live{}) {
		t.Errorf("LiveOf(3) = %+v, %v; want nothing", l, err)
	}

	// Closed connections stay in the table (TIME_WAIT) but are no longer
	// established.
	closeTCP()
	eventually(t, 5*time.Second, "closed connections not established", func() bool {
		l, err := LiveOf(gw, ctmark.Default, 1)
		return err == nil && l.Established == 0 && l.Total == n
	})
	if tr := truth(t, gw)[1]; tr != (Live{Total: n}) {
		t.Errorf("full dump after close: %+v, want %d entries, none established", tr, n)
	}

	// The cache reuses a dump for its TTL and names the forwards.
	c := NewLiveCache(gw)
	c.TTL = time.Hour
	c.SetForwards(map[uint32]string{1: "web", 2: "dns", 9: "idle"})
	st, err := c.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Forwards["dns"].Total != 3 || st.Forwards["web"].Total != n || st.Forwards["idle"] != (ForwardStats{ID: 9}) {
		t.Errorf("Stats = %+v", st)
	}
	udpFlows(t, topo, 31000, 2, 5002)
	eventually(t, 5*time.Second, "two more flows", func() bool { return truth(t, gw)[2].Total == 5 })
	if st, _ := c.Stats(); st.Forwards["dns"].Total != 3 {
		t.Errorf("cached Stats changed within the TTL: %+v", st.Forwards["dns"])
	}
	c.TTL = 0
	if st, _ := c.Stats(); st.Forwards["dns"].Total != 5 {
		t.Errorf("Stats after the TTL: %+v, want 5 entries", st.Forwards["dns"])
	}
}

// startWatcher runs a Watcher on the gateway until the test ends; stop
// cancels it and reports how long Run took to return.
func startWatcher(t *testing.T, gw int, opts Options, watched ...uint32) (w *Watcher, stop func() time.Duration) {
	t.Helper()
	core, _ := observer.New(zapcore.DebugLevel)
	opts.NetNS = gw
	opts.Log = zap.New(core)
	w = New(opts)
	w.SetForwards(map[uint32]string{1: "web", 2: "dns"}, watched)
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
	return w, stop
}

type newConns struct {
	mu    sync.Mutex
	conns []NewConn
}

func (n *newConns) add(c NewConn) { n.mu.Lock(); n.conns = append(n.conns, c); n.mu.Unlock() }
func (n *newConns) get() []NewConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]NewConn(nil), n.conns...)
}

func TestKernelWatcherDeliversOnlyWatchedForwards(t *testing.T) {
	topo := newTopo(t)
	gw := topo.Gateway.Fd()
	var got newConns
	w, _ := startWatcher(t, gw, Options{OnNew: got.add}, 1)

	udpFlows(t, topo, 30000, 50, 5002) // forward 2: not watched
	holdTCP(t, topo, 3)                // forward 1
	eventually(t, 5*time.Second, "3 new connections of web", func() bool { return len(got.get()) == 3 })
	eventually(t, 5*time.Second, "the flows of dns in the table", func() bool { return truth(t, gw)[2].Total == 50 })
	time.Sleep(100 * time.Millisecond)
	conns := got.get()
	if len(conns) != 3 {
		t.Fatalf("%d connections delivered, want 3: %+v", len(conns), conns)
	}
	if c := conns[0]; c.Forward != "web" || c.ForwardID != 1 || c.Proto != unix.IPPROTO_TCP || c.Source.Addr() != cliAddr ||
		c.Destination != netip.AddrPortFrom(gwAddr, 5001) || c.Backend != netip.AddrPortFrom(gwAddr, 5001) {
		t.Errorf("delivered %+v", c)
	}
	// The socket filter kept dns's 50 events in the kernel.
	if r := w.Received(); r != 3 {
		t.Errorf("%d events reached user space, want 3 (the filter passes only watched marks)", r)
	}

	// Watching another forward changes the filter in place.
	w.SetForwards(map[uint32]string{1: "web", 2: "dns"}, []uint32{2})
	time.Sleep(200 * time.Millisecond)
	udpFlows(t, topo, 31000, 4, 5002)
	udpFlows(t, topo, 32000, 4, 5000) // forward 1, no longer watched
	eventually(t, 5*time.Second, "4 connections of dns", func() bool { return len(got.get()) == 7 })
	time.Sleep(100 * time.Millisecond)
	for _, c := range got.get()[3:] {
		if c.Forward != "dns" {
			t.Errorf("delivered %+v, want only dns", c)
		}
	}
	if r := w.Received(); r != 7 {
		t.Errorf("%d events reached user space, want 7", r)
	}

	// None watched: no socket, nothing delivered.
	w.SetForwards(map[uint32]string{1: "web", 2: "dns"}, nil)
	time.Sleep(200 * time.Millisecond)
	udpFlows(t, topo, 33000, 4, 5002)
	eventually(t, 5*time.Second, "the flows in the table", func() bool { return truth(t, gw)[2].Total == 58 })
	time.Sleep(100 * time.Millisecond)
	if n := len(got.get()); n != 7 {
		t.Errorf("%d connections delivered with no forward watched, want 7", n)
	}
}

func TestKernelWatcherOverflow(t *testing.T) {
	topo := newTopo(t)
	gw := topo.Gateway.Fd()
	var got newConns
	w, stop := startWatcher(t, gw, Options{ReadBuffer: 16 << 10, OnNew: func(c NewConn) {
		time.Sleep(20 * time.Microsecond) // a slow consumer: the socket fills
		got.add(c)
	}}, 1)
	const burst = 20_000
	udpFlows(t, topo, 20000, burst, 5000)
	eventually(t, 30*time.Second, "the burst in the table", func() bool { return truth(t, gw)[1].Total > burst/2 })
	eventually(t, 10*time.Second, "an overflow", func() bool { return w.Overflows() > 0 })
	t.Logf("%d of %d new connections delivered; %d overflows", len(got.get()), burst, w.Overflows())

	// Still alive: a later flow is delivered.
	time.Sleep(500 * time.Millisecond)
	before := len(got.get())
	udpFlows(t, topo, 45000, 1, 5000)
	eventually(t, 5*time.Second, "a later flow", func() bool {
		c := got.get()
		return len(c) > before && c[len(c)-1].Source.Port() == 45000
	})
	if d := stop(); d > 2*time.Second {
		t.Errorf("Run took %v to return", d)
	}
}

func TestKernelPressure(t *testing.T) {
	topo := newTopo(t)
	gw := topo.Gateway.Fd()
	live := NewLiveCache(gw)
	live.SetForwards(map[uint32]string{1: "web", 2: "dns"})
	s := sysctl.InNetNS(gw, sysctl.NewFS(""))
	before, max, err := CountFrom(s)
	if err != nil {
		t.Fatal(err)
	}
	// Thresholds low enough that a handful of real flows cross them.
	core, logs := observer.New(zapcore.DebugLevel)
	p := NewPressure(PressureOptions{
		WarnPercent:     100 * (float64(before) + 4.5) / float64(max),
		CriticalPercent: 100 * 1000 / float64(max),
		Interval:        20 * time.Millisecond,
		Sysctls:         s,
		Stats:           func() Stats { st, _ := live.Stats(); return st },
		Log:             zap.New(core),
	})
	p.Check(time.Now())
	if p.Last().Time.IsZero() {
		t.Fatal("no reading")
	}
	if n := logs.Len(); n != 0 {
		t.Errorf("%d lines logged below the threshold: %v", n, logs.All()[0].Message)
	}
	udpFlows(t, topo, 30000, 5, 5002)
	eventually(t, 5*time.Second, "the flows in the table", func() bool { return truth(t, gw)[2].Total == 5 })

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
	if m["count"] != int64(before+5) || m["max"] != int64(max) || m["topForwards"] != "dns (5)" {
		t.Errorf("warning fields = %v", m)
	}
	if l := p.Last(); l.Count != before+5 || l.Max != max || l.Level != LevelWarn {
		t.Errorf("Last = %+v", l)
	}
}
