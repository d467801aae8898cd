package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCmd(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fwdd.toml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestVersionAndUsage(t *testing.T) {
	if code, out, _ := runCmd("version"); code != 0 || !strings.HasPrefix(out, "fwdd ") {
		t.Errorf("version: %d %q", code, out)
	}
	if code, _, errs := runCmd("frobnicate"); code != 2 || !strings.Contains(errs, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: %d %q", code, errs)
	}
	if code, _, _ := runCmd(); code != 2 {
		t.Errorf("no command: exit %d, want 2", code)
	}
}

// check reports every problem, with the file's name, and exits 1.
func TestCheck(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the config must be owned by root; run as root")
	}
	good := writeFile(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n")
	if code, out, errs := runCmd("check", "-c", good); code != 0 || !strings.Contains(out, "ok, 1 forwards") {
		t.Errorf("check good: %d %q %q", code, out, errs)
	}
	bad := writeFile(t, "[[forward]]\nname = \"web\"\nport = 70000\nto = \"10.0.0.2:8080\"\nsnat = \"maybe\"\n")
	code, _, errs := runCmd("check", "-c", bad)
	if code != 1 {
		t.Errorf("check bad: exit %d, want 1", code)
	}
	for _, want := range []string{bad + `:3: forward "web": port:`, bad + `:5: forward "web": snat:`} {
		if !strings.Contains(errs, want) {
			t.Errorf("check bad: stderr lacks %q:\n%s", want, errs)
		}
	}
}

func TestPrintRendersTheTable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the config must be owned by root; run as root")
	}
	path := writeFile(t, "[daemon]\ntable = \"fw2\"\n[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n")
	code, out, errs := runCmd("print", "-c", path)
	if code != 0 || !strings.Contains(out, "table inet fw2 {") || !strings.Contains(out, "tcp . 80 : 10.0.0.2 . 8080") {
		t.Errorf("print: %d %q\n%s", code, errs, out)
	}
}
