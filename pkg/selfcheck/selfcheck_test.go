package selfcheck

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/daemon"
)

func TestAlive(t *testing.T) {
	proc := t.TempDir()
	pid := os.Getpid() // a live process; its comm is read from the fake /proc
	dir := filepath.Join(proc, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(file, text string) {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("comm", "fwdd")
	write("stat", strconv.Itoa(pid)+" (fwdd) S 1 2 3")
	if err := alive(proc, pid); err != nil {
		t.Errorf("live fwdd: %v", err)
	}
	write("stat", strconv.Itoa(pid)+" (fwdd) Z 1 2 3")
	if err := alive(proc, pid); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("a zombie: %v, want an error saying it exited", err)
	}
	write("comm", "sshd")
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

func TestSample(t *testing.T) {
	fwds := make([]config.Forward, 50)
	for i := range fwds {
		fwds[i].Name = "f" + strconv.Itoa(i)
	}
	if got := sample(fwds[:10], 20); len(got) != 10 || got[0] != "f0" || got[9] != "f9" {
		t.Errorf("10 forwards, at most 20: %v, want all of them in order", got)
	}
	seen := map[string]bool{}
	for range 20 {
		got := sample(fwds, 7)
		distinct := map[string]bool{}
		for _, n := range got {
			distinct[n] = true
			seen[n] = true
		}
		if len(got) != 7 || len(distinct) != 7 {
			t.Fatalf("50 forwards, at most 7: %v, want 7 distinct names", got)
		}
	}
	if len(seen) < 25 {
		t.Errorf("20 samples of 7 out of 50 saw only %d forwards: not random", len(seen))
	}
}

func TestInForce(t *testing.T) {
	const path = "fwdd.toml"
	parse := func(text string) *config.Config {
		cfg, err := config.Parse(path, []byte(text))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	web := parse("[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n")
	invalid := errors.New("fwdd.toml:1: forward #1: port: required")
	dir := t.TempDir()
	check := func(step string, file *config.Config, fileErr error, wantPath, wantNote string) {
		t.Helper()
		cfg, note, err := inForce(path, file, fileErr, dir)
		switch {
		case err != nil:
			t.Errorf("%s: %v", step, err)
		case cfg.Path != wantPath || len(cfg.Forwards) != 1 || !strings.Contains(note, wantNote) || (wantNote == "") != (note == ""):
			t.Errorf("%s: the config of %s with %d forwards, note %q; want %s's, note %q", step, cfg.Path, len(cfg.Forwards), note, wantPath, wantNote)
		}
	}
	check("no record", web, nil, path, "")
	if _, _, err := inForce(path, nil, invalid, dir); err != invalid {
		t.Errorf("no record, invalid file: %v, want the file's error", err)
	}

	var record strings.Builder
	if err := web.WriteTOML(&record); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(daemon.AppliedPath(dir), []byte(record.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	// The same config written another way is the config in force.
	check("the file in force", parse("[[forward]]\nport = 80\nto = \"10.0.0.2:8080\"\nname = \"web\"\nproto = \"tcp\"\n"), nil, path, "")
	// An edit not reloaded yet, or a bad one: the node is checked against
	// what it forwards, the record, and the note says why.
	check("an edited file", parse("[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8081\"\n"), nil,
		daemon.AppliedPath(dir), "fwdd.toml is not the config in force: reload it")
	check("an invalid file", nil, invalid, daemon.AppliedPath(dir), "fwdd.toml is not valid")
}
