package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// sandboxBase names the demo's namespaces "fwdd_demo-<6 hex>-<host>", apart
// from those of the tests ("fwdd-...") and the benchmark. The sandbox only
// allows letters, digits and '_' in it.
const sandboxBase = "fwdd_demo"

// Time limits of single steps.
const (
	readyTimeout   = 20 * time.Second // fwdd start until "ready"
	commandTimeout = 30 * time.Second // one fwdd/nft command
	probeTimeout   = 3 * time.Second  // one connection or datagram
	logTimeout     = 5 * time.Second  // a log line to appear
	stopTimeout    = 10 * time.Second // fwdd exit after SIGTERM
)

// demo is one run of the demo.
type demo struct {
	out  io.Writer
	fwdd string // absolute path of the fwdd binary
	keep bool

	started  time.Time
	paused   time.Duration // in the --keep pause
	section  int
	topo     *sandbox.Topology
	dir      string // temp dir with the config and the state dir
	cfgPath  string
	stateDir string
	proc     *sandbox.Proc // the fwdd daemon
	ready    bool          // the daemon logged "ready"
	logShown int           // bytes of the daemon's output already shown
	servers  []*server
	hasNft   bool
}

// run runs every step, then cleans up; it returns the exit code.
func (d *demo) run(ctx context.Context) int {
	d.started = time.Now()
	fmt.Fprintln(d.out, "fwdd demo: real forwarding, real traffic, in a throwaway sandbox of network namespaces.")
	err := d.steps(ctx)
	interrupted := errors.Is(context.Cause(ctx), errInterrupted)
	if err != nil {
		fmt.Fprintln(d.out)
		if interrupted {
			fmt.Fprintln(d.out, "INTERRUPTED: stopping fwdd and removing the sandbox")
		} else {
			fmt.Fprintln(d.out, "FAILED:", err)
			d.dumpDaemonLog()
		}
	}
	if d.keep && !interrupted {
		start := time.Now()
		d.pause(ctx)
		d.paused = time.Since(start)
	}
	d.section = 8 // teardown is always section 9
	if terr := d.teardown(err != nil); terr != nil {
		fmt.Fprintln(d.out, "FAILED:", terr)
		return 1
	}
	switch {
	case interrupted:
		return 130
	case err != nil:
		return 1
	}
	fmt.Fprintf(d.out, "\ndemo passed in %.1fs\n", (time.Since(d.started) - d.paused).Seconds())
	return 0
}

// steps runs sections 1 to 8; teardown is section 9.
func (d *demo) steps(ctx context.Context) error {
	for _, step := range []struct {
		title string
		fn    func(context.Context) error
	}{
		{"Build a throwaway sandbox", d.buildSandbox},
		{"Start servers on the backend", d.startServers},
		{"Write fwdd.toml", d.writeFirstConfig},
		{"Start fwdd on the gateway", d.startFwdd},
		{"Send traffic from the client", d.firstTraffic},
		{"fwdd status", d.status},
		{"Change the config and reload", d.reload},
		{"A broken config is refused", d.brokenReload},
	} {
		if err := context.Cause(ctx); err != nil {
			return err
		}
		d.header(step.title)
		if err := step.fn(ctx); err != nil {
			if cause := context.Cause(ctx); cause != nil {
				return fmt.Errorf("%s: %w", step.title, cause)
			}
			return fmt.Errorf("%s: %w", step.title, err)
		}
	}
	return nil
}

// 1.
func (d *demo) buildSandbox(ctx context.Context) error {
	topo, err := sandbox.Build(sandbox.Options{Base: sandboxBase, NoClient2: true})
	if err != nil {
		return err
	}
	d.topo = topo
	var names []string
	for _, h := range topo.Hosts() {
		names = append(names, h.Name)
	}
	d.say("network namespaces %s-{%s}", topo.Prefix, strings.Join(names, ","))
	d.say("(ip netns list shows them; the host's own interfaces, routes and firewall are left alone)")
	d.block(topologyDiagram)
	_, err = exec.LookPath("nft")
	d.hasNft = err == nil
	return nil
}

const topologyDiagram = `
client  10.11.0.2 --- cli0 10.11.0.1 [ gateway ] bak0 10.22.0.1 --- 10.22.0.2 backend
        fd11::2            fd11::1   [  fwdd   ]      fd22::1       fd22::2
                                     [         ] oth0 10.44.0.1 --- 10.44.0.2 other
                                                      fd44::1       fd44::2
`

// 2.
func (d *demo) startServers(ctx context.Context) error {
	be, other := d.topo.Backend, d.topo.Other
	for _, s := range []struct {
		host  *sandbox.Host
		proto string
		addrs []string
		role  string
	}{
		{be, "tcp", []string{"10.22.0.2:8080"}, `"web", "direct" (and "admin" later)`},
		{be, "tcp", []string{"10.22.0.2:8081"}, `"web" after the reload`},
		{be, "udp", []string{"10.22.0.2:5353"}, `"dns"`},
		{be, "tcp", []string{"[fd22::2]:8080"}, `"web6"`},
		{be, "tcp", []string{"10.22.0.2:9100", "10.22.0.2:9101", "10.22.0.2:9102"}, `"app-range"`},
		{other, "tcp", []string{"10.44.0.2:80"}, "no forward: reached by plain routing"},
	} {
		for _, addr := range s.addrs {
			srv, err := d.listen(s.host, s.proto, addr)
			if err != nil {
				return err
			}
			d.servers = append(d.servers, srv)
		}
		shown := s.addrs[0]
		if n := len(s.addrs); n > 1 {
			_, last, _ := strings.Cut(s.addrs[n-1], ":")
			shown += "-" + last
		}
		d.say("%-8s %-25s %s", s.host.Name, shown+"/"+s.proto, s.role)
	}
	d.say("")
	d.say("Each server answers every connection or datagram with \"<host> <source address")
	d.say("it sees>\" and records it: the demo checks where traffic arrived and from whom.")
	return nil
}

// 3.
func (d *demo) writeFirstConfig(ctx context.Context) error {
	dir, err := os.MkdirTemp("", "fwdd-demo-")
	if err != nil {
		return err
	}
	d.dir = dir
	// fwdd only reads a config owned by root and not writable by group
	// or others; the directory must be searchable for it.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	d.cfgPath = filepath.Join(dir, "fwdd.toml")
	d.stateDir = filepath.Join(dir, "state")
	if err := d.writeConfig(firstConfig); err != nil {
		return err
	}
	d.say("%s (root, 0644):", d.cfgPath)
	d.block(firstConfig)
	return nil
}

// 4.
func (d *demo) startFwdd(ctx context.Context) error {
	d.cmdLine("fwdd", "run", "-c", d.cfgPath, "--state-dir", d.stateDir)
	// Not ctx: an interrupted demo stops fwdd in teardown like any other
	// run, and shows how it went.
	p, err := d.topo.Gateway.Start(context.Background(), d.fwdd, "run", "-c", d.cfgPath, "--state-dir", d.stateDir)
	if err != nil {
		return err
	}
	d.proc = p
	if _, err := d.waitLog(ctx, readyTimeout, "ready"); err != nil {
		return fmt.Errorf("fwdd did not start: %w", err)
	}
	d.ready = true
	d.showNewLog("fwdd's log:")
	d.say("")
	if !d.hasNft {
		d.say("(nft is not installed, so here is what fwdd programs, from `fwdd print`;")
		d.say(" install nftables to see the kernel's own view)")
		out, err := d.gatewayCmd(ctx, "fwdd", "print", "-c", d.cfgPath)
		d.block(nftExcerpt(out, "10.22.0.2", "fd22::2"))
		return err
	}
	out, err := d.gatewayCmd(ctx, "nft", "list", "table", "inet", "fwdd")
	d.block(nftExcerpt(out, "10.22.0.2", "fd22::2"))
	return err
}

// 5.
func (d *demo) firstTraffic(ctx context.Context) error {
	c := d.topo.Client
	err := d.probes(ctx, []probe{
		{from: c, proto: "tcp", addr: "10.11.0.1:80", fwd: "web", want: "10.22.0.2:8080", wantFrom: "10.22.0.1", note: "masquerade"},
		{from: c, proto: "udp", addr: "10.11.0.1:53", fwd: "dns", want: "10.22.0.2:5353", wantFrom: "10.22.0.1", note: "masquerade"},
		{from: c, proto: "tcp", addr: "[fd11::1]:80", fwd: "web6", want: "[fd22::2]:8080", wantFrom: "fd22::1", note: "masquerade, IPv6"},
		{from: c, proto: "tcp", addr: "10.11.0.1:81", fwd: "direct", want: "10.22.0.2:8080", wantFrom: "10.11.0.2", note: `snat = "none": the real client`},
		{from: c, proto: "tcp", addr: "10.11.0.1:9000", fwd: "app-range", want: "10.22.0.2:9100", wantFrom: "10.22.0.1", note: "range, 1:1"},
		{from: c, proto: "tcp", addr: "10.11.0.1:9002", fwd: "app-range", want: "10.22.0.2:9102", wantFrom: "10.22.0.1", note: "range, 1:1"},
		{from: c, proto: "tcp", addr: "10.44.0.2:80", want: "10.44.0.2:80", wantFrom: "10.11.0.2", note: "transit: passes untouched"},
	})
	if err != nil {
		return err
	}
	d.say("")
	// The connection log comes from conntrack events, a moment later.
	if _, err := d.waitLog(ctx, logTimeout, "new connection"); err != nil {
		return fmt.Errorf(`no "new connection" log line for "web" (log = true): %w`, err)
	}
	time.Sleep(100 * time.Millisecond) // let the rest of the burst arrive
	d.showNewLog(`"web" has log = true, so fwdd logged:`)
	return nil
}

// 6.
func (d *demo) status(ctx context.Context) error {
	out, err := d.gatewayCmd(ctx, "fwdd", "status", "-c", d.cfgPath)
	d.block(out)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "present, matches") {
		return errors.New("fwdd status does not report the table as present and matching the config")
	}
	return nil
}

// 7.
func (d *demo) reload(ctx context.Context) error {
	// A connection of an unchanged forward, held open across the reload.
	held, greeting, err := d.topo.Client.DialTCP(ctx, "10.11.0.1:81")
	if err != nil {
		return fmt.Errorf("open a connection to keep across the reload: %w", err)
	}
	defer held.Close()
	d.say(`open a connection to "direct" (10.11.0.1:81) and keep it: %q`, greeting)
	d.say("")
	d.say("change fwdd.toml:")
	d.block(diffLines(firstConfig, secondConfig))
	if err := d.writeConfig(secondConfig); err != nil {
		return err
	}
	d.say("")
	out, err := d.gatewayCmd(ctx, "fwdd", "reload", "-c", d.cfgPath, "--state-dir", d.stateDir, "--timeout", "30s")
	d.block(out)
	if err != nil {
		return err
	}
	line, err := d.waitLog(ctx, logTimeout, "reloaded")
	if err != nil {
		return err
	}
	d.showNewLog("fwdd's log:")
	for _, want := range []string{`"added": ["admin"]`, `"removed": ["app-range"]`, `"changed": ["web"]`} {
		if !strings.Contains(line, want) {
			return fmt.Errorf("the reloaded log line lacks %s: %s", want, line)
		}
	}
	d.say("")
	c := d.topo.Client
	if err := d.probes(ctx, []probe{
		{from: c, proto: "tcp", addr: "10.11.0.1:80", fwd: "web", want: "10.22.0.2:8081", wantFrom: "10.22.0.1", note: "changed: now port 8081"},
		{from: c, proto: "tcp", addr: "10.11.0.1:82", fwd: "admin", want: "10.22.0.2:8080", wantFrom: "10.22.0.1", note: "added"},
		{from: c, proto: "tcp", addr: "10.11.0.1:9000", fwd: "app-range", note: "removed"},
		{from: c, proto: "udp", addr: "10.11.0.1:53", fwd: "dns", want: "10.22.0.2:5353", wantFrom: "10.22.0.1", note: "unchanged"},
	}); err != nil {
		return err
	}
	d.say("")
	if _, err := d.waitLog(ctx, logTimeout, "new connection"); err != nil {
		return err
	}
	d.showNewLog("fwdd's log:")
	d.say("")
	if err := echo(held, "still here"); err != nil {
		return fmt.Errorf(`the connection to "direct" (unchanged) broke across the reload: %w`, err)
	}
	d.say(`the connection to "direct", opened before the reload, still works:`)
	d.say("unchanged forwards keep their connections")
	return nil
}

// 8.
func (d *demo) brokenReload(ctx context.Context) error {
	d.say("add a forward with an impossible port:")
	d.block(diffLines(secondConfig, brokenConfig))
	if err := d.writeConfig(brokenConfig); err != nil {
		return err
	}
	d.say("")
	out, err := d.gatewayCmd(ctx, "fwdd", "reload", "-c", d.cfgPath, "--state-dir", d.stateDir, "--timeout", "30s")
	d.block(out)
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return errors.New("fwdd reload accepted a broken config")
	case !errors.As(err, &exitErr):
		return err
	}
	d.say("(exit status %d; the daemon was not even signalled)", exitErr.ExitCode())
	d.say("")
	// Without the check: the daemon must refuse the file by itself.
	if err := d.proc.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("signal fwdd: %w", err)
	}
	d.say("kill -HUP %d   (signal the daemon directly, skipping the check)", d.proc.PID())
	if _, err := d.waitLog(ctx, logTimeout, "reload failed; the running rules are unchanged"); err != nil {
		return err
	}
	d.showNewLog("fwdd's log:")
	select {
	case <-d.proc.Done():
		return fmt.Errorf("fwdd exited: %v", d.proc.Wait())
	default:
	}
	d.say("")
	c := d.topo.Client
	if err := d.probes(ctx, []probe{
		{from: c, proto: "tcp", addr: "10.11.0.1:80", fwd: "web", want: "10.22.0.2:8081", wantFrom: "10.22.0.1", note: "as before"},
		{from: c, proto: "tcp", addr: "10.11.0.1:82", fwd: "admin", want: "10.22.0.2:8080", wantFrom: "10.22.0.1", note: "as before"},
	}); err != nil {
		return err
	}
	// Not shown: the "web" connection's log line.
	if _, err := d.waitLog(ctx, logTimeout, "new connection"); err != nil {
		return err
	}
	d.takeNewLog()
	// Put the good file back, for `fwdd status` in the --keep pause.
	return d.writeConfig(secondConfig)
}

// pause waits for Enter or a signal (--keep).
func (d *demo) pause(ctx context.Context) {
	if d.topo == nil {
		return
	}
	gw := d.topo.Prefix + "-gateway"
	client := d.topo.Prefix + "-client"
	d.banner("Paused (--keep)")
	d.say("The sandbox stays up until you press Enter (or Ctrl-C). In another terminal:")
	d.say("")
	d.say("  sudo ip netns exec %s nft list table inet fwdd", gw)
	if d.cfgPath != "" {
		d.say("  sudo ip netns exec %s %s status -c %s", gw, d.fwdd, d.cfgPath)
	}
	d.say(`  sudo ip netns exec %s bash -c 'exec 3<>/dev/tcp/10.11.0.1/80; head -1 <&3'`, client)
	d.say("")
	line := make(chan error, 1)
	go func() {
		_, err := bufio.NewReader(os.Stdin).ReadString('\n')
		line <- err
	}()
	select {
	case <-ctx.Done():
	case err := <-line:
		if err != nil { // no terminal: wait for a signal
			d.say("(stdin is closed: waiting for Ctrl-C)")
			<-ctx.Done()
		}
	}
}

// teardown is section 9: stop fwdd, check that its table is gone, remove
// the sandbox and check that no namespace is left. failed says whether an
// earlier step failed (and has been reported).
func (d *demo) teardown(failed bool) error {
	d.header("Stop fwdd and remove the sandbox")
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var errs []error
	if d.proc != nil {
		if err := d.stopFwdd(ctx, failed); err != nil {
			errs = append(errs, err)
		}
	}
	removed := false
	if d.topo != nil {
		if err := d.topo.Close(); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox: %w", err))
			// Close keeps the run's lock file when it leaves something
			// behind, but no longer holds the lock: a sweep removes it.
			if swept, err := sandbox.Sweep(sandboxBase); err != nil {
				errs = append(errs, fmt.Errorf("sweep: %w", err))
			} else if len(swept) > 0 {
				d.say("swept what was left: %v", swept)
			}
		}
		left, err := filepath.Glob(filepath.Join("/run/netns", d.topo.Prefix+"-*"))
		switch {
		case err != nil:
			errs = append(errs, err)
		case len(left) > 0:
			errs = append(errs, fmt.Errorf("namespaces left behind: %v (the next run sweeps them)", left))
		default:
			removed = true
		}
	}
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, err)
		}
	}
	switch {
	case d.topo == nil:
		d.say("nothing to remove; your host's network was not touched")
	case removed:
		d.say("sandbox removed (%s-*); your host's network was not touched", d.topo.Prefix)
	}
	return errors.Join(errs...)
}

func (d *demo) stopFwdd(ctx context.Context, failed bool) error {
	select {
	case <-d.proc.Done():
		werr := d.proc.Wait()
		d.showNewLog("fwdd's log:")
		if !failed {
			return fmt.Errorf("fwdd exited by itself (%v)", werr)
		}
		d.say("fwdd had already exited (%v)", werr)
	default:
		if err := d.proc.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("stop fwdd: %w", err)
		}
		d.say("kill -TERM %d   (fwdd)", d.proc.PID())
		select {
		case <-d.proc.Done():
		case <-time.After(stopTimeout):
			return fmt.Errorf("fwdd (pid %d) did not exit within %v of SIGTERM", d.proc.PID(), stopTimeout)
		}
		werr := d.proc.Wait()
		d.showNewLog("fwdd's log:")
		var ee *exec.ExitError
		switch {
		case werr == nil:
		case !d.ready && errors.As(werr, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM:
			// Stopped (interrupted) before it handled signals: it had
			// not changed anything yet.
			d.say("(fwdd was stopped before it was ready)")
		default:
			return fmt.Errorf("fwdd exited with %v", werr)
		}
	}
	if d.hasNft {
		out, err := d.gatewayCmd(ctx, "nft", "list", "tables")
		if err != nil {
			d.block(out)
			return err
		}
		if strings.Contains(out, "inet fwdd") {
			d.block(out)
			return errors.New(`table "inet fwdd" still there after fwdd stopped`)
		}
		if strings.TrimSpace(out) == "" {
			out = "(no tables)\n"
		}
		d.block(out)
		return nil
	}
	out, err := d.gatewayCmd(ctx, "fwdd", "status", "-c", d.cfgPath)
	if !strings.Contains(out, "absent") {
		d.block(out)
		return fmt.Errorf("fwdd status does not report the table as gone: %v", err)
	}
	d.block(firstLine(out))
	return nil
}
