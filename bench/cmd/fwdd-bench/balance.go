package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The balance phase: a forward with 4 backends against one with 1, and
// the same 4-backend TCP balancing in HAProxy (mode tcp, the same health
// checks), connection rate and single-stream throughput; then fwdd's CPU
// while it checks 1,000 backends every 2 s.
//
// The backends are the addresses 10.22.0.2-5 of the backend host (the
// sandbox's BackendAddrs); the serve helper and iperf3 listen on all of
// them.

const phaseBalance = "balance"

const (
	balancePort     = 7001 // fwdd's 4-backend forward
	balanceTputPort = 7002 // fwdd's 4-backend forward to iperf3
	haConnsPort     = 5204 // haproxy, 4 backends, to the serve helper
	haTputPort      = 5205 // haproxy, 4 backends, to iperf3
	balanceExtra    = 3    // backend addresses beyond 10.22.0.2
	healthForwards  = 250  // x 4 backends = 1,000 checked backends
	// haServerPort is where HAProxy's servers are: the same serve helper
	// as fwdd's backends, on a port of its own. HAProxy's connections to
	// the servers are the gateway's own: when they end, the backends keep
	// them in TIME_WAIT for 60 s, and the gateway's conntrack does not
	// remember them (no table is loaded during HAProxy's samples, and
	// every sample starts with an empty conntrack table). To the same
	// server port their tuples would be free to fwdd's masquerade, which
	// keeps the client's source port: a forwarded SYN would meet a
	// backend's TIME_WAIT, be refused by PAWS (the client's timestamps are
	// not HAProxy's) and wait for a retransmit. Measured: fwdd's
	// 4-backend samples fell from 7,000 to 170-780 conn/s after one of
	// HAProxy's, with one SYN retransmit per PAWS rejection on the
	// backends. A gateway running fwdd always tracks its own connections
	// (fwdd's table needs conntrack), and that TIME_WAIT entry outlives the
	// backend's, so there masquerade picks another port.
	haServerPort = altPort
)

var balanceAddrs = []string{"10.22.0.2", "10.22.0.3", "10.22.0.4", "10.22.0.5"}

// Balance variants.
const (
	balFwdd1   = "fwdd-1-backend"
	balFwdd4   = "fwdd-4-backends"
	balHAProxy = "haproxy-4-backends"
)

var balanceVariants = []string{balFwdd1, balFwdd4, balHAProxy}

type balResults struct {
	Conns      map[string][]connSample
	Throughput map[string][]float64 // fwdd-4-backends and haproxy-4-backends, Gbit/s
	// HealthCPU is fwdd's CPU per second of wall time while it checks
	// HealthBackends backends every 2 s and no traffic flows: 0.01 is 1 %
	// of one CPU.
	HealthCPU      []float64
	HealthBackends int
	HealthWindow   time.Duration
}

func balanceConfig() []byte {
	var b strings.Builder
	b.WriteString("[[forward]]\nname = \"one\"\nport = 7000\nto = \"10.22.0.2:5000\"\n\n")
	list := func(port int) string {
		var to []string
		for _, a := range balanceAddrs {
			to = append(to, fmt.Sprintf("%q", fmt.Sprintf("%s:%d", a, port)))
		}
		return "[" + strings.Join(to, ", ") + "]"
	}
	fmt.Fprintf(&b, "[[forward]]\nname = \"four\"\nport = %d\nto = %s\nhealth = { check = \"tcp\", interval = \"2s\", timeout = \"1s\", fall = 3, rise = 2 }\n\n", balancePort, list(serverPort))
	// iperf3 takes every connection as a test: no checks on it, on either side.
	fmt.Fprintf(&b, "[[forward]]\nname = \"tput\"\nport = %d\nto = %s\n", balanceTputPort, list(iperfPort))
	return []byte(b.String())
}

func healthConfig() []byte {
	var b strings.Builder
	for i := range healthForwards {
		var to []string
		for _, a := range balanceAddrs {
			to = append(to, fmt.Sprintf("%q", fmt.Sprintf("%s:%d", a, serverPort)))
		}
		fmt.Fprintf(&b, "[[forward]]\nname = \"h%d\"\nport = %d\nto = [%s]\nhealth = { check = \"tcp\", interval = \"2s\", timeout = \"1s\" }\n\n",
			i, 20000+i, strings.Join(to, ", "))
	}
	return []byte(b.String())
}

func haproxyBalanceConfig() []byte {
	var b strings.Builder
	b.WriteString("global\n\tmaxconn 4096\n\ndefaults\n\tmode tcp\n\ttimeout connect 5s\n\ttimeout client 1m\n\ttimeout server 1m\n\n")
	fmt.Fprintf(&b, "listen conns\n\tbind %s:%d\n\tbalance random\n", gatewayAddr, haConnsPort)
	for i, a := range balanceAddrs {
		fmt.Fprintf(&b, "\tserver b%d %s:%d check inter 2s fall 3 rise 2\n", i, a, haServerPort)
	}
	fmt.Fprintf(&b, "\nlisten tput\n\tbind %s:%d\n\tbalance random\n", gatewayAddr, haTputPort)
	for i, a := range balanceAddrs {
		fmt.Fprintf(&b, "\tserver b%d %s:%d\n", i, a, iperfPort)
	}
	return []byte(b.String())
}

func (e *env) measureBalance(o *options) (*balResults, error) {
	cfg, err := e.writeConfig("balance.toml", balanceConfig())
	if err != nil {
		return nil, err
	}
	haCfg := filepath.Join(e.dir, "haproxy-balance.cfg")
	if err := os.WriteFile(haCfg, haproxyBalanceConfig(), 0o644); err != nil {
		return nil, err
	}
	ha, err := e.topo.Gateway.Start(e.ctx, "haproxy", "-f", haCfg, "-db")
	if err != nil {
		return nil, err
	}
	defer func() { _ = ha.Stop() }()
	for _, p := range []int{haConnsPort, haTputPort} {
		if err := e.waitListen(e.topo.Gateway, p); err != nil {
			return nil, err
		}
	}

	res := &balResults{Conns: map[string][]connSample{}, Throughput: map[string][]float64{}}
	co := connOptions{duration: o.connDuration, warmup: o.connWarmup, workers: o.workers}
	for r := range o.rounds {
		for k := range balanceVariants {
			v := balanceVariants[(r+k)%len(balanceVariants)]
			s, err := e.balanceConnSample(v, cfg, co)
			if err != nil {
				return nil, fmt.Errorf("balance %s, round %d: %w", v, r+1, err)
			}
			e.logf("balance conns round %d/%d %-18s %8.0f conn/s, %d SYN retransmits%s", r+1, o.rounds, v, s.Rate, s.SynRetrans, failedNote(s))
			res.Conns[v] = append(res.Conns[v], s)
		}
		order := []string{balFwdd4, balHAProxy}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, v := range order {
			g, err := e.balanceTputSample(v, cfg, o.tputSeconds)
			if err != nil {
				return nil, fmt.Errorf("balance throughput %s, round %d: %w", v, r+1, err)
			}
			e.logf("balance throughput round %d/%d %-18s %6.2f Gbit/s", r+1, o.rounds, v, g)
			res.Throughput[v] = append(res.Throughput[v], g)
		}
	}

	// Health checking alone: 1,000 backends every 2 s, no traffic.
	hcfg, err := e.writeConfig("health.toml", healthConfig())
	if err != nil {
		return nil, err
	}
	res.HealthBackends = healthForwards * len(balanceAddrs)
	res.HealthWindow = 5 * o.idle / 2 // 25 s; 7.5 s with -quick
	if err := e.resetGateway(); err != nil {
		return nil, err
	}
	d, err := e.startFwdd(hcfg)
	if err != nil {
		return nil, err
	}
	defer func() { _ = d.stop() }()
	if err := sleep(e.ctx, 3*time.Second); err != nil { // every backend checked once, start-up done
		return nil, err
	}
	for range max(1, o.rounds/2) {
		t0, err := cpuTicks(d.PID())
		if err != nil {
			return nil, err
		}
		start := time.Now()
		if err := sleep(e.ctx, res.HealthWindow); err != nil {
			return nil, err
		}
		t1, err := cpuTicks(d.PID())
		if err != nil {
			return nil, err
		}
		cpu := float64(t1-t0) / clockTicks / time.Since(start).Seconds()
		e.logf("health checking %d backends every 2 s: fwdd cpu %.1f %% of one CPU", res.HealthBackends, 100*cpu)
		res.HealthCPU = append(res.HealthCPU, cpu)
	}
	if w := logWarnings(d.Log()); len(w) > 0 {
		return nil, fmt.Errorf("fwdd warned while checking healthy backends: %v", w)
	}
	return res, nil
}

func failedNote(s connSample) string {
	if s.Failed == 0 {
		return ""
	}
	return fmt.Sprintf(" (%d failed: %s)", s.Failed, s.Err)
}

// balanceConnSample measures the connection rate of one variant; fwdd runs
// only for its own variants, so its conntrack watcher does not weigh on
// HAProxy's samples.
func (e *env) balanceConnSample(v, cfg string, o connOptions) (s connSample, err error) {
	if err := e.resetGateway(); err != nil {
		return s, err
	}
	addr, expect := fmt.Sprintf("%s:%d", gatewayAddr, haConnsPort), haServerPort
	if v != balHAProxy {
		expect = serverPort
		d, err := e.startFwdd(cfg)
		if err != nil {
			return s, err
		}
		defer func() { _ = d.stop() }()
		addr = fmt.Sprintf("%s:%d", gatewayAddr, measuredPort)
		if v == balFwdd4 {
			addr = fmt.Sprintf("%s:%d", gatewayAddr, balancePort)
		}
	}
	return s, e.connload(&s, addr, o, expect)
}

func (e *env) balanceTputSample(v, cfg string, seconds int) (float64, error) {
	if err := e.resetGateway(); err != nil {
		return 0, err
	}
	port := haTputPort
	if v == balFwdd4 {
		d, err := e.startFwdd(cfg)
		if err != nil {
			return 0, err
		}
		defer func() { _ = d.stop() }()
		port = balanceTputPort
	}
	return e.iperf(gatewayAddr, port, seconds)
}

func writeBalanceTargets(b *strings.Builder, r *balResults) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	one, four, ha := connRates(r.Conns[balFwdd1]), connRates(r.Conns[balFwdd4]), connRates(r.Conns[balHAProxy])
	x := paired(four.Samples, one.Samples)
	p("| conn/s with 4 backends >= 0.95× with 1 | %s | %s |\n", pairedText(x, four, one, "%.0f", "conn/s"), verdict(x.Median >= 0.95, !x.missing))
	p("| 4-backend balancing against HAProxy (mode tcp, same checks): conn/s | %s (%s vs %s conn/s) | |\n", fmtX(ratio(four, ha)), fmtNum(four.Median), fmtNum(ha.Median))
	ft, ht := summarize(r.Throughput[balFwdd4]), summarize(r.Throughput[balHAProxy])
	p("| 4-backend balancing against HAProxy: one TCP stream | %s (%.1f vs %.1f Gbit/s) | |\n", fmtX(ratio(ft, ht)), ft.Median, ht.Median)
	hc := summarize(r.HealthCPU)
	p("| health checks of %s backends every 2 s: fwdd CPU | %.1f %% of one CPU | %s |\n", fmtNum(float64(r.HealthBackends)), 100*hc.Median, verdict(hc.Median < 0.25, !hc.missing))
}

func writeBalance(b *strings.Builder, r *balResults, o *options) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 5. Several backends per forward\n\n")
	p("One forward to 10.22.0.2:5000 against one to the four backends 10.22.0.2-5:5000 balanced in the kernel (`numgen random`, "+
		"health = { check = \"tcp\", interval = \"2s\", timeout = \"1s\", fall = 3, rise = 2 }), against HAProxy in the gateway "+
		"(mode tcp, balance random, the same four servers with `check inter 2s fall 3 rise 2`), interleaved; %d clients, %v per sample after %v warm-up. "+
		"HAProxy's servers are the same helper on port %d, so that its own connections, which the backends keep in TIME_WAIT, never share a tuple with fwdd's masqueraded ones (see bench/README.md). "+
		"Throughput: one iperf3 stream through fwdd's 4-backend forward and through HAProxy's (no checks on iperf3 on either side).\n\n",
		o.workers, o.connDuration, o.connWarmup, haServerPort)
	p("| variant | conn/s, median (min – max) | client SYN retransmits, all samples | one TCP stream, Gbit/s |\n|---|---:|---:|---:|\n")
	for _, v := range balanceVariants {
		c := connRates(r.Conns[v])
		tput := "–"
		if t, ok := r.Throughput[v]; ok {
			s := summarize(t)
			tput = fmt.Sprintf("%.1f (%.1f – %.1f)", s.Median, s.Min, s.Max)
		}
		var retrans int64
		for _, s := range r.Conns[v] {
			retrans += s.SynRetrans
		}
		p("| %s | %s (%s) | %d | %s |\n", v, fmtNum(c.Median), spread(c, fmtNum), retrans, tput)
	}
	hc := summarize(r.HealthCPU)
	p("\nHealth checking alone: %d forwards of 4 backends (%d backends, TCP connect every 2 s), no traffic: fwdd used %.1f %% of one CPU (median of %d windows of %v; %.1f – %.1f).\n\n",
		healthForwards, r.HealthBackends, 100*hc.Median, len(r.HealthCPU), r.HealthWindow, 100*hc.Min, 100*hc.Max)
}
