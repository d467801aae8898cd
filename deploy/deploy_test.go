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
// scores it 2.4 today; lower is better.
const maxExposure = 3.0

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
	unit := strings.ReplaceAll(string(b), "/usr/local/bin/fwdd", self)
	path := filepath.Join(t.TempDir(), "fwdd.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnitVerifies(t *testing.T) {
	sa := analyze(t)
	out, err := exec.Command(sa, "verify", unitCopy(t)).CombinedOutput()
	// verify warns about the Documentation= file on machines without fwdd
	// installed; every other line is a problem.
	var problems []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" && !strings.Contains(l, "Documentation") {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
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
}

func TestUnitRunsTheRightCommands(t *testing.T) {
	b, err := os.ReadFile("systemd/fwdd.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify",
		"ExecStart=/usr/local/bin/fwdd run -c /etc/fwdd/fwdd.toml",
		"ExecReload=/usr/local/bin/fwdd reload -c /etc/fwdd/fwdd.toml",
		"Restart=on-failure",
		"CapabilityBoundingSet=CAP_NET_ADMIN",
		"NoNewPrivileges=yes",
		"ProtectSystem=strict",
		"RuntimeDirectory=fwdd",
	} {
		if !strings.Contains(string(b), want+"\n") {
			t.Errorf("unit lacks %q", want)
		}
	}
}
