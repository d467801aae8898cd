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
	if diff := cmp.Diff([]string{"web", "dns", "game", "web6", "lab-ssh"}, names); diff != "" {
		t.Errorf("forward names (-want +got):\n%s", diff)
	}
	web := c.ForwardByName("web")
	if web == nil || web.To != netip.MustParseAddr("192.168.1.50") || web.ToPort != (PortRange{8080, 8080}) || web.Port != (PortRange{80, 80}) {
		t.Errorf("web = %+v", web)
	}
	if dns := c.ForwardByName("dns"); dns == nil || len(dns.Protos) != 2 {
		t.Errorf("dns = %+v", dns)
	}
	if game := c.ForwardByName("game"); game == nil || game.TargetPort(8005) != 9005 {
		t.Errorf("game = %+v", game)
	}
	if web6 := c.ForwardByName("web6"); web6 == nil || !web6.IPv6() || web6.Local() {
		t.Errorf("web6 = %+v", web6)
	}
	ssh := c.ForwardByName("lab-ssh")
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
func testRules(path string) fileRules {
	return fileRules{uid: uint32(os.Getuid()), top: filepath.Dir(path)}
}

// loadWithOwner is Load with the files owned by uid.
func loadWithOwner(path string, uid uint32) (*Config, error) {
	rules := testRules(path)
	rules.uid = uid
	srcs, err := readConfig(path, rules)
	if err != nil {
		return nil, err
	}
	return parseFiles(srcs)
}

func TestLoad(t *testing.T) {
	me := uint32(os.Getuid())
	tests := []struct {
		name    string
		mode    os.FileMode
		owner   uint32
		wantErr string // "" = success
	}{
		{name: "ok", mode: 0o644, owner: me},
		{name: "owner read only", mode: 0o400, owner: me},
		{name: "group writable", mode: 0o664, owner: me, wantErr: "writable by group or others (mode 0664); run: chmod go-w "},
		{name: "world writable", mode: 0o602, owner: me, wantErr: "writable by group or others (mode 0602)"},
		{name: "other owner", mode: 0o644, owner: me + 1, wantErr: "owned by uid " + itoa(me) + ", not "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.mode)
			c, err := loadWithOwner(path, tt.owner)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if c.Path != path || c.Daemon.Table != "t" {
					t.Errorf("Load = %+v", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.HasPrefix(err.Error(), path+": ") {
				t.Fatalf("Load error = %v, want %s: ...%q", err, path, tt.wantErr)
			}
		})
	}
}

func TestLoadMessages(t *testing.T) {
	path := writeConfig(t, 0o664)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// As root would see it: the fixes are spelled out.
	err = checkFileSafe("/etc/fwdd/fwdd.toml", fi, uint32(os.Getuid()))
	if want := "/etc/fwdd/fwdd.toml: writable by group or others (mode 0664); run: chmod go-w /etc/fwdd/fwdd.toml"; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}

	owner := os.Getuid()
	if owner == 0 {
		// Running as root: give the file away to see the message.
		owner = 1000
		if err := os.Chown(path, owner, -1); err != nil {
			t.Fatal(err)
		}
		if fi, err = os.Stat(path); err != nil {
			t.Fatal(err)
		}
	}
	err = checkFileSafe("/etc/fwdd/fwdd.toml", fi, 0)
	want := "/etc/fwdd/fwdd.toml: owned by uid " + strconv.Itoa(owner) + ", not root; run: chown root /etc/fwdd/fwdd.toml"
	if err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestLoadRefusesBeforeParsing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fwdd.toml")
	if err := os.WriteFile(path, []byte("not toml ["), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	_, err := loadWithOwner(path, uint32(os.Getuid()))
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("got %v, want the permission error, not a parse error", err)
	}
}

func TestLoadNotRegular(t *testing.T) {
	dir := t.TempDir()
	_, err := loadWithOwner(dir, uint32(os.Getuid()))
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("got %v, want not a regular file", err)
	}
	_, err = Load(filepath.Join(t.TempDir(), "missing.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want a not-exist error", err)
	}
}

func itoa(u uint32) string { return strconv.Itoa(int(u)) }

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

// TestLoadDirectories checks the directories that contain the file, as
// sshd's StrictModes does.
func TestLoadDirectories(t *testing.T) {
	const text = "[daemon]\ntable = \"t\"\n"
	top := t.TempDir()
	rules := fileRules{uid: uint32(os.Getuid()), top: top}
	load := func(path string) error {
		_, err := readConfig(path, rules)
		return err
	}

	// Group-readable for the fwdd user's group: fine.
	ok := mkfile(t, top, "ok/fwdd.toml", text, 0o640)
	chmod(t, filepath.Dir(ok), 0o750)
	if err := load(ok); err != nil {
		t.Errorf("0640 file in a 0750 directory: %v", err)
	}

	open := mkfile(t, top, "open/fwdd.toml", text, 0o644)
	chmod(t, filepath.Dir(open), 0o777)
	want := filepath.Dir(open) + ": directory writable by group or others (mode 0777); run: chmod go-w " + filepath.Dir(open) + " (it contains " + open + ")"
	if err := load(open); err == nil || err.Error() != want {
		t.Errorf("0777 directory: %v, want %s", err, want)
	}
	chmod(t, filepath.Dir(open), 0o777|os.ModeSticky)
	if err := load(open); err != nil {
		t.Errorf("sticky directory (like /tmp): %v", err)
	}

	deep := mkfile(t, top, "up/a/b/fwdd.toml", text, 0o644)
	chmod(t, filepath.Join(top, "up"), 0o775)
	if err := load(deep); err == nil || !strings.HasPrefix(err.Error(), filepath.Join(top, "up")+": directory writable by group or others (mode 0775)") {
		t.Errorf("group-writable ancestor: %v", err)
	}

	target := mkfile(t, top, "unsafe/real.toml", text, 0o644)
	chmod(t, filepath.Dir(target), 0o777)
	link := filepath.Join(top, "safe", "fwdd.toml")
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := load(link); err == nil || !strings.HasPrefix(err.Error(), filepath.Dir(target)+": directory writable by group or others") {
		t.Errorf("symlink into a writable directory: %v", err)
	}

	other := fileRules{uid: rules.uid + 1, top: top}
	err := checkDirs(ok, other)
	want = filepath.Dir(ok) + ": directory owned by uid " + itoa(rules.uid) + ", not uid " + itoa(other.uid) + "; run: chown " + itoa(other.uid) + " " + filepath.Dir(ok)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("directory of another owner: %v, want %s", err, want)
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
	setup := func(t *testing.T, files map[string]string) (string, fileRules) {
		top := t.TempDir()
		for rel, text := range files {
			mkfile(t, top, rel, text, 0o644)
		}
		main := filepath.Join(top, "lab.toml")
		return main, fileRules{uid: uint32(os.Getuid()), top: top}
	}
	load := func(main string, rules fileRules) (*Config, error) {
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
