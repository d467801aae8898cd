package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Kinds of connection-rate variants.
const (
	kindRouting = "routing" // no NAT, no table: the client connects to the backend itself
	kindFwdd    = "fwdd"    // fwdd with n forwards
	kindLinear  = "linear"  // n DNAT rules in one chain, the measured one last
	// kindTable is fwdd's table for n forwards loaded with nft -f (from
	// `fwdd print`) with no daemon running: the kernel's share of fwdd's
	// cost without the daemon's own work (its conntrack event watcher).
	kindTable = "fwddtable"
)

type connVariant struct {
	Kind string
	N    int
}

func (v connVariant) String() string {
	if v.Kind == kindRouting {
		return v.Kind
	}
	return fmt.Sprintf("%s-%d", v.Kind, v.N)
}

// connSample is one measurement of one variant.
type connSample struct {
	Rate   float64 // successful connections per second
	Failed int64
	Err    string // the first failure, if any
	// SynRetrans counts the client's SYN retransmits during the sample.
	SynRetrans int64 `json:",omitempty"`
	// Setup is the time to put the variant in place: fwdd start to applied,
	// or nft -f of the linear rules.
	Setup time.Duration
	// DaemonCPU is fwdd's CPU time (user+system) during the sample, warm-up
	// included, per second of wall time: 0.5 is half of one CPU.
	DaemonCPU float64
	// Scrapes counts the /metrics scrapes during the sample (fwdd only).
	Scrapes int `json:",omitempty"`
	// DaemonWarnings are the distinct messages of fwdd's WARN and ERROR log
	// lines during the sample, with their counts.
	DaemonWarnings map[string]int `json:",omitempty"`
}

type connResults map[connVariant][]connSample

type connOptions struct {
	sizes    []int
	rounds   int
	duration time.Duration
	warmup   time.Duration
	workers  int
	runs     func(kind string) bool // which kinds of variant to measure
}

// measureConns measures new connections per second over routing, fwdd,
// fwdd's table alone and linear rules of every size, interleaved (see
// roundOrder).
func (e *env) measureConns(o connOptions) (connResults, error) {
	files := map[connVariant]string{}
	var variants []connVariant
	if o.runs(kindRouting) {
		variants = append(variants, connVariant{Kind: kindRouting})
	}
	for _, n := range o.sizes {
		fv, tv, lv := connVariant{kindFwdd, n}, connVariant{kindTable, n}, connVariant{kindLinear, n}
		var err error
		cfg := fwddConfig(n, false)
		if files[tv], err = e.writeConfig(fmt.Sprintf("conns-%d.toml", n), cfg); err != nil {
			return nil, err
		}
		if files[tv], err = e.printTable(files[tv]); err != nil {
			return nil, err
		}
		// The daemon serves /metrics, scraped during every sample.
		withMetrics := bytes.Replace(cfg, []byte(`metrics = ""`), []byte(`metrics = "`+metricsAddr+`"`), 1)
		if files[fv], err = e.writeConfig(fmt.Sprintf("conns-%d-metrics.toml", n), withMetrics); err != nil {
			return nil, err
		}
		if files[lv], err = e.writeConfig(fmt.Sprintf("linear-%d.nft", n), linearRuleset(n)); err != nil {
			return nil, err
		}
		for _, v := range []connVariant{fv, tv, lv} {
			if o.runs(v.Kind) {
				variants = append(variants, v)
			}
		}
	}
	res := connResults{}
	for r := range o.rounds {
		for _, k := range roundOrder(r, len(variants)) {
			v := variants[k]
			s, err := e.connSample(v, files[v], o)
			if err != nil {
				return nil, fmt.Errorf("connections %s, round %d: %w", v, r+1, err)
			}
			note := ""
			if s.Failed > 0 {
				note = fmt.Sprintf(" (%d failed: %s)", s.Failed, s.Err)
			}
			if v.Kind == kindFwdd {
				note += fmt.Sprintf("  fwdd cpu %.0f%%", 100*s.DaemonCPU)
			}
			for msg, n := range s.DaemonWarnings {
				note += fmt.Sprintf("  [fwdd: %dx %q]", n, msg)
			}
			e.logf("conns round %d/%d %-13s %8.0f conn/s  setup %v%s", r+1, o.rounds, v, s.Rate, s.Setup.Round(time.Millisecond), note)
			res[v] = append(res[v], s)
		}
	}
	return res, nil
}

func (e *env) connSample(v connVariant, file string, o connOptions) (s connSample, err error) {
	if err := e.resetGateway(); err != nil {
		return s, err
	}
	addr := fmt.Sprintf("%s:%d", gatewayAddr, measuredPort)
	daemonPID := 0
	switch v.Kind {
	case kindRouting:
		addr = fmt.Sprintf("%s:%d", backendAddr, serverPort)
	case kindFwdd:
		d, err := e.startFwdd(file)
		if err != nil {
			return s, err
		}
		defer func() {
			_ = d.stop()
			s.DaemonWarnings = logWarnings(d.Log())
		}()
		s.Setup = d.Wall
		daemonPID = d.PID()
	case kindLinear, kindTable:
		wall, out, err := e.timed(e.topo.Gateway, 5*time.Minute, "nft", "-f", file)
		if err != nil {
			return s, fmt.Errorf("nft -f %s: %w: %s", filepath.Base(file), err, out)
		}
		s.Setup = wall
		table := []string{"ip", linearTable}
		if v.Kind == kindTable {
			table = []string{"inet", "fwdd"}
		}
		defer func() {
			_, _ = e.run(e.topo.Gateway, 5*time.Minute, append([]string{"nft", "delete", "table"}, table...)...)
		}()
	}
	var ticks0 int64
	if daemonPID != 0 {
		var err error
		if ticks0, err = cpuTicks(daemonPID); err != nil {
			return s, err
		}
	}
	start := time.Now()
	if daemonPID != 0 {
		stopScraping := e.scrapeEvery(metricsScrapeInterval, &s.Scrapes)
		defer stopScraping()
	}
	if err := e.connload(&s, addr, o, serverPort); err != nil {
		return s, err
	}
	if daemonPID != 0 {
		wall := time.Since(start)
		ticks1, err := cpuTicks(daemonPID)
		if err != nil {
			return s, err
		}
		s.DaemonCPU = float64(ticks1-ticks0) / clockTicks / wall.Seconds()
	}
	return s, nil
}

// connload runs "fwdd-bench connload" from the client against addr, whose
// servers greet with port expect, and records the rate and failures in s.
func (e *env) connload(s *connSample, addr string, o connOptions, expect int) error {
	out, err := e.run(e.topo.Client, o.warmup+o.duration+time.Minute, e.self, "connload",
		"-addr", addr, "-workers", strconv.Itoa(o.workers), "-duration", o.duration.String(),
		"-warmup", o.warmup.String(), "-expect", strconv.Itoa(expect))
	if err != nil {
		return fmt.Errorf("connload: %w: %s", err, out)
	}
	var r connResult
	if err := json.Unmarshal(out, &r); err != nil {
		return fmt.Errorf("connload output %q: %w", out, err)
	}
	if r.OK == 0 {
		return fmt.Errorf("no connection succeeded via %s: %s", addr, r.FirstErr)
	}
	s.Rate = float64(r.OK) / r.Seconds
	s.Failed, s.Err, s.SynRetrans = r.Failed, r.FirstErr, r.SynRetrans
	return nil
}

// printTable writes `fwdd print -c cfg` (run in the gateway with no fwdd
// table, so ids are fresh as at a daemon's start) next to cfg.
func (e *env) printTable(cfg string) (string, error) {
	if err := e.resetGateway(); err != nil {
		return "", err
	}
	out, err := e.run(e.topo.Gateway, 5*time.Minute, e.fwdd, "print", "-c", cfg)
	if err != nil {
		return "", fmt.Errorf("fwdd print -c %s: %w: %.500s", cfg, err, out)
	}
	path := strings.TrimSuffix(cfg, ".toml") + ".nft"
	return path, os.WriteFile(path, out, 0o644)
}
