package e2e

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// closeFirstServer accepts on addr in h's namespace, writes its address and
// a newline, and closes: the server ends every connection first, so the
// backend keeps each one in TIME_WAIT for 60 s.
func closeFirstServer(t *testing.T, h *sandbox.Host, addr string) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, addr+"\n")
			c.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

// shortConn connects from h (from port, when not 0) to addr, reads the
// greeting and closes normally (the server has closed already, so the
// client keeps no TIME_WAIT and may use the port again at once).
func shortConn(h *sandbox.Host, addr string, from netip4Port) (string, time.Duration, error) {
	d := net.Dialer{Timeout: 5 * time.Second, Control: reuseAddrCtl}
	if from.port != 0 {
		d.LocalAddr = &net.TCPAddr{IP: from.ip, Port: from.port}
	}
	start := time.Now()
	var greeting string
	err := h.Do(func() error {
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		greeting = strings.TrimSpace(string(b))
		return err
	})
	return greeting, time.Since(start), err
}

type netip4Port struct {
	ip   net.IP
	port int
}

// tcpExt reads one TcpExt counter of h's namespace.
func tcpExt(t *testing.T, h *sandbox.Host, name string) int64 {
	t.Helper()
	v, err := h.TCPExt(ctxT(t), name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestKernelBalanceShortConnections: many short connections from a few
// client ports through a forward of 4 backends, right after the gateway
// itself (as health checks or a proxy on the gateway do) used the same
// source ports to the same backends, all succeed at once: (almost) no SYN
// is refused and retransmitted. The backends end every connection first and
// keep it in TIME_WAIT; masquerade keeps the client's source port, so a
// forwarded SYN would meet a TIME_WAIT of the same tuple, which the
// backend refuses (PAWS: another sender's timestamps) unless the gateway's
// conntrack still knows the tuple and masquerade picks another port. The
// client also reuses each port while the gateway's conntrack holds the
// previous connection in TIME_WAIT, so conntrack reopens it and the new
// connection may go to another backend. (With the gateway's conntrack
// flushed after its own connections, as the benchmark once did, 33 of 400
// connections waited 1 s for a SYN retransmit.)
func TestKernelBalanceShortConnections(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true, BackendAddrs: 3})
	backends := []string{"10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080", "10.22.0.5:8080"}
	for _, b := range backends {
		closeFirstServer(t, topo.Backend, b)
	}
	startFwdd(t, topo, `
[[forward]]
name = "short"
port = 80
to = ["10.22.0.2:8080", "10.22.0.3:8080", "10.22.0.4:8080", "10.22.0.5:8080"]
health = { check = "tcp", interval = "500ms", timeout = "400ms" }
`)
	const ports, rounds = 16, 25
	firstPort := 40000
	gw := net.ParseIP("10.22.0.1")
	// The gateway's own connections: every backend, from each port.
	for p := range ports {
		for _, b := range backends {
			if g, _, err := shortConn(topo.Gateway, b, netip4Port{gw, firstPort + p}); err != nil || g != b {
				t.Fatalf("gateway to %s from port %d: %q, %v", b, firstPort+p, g, err)
			}
		}
	}
	retrans0 := tcpExt(t, topo.Client, "TCPSynRetrans")
	paws0 := tcpExt(t, topo.Backend, "PAWSTimewait")

	var mu sync.Mutex
	got := map[string]int{}
	var slowest time.Duration
	var errs []error
	var wg sync.WaitGroup
	for p := range ports {
		wg.Go(func() {
			for r := range rounds {
				g, took, err := shortConn(topo.Client, "10.11.0.1:80", netip4Port{nil, firstPort + p})
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("port %d, connection %d: %w", firstPort+p, r+1, err))
				}
				got[g]++
				slowest = max(slowest, took)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	retrans := tcpExt(t, topo.Client, "TCPSynRetrans") - retrans0
	paws := tcpExt(t, topo.Backend, "PAWSTimewait") - paws0
	t.Logf("%d connections from %d ports: %v; slowest %v; %d SYN retransmits, %d PAWS rejections", ports*rounds, ports, got, slowest.Round(time.Millisecond), retrans, paws)
	if len(got) != len(backends) {
		t.Errorf("connections went to %v, want all %d backends", got, len(backends))
	}
	// With the gateway's conntrack flushed, 33 of 400. Without, 0 to 2 of
	// 400 were still refused in runs under load (cause not established;
	// each recovered within 355 ms): allow a few, not the 8 % of the bug.
	if retrans > 8 || paws > 8 {
		t.Errorf("%d SYNs retransmitted by the client, %d refused by the backends' TIME_WAIT (PAWS): want at most 8 of %d", retrans, paws, ports*rounds)
	}
	// A SYN retransmit waits 1 s; a loaded machine answers well within it.
	if slowest >= time.Second {
		t.Errorf("the slowest connection took %v, want under the 1 s of a SYN retransmit", slowest)
	}
}

func reuseAddrCtl(_, _ string, rc syscall.RawConn) error {
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	}); err != nil {
		return err
	}
	return serr
}
