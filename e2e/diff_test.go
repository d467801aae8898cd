package e2e

import (
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/internal/sandbox"
)

func diffExit(t *testing.T, topo *sandbox.Topology, d *daemon) (string, int) {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), fwddBin, "diff", "-c", d.cfgPath, "--state-dir", d.stateDir)
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	case err != nil:
		t.Fatalf("fwdd diff: %v\n%s", err, out)
	}
	return string(out), 0
}

// TestKernelDiff: fwdd diff against the running daemon: nothing, then a
// file with a forward added, one removed and one changed; after the
// reload nothing again; a broken file is exit 2.
func TestKernelDiff(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	d := startFwdd(t, topo, reloadBefore)
	if out, code := diffExit(t, topo, d); code != 0 || !strings.Contains(out, "no difference") {
		t.Fatalf("unchanged file: exit %d\n%s", code, out)
	}
	writeConfig(t, d.cfgPath, reloadAfter)
	out, code := diffExit(t, topo, d)
	if code != 1 {
		t.Errorf("changed file: exit %d, want 1\n%s", code, out)
	}
	t.Logf("fwdd diff:\n%s", out)
	predicted := regexp.MustCompile(`the batch a reload would send, (\d+) messages`).FindStringSubmatch(out)
	for _, want := range []string{
		"~ forward moves\n    to: \"10.22.0.2:8081\" -> \"10.22.0.2:8082\"\n",
		"+ forward new\n",
		"    port = \"83\"\n",
		"- forward goes\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("diff lacks %q:\n%s", want, out)
		}
	}
	// The batch, in nft syntax: only the changed forwards' elements.
	if !strings.Contains(out, "the batch a reload would send") || !strings.Contains(out, "add element inet fwdd") ||
		!strings.Contains(out, "delete element inet fwdd") || strings.Contains(out, "delete table") {
		t.Errorf("no differences-only batch:\n%s", out)
	}
	if strings.Contains(out, "forward keep") {
		t.Errorf("unchanged forward listed:\n%s", out)
	}
	if out, err := d.reload(reloadAfter); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	// The batch shown is the batch the reload sent.
	if predicted == nil || !strings.Contains(d.proc.Output(), `"fullReplace": false, "recovered": false, "messages": `+predicted[1]+`,`) {
		t.Errorf("diff predicted %v messages; the reload logged:\n%s", predicted, d.proc.Output())
	}
	if out, code := diffExit(t, topo, d); code != 0 {
		t.Errorf("after the reload: exit %d\n%s", code, out)
	}
	writeConfig(t, d.cfgPath, "[[forward]]\nname = \"x\"\n")
	if out, code := diffExit(t, topo, d); code != 2 || !strings.Contains(out, "fwdd.toml:") {
		t.Errorf("broken file: exit %d, want 2 with the file's problems\n%s", code, out)
	}
}
