package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const staleBefore = `
[[forward]]
name = "dns"
proto = "udp"
port = 53
to = "10.22.0.2:5353"

[[forward]]
name = "syslog"
proto = "udp"
port = 514
to = "10.22.0.2:5514"

[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"

[[forward]]
name = "api"
port = 81
to = "10.22.0.2:8081"

[[forward]]
name = "cutme"
port = 83
to = "10.22.0.2:8083"
on_change = "cut"
`

// staleAfter moves dns and api to other backends; syslog and web stay.
var staleAfter = strings.NewReplacer("10.22.0.2:5353", "10.22.0.2:6353", "10.22.0.2:8081", "10.22.0.2:9081",
	"10.22.0.2:8083", "10.22.0.2:9083").Replace(staleBefore)

// udpPinger sends a datagram every 50 ms from one socket (one conntrack
// flow) and counts the replies.
type udpPinger struct {
	conn    *net.UDPConn
	replies atomic.Int64
	stop    chan struct{}
	wg      sync.WaitGroup
}

func startUDPStream(t *testing.T, h *sandbox.Host, addr string) *udpPinger {
	t.Helper()
	s := &udpPinger{stop: make(chan struct{})}
	if err := h.Do(func() error {
		var err error
		s.conn, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				_, _ = s.conn.Write([]byte("ping"))
			}
		}
	}()
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 1500)
		for {
			if _, err := s.conn.Read(buf); err != nil {
				select {
				case <-s.stop:
					return
				default:
					continue // ICMP errors while nothing listens
				}
			}
			s.replies.Add(1)
		}
	}()
	t.Cleanup(s.close)
	return s
}

func (s *udpPinger) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.conn.Close()
	s.wg.Wait()
}

// local is the stream's client address, as servers see it (with
// snat = "masquerade" the source address is the gateway's, the port stays).
func (s *udpPinger) port() uint16 { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort().Port() }

// heldTCP opens a TCP connection to addr through a forward and reads the
// echo server's greeting; the caller keeps it open.
func heldTCP(t *testing.T, h *sandbox.Host, addr string) net.Conn {
	t.Helper()
	c, _, err := h.DialTCP(ctxT(t), addr)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// alive checks that c still carries data both ways: the echo server sends
// back what it is sent.
func alive(c net.Conn) error {
	const msg = "still there?\n"
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

func countFrom(s *sandbox.UDPServer, port uint16) int {
	n := 0
	for _, p := range s.Peers() {
		if p.Remote.Port() == port {
			n++
		}
	}
	return n
}

// TestKernelReloadMovesUDPStream: a reload that moves a UDP forward deletes
// that forward's conntrack entries, so a steady stream reaches the new
// backend within a second; the stream of an unchanged UDP forward keeps its
// entry, a held TCP connection of an unchanged forward survives, a held TCP
// connection of a moved forward keeps its old backend, and one of a moved
// forward with on_change = "cut" is cut.
func TestKernelReloadMovesUDPStream(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	be, cl := topo.Backend, topo.Client
	oldDNS := listenUDP(t, be, "10.22.0.2:5353")
	newDNS := listenUDP(t, be, "10.22.0.2:6353")
	syslog := listenUDP(t, be, "10.22.0.2:5514")
	listenTCP(t, be, "10.22.0.2:8080")
	listenTCP(t, be, "10.22.0.2:8081")
	listenTCP(t, be, "10.22.0.2:9081")
	listenTCP(t, be, "10.22.0.2:8083")
	listenTCP(t, be, "10.22.0.2:9083")
	d := startFwdd(t, topo, staleBefore)

	dns := startUDPStream(t, cl, "10.11.0.1:53")
	other := startUDPStream(t, cl, "10.11.0.1:514")
	web := heldTCP(t, cl, "10.11.0.1:80")
	api := heldTCP(t, cl, "10.11.0.1:81")
	cutme := heldTCP(t, cl, "10.11.0.1:83")
	if err := sandbox.Eventually(5*time.Second, func() error {
		if dns.replies.Load() < 3 || other.replies.Load() < 3 {
			return fmt.Errorf("replies: dns %d, syslog %d", dns.replies.Load(), other.replies.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	syslogBefore := countFrom(syslog, other.port())

	if out, err := d.reload(staleAfter); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	reloaded := time.Now()
	if err := sandbox.Eventually(3*time.Second, func() error {
		if countFrom(newDNS, dns.port()) == 0 {
			return fmt.Errorf("the dns stream has not reached the new backend")
		}
		return nil
	}); err != nil {
		t.Fatalf("%v\n%s", err, d.proc.Output())
	}
	moved := time.Since(reloaded)
	t.Logf("the dns stream reached the new backend %v after the reload", moved.Round(time.Millisecond))
	if moved > time.Second {
		t.Errorf("the dns stream moved after %v, want within 1s", moved)
	}
	old := countFrom(oldDNS, dns.port())
	time.Sleep(300 * time.Millisecond)
	if n := countFrom(oldDNS, dns.port()); n != old {
		t.Errorf("the old dns backend still receives the stream (%d more datagrams)", n-old)
	}

	// The unchanged UDP forward: the same flow, never interrupted.
	if n := countFrom(syslog, other.port()); n <= syslogBefore {
		t.Errorf("the syslog stream stopped: %d datagrams before the reload, %d after", syslogBefore, n)
	}
	// Its entry survived: the replies kept coming in the same flow.
	r := other.replies.Load()
	time.Sleep(200 * time.Millisecond)
	if other.replies.Load() <= r {
		t.Error("the syslog stream gets no replies after the reload")
	}
	// Held TCP: the unchanged forward's and the moved forward's (which
	// keeps its old backend) both still work.
	if err := alive(web); err != nil {
		t.Errorf("held TCP connection of the unchanged forward: %v", err)
	}
	if err := alive(api); err != nil {
		t.Errorf("held TCP connection of the moved forward: %v", err)
	}
	// on_change = "cut": its entry was deleted, so the connection is reset.
	if err := alive(cutme); err == nil {
		t.Error("held TCP connection of a moved forward with on_change = \"cut\" still works")
	}
	if !strings.Contains(d.proc.Output(), "deleted conntrack entries of changed forwards") {
		t.Errorf("no log line about the deleted entries:\n%s", d.proc.Output())
	}
}
