package sysctl

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// procTree lays out files like /proc/sys below a temporary directory.
func procTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, v := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDisplayAndKey(t *testing.T) {
	tests := []struct {
		in, display, key string
		wantErr          bool
	}{
		{in: "net.ipv4.ip_forward", display: "net.ipv4.ip_forward", key: "net/ipv4/ip_forward"},
		{in: "net/ipv4/ip_forward", display: "net.ipv4.ip_forward", key: "net/ipv4/ip_forward"},
		{in: Conf("ipv4", "eth0.100", "rp_filter"), display: "net.ipv4.conf.eth0/100.rp_filter", key: "net/ipv4/conf/eth0.100/rp_filter"},
		{in: "net..ipv4", wantErr: true},
		{in: "net/../../etc/passwd", wantErr: true},
		{in: "/net/ipv4", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, err := key(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("key(%q) err = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if k != tt.key {
				t.Errorf("key = %q, want %q", k, tt.key)
			}
			if d := Display(tt.in); d != tt.display {
				t.Errorf("Display = %q, want %q", d, tt.display)
			}
		})
	}
}

func TestFS(t *testing.T) {
	root := procTree(t, map[string]string{
		"net/ipv4/ip_forward":                  "0",
		"net/ipv4/ip_local_port_range":         "32768\t60999",
		"net/ipv4/conf/eth0.100/rp_filter":     "1",
		"net/netfilter/nf_conntrack_max":       "262144",
		"net/ipv6/conf/all/forwarding":         "0",
		"net/ipv4/conf/all/rp_filter":          "0",
		"net/ipv4/conf/default/rp_filter":      "1",
		"net/ipv4/conf/lo/rp_filter":           "0",
		"net/netfilter/nf_conntrack_udp_timeo": "30",
	})
	s := NewFS(root)

	if v, err := s.Get("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Fatalf("Get = %q, %v; want 0", v, err)
	}

	old, changed, err := s.Set("net.ipv4.ip_forward", "1")
	if err != nil || old != "0" || !changed {
		t.Fatalf("Set = %q, %v, %v; want 0, true, nil", old, changed, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "net/ipv4/ip_forward")); string(b) != "1\n" {
		t.Errorf("file holds %q, want \"1\\n\"", b)
	}

	old, changed, err = s.Set("net.ipv4.ip_forward", "1")
	if err != nil || old != "1" || changed {
		t.Fatalf("second Set = %q, %v, %v; want 1, false, nil", old, changed, err)
	}

	// Whitespace differences are no change: the kernel uses tabs.
	fi, _ := os.Stat(filepath.Join(root, "net/ipv4/ip_local_port_range"))
	if _, changed, err := s.Set("net.ipv4.ip_local_port_range", "32768 60999"); err != nil || changed {
		t.Errorf("Set of equal multi-value = changed %v, err %v", changed, err)
	}
	if fi2, _ := os.Stat(filepath.Join(root, "net/ipv4/ip_local_port_range")); !fi2.ModTime().Equal(fi.ModTime()) {
		t.Errorf("equal value was written")
	}

	// Interface names with dots.
	if _, changed, err := s.Set(Conf("ipv4", "eth0.100", "rp_filter"), "2"); err != nil || !changed {
		t.Errorf("Set dotted interface = %v, %v", changed, err)
	}

	// Missing parameter: not created, error matches fs.ErrNotExist and names it.
	_, _, err = s.Set(Conf("ipv4", "eth9", "rp_filter"), "2")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Set missing = %v, want fs.ErrNotExist", err)
	}
	if want := "set net.ipv4.conf.eth9.rp_filter: no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if _, err := os.Stat(filepath.Join(root, "net/ipv4/conf/eth9")); err == nil {
		t.Errorf("Set created a missing parameter")
	}
	if _, err := s.Get("net.ipv4.nope"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Get missing = %v", err)
	}
}

func TestReadOnlyError(t *testing.T) {
	f := NewFake(map[string]string{"net.netfilter.nf_conntrack_max": "262144", "net.core.somaxconn": "4096"})
	f.SetReadOnly("net.netfilter.nf_conntrack_max", "net.core.somaxconn")

	_, _, err := f.Set("net.netfilter.nf_conntrack_max", "1000000")
	if !errors.Is(err, ErrReadOnly) {
		t.Fatalf("err = %v, want ErrReadOnly", err)
	}
	want := "net.netfilter.nf_conntrack_max is read-only in this network namespace (it is host-wide); set it on the host"
	if err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
	// Unchanged values are never written, so a read-only equal value is fine.
	if _, changed, err := f.Set("net.netfilter.nf_conntrack_max", "262144"); err != nil || changed {
		t.Errorf("equal read-only Set = %v, %v", changed, err)
	}
	_, _, err = f.Set("net.core.somaxconn", "1")
	if want := "net.core.somaxconn is read-only here (permission denied); set it where it may be written (the host, or a privileged container)"; err == nil || err.Error() != want {
		t.Errorf("err = %q, want %q", err, want)
	}
}

func TestApply(t *testing.T) {
	base := map[string]string{
		"net/ipv4/ip_forward":                "0",
		"net/ipv6/conf/all/forwarding":       "0",
		"net/ipv4/conf/all/rp_filter":        "1",
		"net/ipv4/conf/default/rp_filter":    "1",
		"net/ipv4/conf/eth1/rp_filter":       "1",
		"net/ipv4/conf/eth0.100/rp_filter":   "2",
		"net/netfilter/nf_conntrack_max":     "262144",
		"net/netfilter/nf_conntrack_buckets": "262144",
	}
	type logLine struct{ Msg, Sysctl, Old, New, Interface, Note string }
	tests := []struct {
		name     string
		plan     Plan
		readOnly []string
		want     map[string]string // changed values only
		wantLogs []logLine
		wantErr  string
	}{
		{
			name: "zero plan changes nothing",
		},
		{
			name: "forwarding",
			plan: Plan{IPForward: true, IPv6Forward: true},
			want: map[string]string{"net/ipv4/ip_forward": "1", "net/ipv6/conf/all/forwarding": "1"},
			wantLogs: []logLine{
				{Msg: "sysctl changed", Sysctl: "net.ipv4.ip_forward", Old: "0", New: "1"},
				{Msg: "sysctl changed", Sysctl: "net.ipv6.conf.all.forwarding", Old: "0", New: "1", Note: raNote},
			},
		},
		{
			name: "loose with a missing interface",
			plan: Plan{RPFilter: RPFilterLoose, Interfaces: []string{"eth0.100", "eth1", "wg0"}},
			want: map[string]string{
				"net/ipv4/conf/all/rp_filter": "2", "net/ipv4/conf/default/rp_filter": "2", "net/ipv4/conf/eth1/rp_filter": "2",
			},
			wantLogs: []logLine{
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.all.rp_filter", Old: "1", New: "2"},
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.default.rp_filter", Old: "1", New: "2"},
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.eth1.rp_filter", Old: "1", New: "2"},
				{Msg: "interface not present, rp_filter not set on it", Sysctl: "net.ipv4.conf.wg0.rp_filter", Interface: "wg0", Note: laterNote["2"]},
			},
		},
		{
			name: "off",
			plan: Plan{RPFilter: RPFilterOff, Interfaces: []string{"eth0.100", "wg0"}},
			want: map[string]string{
				"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0", "net/ipv4/conf/eth0.100/rp_filter": "0",
			},
			wantLogs: []logLine{
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.all.rp_filter", Old: "1", New: "0"},
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.default.rp_filter", Old: "1", New: "0"},
				{Msg: "sysctl changed", Sysctl: "net.ipv4.conf.eth0/100.rp_filter", Old: "2", New: "0"},
				{Msg: "interface not present, rp_filter not set on it", Sysctl: "net.ipv4.conf.wg0.rp_filter", Interface: "wg0", Note: laterNote["0"]},
			},
		},
		{
			name: "keep",
			plan: Plan{RPFilter: RPFilterKeep, Interfaces: []string{"eth1"}},
		},
		{
			name:     "conntrack max read-only does not stop the rest",
			plan:     Plan{IPForward: true, ConntrackMax: 1 << 20},
			readOnly: []string{"net.netfilter.nf_conntrack_max"},
			want:     map[string]string{"net/ipv4/ip_forward": "1"},
			wantLogs: []logLine{{Msg: "sysctl changed", Sysctl: "net.ipv4.ip_forward", Old: "0", New: "1"}},
			wantErr:  "net.netfilter.nf_conntrack_max is read-only in this network namespace (it is host-wide); set it on the host",
		},
		{
			name:     "conntrack buckets read-only (a child namespace)",
			plan:     Plan{ConntrackBuckets: 1 << 19},
			readOnly: []string{"net.netfilter.nf_conntrack_buckets"},
			wantErr:  "net.netfilter.nf_conntrack_buckets is read-only in this network namespace (it is host-wide); set it on the host",
		},
		{
			name: "conntrack buckets",
			plan: Plan{ConntrackBuckets: 1 << 20},
			want: map[string]string{"net/netfilter/nf_conntrack_buckets": "1048576"},
			wantLogs: []logLine{
				{Msg: "sysctl changed", Sysctl: "net.netfilter.nf_conntrack_buckets", Old: "262144", New: "1048576"},
			},
		},
		{
			name: "conntrack max",
			plan: Plan{ConntrackMax: 1 << 20},
			want: map[string]string{"net/netfilter/nf_conntrack_max": "1048576"},
			wantLogs: []logLine{
				{Msg: "sysctl changed", Sysctl: "net.netfilter.nf_conntrack_max", Old: "262144", New: "1048576"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := NewFake(base)
			f.SetReadOnly(tt.readOnly...)
			core, logs := observer.New(zapcore.DebugLevel)
			_, err := Apply(f, tt.plan, zap.New(core))
			if gotErr := errString(err); gotErr != tt.wantErr {
				t.Errorf("err = %q, want %q", gotErr, tt.wantErr)
			}
			wantVals := map[string]string{}
			for k, v := range base {
				wantVals[k] = v
			}
			for k, v := range tt.want {
				wantVals[k] = v
			}
			if diff := cmp.Diff(wantVals, f.Values()); diff != "" {
				t.Errorf("values (-want +got):\n%s", diff)
			}
			var got []logLine
			for _, e := range logs.All() {
				m := e.ContextMap()
				s := func(k string) string { v, _ := m[k].(string); return v }
				got = append(got, logLine{e.Message, s("sysctl"), s("old"), s("new"), s("interface"), s("note")})
				if e.Message == "sysctl changed" && (s("note") != "") != (e.Level == zapcore.WarnLevel) {
					t.Errorf("%s logged at %s; a change with a note is a warning, others info", s("sysctl"), e.Level)
				}
			}
			if diff := cmp.Diff(tt.wantLogs, got); diff != "" {
				t.Errorf("logs (-want +got):\n%s", diff)
			}

			// Applying again changes and logs nothing.
			before := f.Writes()
			logs.TakeAll()
			_, _ = Apply(f, tt.plan, zap.New(core))
			if f.Writes() != before {
				t.Errorf("second Apply wrote %d values", f.Writes()-before)
			}
			for _, e := range logs.All() {
				if e.Message == "sysctl changed" {
					t.Errorf("second Apply logged a change: %v", e.ContextMap())
				}
			}
		})
	}
}

func TestApplyFS(t *testing.T) {
	// The same through real files, to be sure FS and Fake agree.
	root := procTree(t, map[string]string{
		"net/ipv4/ip_forward":             "0",
		"net/ipv4/conf/all/rp_filter":     "1",
		"net/ipv4/conf/default/rp_filter": "1",
	})
	core, logs := observer.New(zapcore.InfoLevel)
	_, err := Apply(NewFS(root), Plan{IPForward: true, RPFilter: RPFilterLoose, Interfaces: []string{"eth7"}}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	if n := logs.FilterMessage("sysctl changed").Len(); n != 3 {
		t.Errorf("%d changes logged, want 3", n)
	}
	if n := logs.FilterField(zap.String("interface", "eth7")).Len(); n != 1 {
		t.Errorf("missing interface warnings = %d, want 1", n)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Several failed settings are one error on one line, each still matchable.
func TestApplyErrorsOnOneLine(t *testing.T) {
	f := NewFake(map[string]string{"net.ipv4.ip_forward": "0", "net.netfilter.nf_conntrack_max": "100"})
	f.SetReadOnly("net.ipv4.ip_forward", "net.netfilter.nf_conntrack_max")
	_, err := Apply(f, Plan{IPForward: true, ConntrackMax: 5}, zap.NewNop())
	var ro *ReadOnlyError
	if err == nil || strings.Contains(err.Error(), "\n") || !errors.As(err, &ro) ||
		!strings.Contains(err.Error(), "ip_forward") || !strings.Contains(err.Error(), "nf_conntrack_max") {
		t.Errorf("Apply = %q", err)
	}
}

// On a modular kernel nothing may have loaded nf_conntrack yet (early in
// boot): its parameters do not exist. Apply writes the rest and leaves
// them for after the batch that loads it; Later then writes them, and one
// still missing is an error.
func TestApplyLeavesConntrackUntilLoaded(t *testing.T) {
	// Through files, as /proc/sys shows it: net/netfilter holds nf_log only.
	root := procTree(t, map[string]string{"net/ipv4/ip_forward": "0", "net/netfilter/nf_log/2": "NONE"})
	core, logs := observer.New(zapcore.InfoLevel)
	plan := Plan{IPForward: true, ConntrackMax: 524288, ConntrackBuckets: 131072}
	later, err := Apply(NewFS(root), plan, zap.New(core))
	if err != nil {
		t.Fatalf("Apply before nf_conntrack is loaded: %v", err)
	}
	if later.Empty() {
		t.Fatal("nothing left for later")
	}
	if b, _ := os.ReadFile(filepath.Join(root, "net/ipv4/ip_forward")); string(b) != "1\n" {
		t.Errorf("ip_forward holds %q", b)
	}
	if n := logs.FilterMessage("sysctl left until fwdd's table is in: nf_conntrack is not loaded yet").Len(); n != 2 {
		t.Errorf("%d settings logged as left, want 2: %v", n, logs.All())
	}
	// Still not loaded: now an error naming both.
	if err := later.Apply(NewFS(root), zap.NewNop()); !errors.Is(err, fs.ErrNotExist) ||
		!strings.Contains(err.Error(), "nf_conntrack_max") || !strings.Contains(err.Error(), "nf_conntrack_buckets") {
		t.Errorf("Later.Apply with the module still missing = %v", err)
	}
	// The module loaded (the batch went in).
	for name, v := range map[string]string{"nf_conntrack_max": "262144", "nf_conntrack_buckets": "65536"} {
		if err := os.WriteFile(filepath.Join(root, "net/netfilter", name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logs.TakeAll()
	if err := later.Apply(NewFS(root), zap.New(core)); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"nf_conntrack_max": "524288\n", "nf_conntrack_buckets": "131072\n"} {
		if b, _ := os.ReadFile(filepath.Join(root, "net/netfilter", name)); string(b) != want {
			t.Errorf("%s holds %q, want %q", name, b, want)
		}
	}
	if n := logs.FilterMessage("sysctl changed").Len(); n != 2 {
		t.Errorf("%d changes logged, want 2", n)
	}
	// Other parameters are not left for later: a missing ip_forward is an
	// error at once.
	if later, err := Apply(NewFake(nil), Plan{IPForward: true}, zap.NewNop()); !errors.Is(err, fs.ErrNotExist) || !later.Empty() {
		t.Errorf("Apply without ip_forward = %v, %v", later, err)
	}
}
