package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fwdd/fwdd/internal/harness"
	"github.com/fwdd/fwdd/internal/sandbox"
)

// env is the benchmark's sandbox: client -- gateway -- backend, with the
// servers the measurements need already running.
type env struct {
	ctx  context.Context
	topo *sandbox.Topology
	fwdd string // fwdd binary (absolute path)
	self string // this program, run inside namespaces for its helper modes
	dir  string // configs and rulesets: the sandbox's run dir
	logf func(format string, args ...any)
}

// newEnv builds the namespaces and starts the backend servers, socat and
// haproxy. The caller must call close.
func newEnv(ctx context.Context, fwddBin string, verbose bool, logf func(string, ...any)) (*env, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	e := &env{ctx: ctx, fwdd: fwddBin, self: self, logf: logf}
	opts := sandbox.Options{Base: "fwddbench", NoClient2: true, NoOther: true, StopGrace: 20 * time.Second}
	if verbose {
		opts.Logf = logf
		opts.Output = os.Stderr
	}
	e.topo, err = sandbox.Build(opts)
	if err != nil {
		return nil, fmt.Errorf("build sandbox: %w", err)
	}
	e.dir = e.topo.Dir()
	if err := e.start(); err != nil {
		return nil, errors.Join(err, e.close())
	}
	return e, nil
}

func (e *env) close() error { return e.topo.Close() }

func (e *env) start() error {
	gw, be := e.topo.Gateway, e.topo.Backend
	if err := gw.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if _, err := be.Start(e.ctx, e.self, "serve", "-ports", fmt.Sprintf("%d,%d", serverPort, altPort)); err != nil {
		return err
	}
	if _, err := be.Start(e.ctx, "iperf3", "-s", "-p", strconv.Itoa(iperfPort)); err != nil {
		return err
	}
	if _, err := gw.Start(e.ctx, "socat",
		fmt.Sprintf("TCP4-LISTEN:%d,bind=%s,fork,reuseaddr", socatPort, gatewayAddr),
		fmt.Sprintf("TCP4:%s:%d", backendAddr, iperfPort)); err != nil {
		return err
	}
	haCfg := filepath.Join(e.dir, "haproxy.cfg")
	if err := os.WriteFile(haCfg, fmt.Appendf(nil, `global
	maxconn 4096

defaults
	mode tcp
	timeout connect 5s
	timeout client 1m
	timeout server 1m

listen iperf
	bind %s:%d
	server backend %s:%d
`, gatewayAddr, haproxyPort, backendAddr, iperfPort), 0o644); err != nil {
		return err
	}
	if _, err := gw.Start(e.ctx, "haproxy", "-f", haCfg, "-db"); err != nil {
		return err
	}
	for _, l := range []struct {
		h    *sandbox.Host
		port int
	}{{be, serverPort}, {be, altPort}, {be, iperfPort}, {gw, socatPort}, {gw, haproxyPort}} {
		if err := e.waitListen(l.h, l.port); err != nil {
			return err
		}
	}
	return nil
}

// waitListen waits until a TCP socket listens on port in h's namespace.
func (e *env) waitListen(h *sandbox.Host, port int) error {
	return sandbox.Eventually(10*time.Second, func() error {
		out, err := h.Run(e.ctx, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port))
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(out)) == "" {
			return fmt.Errorf("nothing listens on port %d in %s", port, h.Name)
		}
		return nil
	})
}

// run runs a command in h's namespace, bounded by timeout.
func (e *env) run(h *sandbox.Host, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(e.ctx, timeout)
	defer cancel()
	return h.Run(ctx, args...)
}

// timed runs a command in h's namespace and returns its wall time.
func (e *env) timed(h *sandbox.Host, timeout time.Duration, args ...string) (time.Duration, []byte, error) {
	start := time.Now()
	out, err := e.run(h, timeout, args...)
	return time.Since(start), out, err
}

// resetGateway leaves the gateway with no nftables table at all, an empty
// conntrack table and forwarding on: the state every sample starts from.
func (e *env) resetGateway() error {
	gw := e.topo.Gateway
	out, err := e.run(gw, time.Minute, "nft", "list", "tables")
	if err != nil {
		return fmt.Errorf("nft list tables: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // "table inet fwdd"
		if len(f) == 3 && f[0] == "table" {
			e.logf("gateway: deleting leftover table %s %s", f[1], f[2])
			if _, err := e.run(gw, time.Minute, "nft", "delete", "table", f[1], f[2]); err != nil {
				return err
			}
		}
	}
	if v, err := gw.Sysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		if err := gw.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
			return err
		}
	}
	return e.flushConntrack()
}

func (e *env) flushConntrack() error {
	if out, err := e.run(e.topo.Gateway, time.Minute, "conntrack", "-F"); err != nil {
		return fmt.Errorf("conntrack -F: %w: %s", err, out)
	}
	return nil
}

// writeConfig writes a config or ruleset into the run dir; fwdd wants a
// config owned by root and not writable by group or others.
func (e *env) writeConfig(name string, data []byte) (string, error) {
	path := filepath.Join(e.dir, name)
	if err := os.WriteFile(path, data, 0o640); err != nil {
		return "", err
	}
	return path, os.Chmod(path, 0o640)
}

// daemonRun is one fwdd daemon in the gateway namespace.
type daemonRun struct {
	*harness.Daemon
	// Wall is the time from starting the process to its "forwarding" log
	// line, written once the table is applied.
	Wall time.Duration
	// Forwarding is the "forwarding" line.
	Forwarding harness.Line
}

// startFwdd starts fwdd with the config in cfgPath and waits until it is
// ready (READY=1).
func (e *env) startFwdd(cfgPath string) (*daemonRun, error) {
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, err
	}
	d, err := harness.Start(e.topo.Gateway, string(cfg), harness.Options{Bin: e.fwdd, ReadyTimeout: 2 * time.Minute})
	var l harness.Line
	if err == nil {
		l, err = d.WaitLog(0, "forwarding", 5*time.Second)
	}
	if err != nil {
		if d != nil {
			err = errors.Join(err, d.Close())
		}
		return nil, fmt.Errorf("fwdd run with %s: %w", filepath.Base(cfgPath), err)
	}
	return &daemonRun{Daemon: d, Wall: l.Time.Sub(d.Started()), Forwarding: l}, nil
}

// reloadCLI runs `fwdd reload` and returns its wall time and the daemon's
// "reloaded" line.
func (d *daemonRun) reloadCLI() (time.Duration, harness.Line, error) {
	n := len(d.Log())
	start := time.Now()
	out, err := d.Command("reload", "--state-dir", d.StateDir, "--timeout", "2m")
	wall := time.Since(start)
	if err != nil {
		return wall, harness.Line{}, fmt.Errorf("%w: %s", err, out)
	}
	l, err := d.WaitLog(n, "reloaded", 5*time.Second)
	return wall, l, err
}

// reloadSignal sends SIGHUP and returns the time from the signal to the
// daemon's "reloaded" line, written once the change is applied, without
// the reload command's own start-up and config check.
func (d *daemonRun) reloadSignal() (time.Duration, harness.Line, error) {
	start := time.Now()
	l, err := d.Reload()
	if err != nil {
		return 0, l, fmt.Errorf("reload on SIGHUP: %w", err)
	}
	return l.Time.Sub(start), l, nil
}

// stop stops fwdd (on_stop = "flush" removes its table) and removes its
// files.
func (d *daemonRun) stop() error {
	return errors.Join(d.Stop(), d.Close())
}

// logWarnings counts the WARN and ERROR lines of fwdd's output by message.
func logWarnings(lines []harness.Line) map[string]int {
	var m map[string]int
	for _, l := range lines {
		if l.Level == "WARN" || l.Level == "ERROR" {
			if m == nil {
				m = map[string]int{}
			}
			m[l.Msg]++
		}
	}
	return m
}
