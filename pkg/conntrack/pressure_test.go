package conntrack

import (
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fwdd/fwdd/pkg/sysctl"
)

func TestCount(t *testing.T) {
	f := sysctl.NewFake(map[string]string{
		"net.netfilter.nf_conntrack_count": "123",
		"net.netfilter.nf_conntrack_max":   "1000",
	})
	c, m, err := CountFrom(f)
	if err != nil || c != 123 || m != 1000 {
		t.Errorf("CountFrom = %d, %d, %v", c, m, err)
	}
	if _, _, err := Count(t.TempDir()); err == nil {
		t.Errorf("Count of an empty tree: no error")
	}
}

func TestPressureHysteresis(t *testing.T) {
	const max = 1000
	f := sysctl.NewFake(map[string]string{
		"net.netfilter.nf_conntrack_count": "0",
		"net.netfilter.nf_conntrack_max":   strconv.Itoa(max),
	})
	core, logs := observer.New(zapcore.DebugLevel)
	p := NewPressure(PressureOptions{
		WarnPercent: 80, CriticalPercent: 95, Margin: 5, Repeat: time.Minute,
		Sysctls: f, Log: zap.New(core),
		Stats: func() Stats {
			return Stats{Forwards: map[string]ForwardStats{"web": {Live: Live{Total: 700}}, "dns": {Live: Live{Total: 120}}, "ssh": {Live: Live{Total: 3}}, "x": {Live: Live{Total: 1}}}}
		},
	})

	type line struct {
		Level zapcore.Level
		Msg   string
	}
	t0 := time.Unix(0, 0)
	steps := []struct {
		at    time.Duration
		count int
		want  []line
	}{
		{0, 100, nil},
		{5 * time.Second, 800, []line{{zapcore.WarnLevel, "conntrack table 80% full; raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"}}},
		{10 * time.Second, 790, nil}, // dipped, within margin
		{15 * time.Second, 810, nil}, // back up: same level, no repeat
		{20 * time.Second, 960, []line{{zapcore.ErrorLevel, "conntrack table 96% full: new connections are dropped when it is full; raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"}}},
		{25 * time.Second, 940, nil}, // flapping around 95 is quiet
		{30 * time.Second, 951, nil},
		{90 * time.Second, 950, []line{{zapcore.ErrorLevel, "conntrack table 95% full: new connections are dropped when it is full; raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"}}}, // repeat after a minute
		{95 * time.Second, 850, []line{{zapcore.WarnLevel, "conntrack table 85% full; raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"}}},
		{100 * time.Second, 760, nil},
		{105 * time.Second, 740, []line{{zapcore.InfoLevel, "conntrack table usage back to normal"}}},
		{110 * time.Second, 740, nil},
		{5 * time.Minute, 960, []line{{zapcore.ErrorLevel, "conntrack table 96% full: new connections are dropped when it is full; raise [sysctl] conntrack_max (on the host) or shorten conntrack timeouts"}}},
		{6 * time.Minute, 100, []line{{zapcore.InfoLevel, "conntrack table usage back to normal"}}}, // straight down to ok
	}
	for _, st := range steps {
		if _, _, err := f.Set("net.netfilter.nf_conntrack_count", strconv.Itoa(st.count)); err != nil {
			t.Fatal(err)
		}
		p.Check(t0.Add(st.at))
		var got []line
		for _, e := range logs.TakeAll() {
			got = append(got, line{e.Level, e.Message})
		}
		if diff := cmp.Diff(st.want, got); diff != "" {
			t.Errorf("at %v count %d: logs (-want +got):\n%s", st.at, st.count, diff)
		}
	}
	if last := p.Last(); last.Count != 100 || last.Max != max || last.Percent != 10 || last.Level != LevelOK {
		t.Errorf("Last = %+v", last)
	}
}

func TestPressureFields(t *testing.T) {
	f := sysctl.NewFake(map[string]string{
		"net.netfilter.nf_conntrack_count": "901",
		"net.netfilter.nf_conntrack_max":   "1000",
	})
	core, logs := observer.New(zapcore.DebugLevel)
	p := NewPressure(PressureOptions{
		WarnPercent: 80, CriticalPercent: 95, Sysctls: f, Log: zap.New(core),
		Stats: func() Stats {
			return Stats{Forwards: map[string]ForwardStats{"web": {Live: Live{Total: 700}}, "dns": {Live: Live{Total: 120}}, "ssh": {Live: Live{Total: 3}}, "x": {Live: Live{Total: 1}}}}
		},
	})
	p.Check(time.Now())
	all := logs.All()
	if len(all) != 1 {
		t.Fatalf("%d lines", len(all))
	}
	want := map[string]any{"count": int64(901), "max": int64(1000), "percent": 90.1, "level": "warn",
		"topForwards": "web (700), dns (120), ssh (3)"}
	if diff := cmp.Diff(want, all[0].ContextMap()); diff != "" {
		t.Errorf("fields (-want +got):\n%s", diff)
	}

	// A read error is logged once, not every interval.
	f2 := sysctl.NewFake(nil)
	p = NewPressure(PressureOptions{WarnPercent: 80, Sysctls: f2, Log: zap.New(core)})
	logs.TakeAll()
	p.Check(time.Now())
	p.Check(time.Now())
	if n := logs.Len(); n != 1 {
		t.Errorf("read errors logged %d times, want 1", n)
	}
}
