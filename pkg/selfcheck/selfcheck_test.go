package selfcheck

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestAlive(t *testing.T) {
	proc := t.TempDir()
	pid := os.Getpid() // a live process; its comm is read from the fake /proc
	dir := filepath.Join(proc, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(comm string) {
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("fwdd")
	if err := alive(proc, pid); err != nil {
		t.Errorf("live fwdd: %v", err)
	}
	write("sshd")
	if err := alive(proc, pid); err == nil || !strings.Contains(err.Error(), "not fwdd") {
		t.Errorf("a reused pid: %v, want an error saying it is not fwdd", err)
	}
	if err := alive(proc, 0); err == nil {
		t.Error("pid 0 accepted")
	}
	if err := alive(t.TempDir(), pid); err == nil {
		t.Error("a pid without /proc entry accepted")
	}
}

func TestConfigInvalid(t *testing.T) {
	res := Check(Options{ConfigPath: filepath.Join(t.TempDir(), "missing.toml")})
	if res.Code != ConfigInvalid {
		t.Errorf("missing config: %+v, want code %d", res, ConfigInvalid)
	}
}
