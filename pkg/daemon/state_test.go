package daemon

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A test binary started with FWDD_STATE_HELPER=<state dir> and the
// argument "run" stands in for a daemon: it records its state for the
// config in FWDD_STATE_CONFIG and waits to be killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("FWDD_STATE_HELPER"); dir != "" {
		if err := WriteState(dir, NewState(os.Getenv("FWDD_STATE_CONFIG"))); err != nil {
			os.Exit(3)
		}
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// fakeDaemon starts a helper "daemon" and waits for its state file.
func fakeDaemon(t *testing.T, dir, cfg string, args ...string) *exec.Cmd {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), "FWDD_STATE_HELPER="+dir, "FWDD_STATE_CONFIG="+cfg)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, err := ReadState(dir); err == nil && st.PID == cmd.Process.Pid {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatal("helper daemon wrote no state")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	want := NewState("fwdd.toml")
	want.Applies, want.Error, want.Forwards = 3, "bad", 7
	if err := WriteState(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("state (-want +got):\n%s", d)
	}
	if !filepath.IsAbs(got.Config) || got.StartTime == 0 || got.NetNS == 0 || got.PID != os.Getpid() {
		t.Errorf("identity not recorded: %+v", got)
	}
	for path, mode := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, stateFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), mode)
		}
	}
	// Another process's record is not removed; our own is.
	other := want
	other.PID++
	if err := RemoveState(dir, other); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadState(dir); err != nil {
		t.Fatalf("another daemon's RemoveState removed our state: %v", err)
	}
	if err := RemoveState(dir, want); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(dir, stateFile)); !os.IsNotExist(err) {
		t.Errorf("state not removed: %v", err)
	}
}

func TestWriteStateTightensDirAndFollowsNoSymlink(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{stateFile, stateFile + ".tmp"} {
		if err := os.Symlink(victim, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteState(dir, NewState("x.toml")); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "keep" {
		t.Errorf("WriteState wrote through a symlink: victim now %q", b)
	}
	fi, err := os.Lstat(filepath.Join(dir, stateFile))
	if err != nil || !fi.Mode().IsRegular() {
		t.Errorf("state.json is not a regular file: %v %v", fi, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %04o, want 0700", fi.Mode().Perm())
	}

	// A state dir that is itself a symlink is refused.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteState(link, NewState("x.toml")); err == nil {
		t.Error("WriteState followed a symlinked state dir")
	}
}

func TestFindDaemon(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "fwdd.toml")
	dir := filepath.Join(t.TempDir(), "state")
	d := fakeDaemon(t, dir, cfg, "run")
	st, err := ReadState(dir)
	if err != nil {
		t.Fatal(err)
	}

	r, err := FindDaemon(dir, cfg)
	if err != nil {
		t.Fatalf("FindDaemon of a good daemon: %v", err)
	}
	if r.PID != d.Process.Pid {
		t.Errorf("pid %d, want %d", r.PID, d.Process.Pid)
	}
	if err := r.Signal(0); err != nil {
		t.Error(err)
	}
	r.Close()

	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() })
	sleepStart, err := procStartTime(itoa(sleeper.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	notRun := fakeDaemon(t, filepath.Join(t.TempDir(), "state"), cfg, "status")
	exited := exec.Command("true")
	if err := exited.Run(); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		edit    func(*State)
		config  string
		dirMode os.FileMode
		symlink bool
		owner   int
		want    string
	}{
		{name: "other config", config: cfg + ".other", want: "it serves " + cfg},
		{name: "pid reused", edit: func(s *State) { s.StartTime++ }, want: "the PID was reused"},
		{name: "not fwdd", edit: func(s *State) { s.PID, s.StartTime = sleeper.Process.Pid, sleepStart }, want: "it runs /"},
		{name: "not fwdd run", edit: func(s *State) { s.PID = notRun.Process.Pid; s.StartTime, _ = procStartTime(itoa(s.PID)) }, want: "not running `fwdd run`"},
		{name: "other netns recorded", edit: func(s *State) { s.NetNS++ }, want: "network namespace"},
		{name: "exited", edit: func(s *State) { s.PID = exited.Process.Pid }, want: "has exited"},
		{name: "no identity", edit: func(s *State) { s.StartTime = 0 }, want: "lacks the daemon's identity"},
		{name: "dir writable by others", dirMode: 0o777, want: "writable by group or others"},
		{name: "symlink", symlink: true, want: "is a symlink"},
		{name: "file of another user", owner: 12345, want: "the state file is owned by uid 12345"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			s := st
			if tt.edit != nil {
				tt.edit(&s)
			}
			writeRaw(t, dir, s)
			if tt.dirMode != 0 {
				if err := os.Chmod(dir, tt.dirMode); err != nil {
					t.Fatal(err)
				}
			}
			if tt.symlink {
				real := filepath.Join(dir, "real.json")
				if err := os.Rename(filepath.Join(dir, stateFile), real); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(real, filepath.Join(dir, stateFile)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.owner != 0 {
				if os.Geteuid() != 0 {
					t.Skip("chown needs root")
				}
				if err := os.Chown(filepath.Join(dir, stateFile), tt.owner, -1); err != nil {
					t.Fatal(err)
				}
			}
			config := cfg
			if tt.config != "" {
				config = tt.config
			}
			r, err := FindDaemon(dir, config)
			if err == nil {
				r.Close()
				t.Fatalf("FindDaemon accepted %+v", s)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not say %q", err, tt.want)
			}
		})
	}

	// Killed: the record of a dead daemon is refused.
	_ = d.Process.Kill()
	_ = d.Wait()
	if r, err := FindDaemon(dir, cfg); err == nil {
		r.Close()
		t.Error("FindDaemon accepted a killed daemon")
	}
}

// writeRaw writes a state file as it is, as another program could.
func writeRaw(t *testing.T, dir string, st State) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// fwdd reload takes only the result of a reload that read the config after
// its signal: not that of one already running (another fwdd reload's).
func TestReloadedWantsAReloadAfterTheSignal(t *testing.T) {
	r := &Running{State: State{Applies: 4, Loaded: 100}}
	for _, c := range []struct {
		name string
		st   State
		want bool
	}{
		{"nothing new", State{Applies: 4, Loaded: 100}, false},
		{"a reload that read the config before the signal", State{Applies: 5, Loaded: 150}, false},
		{"a repair since", State{Applies: 6, Loaded: 150}, false},
		{"a reload after the signal", State{Applies: 6, Loaded: 200}, true},
		{"a daemon that does not say", State{Applies: 5}, true},
	} {
		if got := r.reloaded(c.st, 200); got != c.want {
			t.Errorf("%s: reloaded = %v, want %v", c.name, got, c.want)
		}
	}
}
