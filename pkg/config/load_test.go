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
