package doctor

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Tuning checks, from the optimisation part of the manual procedure. They
// give advice with the command; fwdd never applies them itself.

func advice(r Result) Result { r.Advice = true; return r }

// settable reports whether the sysctl name (dotted, under net.netfilter)
// may be written here, without writing it: the kernel makes
// nf_conntrack_max and nf_conntrack_buckets 0444 in every network
// namespace but the initial one, and container runtimes mount /proc/sys
// read-only.
func (e *Env) settable(name string) bool {
	p := filepath.Join(e.Proc, "sys", filepath.FromSlash(strings.ReplaceAll(name, ".", "/")))
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm()&0o200 == 0 {
		return false
	}
	var fs unix.Statfs_t
	return unix.Statfs(p, &fs) == nil && fs.Flags&unix.ST_RDONLY == 0
}

func checkBuckets(e *Env) []Result {
	limit, err := readInt(e.Sysctls, "net.netfilter.nf_conntrack_max")
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	buckets, err := readInt(e.Sysctls, "net.netfilter.nf_conntrack_buckets")
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	return []Result{advice(bucketsResult(limit, buckets, e.settable("net.netfilter.nf_conntrack_buckets")))}
}

// bucketsResult compares the conntrack hash table with the limit: each
// lookup walks a chain of about max/buckets entries when the table is full.
// settable says whether nf_conntrack_buckets may be written here (see
// conntrackResult).
func bucketsResult(limit, buckets int, settable bool) Result {
	if buckets <= 0 {
		return ok("", "nf_conntrack_buckets unknown")
	}
	ratio := float64(limit) / float64(buckets)
	if ratio > 4 {
		fix := fmt.Sprintf("[sysctl] conntrack_buckets = %d (or sysctl -w net.netfilter.nf_conntrack_buckets=%d)", limit, limit)
		if !settable {
			fix = fmt.Sprintf("sysctl -w net.netfilter.nf_conntrack_buckets=%d on the host (it is host-wide and read-only here, so fwdd cannot set it)", limit)
		}
		return warn("", fix,
			"nf_conntrack_max = %d over %d hash buckets: %.0f entries per bucket when full, each new connection walks them", limit, buckets, ratio)
	}
	return ok("", "nf_conntrack_max = %d over %d hash buckets (%.1f per bucket when full)", limit, buckets, ratio)
}

// cpuTimes reads the aggregate "cpu" line of /proc/stat: total and softirq
// jiffies.
func cpuTimes(stat string) (total, softirq uint64, err error) {
	for _, line := range strings.Split(stat, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 || f[0] != "cpu" {
			continue
		}
		for i, v := range f[1:] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
			}
			if i >= 8 { // guest time is already counted in user
				break
			}
			total += n
			if i == 6 {
				softirq = n
			}
		}
		return total, softirq, nil
	}
	return 0, 0, fmt.Errorf("no cpu line in /proc/stat")
}

// softirqShare is the share of CPU time spent in softirq between two reads.
func softirqShare(before, after string) (float64, error) {
	t0, s0, err := cpuTimes(before)
	if err != nil {
		return 0, err
	}
	t1, s1, err := cpuTimes(after)
	if err != nil {
		return 0, err
	}
	if t1 <= t0 {
		return 0, nil
	}
	return 100 * float64(s1-s0) / float64(t1-t0), nil
}

func checkSoftirq(e *Env) []Result {
	path := filepath.Join(e.Proc, "stat")
	before, err := os.ReadFile(path)
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	time.Sleep(e.Sample)
	after, err := os.ReadFile(path)
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	share, err := softirqShare(string(before), string(after))
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	return []Result{advice(softirqResult(share, e.Sample))}
}

func softirqResult(share float64, over time.Duration) Result {
	if share >= 25 {
		return warn("", "spread receive work over CPUs: enable RSS (ethtool -L IFACE combined N) or RPS (echo MASK > /sys/class/net/IFACE/queues/rx-0/rps_cpus); if it stays high try ethtool -K IFACE gro off",
			"%.1f%% of CPU time in software interrupts over %s: packet processing is the bottleneck", share, over)
	}
	return ok("", "%.1f%% of CPU time in software interrupts over %s", share, over)
}

// irqCounts returns, per interrupt line whose name mentions iface, the
// count on each CPU (/proc/interrupts).
func irqCounts(interrupts, iface string) map[string][]uint64 {
	lines := strings.Split(interrupts, "\n")
	if len(lines) == 0 {
		return nil
	}
	ncpu := len(strings.Fields(lines[0]))
	out := map[string][]uint64{}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) < ncpu+2 || !strings.Contains(line, iface) {
			continue
		}
		irq := strings.TrimSuffix(f[0], ":")
		counts := make([]uint64, ncpu)
		for i := 0; i < ncpu; i++ {
			counts[i], _ = strconv.ParseUint(f[1+i], 10, 64)
		}
		named := false
		for _, w := range f[1+ncpu:] {
			if w == iface || strings.HasPrefix(w, iface+"-") {
				named = true
			}
		}
		if named {
			out[irq] = counts
		}
	}
	return out
}

// queuesResult judges a NIC's receive queues and where their interrupts go.
func queuesResult(name string, rxQueues, cpus int, irqs map[string][]uint64, gro bool) Result {
	groText := "GRO on"
	if !gro {
		groText = "GRO off (ethtool -K " + name + " gro on merges packets and saves CPU)"
	}
	if cpus > 1 && rxQueues == 1 {
		return warn(name, fmt.Sprintf("ethtool -L %s combined %d (if the NIC supports RSS), or enable RPS: echo %x > /sys/class/net/%s/queues/rx-0/rps_cpus", name, cpus, (1<<min(cpus, 31))-1, name),
			"one receive queue for %d CPUs: one CPU handles all of its packets; %s", cpus, groText)
	}
	used := map[int]bool{}
	for _, counts := range irqs {
		for cpu, n := range counts {
			if n > 0 {
				used[cpu] = true
			}
		}
	}
	if cpus > 1 && len(irqs) > 1 && len(used) == 1 {
		return warn(name, "spread them: systemctl enable --now irqbalance, or echo CPU > /proc/irq/N/smp_affinity_list per queue",
			"%d receive queues but all their interrupts land on one CPU; %s", len(irqs), groText)
	}
	return ok(name, "%d receive queues, interrupts on %d CPUs; %s", rxQueues, len(used), groText)
}

func checkQueues(e *Env) []Result {
	n, err := e.netInfo()
	if err != nil {
		return []Result{advice(warn("", "", "%v", err))}
	}
	interrupts, _ := os.ReadFile(filepath.Join(e.Proc, "interrupts"))
	var out []Result
	for _, l := range involved(e, n) {
		gro, groErr := ethtoolValue(l.name, unix.ETHTOOL_GGRO)
		if !hardware(e.Sys, l.name) {
			state := "GRO on"
			if groErr != nil || !gro {
				state = "GRO off"
			}
			out = append(out, advice(ok(l.name, "virtual interface (%s): no hardware queues to spread; %s", orUnknown(l.kind), state)))
			continue
		}
		qs, _ := filepath.Glob(filepath.Join(e.Sys, "class", "net", l.name, "queues", "rx-*"))
		out = append(out, advice(queuesResult(l.name, len(qs), runtime.NumCPU(), irqCounts(string(interrupts), l.name), groErr == nil && gro)))
	}
	if len(out) == 0 {
		out = append(out, advice(ok("", "no interfaces involved")))
	}
	return out
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown kind"
	}
	return s
}
