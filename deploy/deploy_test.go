// Package deploy holds fwdd's unit, example config and dashboards; its test
// checks the systemd unit with systemd's own tools.
package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// maxExposure guards the unit's hardening: `systemd-analyze security`
// must score it at most this (lower is better); README.md records the score.
const maxExposure = 2.0

func analyze(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing; .ci/run installs systemd")
		}
		t.Skip("systemd-analyze not installed")
	}
	return path
}

// unitCopy writes the unit with its binary path pointing at an executable
// that exists here, since verify checks ExecStart= binaries.
func unitCopy(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("systemd/fwdd.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.ReplaceAll(string(b), "/usr/sbin/fwdd", self)
	path := filepath.Join(t.TempDir(), "fwdd.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnitVerifies(t *testing.T) {
	sa := analyze(t)
	// The man pages of Documentation= are checked by the package test.
	out, err := exec.Command(sa, "verify", "--man=no", unitCopy(t)).CombinedOutput()
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
	}
}

// TestUnitNoOrderingCycle boots, as far as systemd-analyze verify goes, a
// host with cloud-init: cloud-init.service runs after networking.service
// (after network-pre.target) and before sysinit.target, as on Debian and
// Ubuntu. A unit ordered before network-pre.target must then not be ordered
// after sysinit.target (default dependencies), or the boot transaction has
// a cycle that systemd breaks by dropping a job.
func TestUnitNoOrderingCycle(t *testing.T) {
	sa := analyze(t)
	dir := filepath.Dir(unitCopy(t))
	for name, text := range map[string]string{
		"cloud-init.service": "[Unit]\nDefaultDependencies=no\nAfter=networking.service\n" +
			"Before=sysinit.target shutdown.target\nConflicts=shutdown.target\n" +
			"[Service]\nType=oneshot\nExecStart=/bin/true\n",
		"networking.service": "[Unit]\nDefaultDependencies=no\nAfter=local-fs.target network-pre.target\n" +
			"Before=network.target shutdown.target\nConflicts=shutdown.target\n" +
			"[Service]\nType=oneshot\nExecStart=/bin/true\n",
		// What the boot pulls in (multi-user.target wants fwdd).
		"boot.target": "[Unit]\nWants=fwdd.service cloud-init.service networking.service\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(sa, "verify", "--man=no", filepath.Join(dir, "boot.target")).CombinedOutput()
	if err != nil || strings.Contains(string(out), "ordering cycle") {
		t.Errorf("systemd-analyze verify with cloud-init: %v\n%s", err, out)
	}
}

func TestUnitExposure(t *testing.T) {
	sa := analyze(t)
	out, _ := exec.Command(sa, "security", "--offline=true", unitCopy(t)).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for fwdd\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure score in:\n%s", out)
	}
	score, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("exposure %.1f", score)
	if score > maxExposure {
		t.Errorf("exposure %.1f exceeds %.1f: the unit lost hardening\n%s", score, maxExposure, out)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rm := regexp.MustCompile(`rates its exposure \*\*([0-9.]+)\*\*`).FindSubmatch(readme)
	if rm == nil {
		t.Fatal("README.md does not record the exposure score (\"rates its exposure **N**\")")
	}
	if string(rm[1]) != strconv.FormatFloat(score, 'f', 1, 64) {
		t.Errorf("README.md records exposure %s, systemd-analyze says %.1f", rm[1], score)
	}
}

func TestUnitRunsTheRightCommands(t *testing.T) {
	b, err := os.ReadFile("systemd/fwdd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify",
		"ExecStart=/usr/sbin/fwdd run -c /etc/fwdd/fwdd.toml",
		"ExecReload=/usr/sbin/fwdd reload -c /etc/fwdd/fwdd.toml",
		"DefaultDependencies=no",
		"Conflicts=shutdown.target",
		"Restart=on-failure",
		"User=fwdd",
		"AmbientCapabilities=CAP_NET_ADMIN",
		"CapabilityBoundingSet=CAP_NET_ADMIN",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"PrivateMounts=yes",
		"RuntimeDirectory=fwdd",
		"RuntimeDirectoryMode=0700",
		"MemoryMax=1G",
		"SystemCallErrorNumber=EPERM",
	} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
	// The daemon dials health-checked backends at any address from its own
	// cgroup: an IP address filter there fails their checks.
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "IPAddressDeny=") || strings.HasPrefix(l, "IPAddressAllow=") {
			t.Errorf("unit filters IP addresses (%s): health checks of backends elsewhere would fail", l)
		}
	}
}
