package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// TestKernelReloadTwoNamespaces runs two daemons with one config file in
// two sandboxes, each with its own state dir: `fwdd reload` reaches only
// the daemon of its own namespace, whatever the state file says, and the
// daemon removes its state when it exits.
func TestKernelReloadTwoNamespaces(t *testing.T) {
	topoA := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	topoB := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "fwdd.toml")
	writeConfig(t, cfg, reloadBefore)
	start := func(topo *sandbox.Topology, stateDir string) *daemon {
		p, err := topo.Gateway.Start(ctxT(t), fwddBin, "run", "-c", cfg, "--state-dir", stateDir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = p.Stop() })
		if err := sandbox.Eventually(20*time.Second, func() error {
			if !strings.Contains(p.Output(), "\tready\t") {
				return fmt.Errorf("not ready")
			}
			return nil
		}); err != nil {
			t.Fatalf("fwdd did not start: %v\n%s", err, p.Output())
		}
		return &daemon{t: t, topo: topo, proc: p, cfgPath: cfg, stateDir: stateDir}
	}
	a := start(topoA, filepath.Join(dir, "a"))
	b := start(topoB, filepath.Join(dir, "b"))
	reloads := func(d *daemon) int { return strings.Count(d.proc.Output(), "\treloaded\t") }
	stop := func(d *daemon) {
		if err := d.proc.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-d.proc.Done():
		case <-time.After(20 * time.Second):
			t.Fatalf("fwdd did not stop:\n%s", d.proc.Output())
		}
	}

	// Each reload reaches its own daemon.
	for _, d := range []*daemon{a, b} {
		if out, err := fwdd(t, d.topo, "reload", "-c", cfg, "--state-dir", d.stateDir, "--timeout", "30s"); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
	}
	if reloads(a) != 1 || reloads(b) != 1 {
		t.Fatalf("reloads a=%d b=%d, want 1 each", reloads(a), reloads(b))
	}

	// From A's namespace with B's state dir: refused, B untouched.
	out, err := fwdd(t, topoA, "reload", "-c", cfg, "--state-dir", b.stateDir, "--timeout", "5s")
	if err == nil || !strings.Contains(out, "network namespace") {
		t.Errorf("reload in A with B's state: err %v, want a refusal naming the network namespace:\n%s", err, out)
	}

	// A's state file rewritten to name B's daemon: refused, B untouched.
	bState, err := os.ReadFile(filepath.Join(b.stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	aState := filepath.Join(a.stateDir, "state.json")
	if err := os.WriteFile(aState+".planted", bState, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(aState+".planted", aState); err != nil {
		t.Fatal(err)
	}
	out, err = fwdd(t, topoA, "reload", "-c", cfg, "--state-dir", a.stateDir, "--timeout", "5s")
	if err == nil || !strings.Contains(out, "reload refused") || !strings.Contains(out, "network namespace") {
		t.Errorf("reload with a state naming B's daemon: err %v, want a refusal:\n%s", err, out)
	}
	time.Sleep(200 * time.Millisecond) // a stray SIGHUP would be handled by now
	if reloads(a) != 1 || reloads(b) != 1 {
		t.Errorf("after refused reloads: reloads a=%d b=%d, want 1 each", reloads(a), reloads(b))
	}

	// The daemon's next apply writes its own record again, and on exit
	// it removes only its own record.
	stop(b)
	if _, err := os.Lstat(filepath.Join(b.stateDir, "state.json")); !os.IsNotExist(err) {
		t.Errorf("B's state survived its exit: %v", err)
	}
	stop(a)
	if _, err := os.Lstat(aState); err != nil {
		t.Errorf("A removed a state that was not its own (planted B's): %v", err)
	}
	if fi, err := os.Stat(a.stateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, mode %v, want 0700", err, fi.Mode().Perm())
	}
}
