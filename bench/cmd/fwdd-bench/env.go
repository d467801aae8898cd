package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
	fwdaemon "github.com/fwdd/fwdd/pkg/daemon"
)

// env is the benchmark's sandbox: client -- gateway -- backend, with the
// servers the measurements need already running.
type env struct {
	ctx  context.Context
	topo *sandbox.Topology
	fwdd string // fwdd binary (absolute path)
	self string // this program, run inside namespaces for its helper modes
	dir  string // configs, rulesets, state dirs
	logf func(format string, args ...any)
	seq  int // numbers state dirs
}

// newEnv builds the namespaces and starts the backend servers, socat and
// haproxy. The caller must call close.
func newEnv(ctx context.Context, fwddBin string, verbose bool, logf func(string, ...any)) (*env, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "fwdd-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{ctx: ctx, fwdd: fwddBin, self: self, dir: dir, logf: logf}
	opts := sandbox.Options{Base: "fwddbench", NoClient2: true, NoOther: true, StopGrace: 20 * time.Second,
		BackendAddrs: balanceExtra}
	if verbose {
		opts.Logf = logf
		opts.Output = os.Stderr
	}
	e.topo, err = sandbox.Build(opts)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("build sandbox: %w", err)
	}
	if err := e.start(); err != nil {
		return nil, errors.Join(err, e.close())
	}
	return e, nil
}

func (e *env) close() error {
	err := e.topo.Close()
	os.RemoveAll(e.dir)
	return err
}

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

// writeConfig writes an fwdd config; fwdd wants it owned by root and not
// writable by group or others.
func (e *env) writeConfig(name string, data []byte) (string, error) {
	path := filepath.Join(e.dir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// daemonRun is one fwdd daemon in the gateway namespace.
type daemonRun struct {
	e        *env
	proc     *sandbox.Proc
	cfgPath  string
	stateDir string
	// Wall is the time from starting the process to its state file saying
	// the table is applied.
	Wall time.Duration
	// Log is the "forwarding" line's fields.
	Log map[string]any
}

// startFwdd starts fwdd with cfgPath and waits until it has applied its
// table.
func (e *env) startFwdd(cfgPath string) (*daemonRun, error) {
	e.seq++
	d := &daemonRun{e: e, cfgPath: cfgPath, stateDir: filepath.Join(e.dir, fmt.Sprintf("state%d", e.seq))}
	start := time.Now()
	p, err := e.topo.Gateway.Start(e.ctx, e.fwdd, "run", "-c", cfgPath, "--state-dir", d.stateDir)
	if err != nil {
		return nil, err
	}
	d.proc = p
	st, err := d.waitApplied(0, 2*time.Minute)
	d.Wall = time.Since(start)
	if err == nil && !st.OK {
		err = errors.New(st.Error)
	}
	if err != nil {
		_ = d.stop()
		return nil, fmt.Errorf("fwdd run -c %s: %w\n%s", cfgPath, err, lastLines(p.Output(), 20))
	}
	if d.Log, err = d.waitLog("forwarding", 1); err != nil {
		_ = d.stop()
		return nil, err
	}
	return d, nil
}

// waitApplied polls the state file every millisecond until the daemon
// records an apply after the first `after`.
func (d *daemonRun) waitApplied(after uint64, timeout time.Duration) (fwdaemon.State, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := fwdaemon.ReadState(d.stateDir)
		if err == nil && st.Applies > after {
			return st, nil
		}
		select {
		case <-d.proc.Done():
			return st, fmt.Errorf("fwdd exited: %v", d.proc.Wait())
		case <-d.e.ctx.Done():
			return st, d.e.ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("fwdd applied nothing within %v", timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitLog waits for the nth log line with message msg and returns its
// fields.
func (d *daemonRun) waitLog(msg string, nth int) (map[string]any, error) {
	var fields map[string]any
	err := sandbox.Eventually(5*time.Second, func() error {
		all := logLines(d.proc.Output(), msg)
		if len(all) < nth {
			return fmt.Errorf("no %q log line #%d from fwdd yet", msg, nth)
		}
		fields = all[nth-1]
		return nil
	})
	return fields, err
}

// reloadCLI runs `fwdd reload` and returns its wall time and the daemon's
// "reloaded" log line.
func (d *daemonRun) reloadCLI() (time.Duration, map[string]any, error) {
	n := len(logLines(d.proc.Output(), "reloaded"))
	wall, out, err := d.e.timed(d.e.topo.Gateway, 2*time.Minute, d.e.fwdd, "reload", "-c", d.cfgPath, "--state-dir", d.stateDir, "--timeout", "2m")
	if err != nil {
		return wall, nil, fmt.Errorf("fwdd reload: %w: %s", err, out)
	}
	fields, err := d.waitLog("reloaded", n+1)
	return wall, fields, err
}

// reloadSignal sends SIGHUP itself and waits for the state file: the time
// from the signal to the daemon recording the applied change, without the
// reload command's own start-up and config check.
func (d *daemonRun) reloadSignal() (time.Duration, map[string]any, error) {
	n := len(logLines(d.proc.Output(), "reloaded"))
	before, err := fwdaemon.ReadState(d.stateDir)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		return 0, nil, err
	}
	st, err := d.waitApplied(before.Applies, 2*time.Minute)
	wall := time.Since(start)
	if err == nil && !st.OK {
		err = errors.New(st.Error)
	}
	if err != nil {
		return wall, nil, fmt.Errorf("reload on SIGHUP: %w", err)
	}
	fields, err := d.waitLog("reloaded", n+1)
	return wall, fields, err
}

// stop stops fwdd (on_stop = "flush" removes its table).
func (d *daemonRun) stop() error {
	if err := d.proc.Stop(); err != nil {
		return fmt.Errorf("stop fwdd: %w\n%s", err, lastLines(d.proc.Output(), 10))
	}
	return nil
}

// logLines returns the fields of every zap console line ("TIME\tLEVEL\tMSG\t{json}")
// whose message is msg.
func logLines(out, msg string) []map[string]any {
	var res []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), "\t", 4)
		if len(parts) < 3 || parts[2] != msg {
			continue
		}
		fields := map[string]any{}
		if len(parts) == 4 {
			_ = json.Unmarshal([]byte(parts[3]), &fields)
		}
		res = append(res, fields)
	}
	return res
}

// logWarnings counts the WARN and ERROR lines of fwdd's output by message.
func logWarnings(out string) map[string]int {
	var m map[string]int
	for _, line := range strings.Split(out, "\n") {
		parts := strings.SplitN(line, "\t", 4)
		if len(parts) >= 3 && (parts[1] == "WARN" || parts[1] == "ERROR") {
			if m == nil {
				m = map[string]int{}
			}
			m[parts[2]]++
		}
	}
	return m
}

// durationField reads a zap duration ("52.3ms", or seconds as a number).
func durationField(m map[string]any, key string) (time.Duration, bool) {
	switch v := m[key].(type) {
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil
	case float64:
		return time.Duration(v * float64(time.Second)), true
	}
	return 0, false
}

func intField(m map[string]any, key string) (int, bool) {
	v, ok := m[key].(float64)
	return int(v), ok
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
