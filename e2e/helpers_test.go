// Package e2e runs fwdd for real: each test builds network namespaces
// (client, gateway, backend, ...) with internal/sandbox, runs the fwdd
// binary in the gateway namespace and sends real TCP and UDP traffic
// through it. Kernel tests: they need root and run in CI.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

var fwddBin string

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "fwdd-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fwddBin = filepath.Join(dir, "fwdd")
		out, err := exec.Command("go", "build", "-race", "-o", fwddBin, "../cmd/fwdd").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build fwdd: %v\n%s", err, out)
			os.Exit(1)
		}
		code := m.Run()
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(m.Run())
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// daemon is one fwdd process running in the gateway namespace.
type daemon struct {
	t        *testing.T
	topo     *sandbox.Topology
	proc     *sandbox.Proc
	cfgPath  string
	stateDir string
}

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
}

// fwdd runs `fwdd <args>` in the gateway namespace and returns its output.
func fwdd(t *testing.T, topo *sandbox.Topology, args ...string) (string, error) {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), append([]string{fwddBin}, args...)...)
	return string(out), err
}

// startFwdd writes the config and starts the daemon; it returns once the
// daemon has applied its table (or fails the test).
func startFwdd(t *testing.T, topo *sandbox.Topology, cfg string) *daemon {
	t.Helper()
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, topo: topo, cfgPath: filepath.Join(dir, "fwdd.toml"), stateDir: filepath.Join(dir, "state")}
	writeConfig(t, d.cfgPath, cfg)
	p, err := topo.Gateway.Start(ctxT(t), fwddBin, "run", "-c", d.cfgPath, "--state-dir", d.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	d.proc = p
	t.Cleanup(func() { _ = p.Stop() })
	if err := sandbox.Eventually(20*time.Second, func() error {
		select {
		case <-p.Done():
			return fmt.Errorf("fwdd exited: %s", p.Output())
		default:
		}
		// "ready" follows the conntrack watcher's start: connections made
		// from then on are counted and logged.
		if !strings.Contains(p.Output(), "\tready\t") {
			return fmt.Errorf("not ready yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("fwdd did not start: %v\n%s", err, p.Output())
	}
	return d
}

// reload rewrites the config and runs `fwdd reload`, which returns once the
// daemon applied it (or failed to).
func (d *daemon) reload(cfg string) (string, error) {
	d.t.Helper()
	writeConfig(d.t, d.cfgPath, cfg)
	return fwdd(d.t, d.topo, "reload", "-c", d.cfgPath, "--state-dir", d.stateDir, "--timeout", "30s")
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	if err := d.proc.Signal(syscall.SIGTERM); err != nil {
		d.t.Fatal(err)
	}
	select {
	case <-d.proc.Done():
	case <-time.After(20 * time.Second):
		d.t.Fatalf("fwdd did not stop:\n%s", d.proc.Output())
	}
	if err := d.proc.Wait(); err != nil {
		d.t.Fatalf("fwdd exited with %v:\n%s", err, d.proc.Output())
	}
}

// nftList returns `nft list <what>` in the gateway namespace ("" if absent).
func nftList(t *testing.T, topo *sandbox.Topology, what ...string) string {
	t.Helper()
	out, err := topo.Gateway.Run(ctxT(t), append([]string{"nft", "-a", "list"}, what...)...)
	if err != nil {
		return ""
	}
	return string(out)
}

func nftRun(t *testing.T, topo *sandbox.Topology, script string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.nft")
	if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := topo.Gateway.Run(ctxT(t), "nft", "-f", path); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
}

// greet dials addr from host and returns the backend's greeting: "<server> <remote>".
func greet(t *testing.T, h *sandbox.Host, addr string, opts ...sandbox.DialOption) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	c, g, err := h.DialTCP(ctx, addr, opts...)
	if err != nil {
		return "", err
	}
	c.Close()
	return g, nil
}

func mustGreet(t *testing.T, h *sandbox.Host, addr, want string) {
	t.Helper()
	g, err := greet(t, h, addr)
	if err != nil {
		t.Fatalf("%s -> %s: %v", h.Name, addr, err)
	}
	if !strings.HasPrefix(g, want) {
		t.Fatalf("%s -> %s: greeting %q, want prefix %q", h.Name, addr, g, want)
	}
}

func mustNotReach(t *testing.T, h *sandbox.Host, addr string) {
	t.Helper()
	if g, err := greet(t, h, addr); err == nil {
		t.Fatalf("%s -> %s: reached %q, want no forward", h.Name, addr, g)
	}
}

func mustAsk(t *testing.T, h *sandbox.Host, addr, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	r, err := h.AskUDP(ctx, addr, []byte("hi"))
	if err != nil {
		t.Fatalf("udp %s -> %s: %v", h.Name, addr, err)
	}
	if !strings.HasPrefix(r, want) {
		t.Fatalf("udp %s -> %s: reply %q, want prefix %q", h.Name, addr, r, want)
	}
}

func listenTCP(t *testing.T, h *sandbox.Host, addr string) *sandbox.TCPServer {
	t.Helper()
	s, err := h.ListenTCP(addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func listenUDP(t *testing.T, h *sandbox.Host, addr string) *sandbox.UDPServer {
	t.Helper()
	s, err := h.ListenUDP(addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
