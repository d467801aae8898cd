package main

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Throughput variants, in the order they are reported.
const (
	tputRouting = "routing"
	tputFwdd    = "fwdd"
	tputSocat   = "socat"
	tputHAProxy = "haproxy"
	// tputDNAT is the same forward as one hand-written DNAT rule and a
	// masquerade rule, without counters: NAT's own price, against which
	// fwdd's per-packet counting is judged.
	tputDNAT = "dnat"
	// tputTable is fwdd's table loaded with nft -f (from `fwdd print`) and
	// no daemon running: the kernel's per-packet share of fwdd's price,
	// apart from the daemon's presence.
	tputTable = "fwddtable"
)

var tputVariants = []string{tputRouting, tputFwdd, tputTable, tputDNAT, tputSocat, tputHAProxy}

const dnatTable = "handdnat"

func dnatRuleset() []byte {
	return fmt.Appendf(nil, `table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %[2]s tcp dport %[3]d dnat to %[4]s:%[3]d
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat masquerade
	}
}
`, dnatTable, gatewayAddr, iperfPort, backendAddr)
}

// tputResults maps a variant to its samples in Gbit/s.
type tputResults map[string][]float64

// measureThroughput runs one iperf3 TCP stream client -> backend per sample,
// interleaved over the variants (see roundOrder) so that no variant always
// runs first or right after another.
func (e *env) measureThroughput(o *options, rounds int, seconds int) (tputResults, error) {
	cfg, err := e.writeConfig("throughput.toml", throughputConfig())
	if err != nil {
		return nil, err
	}
	files := map[string]string{tputFwdd: cfg}
	if files[tputDNAT], err = e.writeConfig("dnat.nft", dnatRuleset()); err != nil {
		return nil, err
	}
	if files[tputTable], err = e.printTable(cfg); err != nil {
		return nil, err
	}
	var variants []string
	for _, v := range tputVariants {
		if o.runs(v) {
			variants = append(variants, v)
		}
	}
	res := tputResults{}
	for r := range rounds {
		for _, k := range roundOrder(r, len(variants)) {
			v := variants[k]
			file := files[v]
			gbps, err := e.tputSample(v, file, seconds)
			if err != nil {
				return nil, fmt.Errorf("throughput %s, round %d: %w", v, r+1, err)
			}
			e.logf("throughput round %d/%d %-8s %6.2f Gbit/s", r+1, rounds, v, gbps)
			res[v] = append(res[v], gbps)
		}
	}
	return res, nil
}

func (e *env) tputSample(variant, cfg string, seconds int) (float64, error) {
	if err := e.resetGateway(); err != nil {
		return 0, err
	}
	target, port := gatewayAddr, iperfPort
	switch variant {
	case tputRouting:
		target = backendAddr
	case tputFwdd:
		d, err := e.startFwdd(cfg)
		if err != nil {
			return 0, err
		}
		defer func() { _ = d.stop() }()
	case tputDNAT, tputTable:
		if out, err := e.run(e.topo.Gateway, time.Minute, "nft", "-f", cfg); err != nil {
			return 0, fmt.Errorf("nft -f %s: %w: %s", cfg, err, out)
		}
		table := []string{"ip", dnatTable}
		if variant == tputTable {
			table = []string{"inet", "fwdd"}
		}
		defer func() {
			_, _ = e.run(e.topo.Gateway, time.Minute, append([]string{"nft", "delete", "table"}, table...)...)
		}()
	case tputSocat:
		port = socatPort
	case tputHAProxy:
		port = haproxyPort
	}
	return e.iperf(target, port, seconds)
}

// iperf runs an iperf3 client from the client host against target:port
// for seconds and returns the throughput in Gbit/s. It tries three times:
// iperf3's server can be briefly busy with the last test.
func (e *env) iperf(target string, port, seconds int) (float64, error) {
	var lastErr error
	for try := range 3 {
		if try > 0 {
			time.Sleep(time.Second)
		}
		out, err := e.run(e.topo.Client, time.Duration(seconds+30)*time.Second,
			"iperf3", "-c", target, "-p", strconv.Itoa(port), "-t", strconv.Itoa(seconds), "-O", "1", "-J")
		gbps, perr := parseIperf(out)
		if perr == nil {
			return gbps, nil
		}
		lastErr = fmt.Errorf("iperf3 -c %s -p %d: %v, %v", target, port, err, perr)
	}
	return 0, lastErr
}

func parseIperf(out []byte) (float64, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, fmt.Errorf("parse iperf3 -J output: %w: %.200s", err, out)
	}
	if r.Error != "" {
		return 0, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.BitsPerSecond <= 0 {
		return 0, fmt.Errorf("iperf3 reported no throughput")
	}
	return r.End.SumReceived.BitsPerSecond / 1e9, nil
}
