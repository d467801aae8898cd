// Package e2e runs fwdd for real: each test builds network namespaces
// (client, gateway, backend, ...) with internal/sandbox, runs the fwdd
// binary in the gateway namespace with internal/harness and sends real TCP
// and UDP traffic through it. Kernel tests: they need root and run in CI.
package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/harness"
	"github.com/fwdd/fwdd/internal/sandbox"
)

// fwddBin is the fwdd binary under test, built once by the harness (not
// for -short runs, which have no kernel tests; harness.Binary builds it
// then on first use).
var fwddBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Geteuid() == 0 && !testing.Short() {
		var err error
		if fwddBin, err = harness.Binary(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(harness.Main(m))
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func writeConfig(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o640); err != nil {
		t.Fatal(err)
	}
}

// fwdd runs `fwdd <args>` in the gateway namespace and returns its output.
func fwdd(t *testing.T, topo *sandbox.Topology, args ...string) (string, error) {
	t.Helper()
	bin, err := harness.Binary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := topo.Gateway.Run(ctxT(t), append([]string{bin}, args...)...)
	return string(out), err
}

// daemon is fwdd in the gateway namespace, run by internal/harness (which
// checks READY=1, RELOADING=1 and STOPPING=1 on its NOTIFY_SOCKET). The
// short names keep tests terse.
type daemon struct {
	*harness.Daemon
	t        *testing.T
	topo     *sandbox.Topology
	proc     *sandbox.Proc // the first process; after Restart, d.Proc()
	cfgPath  string
	stateDir string
}

// startFwdd starts the daemon in the gateway with cfg; it returns once the
// daemon is ready, and stops it in t.Cleanup.
func startFwdd(t *testing.T, topo *sandbox.Topology, cfg string) *daemon {
	t.Helper()
	h := harness.New(t, topo.Gateway, cfg, harness.Options{Bin: fwddBin})
	return &daemon{Daemon: h, t: t, topo: topo, proc: h.Proc(), cfgPath: h.ConfigPath, stateDir: h.StateDir}
}

// reload rewrites the config and runs `fwdd reload`, which returns once the
// daemon applied it (or failed to).
func (d *daemon) reload(cfg string) (string, error) {
	d.t.Helper()
	if err := d.WriteConfig(cfg); err != nil {
		d.t.Fatal(err)
	}
	return d.ReloadCommand()
}

// stop sends SIGTERM and fails the test unless the daemon stops cleanly.
func (d *daemon) stop() {
	d.t.Helper()
	stop := d.proc.Stop // a daemon a test started itself, without the harness
	if d.Daemon != nil {
		stop = d.Stop
	}
	if err := stop(); err != nil {
		d.t.Fatal(err)
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

// greet reaches addr from host over proto (a TCP connection, or one UDP
// datagram) and returns the server's answer: "<server> <remote>".
func greet(h *sandbox.Host, proto, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	return h.Greet(ctx, proto, addr)
}

// mustGreet fails t unless a TCP connection from h to addr is answered
// with a greeting starting with want; mustAsk the same for a UDP datagram.
func mustGreet(t *testing.T, h *sandbox.Host, addr, want string) {
	t.Helper()
	mustAnswer(t, h, "tcp", addr, want)
}

func mustAsk(t *testing.T, h *sandbox.Host, addr, want string) {
	t.Helper()
	mustAnswer(t, h, "udp", addr, want)
}

func mustAnswer(t *testing.T, h *sandbox.Host, proto, addr, want string) {
	t.Helper()
	g, err := greet(h, proto, addr)
	if err != nil {
		t.Fatalf("%s %s -> %s: %v", proto, h.Name, addr, err)
	}
	if !strings.HasPrefix(g, want) {
		t.Fatalf("%s %s -> %s: answer %q, want prefix %q", proto, h.Name, addr, g, want)
	}
}

func mustNotReach(t *testing.T, h *sandbox.Host, addr string) {
	t.Helper()
	if g, err := greet(h, "tcp", addr); err == nil {
		t.Fatalf("%s -> %s: reached %q, want no forward", h.Name, addr, g)
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
