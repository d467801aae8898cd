// Command fwdd-bench measures fwdd against plain routing, user-space
// proxies and an iptables-style list of rules, in network namespaces it
// builds itself (internal/sandbox), and writes a Markdown report. It needs
// root, and iperf3, socat, haproxy, nft, conntrack and gnuplot on PATH
// (bench/run.sh installs them). `make bench` runs it.
//
// All variants of a measurement run interleaved, round-robin, in one run,
// so that drift of the (noisy, shared) machine hits them alike; the report
// gives medians and the spread of the rounds.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 {
		var err error
		switch os.Args[1] {
		case "serve":
			err = serveMain(os.Args[2:])
		case "connload":
			err = connloadMain(os.Args[2:])
		default:
			os.Exit(benchMain(os.Args[1:]))
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "fwdd-bench %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	os.Exit(benchMain(nil))
}

// options are the benchmark's flags.
type options struct {
	fwdd, out    string
	quick        bool
	verbose      bool
	phases       []string
	sizes        []int
	applySizes   []int
	rounds       int
	tputSeconds  int
	connDuration time.Duration
	connWarmup   time.Duration
	workers      int
	applyRounds  int
	// ctmarkSizes are the forwards of the ct mark layout comparison, and
	// ctmarkConnSizes those of them whose connection rate is measured.
	ctmarkSizes, ctmarkConnSizes []int
	idle                         time.Duration
}

const (
	phaseThroughput = "throughput"
	phaseConns      = "conns"
	phaseApply      = "apply"
	phaseIdle       = "idle"
	phaseObserve    = "observe"
)

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("fwdd-bench", flag.ContinueOnError)
	fs.StringVar(&o.fwdd, "fwdd", "bin/fwdd", "fwdd binary to measure")
	fs.StringVar(&o.out, "out", "", `where to write the report (default "bench/results", or a temp dir with -quick)`)
	fs.BoolVar(&o.quick, "quick", false, "smoke run of about two minutes: fewer and shorter samples")
	fs.BoolVar(&o.verbose, "verbose", false, "show sandbox commands and the output of every process")
	phases := fs.String("phases", "throughput,conns,apply,idle,observe,balance,ctmark", "what to measure")
	ctmarkSizes := fs.String("ctmark-sizes", "10000,100000", "numbers of forwards for the ct mark layout comparison")
	ctmarkConnSizes := fs.String("ctmark-conn-sizes", "10000", "those of -ctmark-sizes whose connection rate is measured")
	sizes := fs.String("sizes", "1,1000,10000,100000", "numbers of forwards for the connection test")
	applySizes := fs.String("apply-sizes", "1000,10000,100000", "numbers of forwards for the apply test")
	fs.IntVar(&o.rounds, "rounds", 7, "rounds of the throughput and connection tests")
	fs.IntVar(&o.tputSeconds, "tput-seconds", 4, "seconds per iperf3 sample (after 1 s left out)")
	fs.DurationVar(&o.connDuration, "conn-duration", 3*time.Second, "duration of a connection-rate sample")
	fs.DurationVar(&o.connWarmup, "conn-warmup", 500*time.Millisecond, "connections before each sample that are not counted")
	fs.IntVar(&o.workers, "workers", 8, "parallel clients in the connection test")
	fs.IntVar(&o.applyRounds, "apply-rounds", 5, "rounds of the apply test")
	fs.DurationVar(&o.idle, "idle", 10*time.Second, "window for fwdd's idle CPU")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]func(){
			"rounds":        func() { o.rounds = 2 },
			"tput-seconds":  func() { o.tputSeconds = 2 },
			"conn-duration": func() { o.connDuration = time.Second },
			"conn-warmup":   func() { o.connWarmup = 200 * time.Millisecond },
			"apply-rounds":  func() { o.applyRounds = 1 },
			"idle":          func() { o.idle = 3 * time.Second },
		}
		for name, f := range quick {
			if !set[name] {
				f()
			}
		}
	}
	o.phases = strings.Split(*phases, ",")
	for _, p := range o.phases {
		if !slices.Contains([]string{phaseThroughput, phaseConns, phaseApply, phaseIdle, phaseObserve, phaseBalance, phaseCtMark}, p) {
			return nil, fmt.Errorf("-phases: unknown phase %q", p)
		}
	}
	var err error
	if o.sizes, err = parseSizes(*sizes); err != nil {
		return nil, fmt.Errorf("-sizes: %w", err)
	}
	if o.applySizes, err = parseSizes(*applySizes); err != nil {
		return nil, fmt.Errorf("-apply-sizes: %w", err)
	}
	if o.ctmarkSizes, err = parseSizes(*ctmarkSizes); err != nil {
		return nil, fmt.Errorf("-ctmark-sizes: %w", err)
	}
	if o.ctmarkConnSizes, err = parseSizes(*ctmarkConnSizes); err != nil {
		return nil, fmt.Errorf("-ctmark-conn-sizes: %w", err)
	}
	if o.rounds < 1 || o.applyRounds < 1 || o.tputSeconds < 1 || o.workers < 1 {
		return nil, errors.New("rounds, seconds and workers must be at least 1")
	}
	if o.out == "" {
		o.out = "bench/results"
		if o.quick {
			o.out = filepath.Join(os.TempDir(), "fwdd-bench-quick")
		}
	}
	return o, nil
}

func parseSizes(s string) ([]int, error) {
	var r []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 100_001 {
			return nil, fmt.Errorf("%q: want numbers from 1 to 100001", f)
		}
		r = append(r, n)
	}
	return r, nil
}

func (o *options) has(phase string) bool { return slices.Contains(o.phases, phase) }

func benchMain(args []string) int {
	o, err := parseFlags(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwdd-bench:", err)
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "fwdd-bench: needs root (network namespaces)")
		return 1
	}
	if o.fwdd, err = filepath.Abs(o.fwdd); err != nil {
		fmt.Fprintln(os.Stderr, "fwdd-bench:", err)
		return 1
	}
	if _, err := os.Stat(o.fwdd); err != nil {
		fmt.Fprintf(os.Stderr, "fwdd-bench: %v (run make build)\n", err)
		return 1
	}
	started := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%6.1fs  %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
	}

	// Ctrl-C or SIGTERM cancels ctx: every command and process of the run
	// is stopped and the namespaces are deleted on the way out. A second
	// signal kills the program at once (stale namespaces are swept by the
	// next run).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop()
	}()

	res := &results{Started: started, Options: o}
	if res.Machine, err = describeMachine(o.fwdd); err != nil {
		logf("machine description incomplete: %v", err)
	}
	mon := startMonitor()
	e, err := newEnv(ctx, o.fwdd, o.verbose, logf)
	if err != nil {
		mon.close()
		fmt.Fprintln(os.Stderr, "fwdd-bench:", err)
		return 1
	}
	logf("sandbox %s ready", e.topo.Prefix)
	err = runPhases(e, o, res, mon)
	res.Foreign = mon.close()
	if cerr := e.close(); cerr != nil {
		logf("cleanup: %v", cerr)
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "fwdd-bench: interrupted; namespaces and processes cleaned up")
		return 130
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fwdd-bench:", err)
		return 1
	}
	res.Elapsed = time.Since(started)
	if err := writeReport(o.out, res, logf); err != nil {
		fmt.Fprintln(os.Stderr, "fwdd-bench: report:", err)
		return 1
	}
	logf("done in %v: %s", res.Elapsed.Round(time.Second), filepath.Join(o.out, "latest.md"))
	return 0
}

func runPhases(e *env, o *options, res *results, mon *cpuMonitor) error {
	var err error
	if res.ExecOverhead, err = e.execOverhead(); err != nil {
		return err
	}
	if o.has(phaseThroughput) {
		mon.setPhase(phaseThroughput)
		if res.Throughput, err = e.measureThroughput(o.rounds, o.tputSeconds); err != nil {
			return err
		}
	}
	if o.has(phaseConns) {
		mon.setPhase(phaseConns)
		if res.Conns, err = e.measureConns(connOptions{sizes: o.sizes, rounds: o.rounds,
			duration: o.connDuration, warmup: o.connWarmup, workers: o.workers}); err != nil {
			return err
		}
	}
	if o.has(phaseApply) {
		mon.setPhase(phaseApply)
		if res.Apply, err = e.measureApply(o.applySizes, o.applyRounds); err != nil {
			return err
		}
	}
	if o.has(phaseIdle) {
		mon.setPhase(phaseIdle)
		n := slices.Max(append(slices.Clone(o.applySizes), o.sizes...))
		r, err := e.measureIdle(n, o.idle)
		if err != nil {
			return err
		}
		res.Idle = &r
		e.logf("idle: %d forwards, rss %d KiB, hwm %d KiB, cpu %.2f s in %v", r.Forwards, r.RSSKiB, r.HWMKiB, r.CPUSeconds, r.Window)
	}
	if o.has(phaseObserve) {
		mon.setPhase(phaseObserve)
		n := slices.Max(append(slices.Clone(o.applySizes), o.sizes...))
		if res.Observe, err = e.measureObserve(n, []int{1_000, 200_000}, 200_000); err != nil {
			return err
		}
	}
	if o.has(phaseBalance) {
		mon.setPhase(phaseBalance)
		if res.Balance, err = e.measureBalance(o); err != nil {
			return err
		}
	}
	if o.has(phaseCtMark) {
		mon.setPhase(phaseCtMark)
		if res.CtMark, err = e.measureCtMark(o); err != nil {
			return err
		}
	}
	return nil
}

// execOverhead is the median wall time of `ip netns exec GATEWAY true`,
// the start-up cost included in every wall time of a command run in the
// gateway (fwdd run, fwdd reload, nft -f).
func (e *env) execOverhead() (time.Duration, error) {
	var xs []float64
	for range 11 {
		d, out, err := e.timed(e.topo.Gateway, time.Minute, "true")
		if err != nil {
			return 0, fmt.Errorf("ip netns exec true: %w: %s", err, out)
		}
		xs = append(xs, float64(d))
	}
	return time.Duration(summarize(xs).Median), nil
}
