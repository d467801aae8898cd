package health_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/testutil"
	"github.com/fwdd/fwdd/pkg/health"
)

// BenchmarkTCPCheck1000 runs the checker with 1,000 backends (one local
// listener, 1,000 forwards) as fast as the pool goes, and reports the CPU
// of the whole process per check, the listener's accepts included, and from
// it the share of one core that 1,000 backends checked every 2 s cost.
func BenchmarkTCPCheck1000(b *testing.B) {
	const n = 1000
	ln := testutil.ListenTCP(b, "127.0.0.1:0")
	addr, err := netip.ParseAddrPort(ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c := health.New(health.Options{})
	targets := make([]health.Target, n)
	for i := range targets {
		targets[i] = health.Target{
			Key:  health.Key{Forward: fmt.Sprintf("f%d", i), Backend: addr},
			Spec: health.Spec{Kind: health.KindTCP, Interval: time.Millisecond, Timeout: time.Second},
		}
	}
	c.Set(targets)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	checks := func() uint64 {
		var sum uint64
		for _, st := range c.Status() {
			sum += st.Checks
		}
		return sum
	}
	for checks() < n { // warm up: every target once
		time.Sleep(time.Millisecond)
	}
	b.ResetTimer()
	cpu0, from := cpuTime(b), checks()
	for checks()-from < uint64(b.N) {
		time.Sleep(50 * time.Millisecond) // health.Status copies 1,000 entries: rarely
	}
	cpu := cpuTime(b) - cpu0
	done1 := checks() - from
	b.StopTimer()
	perCheck := float64(cpu.Nanoseconds()) / float64(done1)
	b.ReportMetric(perCheck, "cpu-ns/check")
	// 1,000 backends every 2 s is 500 checks a second.
	b.ReportMetric(perCheck*500/1e9*100, "%core@1000/2s")
}

func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
