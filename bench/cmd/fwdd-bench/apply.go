package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// applySample is one round of the apply measurements for one size.
type applySample struct {
	// fwdd run: process start to the "forwarding" line, and the logged apply.
	StartWall     time.Duration
	StartLogged   time.Duration // "forwarding" elapsed: building and sending the batch
	StartMessages int
	// StartCPU is fwdd's CPU time (user and system, the kernel's work on
	// the batch included) from exec to the "forwarding" line: less
	// disturbed than the wall time by other work on the machine.
	StartCPU time.Duration
	// fwdd reload (the command: start-up, config check, SIGHUP, wait).
	ReloadWall        time.Duration
	ReloadApplyLogged time.Duration // "reloaded" applyElapsed
	ReloadLogged      time.Duration // "reloaded" elapsed: config load to applied
	ReloadMessages    int
	ReloadElements    int
	ReloadFull        bool
	SignalWall        time.Duration // SIGHUP sent by us to the "reloaded" line
	SignalApplyLogged time.Duration
	SignalLogged      time.Duration
	SignalMessages    int
	// fwdd health (keepalived's track script) and fwdd diff, with the file
	// in force, after the reloads.
	HealthWall, DiffWall time.Duration
	RSSKiB, HWMKiB       int           // after start
	RSSKiB2, HWMKiB2     int           // after the two reloads
	NftWall              time.Duration // nft -f of `fwdd print`, table absent before
	NftDeleteWall        time.Duration // nft delete table of the same
	PrintBytes           int
}

type applyResults map[int][]applySample

type applyFiles struct {
	cfg      string // the live config path
	orig     []byte
	moved    []byte
	printed  string // `fwdd print` output
	printLen int
}

// measureApply measures, round-robin over the sizes: fwdd's start, a
// reload changing one forward (via `fwdd reload` and via a bare SIGHUP,
// changing it back), its memory, and `nft -f` of the same table.
func (e *env) measureApply(sizes []int, rounds int) (applyResults, error) {
	files := map[int]*applyFiles{}
	for _, n := range sizes {
		f := &applyFiles{orig: fwddConfig(n, false), moved: fwddConfig(n, true)}
		var err error
		if f.cfg, err = e.writeConfig(fmt.Sprintf("apply-%d.toml", n), f.orig); err != nil {
			return nil, err
		}
		if f.printed, err = e.printTable(f.cfg); err != nil {
			return nil, err
		}
		fi, err := os.Stat(f.printed)
		if err != nil {
			return nil, err
		}
		f.printLen = int(fi.Size())
		files[n] = f
	}
	res := applyResults{}
	for r := range rounds {
		for k := range sizes {
			n := sizes[(r+k)%len(sizes)]
			s, err := e.applySample(n, files[n])
			if err != nil {
				return nil, fmt.Errorf("apply %d forwards, round %d: %w", n, r+1, err)
			}
			e.logf("apply round %d/%d n=%-6d start %v (logged %v, cpu %v) reload %v (logged %v, %d msgs) sighup %v  health %v  diff %v  nft -f %v  rss %d MiB",
				r+1, rounds, n, ms(s.StartWall), ms(s.StartLogged), s.StartCPU, ms(s.ReloadWall), ms(s.ReloadLogged), s.ReloadMessages,
				ms(s.SignalWall), ms(s.HealthWall), ms(s.DiffWall), ms(s.NftWall), s.HWMKiB/1024)
			res[n] = append(res[n], s)
		}
	}
	return res, nil
}

func ms(d time.Duration) time.Duration { return d.Round(100 * time.Microsecond) }

func (e *env) applySample(n int, f *applyFiles) (applySample, error) {
	var s applySample
	s.PrintBytes = f.printLen
	if err := e.resetGateway(); err != nil {
		return s, err
	}
	if _, err := e.writeConfig(filepath.Base(f.cfg), f.orig); err != nil {
		return s, err
	}
	d, err := e.startFwdd(f.cfg)
	if err != nil {
		return s, err
	}
	defer func() { _ = d.stop() }()
	s.StartWall = d.Wall
	s.StartLogged, _ = d.Forwarding.Duration("elapsed")
	s.StartMessages, _ = d.Forwarding.Int("messages")
	ticks, err := cpuTicks(d.PID())
	if err != nil {
		return s, err
	}
	s.StartCPU = time.Duration(ticks) * time.Second / clockTicks
	if s.RSSKiB, s.HWMKiB, err = memoryOf(d.PID()); err != nil {
		return s, err
	}
	if err := e.checkForward(n, serverPort); err != nil {
		return s, fmt.Errorf("after start: %w", err)
	}

	// Move one forward to the other port with `fwdd reload` ...
	if err := d.WriteConfig(string(f.moved)); err != nil {
		return s, err
	}
	wall, log, err := d.reloadCLI()
	if err != nil {
		return s, err
	}
	s.ReloadWall = wall
	s.ReloadApplyLogged, _ = log.Duration("applyElapsed")
	s.ReloadLogged, _ = log.Duration("elapsed")
	s.ReloadMessages, _ = log.Int("messages")
	s.ReloadElements, _ = log.Int("elements")
	s.ReloadFull, _ = log.Fields["fullReplace"].(bool)
	if err := e.checkForward(n, altPort); err != nil {
		return s, fmt.Errorf("after fwdd reload: %w", err)
	}

	// ... and back with a bare SIGHUP.
	if err := d.WriteConfig(string(f.orig)); err != nil {
		return s, err
	}
	if wall, log, err = d.reloadSignal(); err != nil {
		return s, err
	}
	s.SignalWall = wall
	s.SignalApplyLogged, _ = log.Duration("applyElapsed")
	s.SignalLogged, _ = log.Duration("elapsed")
	s.SignalMessages, _ = log.Int("messages")
	if err := e.checkForward(n, serverPort); err != nil {
		return s, fmt.Errorf("after SIGHUP: %w", err)
	}
	for _, c := range []struct {
		cmd  string
		wall *time.Duration
	}{{"health", &s.HealthWall}, {"diff", &s.DiffWall}} {
		start := time.Now()
		if out, err := d.Command(c.cmd, "--state-dir", d.StateDir); err != nil {
			return s, fmt.Errorf("fwdd %s with the file in force: %w: %.500s", c.cmd, err, out)
		}
		*c.wall = time.Since(start)
	}
	if s.RSSKiB2, s.HWMKiB2, err = memoryOf(d.PID()); err != nil {
		return s, err
	}
	if err := d.stop(); err != nil {
		return s, err
	}

	// The same table with nft -f, into a gateway without it.
	if err := e.resetGateway(); err != nil {
		return s, err
	}
	wall, out, err := e.timed(e.topo.Gateway, 5*time.Minute, "nft", "-f", f.printed)
	if err != nil {
		return s, fmt.Errorf("nft -f (fwdd print of %d forwards): %w: %.500s", n, err, out)
	}
	s.NftWall = wall
	if err := e.checkForward(n, serverPort); err != nil {
		return s, fmt.Errorf("after nft -f: %w", err)
	}
	if s.NftDeleteWall, out, err = e.timed(e.topo.Gateway, 5*time.Minute, "nft", "delete", "table", "inet", "fwdd"); err != nil {
		return s, fmt.Errorf("nft delete table inet fwdd: %w: %s", err, out)
	}
	return s, nil
}

// checkForward connects from the client to the forward a reload changes
// and checks which backend port answered.
func (e *env) checkForward(n, wantPort int) error {
	addr, port := forwardAt(changedForward(n))
	target := fmt.Sprintf("%s:%d", addr, port)
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
	defer cancel()
	c, greeting, err := e.topo.Client.DialTCP(ctx, target)
	if err != nil {
		return err
	}
	c.Close()
	if greeting != strconv.Itoa(wantPort) {
		return fmt.Errorf("%s reached backend port %s, want %d", target, greeting, wantPort)
	}
	return nil
}

// idleResult is fwdd's memory and CPU with many forwards, doing nothing.
type idleResult struct {
	Forwards       int
	RSSKiB, HWMKiB int
	CPUSeconds     float64 // utime+stime over Window
	Window         time.Duration
	Threads        int
}

// measureIdle starts fwdd with n forwards, lets it settle, and measures its
// CPU time over window.
func (e *env) measureIdle(n int, window time.Duration) (idleResult, error) {
	r := idleResult{Forwards: n, Window: window}
	if err := e.resetGateway(); err != nil {
		return r, err
	}
	cfg, err := e.writeConfig(fmt.Sprintf("idle-%d.toml", n), fwddConfig(n, false))
	if err != nil {
		return r, err
	}
	d, err := e.startFwdd(cfg)
	if err != nil {
		return r, err
	}
	defer func() { _ = d.stop() }()
	pid := d.PID()
	if err := sleep(e.ctx, 2*time.Second); err != nil {
		return r, err
	}
	t0, err := cpuTicks(pid)
	if err != nil {
		return r, err
	}
	if err := sleep(e.ctx, window); err != nil {
		return r, err
	}
	t1, err := cpuTicks(pid)
	if err != nil {
		return r, err
	}
	r.CPUSeconds = float64(t1-t0) / clockTicks
	if r.RSSKiB, r.HWMKiB, err = memoryOf(pid); err != nil {
		return r, err
	}
	r.Threads, _ = statusField(pid, "Threads")
	return r, d.stop()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times (100 on Linux).
const clockTicks = 100

// cpuTicks returns utime+stime of pid.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may contain spaces: fields start after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64) // field 14
	stime, err2 := strconv.ParseInt(f[12], 10, 64) // field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return utime + stime, nil
}

// memoryOf returns VmRSS and VmHWM of pid in KiB, after checking that pid
// is fwdd.
func memoryOf(pid int) (rss, hwm int, err error) {
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return 0, 0, err
	}
	if c := strings.TrimSpace(string(comm)); c != "fwdd" {
		return 0, 0, fmt.Errorf("pid %d is %q, not fwdd", pid, c)
	}
	if rss, err = statusField(pid, "VmRSS"); err != nil {
		return 0, 0, err
	}
	hwm, err = statusField(pid, "VmHWM")
	return rss, hwm, err
}

// statusField reads a numeric field of /proc/PID/status ("VmRSS:  1234 kB").
func statusField(pid int, key string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == key {
			f := strings.Fields(v)
			if len(f) == 0 {
				break
			}
			return strconv.Atoi(f[0])
		}
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, key)
}
