package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/internal/rootfile"
)

// The shipped example must always parse; this keeps it from rotting.
func TestExampleConfig(t *testing.T) {
	const path = "../../deploy/fwdd.toml"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Parse, not Load: the checkout is not root-owned and its mode depends on umask.
	c, err := Parse(path, data)
	if err != nil {
		t.Fatalf("example config is invalid:\n%v", err)
	}
	if c.Daemon.Table != "fwdd" || c.Daemon.OnStop != OnStopFlush || c.Conntrack.CriticalPercent != 95 {
		t.Errorf("unexpected [daemon]/[conntrack]: %+v %+v", c.Daemon, c.Conntrack)
	}
	var names []string
	for _, f := range c.Forwards {
		names = append(names, f.Name)
	}
	if diff := cmp.Diff([]string{"web", "dns", "game", "web6", "lab-ssh", "app", "api"}, names); diff != "" {
		t.Errorf("forward names (-want +got):\n%s", diff)
	}
	web := c.ForwardsByName()["web"]
	if web == nil || web.To != netip.MustParseAddr("192.168.1.50") || web.ToPort != (PortRange{8080, 8080}) || web.Port != (PortRange{80, 80}) {
		t.Errorf("web = %+v", web)
	}
	if dns := c.ForwardsByName()["dns"]; dns == nil || len(dns.Protos) != 2 {
		t.Errorf("dns = %+v", dns)
	}
	if game := c.ForwardsByName()["game"]; game == nil || game.TargetPort(8005) != 9005 {
		t.Errorf("game = %+v", game)
	}
	if web6 := c.ForwardsByName()["web6"]; web6 == nil || !web6.IPv6() || web6.Local() {
		t.Errorf("web6 = %+v", web6)
	}
	ssh := c.ForwardsByName()["lab-ssh"]
	if ssh == nil || ssh.Interface != "eth0" || len(ssh.Sources) != 2 || ssh.SNAT.Kind != SNATFixed || !ssh.Log {
		t.Errorf("lab-ssh = %+v", ssh)
	}
	for _, f := range c.Forwards {
		if f.Line == 0 {
			t.Errorf("forward %q has no line", f.Name)
		}
	}
}

func writeConfig(t *testing.T, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fwdd.toml")
	if err := os.WriteFile(path, []byte("[daemon]\ntable = \"t\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Chmod, not WriteFile's mode, so umask does not interfere.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// testRules are Load's rules for a test's files: owned by the user running
// the test, in directories up to the test's temporary directory.
func testRules(path string) rootfile.Rules {
	return rootfile.Rules{UID: uint32(os.Getuid()), Top: filepath.Dir(path)}
}

func TestLoadRefusesBeforeParsing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fwdd.toml")
	if err := os.WriteFile(path, []byte("not toml ["), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	_, err := new(Parser).load(path, testRules(path))
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("got %v, want the permission error, not a parse error", err)
	}
}

// mkfile writes a file of the given mode under dir, making its directories.
func mkfile(t *testing.T, dir, rel, text string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, rel)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestLoadTooLarge(t *testing.T) {
	path := writeConfig(t, 0o644)
	if err := os.Truncate(path, MaxFileSize+1); err != nil {
		t.Fatal(err)
	}
	_, err := readConfig(path, testRules(path))
	if want := path + ": the configuration is larger than 67108864 bytes (64 MiB), the limit"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	// The limit is for all the files together.
	if err := os.Truncate(path, MaxFileSize-4); err != nil {
		t.Fatal(err)
	}
	part := mkfile(t, Dir(path), "10-a.toml", "# 5 bytes or more\n", 0o644)
	_, err = readConfig(path, testRules(path))
	if want := part + ": the configuration is larger than 67108864 bytes (64 MiB), the limit"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func TestDir(t *testing.T) {
	for in, want := range map[string]string{"/etc/fwdd/fwdd.toml": "/etc/fwdd/fwdd.d", "/x/lab.toml": "/x/lab.d", "lab.conf": "lab.conf.d"} {
		if got := Dir(in); got != want {
			t.Errorf("Dir(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestConfigDirectory checks forwards in lab.d/*.toml next to lab.toml.
func TestConfigDirectory(t *testing.T) {
	fwd := func(name string, port int, extra ...string) string {
		return strings.Join(append([]string{"[[forward]]", `name = "` + name + `"`, "port = " + strconv.Itoa(port), `to = "10.0.0.2"`}, extra...), "\n") + "\n"
	}
	setup := func(t *testing.T, files map[string]string) (string, rootfile.Rules) {
		top := t.TempDir()
		for rel, text := range files {
			mkfile(t, top, rel, text, 0o644)
		}
		main := filepath.Join(top, "lab.toml")
		return main, testRules(main)
	}
	load := func(main string, rules rootfile.Rules) (*Config, error) {
		srcs, err := readConfig(main, rules)
		if err != nil {
			return nil, err
		}
		return parseFiles(srcs)
	}

	t.Run("forwards from every file in order", func(t *testing.T) {
		main, rules := setup(t, map[string]string{
			"lab.toml":            "[daemon]\ntable = \"lab\"\n" + fwd("a", 1),
			"lab.d/20-c.toml":     "# generated\n" + fwd("c", 3),
			"lab.d/10-b.toml":     fwd("b", 2) + fwd("b2", 4),
			"lab.d/notes.txt":     "not toml",
			"lab.d/.hidden.toml":  "junk",
			"lab.d/30-d.toml~":    "junk",
			"other.d/99-x.toml":   "junk",
			"lab.d/sub/nope.toml": "junk",
		})
		c, err := load(main, rules)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range c.Forwards {
			got = append(got, f.Name+" "+strings.TrimPrefix(f.File, filepath.Dir(main)+"/")+":"+strconv.Itoa(f.Line))
		}
		want := []string{"a lab.toml:3", "b lab.d/10-b.toml:1", "b2 lab.d/10-b.toml:5", "c lab.d/20-c.toml:2"}
		if d := cmp.Diff(want, got); d != "" || c.Daemon.Table != "lab" || c.Path != main {
			t.Errorf("forwards (-want +got):\n%s", d)
		}
		var p Parser
		pc, err := p.load(main, rules)
		if err != nil || cmp.Diff(c, pc, cmpOpts) != "" {
			t.Errorf("Parser: %v\n%s", err, cmp.Diff(c, pc, cmpOpts))
		}
	})

	t.Run("problems name the file", func(t *testing.T) {
		main, rules := setup(t, map[string]string{
			"lab.toml":        fwd("a", 1) + fwd("x", 9),
			"lab.d/10-b.toml": "[daemon]\ntable = \"b\"\n" + fwd("b", 2),
			"lab.d/20-c.toml": "\n" + fwd("a", 3) + fwd("c", 1),
			"lab.d/30-d.toml": fwd("d", 0) + "bogus = 1\n",
		})
		dir := Dir(main)
		_, err := load(main, rules)
		want := []string{
			dir + `/10-b.toml:1: "daemon" is not allowed here: a file of the config directory holds only [[forward]] entries; set [daemon] in the main file`,
			dir + `/20-c.toml:3: forward "a": name: "a" is already used by the forward at ` + main + `:1; names must be unique`,
			dir + `/20-c.toml:6: forward "c": overlaps forward "a" (` + main + `:1): both match tcp port 1 on any local address`,
			dir + `/30-d.toml:3: forward "d": port: 0 is out of range`,
			dir + `/30-d.toml:5: forward "d": unknown key "bogus"`,
		}
		if err == nil {
			t.Fatal("no error")
		}
		got := strings.Split(err.Error(), "\n")
		if len(got) != len(want) {
			t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), err)
		}
		for i := range want {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Errorf("problem %d:\n%s\nwant prefix\n%s", i, got[i], want[i])
			}
		}
		var p Parser
		if _, perr := p.load(main, rules); perr == nil || perr.Error() != err.Error() {
			t.Errorf("Parser: %v", perr)
		}
	})

	t.Run("files and directory others can write", func(t *testing.T) {
		main, rules := setup(t, map[string]string{"lab.toml": fwd("a", 1), "lab.d/10-b.toml": fwd("b", 2)})
		dir := Dir(main)
		chmod(t, filepath.Join(dir, "10-b.toml"), 0o666)
		if _, err := load(main, rules); err == nil || !strings.Contains(err.Error(), "10-b.toml: writable by group or others (mode 0666)") {
			t.Errorf("writable file: %v", err)
		}
		if err := os.Remove(filepath.Join(dir, "10-b.toml")); err != nil {
			t.Fatal(err)
		}
		chmod(t, dir, 0o777) // even empty: anyone could add a file
		if _, err := load(main, rules); err == nil || err.Error() != dir+": directory writable by group or others (mode 0777); run: chmod go-w "+dir {
			t.Errorf("writable directory: %v", err)
		}
	})

	t.Run("a reload decodes only the files that changed", func(t *testing.T) {
		main, rules := setup(t, map[string]string{"lab.toml": fwd("a", 1), "lab.d/10-b.toml": fwd("b", 2), "lab.d/20-c.toml": fwd("c", 3)})
		var p Parser
		first, err := p.load(main, rules)
		if err != nil {
			t.Fatal(err)
		}
		mkfile(t, Dir(main), "20-c.toml", fwd("c", 4), 0o644)
		second, err := p.load(main, rules)
		if err != nil {
			t.Fatal(err)
		}
		if !shared(first, second, 0, 0) || !shared(first, second, 1, 1) || shared(first, second, 2, 2) || second.Forwards[2].Port.Lo != 4 {
			t.Errorf("reused: %v %v %v, want true true false", shared(first, second, 0, 0), shared(first, second, 1, 1), shared(first, second, 2, 2))
		}
	})
}
