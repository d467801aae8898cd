package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
)

// loadConfig is one of the two files the load test alternates between: the
// forwards carrying the load are the same in both, others change.
func loadConfig(variant string) string {
	common := `
[daemon]
on_stop = "keep"

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
name = "download"
port = 90
to = "10.22.0.2:9000"
`
	if variant == "a" {
		return common + `
[[forward]]
name = "changing"
port = 101
to = "10.22.0.2:8081"

[[forward]]
name = "only-a"
port = 102
to = "10.22.0.2:8080"
`
	}
	return common + `
[[forward]]
name = "changing"
port = 101
to = "10.22.0.2:8082"
snat = "none"

[[forward]]
name = "only-b"
proto = ["tcp", "udp"]
port = "110-119"
to = "10.22.0.2:8080"
`
}

// shortConns runs clients that each open short TCP connections through
// the forward, one after another, until stopped.
type shortConns struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	stop       chan struct{}
	wg         sync.WaitGroup
}

func startShortConns(h *sandbox.Host, addr string, clients int) *shortConns {
	s := &shortConns{stop: make(chan struct{})}
	for range clients {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				select {
				case <-s.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, g, err := h.DialTCP(ctx, addr)
				cancel()
				if err == nil {
					// Reset rather than TIME_WAIT: thousands of connections
					// must not run out of client ports.
					c.(*net.TCPConn).SetLinger(0)
					c.Close()
					if !strings.HasPrefix(g, "backend ") {
						err = fmt.Errorf("greeting %q", g)
					}
				}
				if err != nil {
					s.failed.Add(1)
					s.mu.Lock()
					if len(s.errs) < 5 {
						s.errs = append(s.errs, err.Error())
					}
					s.mu.Unlock()
				} else {
					s.ok.Add(1)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	return s
}

func (s *shortConns) end() {
	close(s.stop)
	s.wg.Wait()
}

// hup rewrites the config and reloads with SIGHUP, as `fwdd reload` does,
// without starting a process per reload (on two busy cores that takes
// longer than the reload itself).
func (d *daemon) hup(cfg string) error {
	writeConfig(d.t, d.cfgPath, cfg)
	before, err := fwdaemon.ReadState(d.stateDir)
	if err != nil {
		return err
	}
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		return err
	}
	return sandbox.Eventually(30*time.Second, func() error {
		st, err := fwdaemon.ReadState(d.stateDir)
		switch {
		case err != nil:
			return err
		case st.Applies <= before.Applies:
			return errors.New("not reloaded yet")
		case !st.OK:
			return fmt.Errorf("reload failed: %s", st.Error)
		}
		return nil
	})
}

// Under load, fwdd's changes lose nothing: 8 clients opening short TCP
// connections, a steady UDP stream and a download run through fwdd while
// it is reloaded 100 times, SIGKILLed and started again, and stopped and
// started with on_stop = "keep". Every connection succeeds and neither
// stream is interrupted, in each phase.
func TestKernelChangesUnderLoad(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	for _, port := range []string{"8080", "8081", "8082"} {
		listenTCP(t, topo.Backend, "10.22.0.2:"+port)
	}
	listenUDP(t, topo.Backend, "10.22.0.2:5353")
	serveDownload(t, topo.Backend, "10.22.0.2:9000")

	d := startFwdd(t, topo, loadConfig("a"))
	conns := startShortConns(topo.Client, "10.11.0.1:80", 8)
	defer conns.end()
	udp := udpStream(t, topo.Client, "10.11.0.1:53")
	dl, _ := download(t, topo.Client, "10.11.0.1:90")
	streams := []*stream{udp, dl}
	defer func() {
		for _, s := range streams {
			s.end()
		}
	}()
	time.Sleep(500 * time.Millisecond)

	phase := func(name string, change func()) {
		t.Helper()
		ok0, failed0, udp0, dl0 := conns.ok.Load(), conns.failed.Load(), udp.count(), dl.count()
		start := time.Now()
		change()
		time.Sleep(500 * time.Millisecond) // traffic after the change, too
		end := time.Now()
		ok, failed := conns.ok.Load()-ok0, conns.failed.Load()-failed0
		t.Logf("%s (%v): %d short TCP connections, %d failed; %d UDP datagrams answered, none lost, longest wait %v; download %d counters, longest stall %v",
			name, end.Sub(start).Round(time.Millisecond), ok+failed, failed,
			udp.count()-udp0, udp.maxGap(start, end).Round(time.Millisecond), dl.count()-dl0, dl.maxGap(start, end).Round(time.Millisecond))
		if failed > 0 {
			conns.mu.Lock()
			t.Errorf("%s: %d of %d short connections failed, e.g. %v", name, failed, ok+failed, conns.errs)
			conns.mu.Unlock()
		}
		if ok == 0 {
			t.Errorf("%s: no connection succeeded", name)
		}
		for _, s := range streams {
			if err := s.failed(); err != nil {
				t.Fatalf("%s: stream interrupted: %v", name, err)
			}
		}
	}

	phase("100 reloads", func() {
		for i := range 100 {
			v := "b"
			if i%2 == 1 {
				v = "a"
			}
			if err := d.hup(loadConfig(v)); err != nil {
				t.Fatalf("reload %d: %v", i, err)
			}
		}
		// The last file (a) is in force.
		mustGreet(t, topo.Client, "10.11.0.1:102", "backend")
	})

	phase("SIGKILL and start again", func() {
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}
		d = startFwdd(t, topo, loadConfig("b"))
		mustGreet(t, topo.Client, "10.11.0.1:115", "backend")
	})

	phase(`stop and start with on_stop = "keep"`, func() {
		d.stop()
		d = startFwdd(t, topo, loadConfig("a"))
		mustGreet(t, topo.Client, "10.11.0.1:102", "backend")
	})
	t.Logf("in all: %d short TCP connections, %d failed; %d UDP datagrams; %d download steps",
		conns.ok.Load()+conns.failed.Load(), conns.failed.Load(), udp.count(), dl.count())
}
