package e2e

import (
	"errors"
	"os/exec"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// healthCode runs `fwdd health` in h and returns its exit code and output.
func healthCode(t *testing.T, h *sandbox.Host, cfgPath, stateDir string) (int, string) {
	t.Helper()
	out, err := h.Run(ctxT(t), fwddBin, "health", "-c", cfgPath, "--state-dir", stateDir)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("fwdd health: %v", err)
	return -1, ""
}

// fwdd health, the track_script of an HA pair: each failure has its code.
func TestKernelHealth(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	cfg := "[daemon]\non_stop = \"keep\"\n" + reloadBefore
	d := startFwdd(t, topo, cfg)
	check := func(want int, wantOut string) {
		t.Helper()
		code, out := healthCode(t, topo.Gateway, d.cfgPath, d.stateDir)
		if code != want || !strings.Contains(out, wantOut) {
			t.Errorf("fwdd health: exit %d, want %d (%q):\n%s", code, want, wantOut, out)
		}
	}
	check(0, "ok: table inet fwdd matches")

	nftRun(t, topo, "add rule inet fwdd dispatch tcp dport 9 accept\n")
	check(4, "chain dispatch has")
	if out, err := d.reload(cfg); err != nil { // a reload replaces an edited table
		t.Fatalf("reload: %v\n%s", err, out)
	}
	check(0, "ok")

	writeConfig(t, d.cfgPath, cfg+"\n[[forward]]\nname = \"bad\"\n")
	check(1, "bad")
	writeConfig(t, d.cfgPath, cfg+"\n[[forward]]\nname = \"extra\"\nport = 90\nto = \"10.22.0.2\"\n")
	check(4, "differs")
	writeConfig(t, d.cfgPath, cfg)
	check(0, "ok")

	d.stop() // on_stop = "keep": the table stays, the daemon is gone
	check(5, "not running")
	nftRun(t, topo, "delete table inet fwdd\n")
	check(3, "not in the kernel")
}
