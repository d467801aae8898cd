package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/nft"
	"github.com/fwdd/fwdd/pkg/sysctl"
)

func TestSysctlPlan(t *testing.T) {
	addr := netip.MustParseAddr
	c := &config.Config{
		Sysctl: config.Sysctl{IPForward: true, RPFilter: config.RPFilterLoose, ConntrackMax: 1 << 20},
		Forwards: []config.Forward{
			{Name: "a", Interface: "eth1", To: addr("10.0.0.1")},
			{Name: "b", Interface: "eth0.100", To: addr("fd00::1")},
			{Name: "c", Interface: "eth1", To: addr("10.0.0.2")},
			{Name: "d", To: addr("10.0.0.3")},
		},
	}
	want := sysctl.Plan{IPForward: true, IPv6Forward: true, RPFilter: sysctl.RPFilterLoose,
		Interfaces: []string{"eth0.100", "eth1"}, ConntrackMax: 1 << 20}
	if diff := cmp.Diff(want, sysctlPlan(c)); diff != "" {
		t.Errorf("sysctlPlan (-want +got):\n%s", diff)
	}
	c.Sysctl.IPForward = false
	if sysctlPlan(c).IPv6Forward {
		t.Errorf("IPv6Forward without IPForward")
	}
}

// A start or reload that fails changes no sysctl: what it set before the
// batch is set back, also when the failure is another sysctl's.
func TestFailedApplyRestoresSysctls(t *testing.T) {
	// A [sysctl] section, and a changed target so that a reload sends a batch.
	withSysctl := func(s string) string {
		return strings.Replace(strings.Replace(small, "[daemon]", "[sysctl]\n"+s+"\n[daemon]", 1), "10.0.2.10:8080", "10.0.2.11:8080", 1)
	}
	for _, tc := range []struct {
		name  string
		start bool // the start fails, not a reload
		text  string
		fail  func(e *env)
	}{
		{"start, batch rejected", true, withSysctl(`rp_filter = "off"`), func(e *env) { e.kernel.FailNext(unix.EINVAL) }},
		{"reload, batch rejected", false, withSysctl(`rp_filter = "off"`), func(e *env) { e.kernel.FailNext(unix.EINVAL) }},
		{"reload, sysctl refused", false, withSysctl("rp_filter = \"off\"\nconntrack_max = 1000"),
			func(e *env) { e.sysctls.SetReadOnly("net.netfilter.nf_conntrack_max") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, small)
			e.sysctls = sysctl.NewFake(map[string]string{"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.forwarding": "0",
				"net.ipv4.conf.all.rp_filter": "1", "net.ipv4.conf.default.rp_filter": "1", "net.ipv4.conf.eth1.rp_filter": "1",
				"net.netfilter.nf_conntrack_max": "65536"})
			e.d.opts.Sysctls = e.sysctls
			if !tc.start {
				e.start()
			}
			before := e.sysctls.Values()
			e.write(tc.text)
			tc.fail(e)
			var err error
			if tc.start {
				err = e.d.Start()
			} else {
				err = e.d.Reload()
			}
			if err == nil {
				t.Fatal("no error")
			}
			if d := cmp.Diff(before, e.sysctls.Values()); d != "" {
				t.Errorf("sysctls after %v (-before +after):\n%s", err, d)
			}
		})
	}
}

// loadsConntrack is the fake kernel of a modular kernel on which nothing
// has loaded nf_conntrack yet: its sysctls appear with the first batch that
// goes in (fwdd's table uses conntrack).
type loadsConntrack struct {
	*nft.Fake
	sysctls *sysctl.Fake
}

func (k loadsConntrack) Run(p *nft.Plan) error {
	if err := k.Fake.Run(p); err != nil {
		return err
	}
	k.sysctls.Add(map[string]string{"net.netfilter.nf_conntrack_max": "65536", "net.netfilter.nf_conntrack_buckets": "16384"})
	return nil
}

// conntrack_max and conntrack_buckets do not stop a start on a host whose
// nf_conntrack is not loaded yet: they are written right after the batch
// that loads it. A start whose batch fails still changes no sysctl, and a
// value the kernel refuses after the batch is an error in the log, not a
// failed start.
func TestConntrackSysctlsAfterTheBatchThatLoadsIt(t *testing.T) {
	text := strings.Replace(small, "[daemon]", "[sysctl]\nconntrack_max = 1000000\nconntrack_buckets = 250000\n[daemon]", 1)
	for _, tc := range []struct {
		name     string
		fail     bool     // the batch is rejected
		readOnly []string // refused once they exist (a child namespace)
		want     map[string]string
		wantErr  bool
	}{
		{name: "start", want: map[string]string{"net/ipv4/ip_forward": "1",
			"net/netfilter/nf_conntrack_max": "1000000", "net/netfilter/nf_conntrack_buckets": "250000"}},
		{name: "batch rejected", fail: true, want: map[string]string{"net/ipv4/ip_forward": "0"}, wantErr: true},
		{name: "refused after the batch", readOnly: []string{"net.netfilter.nf_conntrack_max"},
			want: map[string]string{"net/ipv4/ip_forward": "1",
				"net/netfilter/nf_conntrack_max": "65536", "net/netfilter/nf_conntrack_buckets": "250000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, text)
			e.sysctls = sysctl.NewFake(map[string]string{"net.ipv4.ip_forward": "0"})
			e.sysctls.SetReadOnly(tc.readOnly...)
			core, logs := observer.New(zap.DebugLevel)
			e.logs = logs
			e.d = New(Options{ConfigPath: "fwdd.toml", StateDir: t.TempDir(), Log: zap.New(core),
				Kernel: loadsConntrack{e.kernel, e.sysctls}, Sysctls: e.sysctls, Load: e.load})
			if tc.fail {
				e.kernel.FailNext(unix.EINVAL)
			}
			err := e.d.Start()
			if (err != nil) != tc.wantErr {
				t.Fatalf("start: %v", err)
			}
			if d := cmp.Diff(tc.want, e.sysctls.Values()); d != "" {
				t.Errorf("sysctls (-want +got):\n%s", d)
			}
			refused := logs.FilterMessage("cannot set a sysctl after the batch that loaded nf_conntrack; forwarding without it").All()
			if (len(refused) == 1) != (tc.readOnly != nil) || len(refused) == 1 && refused[0].Level != zapcore.ErrorLevel {
				t.Errorf("errors logged after the batch: %v", refused)
			}
		})
	}
}
