package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// foreignLoad is the CPU time that processes the benchmark did not start
// used during one phase: on a shared machine it tells which numbers other
// work may have disturbed.
type foreignLoad struct {
	Phase      string
	Wall       time.Duration
	CPUSeconds float64            // user+system of all such processes
	ByCommand  map[string]float64 // CPU seconds per command name
}

// cpuMonitor samples /proc once a second and charges the CPU time of every
// user-space process that is neither the benchmark nor a descendant of it
// to the phase running at the time. Kernel threads are left out: softirq
// and kworker time is mostly the benchmark's own traffic.
type cpuMonitor struct {
	self int

	mu         sync.Mutex
	phase      string
	phaseStart time.Time
	loads      []*foreignLoad
	cur        *foreignLoad

	stop, done chan struct{}
}

type procSample struct {
	ppid  int
	comm  string
	ticks int64 // utime+stime
	start int64 // start time, ticks since boot
}

func startMonitor() *cpuMonitor {
	m := &cpuMonitor{self: os.Getpid(), stop: make(chan struct{}), done: make(chan struct{})}
	m.setPhase("setup")
	go m.loop()
	return m
}

// setPhase charges what follows to phase.
func (m *cpuMonitor) setPhase(phase string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if m.cur != nil {
		m.cur.Wall += now.Sub(m.phaseStart)
	}
	m.phase, m.phaseStart = phase, now
	m.cur = nil
	for _, l := range m.loads {
		if l.Phase == phase {
			m.cur = l
		}
	}
	if m.cur == nil {
		m.cur = &foreignLoad{Phase: phase, ByCommand: map[string]float64{}}
		m.loads = append(m.loads, m.cur)
	}
}

// close stops sampling and returns the load per phase, in order.
func (m *cpuMonitor) close() []*foreignLoad {
	close(m.stop)
	<-m.done
	m.setPhase("")
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.DeleteFunc(m.loads, func(l *foreignLoad) bool { return l.Phase == "" })
}

func (m *cpuMonitor) loop() {
	defer close(m.done)
	prev, prevUp := readProcs(), uptimeTicks()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		cur, up := readProcs(), uptimeTicks()
		m.mu.Lock()
		for pid, p := range cur {
			if p.ppid == 2 || pid == 2 || m.ours(pid, cur) {
				continue
			}
			var d int64
			switch q, ok := prev[pid]; {
			case ok && q.start == p.start:
				d = p.ticks - q.ticks
			case p.start >= prevUp: // started since the last sample
				d = p.ticks
			}
			if d > 0 {
				s := float64(d) / clockTicks
				m.cur.CPUSeconds += s
				m.cur.ByCommand[p.comm] += s
			}
		}
		m.mu.Unlock()
		prev, prevUp = cur, up
	}
}

// ours reports whether pid is the benchmark or one of its descendants.
func (m *cpuMonitor) ours(pid int, procs map[int]procSample) bool {
	for range 64 {
		if pid == m.self {
			return true
		}
		p, ok := procs[pid]
		if !ok || pid <= 1 {
			return false
		}
		pid = p.ppid
	}
	return false
}

func readProcs() map[int]procSample {
	res := map[int]procSample{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		f := strings.Fields(s[closing+1:])
		if len(f) < 20 {
			continue
		}
		// Fields from 3 (state) on: ppid is 4, utime 14, stime 15, starttime 22.
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		start, _ := strconv.ParseInt(f[19], 10, 64)
		res[pid] = procSample{ppid: ppid, comm: s[open+1 : closing], ticks: ut + st, start: start}
	}
	return res
}

// uptimeTicks is the time since boot in clock ticks, the unit of starttime.
func uptimeTicks() int64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	up, _ := strconv.ParseFloat(f[0], 64)
	return int64(up * clockTicks)
}
