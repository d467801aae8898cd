// Command fwdd-demo shows fwdd at work in a throwaway sandbox of network
// namespaces: it runs the real fwdd binary on a sandboxed gateway (with
// internal/harness, as the end-to-end tests do), sends real TCP and UDP
// traffic through it, reloads a changed config, refuses a broken one and
// cleans everything up again. It never touches the host's own network.
// `sudo make demo` runs it; it exits non-zero if any step fails, so it
// doubles as a smoke test.
//
// Usage:
//
//	fwdd-demo [--fwdd bin/fwdd] [--keep]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/fwdd/fwdd/internal/harness"
	"github.com/fwdd/fwdd/internal/sandbox"
)

func main() {
	bin := flag.String("fwdd", "bin/fwdd", "path of the fwdd binary (make build)")
	keep := flag.Bool("keep", false, "pause before cleaning up, to look around in the sandbox")
	flag.Parse()
	abs, _ := filepath.Abs(*bin)
	if fi, err := os.Stat(abs); err != nil || fi.Mode().Perm()&0o111 == 0 {
		fmt.Fprintf(os.Stderr, "fwdd-demo: %s is not an executable (build it with: make build)\n", *bin)
		os.Exit(1)
	}
	// The first Ctrl-C (or SIGTERM) cancels ctx: the step under way fails and
	// the teardown runs; later signals cannot cut it short. What the sandbox
	// starts runs in a process group of its own, out of the terminal's reach.
	ctx, cancel := context.WithCancelCause(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		cancel(fmt.Errorf("interrupted (%v)", <-sigs))
		for sig := range sigs {
			fmt.Fprintf(os.Stderr, "fwdd-demo: %v: still cleaning up, please wait\n", sig)
		}
	}()
	d := &demo{bin: abs}
	os.Exit(d.run(ctx, *keep))
}

// demo is one run.
type demo struct {
	bin     string
	topo    *sandbox.Topology
	fwdd    *harness.Daemon
	shown   int                       // daemon log lines already shown
	servers map[string]sandbox.Server // by address
}

func (d *demo) run(ctx context.Context, keep bool) int {
	started := time.Now()
	fmt.Println("fwdd demo: real forwarding, real traffic, in a throwaway sandbox of network namespaces.")
	err := d.steps(ctx)
	if err != nil {
		fmt.Printf("\nFAILED: %v\n", err)
		if d.fwdd != nil {
			d.showLog("fwdd's log since the last excerpt:")
		}
	} else if keep {
		d.pause(ctx)
	}
	if terr := d.teardown(); terr != nil {
		fmt.Println("FAILED:", terr)
		return 1
	}
	switch {
	case ctx.Err() != nil:
		return 130
	case err != nil:
		return 1
	}
	fmt.Printf("\ndemo passed in %.1fs\n", time.Since(started).Seconds())
	return 0
}

// steps runs the demo's steps; the first to fail (or an interrupt) ends it.
func (d *demo) steps(ctx context.Context) error {
	for i, step := range []struct {
		title string
		fn    func(context.Context) error
	}{
		{"Build a throwaway sandbox", d.buildSandbox},
		{"Start servers on the backend", d.startServers},
		{"Start fwdd on the gateway", d.startFwdd},
		{"Send traffic from the client", d.firstTraffic},
		{"fwdd status", d.status},
		{"Change the config and reload", d.reload},
		{"A broken config is refused", d.brokenReload},
	} {
		banner(fmt.Sprintf("%d. %s", i+1, step.title))
		err := step.fn(ctx)
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		if err != nil {
			return fmt.Errorf("%s: %w", step.title, err)
		}
	}
	return nil
}

func (d *demo) buildSandbox(context.Context) (err error) {
	if d.topo, err = sandbox.Build(sandbox.Options{Base: "fwdd_demo", NoClient2: true}); err != nil {
		return err
	}
	say("network namespaces %s-{client,gateway,backend,other}", d.topo.Prefix)
	say("(ip netns list shows them; the host's own interfaces, routes and firewall are left alone)")
	block(`
client  10.11.0.2 --- cli0 10.11.0.1 [ gateway ] bak0 10.22.0.1 --- 10.22.0.2 backend
        fd11::2            fd11::1   [  fwdd   ]      fd22::1       fd22::2
                                     [         ] oth0 10.44.0.1 --- 10.44.0.2 other
                                                      fd44::1       fd44::2`)
	return nil
}

func (d *demo) startFwdd(ctx context.Context) error {
	cfg := config(web, dns, web6, direct, appRange)
	fwdd, err := harness.Start(d.topo.Gateway, cfg, harness.Options{Bin: d.bin})
	if d.fwdd = fwdd; err != nil {
		return err
	}
	say("%s (root, 0640):", fwdd.ConfigPath)
	block(cfg)
	say("")
	cmdLine("fwdd run -c %s --state-dir %s   (pid %d; READY=1 on its NOTIFY_SOCKET, as systemd sees it)",
		fwdd.ConfigPath, fwdd.StateDir, fwdd.PID())
	if _, err := fwdd.WaitLog(0, "ready", 5*time.Second); err != nil {
		return err
	}
	d.showLog("fwdd's log:")
	say("")
	cmdLine("nft list map inet fwdd dnat4_port; nft list map inet fwdd dnat6_port   (where traffic goes)")
	for _, m := range []string{"dnat4_port", "dnat6_port"} {
		out, err := d.topo.Gateway.Run(ctx, "nft", "list", "map", "inet", "fwdd", m)
		if err != nil {
			return err
		}
		block(string(out))
	}
	return nil
}

func (d *demo) firstTraffic(ctx context.Context) error {
	return d.probes(ctx, `"web" has log = true, so fwdd logged:`, []probe{
		{"tcp", "10.11.0.1:80", "web", "10.22.0.2:8080", "10.22.0.1", "masquerade"},
		{"udp", "10.11.0.1:53", "dns", "10.22.0.2:5353", "10.22.0.1", "masquerade"},
		{"tcp", "[fd11::1]:80", "web6", "[fd22::2]:8080", "fd22::1", "masquerade, IPv6"},
		{"tcp", "10.11.0.1:81", "direct", "10.22.0.2:8080", "10.11.0.2", `snat = "none": the real client`},
		{"tcp", "10.11.0.1:9000", "app-range", "10.22.0.2:9100", "10.22.0.1", "range, 1:1"},
		{"tcp", "10.11.0.1:9002", "app-range", "10.22.0.2:9102", "10.22.0.1", "range, 1:1"},
		{"tcp", "10.44.0.2:80", "no forward", "10.44.0.2:80", "10.11.0.2", "transit: passes untouched"},
	})
}

func (d *demo) status(context.Context) error {
	if out, err := d.fwddCommand("status"); err != nil || !strings.Contains(out, "present, matches") {
		return fmt.Errorf("fwdd status (%v) does not report the table as present and matching the config", err)
	}
	return nil
}

func (d *demo) reload(ctx context.Context) error {
	held, greeting, err := d.topo.Client.DialTCP(ctx, "10.11.0.1:81")
	if err != nil {
		return fmt.Errorf("open a connection to keep across the reload: %w", err)
	}
	defer held.Close()
	say(`open a connection to "direct" (10.11.0.1:81) and keep it: %q`, greeting)
	say("")
	say("change fwdd.toml; fwdd diff tells what a reload would change, and the batch it would send:")
	if err := d.fwdd.WriteConfig(changed); err != nil {
		return err
	}
	if out, _ := d.fwddCommand("diff", "--state-dir", d.fwdd.StateDir); !strings.Contains(out, "+ forward admin") {
		return errors.New(`fwdd diff does not list "admin" as added`)
	}
	say("")
	n := len(d.fwdd.Log())
	if _, err := d.fwddCommand("reload", "--state-dir", d.fwdd.StateDir); err != nil {
		return err
	}
	line, err := d.fwdd.WaitLog(n, "reloaded", 5*time.Second)
	if err != nil {
		return err
	}
	d.showLog("fwdd's log (it names what changed):")
	for key, want := range map[string]string{"added": "admin", "removed": "app-range", "changed": "web"} {
		if got := line.Strings(key); len(got) != 1 || got[0] != want {
			return fmt.Errorf("the reloaded log line says %s %v, want [%s]", key, got, want)
		}
	}
	say("")
	if err := d.probes(ctx, "fwdd's log:", []probe{
		{"tcp", "10.11.0.1:80", "web", "10.22.0.2:8081", "10.22.0.1", "changed: now port 8081"},
		{"tcp", "10.11.0.1:82", "admin", "10.22.0.2:8080", "10.22.0.1", "added"},
		{"tcp", "10.11.0.1:9000", "app-range", "", "", "removed"},
		{"udp", "10.11.0.1:53", "dns", "10.22.0.2:5353", "10.22.0.1", "unchanged"},
	}); err != nil {
		return err
	}
	say("")
	if err := sandbox.Echo(held, "still here\n"); err != nil {
		return fmt.Errorf(`the connection to "direct" (unchanged) broke across the reload: %w`, err)
	}
	say(`the connection to "direct", opened before the reload, still works:`)
	say("unchanged forwards keep their connections")
	return nil
}

func (d *demo) brokenReload(ctx context.Context) error {
	say("add a forward with an impossible port:")
	block(broken)
	before, err := d.topo.Gateway.Run(ctx, "nft", "list", "ruleset")
	if err != nil {
		return err
	}
	if err := d.fwdd.WriteConfig(config(changed, broken)); err != nil {
		return err
	}
	say("")
	if _, err = d.fwddCommand("reload", "--state-dir", d.fwdd.StateDir); err == nil {
		return errors.New("fwdd reload accepted a broken config")
	}
	say("(%v; the daemon was not even signalled)", errors.Unwrap(err))
	say("")
	cmdLine("kill -HUP %d   (signal the daemon directly, skipping the check)", d.fwdd.PID())
	if _, err := d.fwdd.Reload(); err == nil {
		return errors.New("the daemon accepted a broken config")
	}
	d.showLog("fwdd's log:")
	after, err := d.topo.Gateway.Run(ctx, "nft", "list", "ruleset")
	if err != nil {
		return err
	}
	if string(after) != string(before) {
		return errors.New("the ruleset changed on a refused reload")
	}
	say("the kernel's ruleset is byte for byte what it was before")
	say("")
	if err := d.probes(ctx, "fwdd's log:", []probe{
		{"tcp", "10.11.0.1:80", "web", "10.22.0.2:8081", "10.22.0.1", "as before"},
		{"tcp", "10.11.0.1:82", "admin", "10.22.0.2:8080", "10.22.0.1", "as before"},
	}); err != nil {
		return err
	}
	return d.fwdd.WriteConfig(changed) // for `fwdd status` in the --keep pause
}

// pause waits for Enter or a signal (--keep).
func (d *demo) pause(ctx context.Context) {
	banner("Paused (--keep)")
	say("The sandbox stays up until you press Enter (or Ctrl-C). In another terminal:")
	say("  sudo ip netns exec %s-gateway nft list table inet fwdd", d.topo.Prefix)
	say("  sudo ip netns exec %s-gateway %s status -c %s", d.topo.Prefix, d.bin, d.fwdd.ConfigPath)
	say(`  sudo ip netns exec %s-client bash -c 'exec 3<>/dev/tcp/10.11.0.1/80; head -1 <&3'`, d.topo.Prefix)
	enter := make(chan error, 1)
	go func() { _, err := bufio.NewReader(os.Stdin).ReadString('\n'); enter <- err }()
	select {
	case <-ctx.Done():
	case <-enter:
	}
}

// teardown stops fwdd (SIGTERM: STOPPING=1, exit status 0), checks that
// its table is gone, and removes the sandbox.
func (d *demo) teardown() error {
	banner("8. Stop fwdd and remove the sandbox")
	if d.topo == nil {
		say("nothing to remove; your host's network was not touched")
		return nil
	}
	var errs []error
	if d.fwdd != nil && d.fwdd.Running() {
		cmdLine("kill -TERM %d", d.fwdd.PID())
		errs = append(errs, d.fwdd.Stop())
		d.showLog("fwdd's log:")
		cmdLine("fwdd status -c %s", d.fwdd.ConfigPath)
		out, _ := d.fwdd.Command("status") // exit status 3: no table
		out, _, _ = strings.Cut(out, "\n")
		block(out)
		if !strings.Contains(out, "absent") {
			errs = append(errs, errors.New(`table "inet fwdd" still there after fwdd stopped`))
		}
	}
	if d.fwdd != nil {
		errs = append(errs, d.fwdd.Close())
	}
	errs = append(errs, d.topo.Close())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	say("sandbox removed (%s-*); your host's network was not touched", d.topo.Prefix)
	return nil
}
