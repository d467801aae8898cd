package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// The gateway's addresses: 10.11.0.1 (cli0, client side), 10.33.0.1 (cli1,
// client2 side), 10.22.0.1 (bak0, backend side), 10.44.0.1 (oth0).
const forwardingConfig = `
[daemon]
table = "fwdd"

[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "dns-udp"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

[[forward]]
name = "both"
proto = ["tcp", "udp"]
port = 7000
to = "10.22.0.2:7700"

[[forward]]
name = "range"
port = "10000-10009"
to = "10.22.0.2:20000-20009"

[[forward]]
name = "fan-in"
port = "11000-11009"
to = "10.22.0.2:8080"

[[forward]]
name = "v6"
proto = ["tcp", "udp"]
port = 80
to = "[fd22::2]:8080"

[[forward]]
name = "no-snat"
port = 81
to = "10.22.0.2:8080"
snat = "none"

[[forward]]
name = "vip-snat"
port = 82
to = "10.22.0.2:8080"
snat = "10.22.0.100"

[[forward]]
name = "cli1-only"
port = 83
to = "10.22.0.2:8080"
interface = "cli1"

[[forward]]
name = "from-client2"
port = 84
to = "10.22.0.2:8080"
sources = ["10.33.0.0/24"]

[[forward]]
name = "on-address"
port = 85
address = "10.11.0.1"
to = "10.22.0.2:8080"
`

func TestKernelForwarding(t *testing.T) {
	topo := sandbox.New(t)
	be := topo.Backend
	listenTCP(t, be, "10.22.0.2:8080")
	listenTCP(t, be, "[fd22::2]:8080")
	listenUDP(t, be, "[fd22::2]:8080")
	listenUDP(t, be, "10.22.0.2:5353")
	listenTCP(t, be, "10.22.0.2:7700")
	listenUDP(t, be, "10.22.0.2:7700")
	ranged := map[int]*sandbox.TCPServer{}
	for p := 20000; p <= 20009; p++ {
		ranged[p] = listenTCP(t, be, fmt.Sprintf("10.22.0.2:%d", p))
	}
	// The fixed SNAT address, as a VRRP VIP would be, on the backend side.
	if _, err := topo.Gateway.Run(ctxT(t), "ip", "addr", "add", "10.22.0.100/24", "dev", "bak0"); err != nil {
		t.Fatal(err)
	}
	startFwdd(t, topo, forwardingConfig)

	t.Run("tcp masquerade", func(t *testing.T) {
		mustGreet(t, topo.Client, "10.11.0.1:80", "backend 10.22.0.1:")
	})
	t.Run("udp", func(t *testing.T) {
		mustAsk(t, topo.Client, "10.11.0.1:53", "backend 10.22.0.1:")
	})
	t.Run("tcp and udp", func(t *testing.T) {
		mustGreet(t, topo.Client, "10.11.0.1:7000", "backend 10.22.0.1:")
		mustAsk(t, topo.Client, "10.11.0.1:7000", "backend 10.22.0.1:")
	})
	t.Run("range to range is 1:1", func(t *testing.T) {
		for _, off := range []int{0, 5, 9} {
			before := len(ranged[20000+off].Peers())
			mustGreet(t, topo.Client, fmt.Sprintf("10.11.0.1:%d", 10000+off), "backend 10.22.0.1:")
			if got := len(ranged[20000+off].Peers()); got != before+1 {
				t.Errorf("port %d: backend port %d saw %d connections, want %d", 10000+off, 20000+off, got, before+1)
			}
		}
	})
	t.Run("range to one port", func(t *testing.T) {
		for _, p := range []int{11000, 11004, 11009} {
			mustGreet(t, topo.Client, fmt.Sprintf("10.11.0.1:%d", p), "backend 10.22.0.1:")
		}
	})
	t.Run("ipv6", func(t *testing.T) {
		mustGreet(t, topo.Client, "[fd11::1]:80", "backend [fd22::1]:")
		mustAsk(t, topo.Client, "[fd11::1]:80", "backend [fd22::1]:")
	})
	t.Run("snat none", func(t *testing.T) {
		mustGreet(t, topo.Client, "10.11.0.1:81", "backend 10.11.0.2:")
	})
	t.Run("fixed snat", func(t *testing.T) {
		mustGreet(t, topo.Client, "10.11.0.1:82", "backend 10.22.0.100:")
	})
	t.Run("interface restriction", func(t *testing.T) {
		mustGreet(t, topo.Client2, "10.33.0.1:83", "backend 10.22.0.1:")
		mustNotReach(t, topo.Client, "10.11.0.1:83")
	})
	t.Run("sources restriction", func(t *testing.T) {
		mustGreet(t, topo.Client2, "10.33.0.1:84", "backend 10.22.0.1:")
		mustNotReach(t, topo.Client, "10.11.0.1:84")
	})
	t.Run("address restriction", func(t *testing.T) {
		mustGreet(t, topo.Client, "10.11.0.1:85", "backend 10.22.0.1:")
		mustNotReach(t, topo.Client2, "10.33.0.1:85")
	})
	t.Run("transit traffic untouched", func(t *testing.T) {
		other := listenTCP(t, topo.Other, "10.44.0.2:80")
		mustGreet(t, topo.Client, "10.44.0.2:80", "other 10.11.0.2:")
		if n := len(other.Peers()); n != 1 {
			t.Errorf("other saw %d connections, want 1", n)
		}
	})
	t.Run("gateway's own connection", func(t *testing.T) {
		mustGreet(t, topo.Gateway, "10.11.0.1:80", "backend 10.22.0.1:")
	})
	t.Run("loopback not forwarded", func(t *testing.T) {
		mustNotReach(t, topo.Gateway, "127.0.0.1:80")
	})
	t.Run("hairpin", func(t *testing.T) {
		mustGreet(t, topo.Backend, "10.22.0.1:80", "backend 10.22.0.1:")
	})
	t.Run("print loads with nft -c", func(t *testing.T) {
		d := t.TempDir()
		path := d + "/fwdd.toml"
		writeConfig(t, path, forwardingConfig)
		out, err := fwdd(t, topo, "print", "-c", path)
		if err != nil {
			t.Fatalf("fwdd print: %v\n%s", err, out)
		}
		script := d + "/print.nft"
		writeConfig(t, script, out)
		if res, err := topo.Gateway.Run(ctxT(t), "nft", "-c", "-f", script); err != nil {
			t.Fatalf("nft -c -f rejects fwdd print: %v\n%s", err, res)
		}
		if !strings.Contains(out, "table inet fwdd {") {
			t.Errorf("print output lacks the table:\n%s", out)
		}
	})
}
