package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
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

// Commands that take no arguments refuse them, naming the command, rather
// than ignore them: `fwdd check /x.toml` would validate the default file.
// The config given does not exist and the state dir is empty, so that a
// command that ignored its argument fails early, touching nothing.
func TestExtraArgumentsRefused(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	stateDir := t.TempDir()
	for _, cmd := range []string{"run", "check", "print", "reload", "diff", "doctor", "health", "version", "help"} {
		t.Run(cmd, func(t *testing.T) {
			args := []string{cmd, "-c", missing, "--state-dir", stateDir, "/x.toml"}
			if cmd == "version" || cmd == "help" {
				args = []string{cmd, "/x.toml"}
			}
			code, out, errs := runCmd(args...)
			want := `fwdd ` + cmd + `: unexpected argument "/x.toml": ` + cmd + ` takes none`
			if code != 2 || !strings.Contains(errs, want) || !strings.Contains(errs, "\nusage: fwdd "+cmd) {
				t.Errorf("exit %d, stderr %q, stdout %q; want 2 and %q with the command's usage", code, errs, out, want)
			}
		})
	}
	if _, _, errs := runCmd("check", "/x.toml"); !strings.Contains(errs, "(the config file is -c PATH)\nusage: fwdd check [-c PATH]\n") {
		t.Errorf("check: stderr %q does not point at -c", errs)
	}
}

// Flags may follow arguments (status NAME --json), and "--" ends flags.
func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		wantNames []string
		wantJSON  bool
		wantCfg   string
	}{
		{[]string{"web", "--json"}, []string{"web"}, true, "default"},
		{[]string{"--json", "web", "db"}, []string{"web", "db"}, true, "default"},
		{[]string{"web", "-c", "/x.toml", "db", "--json"}, []string{"web", "db"}, true, "/x.toml"},
		{[]string{"web", "--", "--json"}, []string{"web", "--json"}, false, "default"},
		{nil, nil, false, "default"},
	} {
		fs := flag.NewFlagSet("fwdd status", flag.ContinueOnError)
		jsonOut := fs.Bool("json", false, "")
		cfg := fs.String("c", "default", "")
		names, err := parseInterspersed(fs, tc.args)
		if err != nil || !slices.Equal(names, tc.wantNames) || *jsonOut != tc.wantJSON || *cfg != tc.wantCfg {
			t.Errorf("%q: names %q json %v -c %q err %v; want %q %v %q", tc.args, names, *jsonOut, *cfg, err, tc.wantNames, tc.wantJSON, tc.wantCfg)
		}
	}
	fs := flag.NewFlagSet("fwdd status", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if _, err := parseInterspersed(fs, []string{"web", "--bogus"}); err == nil {
		t.Error("an unknown flag after a name was accepted")
	}
}

// `fwdd status web --json`: --json is a flag, not a forward's name.
func TestStatusFlagsAfterNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the config must be owned by root, and a network namespace needs root; run as root")
	}
	cfg := writeFile(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n"+
		"[[forward]]\nname = \"db\"\nport = 5432\nto = \"10.0.0.3\"\n")
	// In a namespace of its own fwdd's table is absent: exit 3.
	code, out := fwddInNetNS(t, "status", "-c", cfg, "--state-dir", t.TempDir(), "web", "--json")
	var r struct{ Forwards []struct{ Name string } }
	if err := json.Unmarshal([]byte(out), &r); code != 3 || err != nil || len(r.Forwards) != 1 || r.Forwards[0].Name != "web" {
		t.Errorf("status web --json: exit %d (want 3, no table), %v, forwards %+v\n%s", code, err, r.Forwards, out)
	}
}
