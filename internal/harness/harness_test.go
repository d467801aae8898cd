package harness_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/harness"
	"github.com/fwdd/fwdd/internal/sandbox"
)

func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }

const config = `
[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"
`

func greet(t *testing.T, topo *sandbox.Topology, addr string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, _, err := topo.Client.DialTCP(ctx, addr)
	if err == nil {
		c.Close()
	}
	return err
}

// The daemon's life through the harness: ready, reloads by signal and by
// command (good and refused), SIGKILL and restart, stop; each step's
// sd_notify messages come from the daemon's own PID.
func TestKernelDaemon(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	if _, err := topo.Backend.ListenTCP("10.22.0.2:8080"); err != nil {
		t.Fatal(err)
	}
	d := harness.New(t, topo.Gateway, config)

	fi, err := os.Stat(d.ConfigPath)
	if err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("config file %v, %v; want mode 0640", fi, err)
	}
	notes := d.Notifications()
	if len(notes) == 0 || notes[len(notes)-1].Vars["READY"] != "1" || notes[len(notes)-1].PID != d.PID() {
		t.Fatalf("notifications %+v, want READY=1 from pid %d", notes, d.PID())
	}
	fwd, err := d.WaitLog(0, "forwarding", time.Second)
	if err != nil || fwd.Level != "INFO" || fwd.Str("table") != "inet fwdd" || fwd.PID != d.PID() {
		t.Errorf("forwarding line %+v, %v", fwd, err)
	}
	if n, ok := fwd.Int("numForwards"); !ok || n != 1 {
		t.Errorf("forwarding line: numForwards %v %v", n, ok)
	}
	if err := greet(t, topo, "10.11.0.1:80"); err != nil {
		t.Fatal(err)
	}

	t.Run("reload by signal", func(t *testing.T) {
		if err := d.WriteConfig(config + "\n[[forward]]\nname = \"web2\"\nport = 81\nto = \"10.22.0.2:8080\"\n"); err != nil {
			t.Fatal(err)
		}
		l, err := d.Reload()
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Strings("added"); len(got) != 1 || got[0] != "web2" {
			t.Errorf("reloaded line: added %v", got)
		}
		if err := greet(t, topo, "10.11.0.1:81"); err != nil {
			t.Error(err)
		}
	})
	t.Run("refused reload by signal", func(t *testing.T) {
		if err := d.WriteConfig(config + "\n[[forward]]\nname = \"bad\"\nport = 70000\nto = \"10.22.0.2\"\n"); err != nil {
			t.Fatal(err)
		}
		l, err := d.Reload()
		if err == nil || l.Level != "ERROR" || !strings.Contains(err.Error(), "port") {
			t.Fatalf("Reload of a broken file = %+v, %v; want the refusal", l, err)
		}
		if !d.Running() {
			t.Fatal("daemon died on a refused reload")
		}
	})
	t.Run("reload command", func(t *testing.T) {
		out, err := d.ReloadCommand()
		if err == nil || !strings.Contains(out, "port") {
			t.Fatalf("fwdd reload of a broken file: %v\n%s", err, out)
		}
		if err := d.WriteConfig(config); err != nil {
			t.Fatal(err)
		}
		if out, err := d.ReloadCommand(); err != nil || !strings.Contains(out, "reloaded") {
			t.Fatalf("fwdd reload: %v\n%s", err, out)
		}
		if err := greet(t, topo, "10.11.0.1:81"); err == nil {
			t.Error("removed forward still works")
		}
	})
	t.Run("kill and restart", func(t *testing.T) {
		old := d.PID()
		if err := d.Kill(); err != nil {
			t.Fatal(err)
		}
		if d.Running() {
			t.Fatal("running after Kill")
		}
		if err := d.Restart(); err != nil {
			t.Fatal(err)
		}
		if d.PID() == old {
			t.Fatal("same pid after restart")
		}
		if err := greet(t, topo, "10.11.0.1:80"); err != nil {
			t.Error(err)
		}
	})
	t.Run("stop", func(t *testing.T) {
		if err := d.Stop(); err != nil {
			t.Fatal(err)
		}
		notes := d.Notifications()
		if last := notes[len(notes)-1]; last.Vars["STOPPING"] != "1" {
			t.Errorf("last notification %+v, want STOPPING=1", last)
		}
		if err := greet(t, topo, "10.11.0.1:80"); err == nil {
			t.Error("forward works after stop with on_stop = flush")
		}
	})
}

// A start that fails: the error carries the daemon's reason, and the log
// stays readable.
func TestKernelStartFails(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	d := harness.New(t, topo.Gateway, "[[forward]]\nname = \"x\"\n", harness.Options{NoWait: true})
	if err := d.Wait(); err == nil {
		t.Fatal("fwdd started with a forward without port and to")
	}
	if !strings.Contains(d.Output(), "port") {
		t.Errorf("output does not say what is wrong:\n%s", d.Output())
	}
}
