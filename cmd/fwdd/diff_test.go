package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
)

const diffConfig = "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2:8080\"\n"

// fakeDaemon stands in for `fwdd run -c PATH` (args): it records its state
// in dir as the daemon does, says "ready" and runs until stdin closes.
func fakeDaemon(dir string, args []string) int {
	if len(args) != 3 || args[0] != "run" || args[1] != "-c" {
		fmt.Fprintln(os.Stderr, "fake daemon: want run -c PATH, got", args)
		return 2
	}
	st := fwdaemon.NewState(args[2])
	st.Applies, st.OK = 1, true
	if err := fwdaemon.WriteState(dir, st); err != nil {
		fmt.Fprintln(os.Stderr, "fake daemon:", err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// stateDir is a daemon's state directory after it applied diffConfig, as
// the daemon leaves it when it stops: applied.toml, no state.json.
func stateDir(t *testing.T) (dir, cfgPath string) {
	t.Helper()
	cfgPath = writeFile(t, diffConfig)
	dir = filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fwdaemon.AppliedPath(dir), []byte(diffConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, cfgPath
}

// diffInNetNS runs `fwdd diff` (this binary) in a network namespace of its
// own, so that whatever it reads of the kernel is not the host's.
func diffInNetNS(t *testing.T, cfgPath, dir string) (int, string) {
	t.Helper()
	return fwddInNetNS(t, "diff", "-c", cfgPath, "--state-dir", dir)
}

// fwddInNetNS runs this binary as fwdd with args in a fresh network
// namespace and returns its exit status and output.
func fwddInNetNS(t *testing.T, args ...string) (int, string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", append([]string{"--net", exe}, args...)...)
	cmd.Env = append(os.Environ(), "FWDD_TEST_AS_FWDD=1")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("unshare: %v\n%s", err, out)
	}
	return 0, string(out)
}

// After the daemon stopped, its copy of the config in force stays in the
// state directory: diff must say fwdd is not running (exit 2), not compare
// against it. So too when the state file names a process that has exited.
func TestDiffNotRunning(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the config must be owned by root, and a network namespace needs root; run as root")
	}
	dir, cfgPath := stateDir(t)
	if code, out := diffInNetNS(t, cfgPath, dir); code != 2 || !strings.Contains(out, "fwdd is not running: no daemon state in "+dir) {
		t.Errorf("stopped daemon (no state.json): exit %d, want 2 saying fwdd is not running\n%s", code, out)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	st := fwdaemon.NewState(cfgPath)
	st.PID = dead.Process.Pid
	if err := fwdaemon.WriteState(dir, st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("fwdd is not running: the state in %s names pid %d, which has exited", dir, st.PID)
	if code, out := diffInNetNS(t, cfgPath, dir); code != 2 || !strings.Contains(out, want) {
		t.Errorf("killed daemon (state.json of an exited pid): exit %d, want 2 with %q\n%s", code, want, out)
	}
}

// While the daemon the state names runs, the config in force is its copy;
// once it is gone, there is none.
func TestInForceOnlyWhileTheDaemonRuns(t *testing.T) {
	dir, cfgPath := stateDir(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	d := exec.Command(exe, "run", "-c", cfgPath)
	d.Env = append(os.Environ(), "FWDD_TEST_FAKE_DAEMON="+dir)
	d.Stderr = os.Stderr
	stdin, err := d.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := d.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); _ = d.Wait() })
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("fake daemon: %q %v", line, err)
	}
	running, _, err := inForce(dir)
	if err != nil {
		t.Fatalf("with the daemon running: %v", err)
	}
	if len(running.Forwards) != 1 || running.Forwards[0].Name != "web" {
		t.Errorf("config in force: %+v", running.Forwards)
	}
	stdin.Close()
	if err := d.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := inForce(dir); err == nil || !strings.Contains(err.Error(), "fwdd is not running") {
		t.Errorf("after the daemon exited: %v, want fwdd is not running", err)
	}
}
