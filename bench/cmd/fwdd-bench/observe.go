package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The daemon's /metrics address in the gateway, and how often a Prometheus
// would scrape it.
const (
	metricsAddr           = "127.0.0.1:9641"
	metricsScrapeInterval = 15 * time.Second
)

// scrape fetches /metrics from inside the gateway; it returns the HTTP
// status and the size of the body.
func (e *env) scrape() (code, size int, err error) {
	var c net.Conn
	if err := e.topo.Gateway.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", metricsAddr, 5*time.Second)
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("dial metrics: %w", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprint(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, int(n), err
}

// scrapeEvery scrapes at once and then every interval until the returned
// function is called; n counts successful scrapes.
func (e *env) scrapeEvery(interval time.Duration, n *int) (stop func()) {
	ctx, cancel := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if code, _, err := e.scrape(); err == nil && code == http.StatusOK {
				*n++
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); wg.Wait() }
}

// observeResult is the cost of fwdd's observability.
type observeResult struct {
	Forwards int
	// One /metrics scrape at Forwards forwards: daemon CPU, body size, RSS
	// before the first and after the last (2 s later), per scrape.
	ScrapeCPU            []time.Duration
	ScrapeBytes          int
	RSSBeforeKiB         int
	RSSAfterKiB          int
	ConcurrentScrapes    int // scrapes sent at once
	ConcurrentRefused    int // answered 503: one scrape at a time
	ConcurrentRSSPeakKiB int
	// Memory against live connections: one forward, Flows[i] live UDP
	// flows, RSS after a scrape (which dumps the conntrack table).
	Flows         []int
	FlowsRSSKiB   []int
	FlowsScrapeMs []float64
	// fwdd status at Forwards forwards with StatusEntries conntrack
	// entries: all forwards, one forward holding the entries, one idle.
	StatusEntries                    int
	StatusAll, StatusBusy, StatusOne time.Duration
	StatusAllLines                   int
}

// flowsForward is a UDP forward over a range of ports, so that many flows
// need few source ports.
// It maps its ports 1:1 onto the backend's (nothing listens there: the
// entries stay unreplied): a range onto one port would leave masquerade
// only the gateway's 64,512 source ports for distinct reply tuples.
const (
	flowsPortLo = 20000
	flowsPorts  = 10000
)

func flowsConfig(n int) []byte {
	cfg := fwddConfig(n, false)
	cfg = []byte(strings.Replace(string(cfg), `metrics = ""`, `metrics = "`+metricsAddr+`"`, 1))
	ports := fmt.Sprintf("%d-%d", flowsPortLo, flowsPortLo+flowsPorts-1)
	return fmt.Appendf(cfg, "\n[[forward]]\nname = \"flows\"\nproto = \"udp\"\naddress = \"%s\"\nport = \"%s\"\nto = \"%s:%s\"\n",
		gatewayAddr, ports, backendAddr, ports)
}

// udpFlows makes total distinct UDP flows through the flows forward: one
// datagram from each of total/flowsPorts source ports to each port.
func (e *env) udpFlows(total int) error {
	return e.topo.Client.Do(func() error {
		srcPorts := (total + flowsPorts - 1) / flowsPorts
		sent := 0
		for sp := 0; sp < srcPorts && sent < total; sp++ {
			s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Bind(s, &unix.SockaddrInet4{Port: 40000 + sp, Addr: [4]byte{10, 11, 0, 2}}); err != nil {
				unix.Close(s)
				return err
			}
			for p := 0; p < flowsPorts && sent < total; p++ {
				dst := &unix.SockaddrInet4{Port: flowsPortLo + p, Addr: [4]byte{10, 11, 0, 1}}
				for {
					err = unix.Sendto(s, []byte("x"), 0, dst)
					if err != unix.ENOBUFS && err != unix.EAGAIN {
						break
					}
					time.Sleep(time.Millisecond)
				}
				if err != nil {
					unix.Close(s)
					return err
				}
				sent++
			}
			unix.Close(s)
		}
		return nil
	})
}

func (e *env) conntrackCount() (int, error) {
	v, err := e.topo.Gateway.Sysctl("net.netfilter.nf_conntrack_count")
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(v, &n)
	return n, err
}

// waitFlows waits until the gateway tracks at least want entries.
func (e *env) waitFlows(want int) (int, error) {
	var n int
	for t0 := time.Now(); time.Since(t0) < time.Minute; {
		var err error
		if n, err = e.conntrackCount(); err != nil {
			return 0, err
		}
		if n >= want {
			return n, nil
		}
		if err := sleep(e.ctx, 100*time.Millisecond); err != nil {
			return n, err
		}
	}
	return n, nil
}

// measureObserve measures a scrape at n forwards, memory against live
// flows, and fwdd status.
func (e *env) measureObserve(n int, flows []int, statusEntries int) (*observeResult, error) {
	r := &observeResult{Forwards: n, Flows: flows, StatusEntries: statusEntries}
	for _, k := range []string{"net.netfilter.nf_conntrack_udp_timeout", "net.netfilter.nf_conntrack_udp_timeout_stream"} {
		if err := e.topo.Gateway.SetSysctl(k, "600"); err != nil {
			return nil, err
		}
	}

	// Memory against live flows, with one forward (and the flows forward).
	if err := e.resetGateway(); err != nil {
		return nil, err
	}
	small, err := e.writeConfig("observe-1.toml", flowsConfig(1))
	if err != nil {
		return nil, err
	}
	d, err := e.startFwdd(small)
	if err != nil {
		return nil, err
	}
	have := 0
	for _, want := range flows {
		if err := e.udpFlows(want - have); err != nil {
			_ = d.stop()
			return nil, fmt.Errorf("udp flows: %w", err)
		}
		have = want
		got, err := e.waitFlows(want * 95 / 100)
		if err != nil {
			_ = d.stop()
			return nil, err
		}
		t0, _ := cpuTicks(d.Proc().PID())
		if _, _, err := e.scrape(); err != nil {
			_ = d.stop()
			return nil, err
		}
		t1, _ := cpuTicks(d.Proc().PID())
		_ = sleep(e.ctx, time.Second)
		rss, _, err := memoryOf(d.Proc().PID())
		if err != nil {
			_ = d.stop()
			return nil, err
		}
		r.FlowsRSSKiB = append(r.FlowsRSSKiB, rss)
		r.FlowsScrapeMs = append(r.FlowsScrapeMs, float64(t1-t0)*1000/clockTicks)
		e.logf("observe: %d live flows (%d entries): fwdd rss %d KiB, scrape %.0f ms cpu", want, got, rss, float64(t1-t0)*1000/clockTicks)
	}
	if err := d.stop(); err != nil {
		return nil, err
	}

	// n forwards: scrapes, then fwdd status with statusEntries entries.
	if err := e.resetGateway(); err != nil {
		return nil, err
	}
	big, err := e.writeConfig(fmt.Sprintf("observe-%d.toml", n), flowsConfig(n))
	if err != nil {
		return nil, err
	}
	if d, err = e.startFwdd(big); err != nil {
		return nil, err
	}
	defer func() { _ = d.stop() }()
	pid := d.Proc().PID()
	if err := sleep(e.ctx, 2*time.Second); err != nil {
		return nil, err
	}
	if r.RSSBeforeKiB, _, err = memoryOf(pid); err != nil {
		return nil, err
	}
	for range 5 {
		t0, _ := cpuTicks(pid)
		code, size, err := e.scrape()
		if err != nil || code != http.StatusOK {
			return nil, fmt.Errorf("scrape at %d forwards: %d %v", n, code, err)
		}
		t1, _ := cpuTicks(pid)
		r.ScrapeCPU = append(r.ScrapeCPU, time.Duration(t1-t0)*time.Second/clockTicks)
		r.ScrapeBytes = size
		_ = sleep(e.ctx, 500*time.Millisecond)
	}
	_ = sleep(e.ctx, 2*time.Second)
	if r.RSSAfterKiB, _, err = memoryOf(pid); err != nil {
		return nil, err
	}
	// Scrapes at once: all but one may be refused, none may pile up.
	r.ConcurrentScrapes = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range r.ConcurrentScrapes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, _ := e.scrape()
			mu.Lock()
			if code == http.StatusServiceUnavailable {
				r.ConcurrentRefused++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	_, r.ConcurrentRSSPeakKiB, _ = memoryOf(pid)
	e.logf("observe: %d forwards: scrape cpu %v, %d bytes, rss %d -> %d KiB; %d of %d concurrent scrapes refused",
		n, r.ScrapeCPU, r.ScrapeBytes, r.RSSBeforeKiB, r.RSSAfterKiB, r.ConcurrentRefused, r.ConcurrentScrapes)

	if err := e.udpFlows(statusEntries); err != nil {
		return nil, fmt.Errorf("udp flows: %w", err)
	}
	got, err := e.waitFlows(statusEntries * 95 / 100)
	if err != nil {
		return nil, err
	}
	r.StatusEntries = got
	status := func(args ...string) (time.Duration, []byte, error) {
		wall, out, err := e.timed(e.topo.Gateway, 10*time.Minute, append([]string{e.fwdd, "status", "-c", big}, args...)...)
		if err != nil {
			return 0, nil, fmt.Errorf("fwdd status %v: %w: %.300s", args, err, out)
		}
		return wall, out, nil
	}
	var out []byte
	if r.StatusAll, out, err = status(); err != nil {
		return nil, err
	}
	r.StatusAllLines = strings.Count(string(out), "\n")
	if r.StatusBusy, _, err = status("flows"); err != nil {
		return nil, err
	}
	if r.StatusOne, _, err = status("f0"); err != nil {
		return nil, err
	}
	e.logf("observe: fwdd status at %d forwards, %d entries: all %v (%d lines), the forward holding them %v, one idle forward %v",
		n, got, r.StatusAll, r.StatusAllLines, r.StatusBusy, r.StatusOne)
	return r, nil
}

// cpuPerThousand is the daemon's CPU per 1,000 new connections, in ms, per
// sample (its CPU over the sample's wall time, warm-up included, against
// the measured rate).
func cpuPerThousand(ss []connSample) summary {
	var xs []float64
	for _, s := range ss {
		if s.Rate > 0 {
			xs = append(xs, s.DaemonCPU/s.Rate*1000*1000)
		}
	}
	return summarize(xs)
}

func kibMB(k int) float64 { return float64(k) * 1024 / 1e6 }

func writeObserveTargets(b *strings.Builder, ob *observeResult) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	var cpu []float64
	for _, d := range ob.ScrapeCPU {
		cpu = append(cpu, float64(d))
	}
	cs := summarize(cpu)
	grow := kibMB(ob.RSSAfterKiB - ob.RSSBeforeKiB)
	p("| one /metrics scrape at %s forwards <= 250 ms daemon CPU, no lasting RSS growth > 20 MB | %s CPU (max %s), %s bytes; RSS %.1f -> %.1f MB | %s |\n",
		fmtNum(float64(ob.Forwards)), fmtDur(cs.Median), fmtDur(cs.Max), fmtNum(float64(ob.ScrapeBytes)), kibMB(ob.RSSBeforeKiB), kibMB(ob.RSSAfterKiB),
		verdict(cs.Max <= float64(250*time.Millisecond) && grow <= 20, !cs.missing))
	if len(ob.FlowsRSSKiB) == 2 {
		d := kibMB(ob.FlowsRSSKiB[1] - ob.FlowsRSSKiB[0])
		p("| daemon memory independent of live connections | RSS %.1f MB at %s live UDP flows, %.1f MB at %s | %s |\n",
			kibMB(ob.FlowsRSSKiB[0]), fmtNum(float64(ob.Flows[0])), kibMB(ob.FlowsRSSKiB[1]), fmtNum(float64(ob.Flows[1])), verdict(d <= 5, true))
	}
	p("| `fwdd status` at %s forwards and %s conntrack entries, proportional to what it prints | all forwards %s (%s lines); `status flows` (the forward holding the entries) %s; `status f0` %s | measured |\n",
		fmtNum(float64(ob.Forwards)), fmtNum(float64(ob.StatusEntries)), fmtDur(float64(ob.StatusAll)), fmtNum(float64(ob.StatusAllLines)),
		fmtDur(float64(ob.StatusBusy)), fmtDur(float64(ob.StatusOne)))
}

func writeObserve(b *strings.Builder, res *results) {
	ob := res.Observe
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 5. Cost of observability\n\n")
	p("fwdd with %s forwards plus one UDP forward over %d ports (`flows`), `/metrics` on %s. ", fmtNum(float64(ob.Forwards)), flowsPorts, metricsAddr)
	p("Per-forward series are exported up to 1,000 forwards; above that only totals. ")
	p("Scrape CPU is the daemon's utime+stime (10 ms ticks) across one scrape, %d scrapes: %v; body %s bytes. ", len(ob.ScrapeCPU), ob.ScrapeCPU, fmtNum(float64(ob.ScrapeBytes)))
	p("RSS %.1f MB before the first, %.1f MB 2 s after the last. %d scrapes sent at once: %d refused with 503 (one scrape at a time); VmHWM after them %.1f MB.\n\n",
		kibMB(ob.RSSBeforeKiB), kibMB(ob.RSSAfterKiB), ob.ConcurrentScrapes, ob.ConcurrentRefused, kibMB(ob.ConcurrentRSSPeakKiB))
	p("| live UDP flows (one forward) | fwdd RSS after a scrape | scrape CPU (dumps the conntrack table) |\n|---:|---:|---:|\n")
	for i := range ob.FlowsRSSKiB {
		p("| %s | %.1f MB | %.0f ms |\n", fmtNum(float64(ob.Flows[i])), kibMB(ob.FlowsRSSKiB[i]), ob.FlowsScrapeMs[i])
	}
	p("\n`fwdd status` (wall, from process start) at %s forwards with %s conntrack entries of the `flows` forward: all forwards %s (%s lines of output); "+
		"`fwdd status flows` %s; `fwdd status f0` %s.\n\n",
		fmtNum(float64(ob.Forwards)), fmtNum(float64(ob.StatusEntries)), fmtDur(float64(ob.StatusAll)), fmtNum(float64(ob.StatusAllLines)),
		fmtDur(float64(ob.StatusBusy)), fmtDur(float64(ob.StatusOne)))
}
