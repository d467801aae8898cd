package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// results is everything one run measured; it is also written as JSON.
type results struct {
	Started      time.Time
	Elapsed      time.Duration
	CommandLine  string
	Settings     map[string]any
	Options      *options `json:"-"`
	Machine      machine
	ExecOverhead time.Duration  // median `ip netns exec GW true`
	Throughput   tputResults    `json:",omitempty"`
	Conns        connResults    `json:",omitempty"`
	Apply        applyResults   `json:",omitempty"`
	Idle         *idleResult    `json:",omitempty"`
	Observe      *observeResult `json:",omitempty"`
	Balance      *balResults    `json:",omitempty"`
	CtMark       *ctmarkResults `json:",omitempty"`
	Foreign      []*foreignLoad
}

// MarshalText lets connResults be a JSON object keyed "fwdd-1000" etc.
func (v connVariant) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

type machine struct {
	CPUs                                              int
	CPUModel, Kernel, OS, Memory, LoadAvg, LoadAvgEnd string
	Go, Nft, Iperf3, Socat, HAProxy, Fwdd, Git        string
}

func describeMachine(fwddBin string) (machine, error) {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var errs []error
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	} else {
		errs = append(errs, err)
	}
	m.LoadAvg = loadAvg()
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
	}
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
				m.OS = strings.Trim(v, `"`)
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				var kb int
				fmt.Sscan(v, &kb)
				m.Memory = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	firstLine := func(contains string, name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) == 0 {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
			return "?"
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.Contains(l, contains) {
				return strings.TrimSpace(l)
			}
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	m.Nft = firstLine("nftables", "nft", "--version")
	m.Iperf3 = firstLine("iperf", "iperf3", "--version")
	m.Socat = firstLine("socat version", "socat", "-V")
	m.HAProxy = firstLine("HAProxy version", "haproxy", "-v")
	m.Fwdd = firstLine("fwdd", fwddBin, "version")
	m.Git = firstLine("", "git", "log", "-1", "--format=%h %s")
	return m, errors.Join(errs...)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func writeReport(dir string, res *results, logf func(string, ...any)) error {
	res.Machine.LoadAvgEnd = loadAvg()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	res.CommandLine = strings.Join(os.Args, " ")
	o := res.Options
	res.Settings = map[string]any{
		"quick": o.quick, "phases": o.phases, "sizes": o.sizes, "applySizes": o.applySizes,
		"rounds": o.rounds, "tputSeconds": o.tputSeconds, "connDuration": o.connDuration.String(),
		"connWarmup": o.connWarmup.String(), "workers": o.workers, "applyRounds": o.applyRounds, "idle": o.idle.String(),
		"durationsIn": "nanoseconds",
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "latest.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	plotted := false
	if res.Conns != nil {
		if err := plotConns(dir, res); err != nil {
			logf("no plot: %v", err)
		} else {
			plotted = true
		}
	}
	return os.WriteFile(filepath.Join(dir, "latest.md"), []byte(markdown(res, plotted)), 0o644)
}

// Formatting helpers.

func fmtNum(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	s := fmt.Sprintf("%.0f", x)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtX(x float64) string {
	if math.IsNaN(x) {
		return "–"
	}
	return fmt.Sprintf("%.2f×", x)
}

// fmtDur prints a duration given in nanoseconds as ms or s.
func fmtDur(ns float64) string {
	switch {
	case math.IsNaN(ns):
		return "–"
	case ns >= float64(time.Second):
		return fmt.Sprintf("%.2f s", ns/float64(time.Second))
	case ns >= 10*float64(time.Millisecond):
		return fmt.Sprintf("%.0f ms", ns/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.1f ms", ns/float64(time.Millisecond))
	}
}

func spread(s summary, f func(float64) string) string {
	if s.missing {
		return "–"
	}
	return fmt.Sprintf("%s – %s", f(s.Min), f(s.Max))
}

func durs[T any](xs []T, f func(T) time.Duration) summary {
	var v []float64
	for _, x := range xs {
		v = append(v, float64(f(x)))
	}
	return summarize(v)
}

func ints[T any](xs []T, f func(T) int) summary {
	var v []float64
	for _, x := range xs {
		v = append(v, float64(f(x)))
	}
	return summarize(v)
}

func connRates(ss []connSample) summary {
	var v []float64
	for _, s := range ss {
		v = append(v, s.Rate)
	}
	return summarize(v)
}

// pairedText shows a ratio target's figure: the median of the per-round
// ratios (the verdict's), their range, and the ratio of the medians.
func pairedText(pr, a, b summary, numFmt, unit string) string {
	if pr.missing {
		return "–"
	}
	return fmt.Sprintf("%s, the median of %d per-round ratios (%s – %s); medians "+numFmt+" vs "+numFmt+" %s (%s)",
		fmtX(pr.Median), pr.N, fmtX(pr.Min), fmtX(pr.Max), a.Median, b.Median, unit, fmtX(ratio(a, b)))
}

func verdict(ok bool, measured bool) string {
	switch {
	case !measured:
		return "not measured"
	case ok:
		return "**met**"
	default:
		return "**missed**"
	}
}

func markdown(res *results, plotted bool) string {
	o := res.Options
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	title := "fwdd benchmark"
	if o.quick {
		title += " (quick smoke run: too few and too short samples to quote)"
	}
	p("# %s\n\n", title)
	p("Generated by `make bench` (bench/run.sh -> bench/cmd/fwdd-bench) on %s, in %s. Raw samples: [latest.json](latest.json).\n\n",
		res.Started.UTC().Format("2006-01-02 15:04 MST"), res.Elapsed.Round(time.Second))

	m := res.Machine
	p("## Machine\n\n")
	p("| | |\n|---|---|\n")
	p("| CPUs (nproc) | %d |\n| CPU | %s |\n| memory | %s |\n| kernel | %s |\n| OS | %s |\n", m.CPUs, m.CPUModel, m.Memory, m.Kernel, m.OS)
	p("| fwdd | %s (checkout %s) |\n| tools | %s; %s; %s; %s; %s |\n", m.Fwdd, m.Git, m.Nft, m.Iperf3, m.Socat, m.HAProxy, m.Go)
	p("| date | %s |\n| load average (1, 5, 15 min) | %s at start, %s at the end (the benchmark's own load included; other work on the machine shares its CPUs) |\n\n", res.Started.UTC().Format(time.RFC3339), m.LoadAvg, m.LoadAvgEnd)
	p("Settings: %d rounds of throughput (%d s per iperf3 sample) and connection tests (%v per sample after %v warm-up, %d parallel clients); %d rounds of the apply test; idle window %v. "+
		"All variants of a test run interleaved (every other round the one before backwards, each pair of rounds starting one variant later: of any two variants each runs first in half the rounds); a ratio target is judged on the median of the ratios of samples taken next to each other in the same round. "+
		"Everything runs on this one machine: client, gateway and backend are network namespaces joined by veth pairs, so the client and server share the CPUs with the forwarding path.\n\n",
		o.rounds, o.tputSeconds, o.connDuration, o.connWarmup, o.workers, o.applyRounds, o.idle)

	writeForeign(&b, res)
	writeTargets(&b, res)
	if res.Throughput != nil {
		writeThroughput(&b, res)
	}
	if res.Conns != nil {
		writeConns(&b, res, plotted)
	}
	if res.Apply != nil {
		writeApply(&b, res)
	}
	if res.Idle != nil {
		writeIdle(&b, res)
	}
	if res.Observe != nil {
		writeObserve(&b, res)
	}
	if res.Balance != nil {
		writeBalance(&b, res.Balance, o)
	}
	if res.CtMark != nil {
		writeCtMark(&b, res.CtMark, o)
	}
	return b.String()
}

func writeTargets(b *strings.Builder, res *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("## Targets\n\n| target | result | |\n|---|---|---|\n")
	if t := res.Throughput; t != nil {
		fw, rt, so := summarize(t[tputFwdd]), summarize(t[tputRouting]), summarize(t[tputSocat])
		if r := ratio(fw, rt); !math.IsNaN(r) {
			p("| fwdd throughput >= 0.90× plain routing | %s (%.1f vs %.1f Gbit/s) | %s |\n", fmtX(r), fw.Median, rt.Median, verdict(r >= 0.90, true))
		}
		if r := ratio(fw, so); !math.IsNaN(r) {
			p("| fwdd throughput >= 4× socat | %s (%.1f vs %.1f Gbit/s) | %s |\n", fmtX(r), fw.Median, so.Median, verdict(r >= 4, true))
		}
		dn := summarize(t[tputDNAT])
		pr := paired(t[tputFwdd], t[tputDNAT])
		p("| fwdd throughput >= 0.97× one hand-written DNAT + masquerade rule, no counters | %s | %s |\n", pairedText(pr, fw, dn, "%.1f", "Gbit/s"), verdict(pr.Median >= 0.97, !pr.missing))
		if tb := summarize(t[tputTable]); !tb.missing {
			pt := paired(t[tputFwdd], t[tputTable])
			p("| fwdd throughput against fwdd's table alone (`fwdd print \\| nft -f`, no daemon) | %s | |\n", pairedText(pt, fw, tb, "%.1f", "Gbit/s"))
			pd := paired(t[tputTable], t[tputDNAT])
			p("| fwdd's table alone against the hand-written DNAT rule (the counting chain's per-packet price) | %s | |\n", pairedText(pd, tb, dn, "%.1f", "Gbit/s"))
		}
	}
	if c := res.Conns; c != nil {
		big := slices.Max(res.Options.sizes)
		one, many := connRates(c[connVariant{kindFwdd, 1}]), connRates(c[connVariant{kindFwdd, big}])
		r := paired(many.Samples, one.Samples)
		p("| conn/s with %s forwards >= 0.85× with 1 | %s | %s |\n", fmtNum(float64(big)), pairedText(r, many, one, "%.0f", "conn/s"), verdict(r.Median >= 0.85, !r.missing))
		for _, n := range slices.Compact([]int{1, big}) {
			f, t := connRates(c[connVariant{kindFwdd, n}]), connRates(c[connVariant{kindTable, n}])
			pr := paired(f.Samples, t.Samples)
			p("| conn/s with the daemon (/metrics scraped) >= 0.97× fwdd's table alone, %s forwards | %s | %s |\n", fmtNum(float64(n)), pairedText(pr, f, t, "%.0f", "conn/s"), verdict(pr.Median >= 0.97, !pr.missing))
			ms := cpuPerThousand(c[connVariant{kindFwdd, n}])
			p("| daemon CPU <= 3 ms per 1,000 new connections, %s forwards, no log = true | %.2f ms | %s |\n", fmtNum(float64(n)), ms.Median, verdict(ms.Median <= 3, !ms.missing))
		}
	}
	if a := res.Apply; a != nil {
		if s, ok := a[10_000]; ok {
			fw, nf := durs(s, func(x applySample) time.Duration { return x.StartWall }), durs(s, func(x applySample) time.Duration { return x.NftWall })
			lg := durs(s, func(x applySample) time.Duration { return x.StartLogged })
			r := ratio(fw, nf)
			p("| apply 10,000 in <= 1.0× `nft -f` time | %s: fwdd start %s vs `nft -f` %s (wall, both from process start); fwdd's logged apply alone %s = %s | %s |\n",
				fmtX(r), fmtDur(fw.Median), fmtDur(nf.Median), fmtDur(lg.Median), fmtX(ratio(lg, nf)), verdict(r <= 1.0, !math.IsNaN(r)))
			rl := durs(s, func(x applySample) time.Duration { return x.ReloadWall })
			sg := durs(s, func(x applySample) time.Duration { return x.SignalWall })
			// The target is SIGHUP to live, parsing included; `fwdd reload`
			// adds its own check of the file and polling, shown beside it.
			p("| reload after changing one of 10,000, SIGHUP to live <= 100 ms | SIGHUP to applied %s; `fwdd reload` (checks the file first) %s | %s |\n",
				fmtDur(sg.Median), fmtDur(rl.Median), verdict(sg.Median <= float64(100*time.Millisecond), !sg.missing))
		}
		if s, ok := a[100_000]; ok {
			fw := durs(s, func(x applySample) time.Duration { return x.StartWall })
			lg := durs(s, func(x applySample) time.Duration { return x.StartLogged })
			cpu := durs(s, func(x applySample) time.Duration { return x.StartCPU })
			p("| apply 100,000 in < 3 s | fwdd start %s (logged apply %s, CPU to applied %s) | %s |\n", fmtDur(fw.Median), fmtDur(lg.Median), fmtDur(cpu.Median), verdict(fw.Median < float64(3*time.Second), !fw.missing))
			hw, dw := durs(s, func(x applySample) time.Duration { return x.HealthWall }), durs(s, func(x applySample) time.Duration { return x.DiffWall })
			p("| `fwdd health` (the track script) at 100,000 forwards <= 2.5 s, half the `timeout 5` of deploy/ha/keepalived.conf | %s (max %s); `fwdd diff` %s | %s |\n",
				fmtDur(hw.Median), fmtDur(hw.Max), fmtDur(dw.Median), verdict(hw.Median <= float64(2500*time.Millisecond), !hw.missing))
		}
	}
	if ob := res.Observe; ob != nil {
		writeObserveTargets(b, ob)
	}
	if id := res.Idle; id != nil {
		rssMB := float64(id.RSSKiB) * 1024 / 1e6
		p("| RSS with %s forwards <= 100 MB | VmRSS %.1f MB (VmHWM, the peak, %.1f MB) | %s |\n", fmtNum(float64(id.Forwards)), rssMB, float64(id.HWMKiB)*1024/1e6, verdict(rssMB <= 100, true))
		pct := 100 * id.CPUSeconds / id.Window.Seconds()
		p("| idle CPU ~0 | %.2f %% of one CPU (%.2f s CPU in %v) | %s |\n", pct, id.CPUSeconds, id.Window, verdict(pct <= 0.1, true))
	}
	if res.Balance != nil {
		writeBalanceTargets(b, res.Balance)
	}
	p("\n")
}

func writeThroughput(b *strings.Builder, res *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	t := res.Throughput
	rt := summarize(t[tputRouting])
	p("## 1. Throughput of one TCP stream, client -> backend\n\n")
	p("iperf3 -c in the client, iperf3 -s in the backend, %d s per sample after 1 s left out (-O 1); %d samples each.\n\n", res.Options.tputSeconds, res.Options.rounds)
	p("| path | median Gbit/s | min – max | IQR | vs routing |\n|---|---:|---:|---:|---:|\n")
	names := map[string]string{
		tputRouting: "plain routing, no NAT (to 10.22.0.2, no table)",
		tputFwdd:    "fwdd forward (10.11.0.1:5201 -> 10.22.0.2:5201)",
		tputSocat:   "socat in the gateway (fork)",
		tputHAProxy: "haproxy in the gateway (mode tcp)",
		tputDNAT:    "one hand-written `dnat to` rule + `ct status dnat masquerade`, no counters",
		tputTable:   "fwdd's table alone (`fwdd print \\| nft -f`, no daemon)",
	}
	g := func(x float64) string { return fmt.Sprintf("%.2f", x) }
	for _, v := range tputVariants {
		s := summarize(t[v])
		if s.missing {
			continue
		}
		p("| %s | %s | %s | %s – %s | %s |\n", names[v], g(s.Median), spread(s, g), g(s.Q1), g(s.Q3), fmtX(ratio(s, rt)))
	}
	fw := summarize(t[tputFwdd])
	p("\nfwdd vs socat: %s; fwdd vs haproxy: %s.\n\n", fmtX(ratio(fw, summarize(t[tputSocat]))), fmtX(ratio(fw, summarize(t[tputHAProxy]))))
}

func writeConns(b *strings.Builder, res *results, plotted bool) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	c := res.Conns
	o := res.Options
	p("## 2. New connections per second\n\n")
	p("%d clients in the client namespace, each in a loop: connect, read the backend's greeting, close with SO_LINGER 0; "+
		"the backend accepts, writes its port and closes. %v per sample after %v warm-up; conntrack flushed before every sample. "+
		"fwdd forwards: forward 0 is the one measured (10.11.0.1:7000); the others use the other ports of 10.11.0.1, "+
		"beyond 50,001 forwards one address each (10.11.X.Y:7000, no traffic goes there). "+
		"Linear: the same forwards as `ip daddr A tcp dport P dnat to 10.22.0.2:5000` rules in one prerouting chain loaded with `nft -f`, "+
		"the measured one **last**, plus a masquerade rule; the other variant's table is removed before each sample.\n\n",
		o.workers, o.connDuration, o.connWarmup)
	rt := connRates(c[connVariant{Kind: kindRouting}])
	f1, t1, l1 := connRates(c[connVariant{kindFwdd, 1}]), connRates(c[connVariant{kindTable, 1}]), connRates(c[connVariant{kindLinear, 1}])
	cell := func(x summary) string {
		if x.missing {
			return "–"
		}
		return fmt.Sprintf("%s (%s)", fmtNum(x.Median), spread(x, fmtNum))
	}
	p("Connections per second, median (min – max):\n\n")
	p("| forwards | fwdd | vs fwdd with 1 | fwdd's table alone, no daemon | vs with 1 | linear rules | vs linear with 1 | fwdd / linear |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range o.sizes {
		f, t, l := connRates(c[connVariant{kindFwdd, n}]), connRates(c[connVariant{kindTable, n}]), connRates(c[connVariant{kindLinear, n}])
		p("| %s | %s | %s | %s | %s | %s | %s | %s |\n", fmtNum(float64(n)),
			cell(f), fmtX(ratio(f, f1)), cell(t), fmtX(ratio(t, t1)), cell(l), fmtX(ratio(l, l1)), fmtX(ratio(f, l)))
	}
	p("| routing, no NAT | %s | | | | | | |\n", cell(rt))
	p("\n*fwdd's table alone*: the same table, from `fwdd print`, loaded with `nft -f` and no fwdd process running: the kernel's share of fwdd's cost. " +
		"The difference to *fwdd* is the daemon's own work while connections are made (with no forward logging connections: none per connection, plus a `/metrics` scrape at the start of each sample and every 15 s), which competes for the same 2 CPUs as the clients, the server and the forwarding.\n\n")
	p("| forwards | fwdd's own CPU during the sample | per 1,000 new connections | setup: fwdd start to applied | setup: `nft -f` of fwdd's table | setup: `nft -f` of the linear rules |\n")
	p("|---:|---:|---:|---:|---:|---:|\n")
	setup := func(v connVariant) string {
		return fmtDur(durs(c[v], func(s connSample) time.Duration { return s.Setup }).Median)
	}
	for _, n := range o.sizes {
		var cpu []float64
		for _, x := range c[connVariant{kindFwdd, n}] {
			cpu = append(cpu, 100*x.DaemonCPU)
		}
		cs := summarize(cpu)
		p("| %s | %.1f %% of one CPU (%.1f – %.1f) | %.2f ms | %s | %s | %s |\n", fmtNum(float64(n)), cs.Median, cs.Min, cs.Max,
			cpuPerThousand(c[connVariant{kindFwdd, n}]).Median, setup(connVariant{kindFwdd, n}), setup(connVariant{kindTable, n}), setup(connVariant{kindLinear, n}))
	}
	p("\nWith 1 forward, against plain routing (client straight to 10.22.0.2:5000, no table, no conntrack): fwdd %s, fwdd's table alone %s, linear rules %s.\n\n",
		fmtX(ratio(f1, rt)), fmtX(ratio(t1, rt)), fmtX(ratio(l1, rt)))
	var failed []string
	for _, v := range slices.SortedFunc(maps.Keys(c), func(a, b connVariant) int { return strings.Compare(a.String(), b.String()) }) {
		var n int64
		first := ""
		for _, s := range c[v] {
			n += s.Failed
			if first == "" {
				first = s.Err
			}
		}
		if n > 0 {
			failed = append(failed, fmt.Sprintf("%s: %d (%s)", v, n, first))
		}
	}
	if len(failed) > 0 {
		p("Failed connections (not counted in the rates): %s.\n\n", strings.Join(failed, "; "))
	} else {
		p("No connection failed.\n\n")
	}
	var warned []string
	for _, n := range o.sizes {
		total := map[string]int{}
		for _, x := range c[connVariant{kindFwdd, n}] {
			for msg, k := range x.DaemonWarnings {
				total[msg] += k
			}
		}
		for _, msg := range slices.Sorted(maps.Keys(total)) {
			warned = append(warned, fmt.Sprintf("with %s forwards %d× %q", fmtNum(float64(n)), total[msg], msg))
		}
	}
	if len(warned) > 0 {
		p("fwdd logged warnings or errors during these samples: %s.\n\n", strings.Join(warned, "; "))
	} else {
		p("fwdd logged no warning or error during these samples.\n\n")
	}
	if plotted {
		p("![connections per second against number of forwards](conns.png)\n\n")
	}
}

func writeApply(b *strings.Builder, res *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	a := res.Apply
	sizes := slices.Sorted(maps.Keys(a))
	p("## 3. Time to apply and to reload\n\n")
	p("*fwdd start*: from starting `fwdd run` (in the gateway, no table present) to its \"forwarding\" log line, written once the table is applied (timed when the benchmark reads it); "+
		"*logged*: the `elapsed` of its \"forwarding\" line (building and sending the netlink batch, until the kernel's answer); "+
		"*CPU*: fwdd's user and system time until that line (the kernel's work on the batch is system time of fwdd), in 10 ms ticks. "+
		"*nft -f*: `nft -f` of `fwdd print` of the same config (the same table, the same one-transaction replace), table absent before. "+
		"Wall times of commands in the gateway include `ip netns exec`, %s here.\n\n", fmtDur(float64(res.ExecOverhead)))
	p("| forwards | fwdd start (wall) | min – max | logged apply | CPU to applied | messages | `nft -f` (wall) | min – max | fwdd / nft (wall) | logged / nft | script size |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range sizes {
		s := a[n]
		fw := durs(s, func(x applySample) time.Duration { return x.StartWall })
		lg := durs(s, func(x applySample) time.Duration { return x.StartLogged })
		nf := durs(s, func(x applySample) time.Duration { return x.NftWall })
		cpu := durs(s, func(x applySample) time.Duration { return x.StartCPU })
		msgs := ints(s, func(x applySample) int { return x.StartMessages })
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.1f MB |\n", fmtNum(float64(n)), fmtDur(fw.Median), spread(fw, fmtDur), fmtDur(lg.Median), fmtDur(cpu.Median),
			fmtNum(msgs.Median), fmtDur(nf.Median), spread(nf, fmtDur), fmtX(ratio(fw, nf)), fmtX(ratio(lg, nf)), float64(s[0].PrintBytes)/1e6)
	}
	p("\nReload after changing one forward (its backend port) among N: *`fwdd reload`* is the command's wall time " +
		"(its own start-up and config check, SIGHUP, then waiting for the daemon's record of the apply); " +
		"*SIGHUP*: the benchmark sends SIGHUP itself, until the daemon's \"reloaded\" line, written once the change is applied (the change back). " +
		"*logged*: the daemon's \"reloaded\" line: `elapsed` from reading the config to applied, `applyElapsed` the netlink batch alone. " +
		"After each reload a connection through the changed forward checked that the change was live.\n\n")
	p("| forwards | `fwdd reload` (wall) | min – max | SIGHUP to applied | min – max | logged elapsed | logged applyElapsed | messages | elements | full replace |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, n := range sizes {
		s := a[n]
		rl := durs(s, func(x applySample) time.Duration { return x.ReloadWall })
		sg := durs(s, func(x applySample) time.Duration { return x.SignalWall })
		le := durs(s, func(x applySample) time.Duration { return x.ReloadLogged })
		la := durs(s, func(x applySample) time.Duration { return x.ReloadApplyLogged })
		msgs := ints(s, func(x applySample) int { return x.ReloadMessages })
		els := ints(s, func(x applySample) int { return x.ReloadElements })
		full := 0
		for _, x := range s {
			if x.ReloadFull {
				full++
			}
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %d of %d |\n", fmtNum(float64(n)), fmtDur(rl.Median), spread(rl, fmtDur), fmtDur(sg.Median), spread(sg, fmtDur),
			fmtDur(le.Median), fmtDur(la.Median), fmtNum(msgs.Median), fmtNum(els.Median), full, len(s))
	}
	p("\nfwdd's memory in these runs (median): ")
	var parts []string
	for _, n := range sizes {
		s := a[n]
		rss := ints(s, func(x applySample) int { return x.RSSKiB })
		hwm := ints(s, func(x applySample) int { return max(x.HWMKiB, x.HWMKiB2) })
		parts = append(parts, fmt.Sprintf("%s forwards: VmRSS %.1f MB after start, VmHWM %.1f MB after two reloads", fmtNum(float64(n)), rss.Median*1024/1e6, hwm.Median*1024/1e6))
	}
	p("%s.\n\n", strings.Join(parts, "; "))
}

func writeIdle(b *strings.Builder, res *results) {
	id := res.Idle
	fmt.Fprintf(b, "## 4. Memory and idle CPU\n\n")
	fmt.Fprintf(b, "fwdd with %s forwards, measured 2 s after it applied its table: VmRSS **%.1f MB** (%.1f MiB), VmHWM %.1f MB (%.1f MiB), %d threads. "+
		"CPU (utime+stime from /proc/PID/stat, 10 ms ticks) over %v idle: **%.2f s** (%.2f %% of one CPU).\n",
		fmtNum(float64(id.Forwards)), float64(id.RSSKiB)*1024/1e6, float64(id.RSSKiB)/1024, float64(id.HWMKiB)*1024/1e6, float64(id.HWMKiB)/1024, id.Threads,
		id.Window, id.CPUSeconds, 100*id.CPUSeconds/id.Window.Seconds())
}

// plotConns draws conns.png with gnuplot: connections/s against the number
// of forwards for fwdd and linear rules, routing as a reference line.
func plotConns(dir string, res *results) error {
	gp, err := exec.LookPath("gnuplot")
	if err != nil {
		return fmt.Errorf("gnuplot not found (apt-get install gnuplot-nox): %w", err)
	}
	tmp, err := os.MkdirTemp("", "fwdd-bench-plot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, n := range res.Options.sizes {
		for _, k := range []string{kindFwdd, kindTable, kindLinear} {
			if len(res.Conns[connVariant{k, n}]) == 0 {
				return fmt.Errorf("%s was not measured", connVariant{k, n})
			}
		}
	}
	if len(res.Conns[connVariant{Kind: kindRouting}]) == 0 {
		return errors.New("routing was not measured")
	}
	top := 0.0
	var data bytes.Buffer
	data.WriteString("# forwards fwdd_median fwdd_min fwdd_max linear_median linear_min linear_max table_median table_min table_max\n")
	for _, n := range res.Options.sizes {
		f, l := connRates(res.Conns[connVariant{kindFwdd, n}]), connRates(res.Conns[connVariant{kindLinear, n}])
		t := connRates(res.Conns[connVariant{kindTable, n}])
		fmt.Fprintf(&data, "%d %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n", n, f.Median, f.Min, f.Max, l.Median, l.Min, l.Max, t.Median, t.Min, t.Max)
		top = max(top, f.Max, l.Max, t.Max)
	}
	if err := os.WriteFile(filepath.Join(tmp, "conns.dat"), data.Bytes(), 0o644); err != nil {
		return err
	}
	rt := connRates(res.Conns[connVariant{Kind: kindRouting}])
	top = max(top, rt.Max)
	maxN := float64(slices.Max(res.Options.sizes))
	script := fmt.Sprintf(`set terminal pngcairo size 960,600 font "sans,11"
set output %q
set title "New TCP connections per second through the gateway (median, bars: min-max of %d rounds)"
set logscale x
set xrange [0.6:%g]
set xtics ("1" 1, "10" 10, "100" 100, "1k" 1000, "10k" 10000, "100k" 100000)
set xlabel "forwards (fwdd) / DNAT rules (linear), measured one last"
set ylabel "connections per second"
set yrange [0:%.0f]
set format y "%%.0f"
set grid
set key left bottom box opaque font ",10"
routing = %f
routing_min = %f
routing_max = %f
set style fill transparent solid 0.35 noborder
set samples 200
plot '+' u 1:(routing_min):(routing_max) w filledcurves lc rgb "#bbbbbb" t "routing, no NAT: min - max", \
     routing w l lw 2 dt 2 lc rgb "#555555" t "routing, no NAT: median", \
     %[8]q u ($1*0.92):2:3:4 w yerrorlines lw 2 pt 7 ps 1.3 lc rgb "#1f77b4" t "fwdd (daemon running: map lookup + conntrack watcher)", \
     %[8]q u 1:8:9:10 w yerrorlines lw 2 dt 4 pt 6 ps 1.3 lc rgb "#2ca02c" t "fwdd's table alone (nft -f of fwdd print, no daemon)", \
     %[8]q u ($1*1.08):5:6:7 w yerrorlines lw 2 pt 5 ps 1.3 lc rgb "#d62728" t "linear nft DNAT rules (iptables-style)"
`, filepath.Join(dir, "conns.png"), res.Options.rounds, maxN*1.6, top*1.08, rt.Median, rt.Min, rt.Max,
		filepath.Join(tmp, "conns.dat"))
	gpFile := filepath.Join(tmp, "conns.gp")
	if err := os.WriteFile(gpFile, []byte(script), 0o644); err != nil {
		return err
	}
	out, err := exec.Command(gp, gpFile).CombinedOutput()
	if err != nil {
		return fmt.Errorf("gnuplot: %w: %s", err, out)
	}
	return nil
}

func writeForeign(b *strings.Builder, res *results) {
	p := func(format string, args ...any) { fmt.Fprintf(b, format, args...) }
	p("Other work on the machine during the run: CPU time of processes the benchmark did not start (sampled from /proc every second; kernel threads left out), per phase:\n\n")
	p("| phase | duration | their CPU | share of the %d CPUs | busiest |\n|---|---:|---:|---:|---|\n", res.Machine.CPUs)
	for _, l := range res.Foreign {
		if l.Wall < time.Second {
			continue
		}
		cmds := slices.SortedFunc(maps.Keys(l.ByCommand), func(a, b string) int {
			return cmp.Compare(l.ByCommand[b], l.ByCommand[a])
		})
		var top []string
		for _, c := range cmds {
			if len(top) == 4 || l.ByCommand[c] < 0.05 {
				break
			}
			top = append(top, fmt.Sprintf("%s %.1f s", c, l.ByCommand[c]))
		}
		share := 0.0
		if l.Wall > 0 && res.Machine.CPUs > 0 {
			share = 100 * l.CPUSeconds / l.Wall.Seconds() / float64(res.Machine.CPUs)
		}
		p("| %s | %s | %.1f s | %.1f %% | %s |\n", l.Phase, l.Wall.Round(time.Second), l.CPUSeconds, share, strings.Join(top, ", "))
	}
	p("\n")
}
