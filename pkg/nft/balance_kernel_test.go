package nft

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// balanceEnv: backends 10.22.0.2, .3, .4 (TCP servers on 8080), a client
// with 20 more addresses 10.11.0.100-119, and in the gateway a table that
// marks tcp/80 (forward 1, random), tcp/81 (forward 2, source) and tcp/82
// (forward 3, random, weights 3:1) and balances them with BalanceDNAT.
type balanceEnv struct {
	topo     *sandbox.Topology
	conn     *nftables.Conn
	set      *nftables.Set
	servers  map[netip.Addr]*sandbox.TCPServer
	backends []netip.AddrPort
	clients  []netip.Addr
}

func newBalanceEnv(t *testing.T) *balanceEnv {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true, BackendAddrs: 2})
	if err := topo.Gateway.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	e := &balanceEnv{topo: topo, servers: map[netip.Addr]*sandbox.TCPServer{}}
	for _, a := range []string{"10.22.0.2", "10.22.0.3", "10.22.0.4"} {
		ap := netip.MustParseAddrPort(a + ":8080")
		s, err := topo.Backend.ListenTCP(ap.String())
		if err != nil {
			t.Fatal(err)
		}
		e.servers[ap.Addr()] = s
		e.backends = append(e.backends, ap)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 20 {
		a := netip.AddrFrom4([4]byte{10, 11, 0, byte(100 + i)})
		if _, err := topo.Client.Run(ctx, "ip", "addr", "add", a.String()+"/24", "dev", sandbox.LeafIface); err != nil {
			t.Fatal(err)
		}
		e.clients = append(e.clients, a)
	}

	c, err := nftables.New(nftables.WithNetNSFd(topo.Gateway.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	e.conn = c
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "baltest"})
	if e.set, err = BalanceSet(tbl, "balance4", false); err != nil {
		t.Fatal(err)
	}
	var elems []nftables.SetElement
	all, _ := Slots([]int{1, 1, 1}, nil)
	elems = append(elems, BalanceElements(0xfd000001, 80, all, e.backends)...)
	elems = append(elems, BalanceElements(0xfd000002, 81, all, e.backends)...)
	weighted, _ := Slots([]int{3, 1}, nil)
	elems = append(elems, BalanceElements(0xfd000003, 82, weighted, e.backends)...)
	if err := c.AddSet(e.set, elems); err != nil {
		t.Fatal(err)
	}
	ch := c.AddChain(&nftables.Chain{Name: "pre", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	for _, f := range []struct {
		port   uint16
		mark   uint32
		source bool
	}{{80, 0xfd000001, false}, {81, 0xfd000002, true}, {82, 0xfd000003, false}} {
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, f.port)},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, f.mark)},
			&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
		}
		c.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: append(exprs, BalanceDNAT(e.set, false, f.source)...)})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("install balance table: %v", err)
	}
	return e
}

// spread makes n connections to port from client address from (zero: the
// client's own) and counts them per backend address.
func (e *balanceEnv) spread(t *testing.T, port uint16, n int, from netip.Addr) map[netip.Addr]int {
	t.Helper()
	before := map[netip.Addr]int{}
	for a, s := range e.servers {
		before[a] = len(s.Peers())
	}
	var opts []sandbox.DialOption
	if from.IsValid() {
		opts = append(opts, sandbox.FromIP(from))
	}
	addr := netip.AddrPortFrom(e.topo.Gateway.IPv4, port).String()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		c, _, err := e.topo.Client.DialTCP(ctx, addr, opts...)
		cancel()
		if err != nil {
			t.Fatalf("connection %d to %s: %v", i, addr, err)
		}
		c.Close()
	}
	got := map[netip.Addr]int{}
	for a, s := range e.servers {
		if d := len(s.Peers()) - before[a]; d > 0 {
			got[a] = d
		}
	}
	return got
}

// within checks that backend a got share (0..1) of n connections, give or
// take 5 points: over 3,000 connections that is more than 5 standard
// deviations of a fair draw, so it fails only when the split is wrong.
func within(t *testing.T, what string, got map[netip.Addr]int, a netip.Addr, share float64, n int) {
	t.Helper()
	if s := float64(got[a]) / float64(n); s < share-0.05 || s > share+0.05 {
		t.Errorf("%s: %s got %d of %d (%.1f %%), want %.1f %% +-5", what, a, got[a], n, 100*s, 100*share)
	}
}

func TestKernelBalance(t *testing.T) {
	e := newBalanceEnv(t)
	const n = 3000
	got := e.spread(t, 80, n, netip.Addr{})
	t.Logf("random over 3: %v", got)
	for _, b := range e.backends {
		within(t, "random", got, b.Addr(), 1.0/3, n)
	}

	got = e.spread(t, 82, n, netip.Addr{})
	t.Logf("random 3:1: %v", got)
	within(t, "weights 3:1", got, e.backends[0].Addr(), 0.75, n)
	within(t, "weights 3:1", got, e.backends[1].Addr(), 0.25, n)
	if got[e.backends[2].Addr()] != 0 {
		t.Errorf("weights 3:1: the third backend, not in the map, got %d", got[e.backends[2].Addr()])
	}

	// Source: each client address always lands on one backend; the 20
	// addresses spread over more than one.
	used := map[netip.Addr]bool{}
	for _, cl := range e.clients {
		got := e.spread(t, 81, 10, cl)
		if len(got) != 1 {
			t.Errorf("source: client %s went to %v, want one backend", cl, got)
		}
		for a := range got {
			used[a] = true
		}
	}
	if len(used) < 2 {
		t.Errorf("source: 20 clients all went to %v", used)
	}

	// A backend taken out: one batch replaces only forward 1's elements.
	all, _ := Slots([]int{1, 1, 1}, nil)
	two, _ := Slots([]int{1, 1, 1}, []bool{true, false, true})
	if err := e.conn.SetDeleteElements(e.set, BalanceElements(0xfd000001, 80, all, e.backends)); err != nil {
		t.Fatal(err)
	}
	if err := e.conn.SetAddElements(e.set, BalanceElements(0xfd000001, 80, two, e.backends)); err != nil {
		t.Fatal(err)
	}
	if err := e.conn.Flush(); err != nil {
		t.Fatalf("replace forward 1's elements: %v", err)
	}
	got = e.spread(t, 80, 300, netip.Addr{})
	if got[e.backends[1].Addr()] != 0 || got[e.backends[0].Addr()] == 0 || got[e.backends[2].Addr()] == 0 {
		t.Errorf("with backend 2 out: %v", got)
	}
}
