package sandbox

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func TestKernelBackendAddrs(t *testing.T) {
	topo := New(t, Options{NoClient2: true, NoOther: true, BackendAddrs: 2})
	want := []netip.Addr{
		netip.MustParseAddr("10.22.0.3"), netip.MustParseAddr("fd22::3"),
		netip.MustParseAddr("10.22.0.4"), netip.MustParseAddr("fd22::4"),
	}
	if len(topo.Backend.Extra) != len(want) {
		t.Fatalf("Extra = %v, want %v", topo.Backend.Extra, want)
	}
	for i, a := range want {
		if topo.Backend.Extra[i] != a {
			t.Fatalf("Extra = %v, want %v", topo.Backend.Extra, want)
		}
		addr := netip.AddrPortFrom(a, 8080).String()
		if _, err := topo.Backend.ListenTCP(addr); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		c, _, err := topo.Gateway.DialTCP(ctx, addr)
		cancel()
		if err != nil {
			t.Fatalf("gateway -> %s: %v", addr, err)
		}
		if got := c.RemoteAddr().String(); got != addr {
			t.Errorf("connected to %s, want %s", got, addr)
		}
		c.Close()
	}
}
