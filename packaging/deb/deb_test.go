// Package deb builds fwdd's Debian package (build.sh, run by `make deb`);
// its tests check what goes into it. The package's install, upgrade,
// removal and purge under a real systemd are tested in e2e.
package deb

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
)

// TestConffileForwardsNothing: a fresh install forwards nothing until the
// operator adds forwards.
func TestConffileForwardsNothing(t *testing.T) {
	b, err := os.ReadFile("fwdd.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("fwdd.toml", b)
	if err != nil {
		t.Fatalf("the packaged config does not parse: %v", err)
	}
	if len(cfg.Forwards) != 0 {
		t.Errorf("the packaged config has %d forwards, want none", len(cfg.Forwards))
	}
	// Its commented defaults parse too, and are the parser's defaults.
	var un strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "# [[") {
			break // the example forward
		}
		if m := regexp.MustCompile(`^# ([a-z_]+ = .*?)(\s+#.*)?$`).FindStringSubmatch(l); m != nil {
			l = m[1]
		}
		un.WriteString(l + "\n")
	}
	def, err := config.Parse("fwdd.toml", []byte(un.String()))
	if err != nil {
		t.Fatalf("the commented defaults do not parse: %v\n%s", err, un.String())
	}
	if def.Daemon != cfg.Daemon || def.Sysctl.IPForward != cfg.Sysctl.IPForward || def.Conntrack != cfg.Conntrack {
		t.Errorf("the commented values differ from the defaults:\n%+v\n%+v", def, cfg)
	}
}

func TestVersion(t *testing.T) {
	out, err := exec.Command("./version.sh").Output()
	if err != nil {
		t.Fatal(err)
	}
	v := strings.TrimSpace(string(out))
	// Debian policy 5.6.12: a native version starts with a digit and holds
	// only alphanumerics and . + ~
	if !regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`).MatchString(v) {
		t.Errorf("version %q is not a valid native Debian version", v)
	}
	if dpkg, err := exec.LookPath("dpkg"); err == nil {
		if out, err := exec.Command(dpkg, "--validate-version", v).CombinedOutput(); err != nil {
			t.Errorf("dpkg --validate-version %s: %v %s", v, err, out)
		}
	}
}
