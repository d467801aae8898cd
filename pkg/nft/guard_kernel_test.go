package nft

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// The situation of a new HA master before its notify hook has committed the
// synced connections: a connection through a fixed-snat forward whose
// conntrack entry is missing on the gateway. The backend sends; its segment
// reaches the gateway, whose local stack would answer with a reset (the snat
// address is local). fwdd's snat_guard drops the segment instead, so the
// backend keeps retransmitting and the connection survives; without the
// guard it is reset.
func TestKernelSNATGuard(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	gw := topo.Gateway
	if err := gw.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if out, err := gw.Run(ctx, "ip", "addr", "add", "10.22.0.100/32", "dev", "bak0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	m := compile(t, `
[[forward]]
name = "vip"
port = 80
to = "10.22.0.2:8080"
snat = "10.22.0.100"
`, nil)
	if _, err := (&Applier{Backend: &Netlink{NetNS: gw.Fd()}}).Apply(m); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := topo.Backend.Do(func() (err error) { ln, err = net.Listen("tcp4", "10.22.0.2:8080"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })

	// open connects from the client and returns both ends: the client's
	// and the backend's (which sees the snat address).
	open := func() (net.Conn, net.Conn) {
		t.Helper()
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}()
		var cli net.Conn
		if err := topo.Client.Do(func() (err error) {
			cli, err = net.DialTimeout("tcp4", "10.11.0.1:80", 3*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		srv, ok := <-accepted
		if !ok {
			t.Fatal("accept failed")
		}
		t.Cleanup(func() { cli.Close(); srv.Close() })
		if got := srv.RemoteAddr().(*net.TCPAddr).IP.String(); got != "10.22.0.100" {
			t.Fatalf("backend sees %s, want the snat address 10.22.0.100", got)
		}
		return cli, srv
	}
	// lose deletes the gateway's conntrack entries, then the backend sends
	// and reads: it returns the backend's read error after a while.
	lose := func(srv net.Conn) error {
		t.Helper()
		if out, err := gw.Run(ctx, "conntrack", "-D", "-p", "tcp", "--orig-port-dst", "80"); err != nil {
			t.Fatalf("conntrack -D: %v: %s", err, out)
		}
		if _, err := srv.Write([]byte("download")); err != nil {
			return err
		}
		srv.SetReadDeadline(time.Now().Add(1500 * time.Millisecond))
		_, err := srv.Read(make([]byte, 1))
		return err
	}

	_, srv := open()
	if err := lose(srv); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("with snat_guard: backend's connection got %v, want it alive (read timeout)", err)
	}

	if out, err := gw.Run(ctx, "nft", "flush", "chain", "inet", "fwdd", "snat_guard"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	_, srv = open()
	err := lose(srv)
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, io.EOF) {
		t.Fatalf("without snat_guard: backend's connection got %v, want a reset (the test would prove nothing)", err)
	}
}
