package main

import (
	"bytes"
	"fmt"
	"strings"
	"time"
)

// phaseCtMark compares the default ct mark layout (fwdd owns the whole
// mark: one map sets it) with a partial ct_mask (fwdd ORs its bits in, one
// verdict map per chunk of the id: pkg/nft/ctmark.go), side by side: fwdd's
// start to applied, and new connections per second through the table alone
// (`fwdd print | nft -f`, no daemon).
const phaseCtMark = "ctmark"

// partialMark is the partial layout measured: 20 id bits (three chunks,
// the most 100,000 forwards need), the tag below, the low 4 bits left to
// another tool.
const partialMark = "ct_mark = \"0x0d000000/0x0f000000\"\nct_mask = 0x0ffffff0\n"

type ctmarkVariant struct {
	Partial bool
	N       int
}

func (v ctmarkVariant) String() string {
	if v.Partial {
		return fmt.Sprintf("partial-%d", v.N)
	}
	return fmt.Sprintf("default-%d", v.N)
}

type ctmarkSample struct {
	StartWall   time.Duration // fwdd run to its "forwarding" line
	StartLogged time.Duration // the apply it logs
	// StartCPU is fwdd's CPU time (user and system) from exec to applied:
	// the kernel processes a netlink batch in the sender's system call, so
	// this is the apply's cost with little of the machine's other load.
	StartCPU time.Duration
	Messages int
	Elements int
	Conns    *connSample `json:",omitempty"` // table alone
}

type ctmarkResults struct {
	Sizes, ConnSizes []int
	Samples          map[string][]ctmarkSample
}

func ctmarkConfig(n int, partial bool) []byte {
	cfg := fwddConfig(n, false)
	if partial {
		cfg = bytes.Replace(cfg, []byte("[daemon]\n"), []byte("[daemon]\n"+partialMark), 1)
	}
	return cfg
}

func (e *env) measureCtMark(o *options) (*ctmarkResults, error) {
	res := &ctmarkResults{Sizes: o.ctmarkSizes, ConnSizes: o.ctmarkConnSizes, Samples: map[string][]ctmarkSample{}}
	cfgs, tables := map[ctmarkVariant]string{}, map[ctmarkVariant]string{}
	var variants []ctmarkVariant
	for _, n := range o.ctmarkSizes {
		for _, partial := range []bool{false, true} {
			v := ctmarkVariant{partial, n}
			var err error
			if cfgs[v], err = e.writeConfig(fmt.Sprintf("ctmark-%s.toml", v), ctmarkConfig(n, partial)); err != nil {
				return nil, err
			}
			if containsInt(o.ctmarkConnSizes, n) {
				if tables[v], err = e.printTable(cfgs[v]); err != nil {
					return nil, err
				}
			}
			variants = append(variants, v)
		}
	}
	copts := connOptions{duration: o.connDuration, warmup: o.connWarmup, workers: o.workers}
	for r := range o.applyRounds {
		for k := range variants {
			v := variants[(r+k)%len(variants)]
			var s ctmarkSample
			if err := e.resetGateway(); err != nil {
				return nil, err
			}
			d, err := e.startFwdd(cfgs[v])
			if err != nil {
				return nil, fmt.Errorf("ctmark %s: %w", v, err)
			}
			s.StartWall = d.Wall
			s.StartLogged, _ = d.Forwarding.Duration("elapsed")
			s.Messages, _ = d.Forwarding.Int("messages")
			s.Elements, _ = d.Forwarding.Int("elements")
			ticks, err := cpuTicks(d.PID())
			s.StartCPU = time.Duration(ticks) * time.Second / clockTicks
			if err == nil {
				err = e.checkForward(v.N, serverPort)
			}
			if serr := d.stop(); err == nil {
				err = serr
			}
			if err != nil {
				return nil, fmt.Errorf("ctmark %s: %w", v, err)
			}
			note := ""
			if t := tables[v]; t != "" {
				cs, err := e.connSample(connVariant{Kind: kindTable, N: v.N}, t, copts)
				if err != nil {
					return nil, fmt.Errorf("ctmark %s connections: %w", v, err)
				}
				s.Conns = &cs
				note = fmt.Sprintf("  table alone %8.0f conn/s", cs.Rate)
			}
			e.logf("ctmark round %d/%d %-14s start %v (logged %v, cpu %v, %d msgs)%s", r+1, o.applyRounds, v, ms(s.StartWall), ms(s.StartLogged), s.StartCPU, s.Messages, note)
			res.Samples[v.String()] = append(res.Samples[v.String()], s)
		}
	}
	return res, nil
}

func containsInt(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func writeCtMark(b *strings.Builder, r *ctmarkResults, o *options) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## 7. ct mark layouts\n\n")
	p("The default layout (fwdd owns the whole ct mark, set from one map) against a partial `ct_mask` "+
		"(`%s`: 20 id bits in three chunks, fwdd ORs its bits in through one verdict map per chunk and leaves the other bits), "+
		"interleaved: `fwdd run` to applied (its \"forwarding\" line), its logged apply, and its CPU time (user and system) until then, "+
		"which holds the kernel's work on the batch and little of the machine's other load; new connections per second through "+
		"the table alone (`fwdd print | nft -f`, no daemon), %d clients, %v per sample after %v warm-up.\n\n",
		strings.ReplaceAll(strings.TrimSpace(partialMark), "\n", "`, `"), o.workers, o.connDuration, o.connWarmup)
	p("| variant | start to applied, ms | logged apply, ms | CPU to applied, ms | messages | conn/s (table alone) | conn/s vs default |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range r.Sizes {
		def := r.Samples[ctmarkVariant{false, n}.String()]
		for _, partial := range []bool{false, true} {
			v := ctmarkVariant{partial, n}
			ss := r.Samples[v.String()]
			var wall, logged, cpu, rates, defRates []float64
			msgs := 0
			for _, s := range ss {
				wall = append(wall, float64(s.StartWall)/1e6)
				logged = append(logged, float64(s.StartLogged)/1e6)
				cpu = append(cpu, float64(s.StartCPU)/1e6)
				msgs = s.Messages
				if s.Conns != nil {
					rates = append(rates, s.Conns.Rate)
				}
			}
			for _, s := range def {
				if s.Conns != nil {
					defRates = append(defRates, s.Conns.Rate)
				}
			}
			w, l, c := summarize(wall), summarize(logged), summarize(cpu)
			conns, rel := "–", "–"
			if len(rates) > 0 {
				r := summarize(rates)
				conns = fmt.Sprintf("%s (%s)", fmtNum(r.Median), spread(r, fmtNum))
				rel = fmt.Sprintf("%.2f", ratio(r, summarize(defRates)))
			}
			p("| %s | %.0f (%.0f – %.0f) | %.0f (%.0f – %.0f) | %.0f (%.0f – %.0f) | %d | %s | %s |\n", v, w.Median, w.Min, w.Max, l.Median, l.Min, l.Max, c.Median, c.Min, c.Max, msgs, conns, rel)
		}
	}
	p("\n")
}
