package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// The forwards of the configs, one [[forward]] each (deploy/fwdd.toml explains every key).

const (
	web = `# HTTP; the backend sees the gateway as the source (snat defaults to masquerade)
[[forward]]
name = "web"
port = 80
to = "10.22.0.2:8080"
log = true`
	dns = `[[forward]]
name = "dns"
proto = "udp"
port = 53
to = "10.22.0.2:5353"`
	web6 = `# the same web server over IPv6
[[forward]]
name = "web6"
port = 80
to = "[fd22::2]:8080"`
	direct = `# no source NAT: the backend sees the client (and must route its replies back here)
[[forward]]
name = "direct"
port = 81
to = "10.22.0.2:8080"
snat = "none"`
	appRange = `# a range mapped 1:1: 9000 -> 9100, ..., 9002 -> 9102
[[forward]]
name = "app-range"
port = "9000-9002"
to = "10.22.0.2:9100-9102"`
	admin = `[[forward]]
name = "admin"
port = 82
to = "10.22.0.2:8080"
sources = ["10.11.0.0/24"]`
	broken = `[[forward]]
name = "broken"
port = 70000
to = "10.22.0.2"`
)

// changed is the config after the change: "web" to port 8081, no "app-range", "admin" new.
var changed = config(strings.Replace(web, ":8080", ":8081", 1), dns, web6, direct, admin)

func config(forwards ...string) string { return strings.Join(forwards, "\n\n") + "\n" }

func banner(title string) {
	h := fmt.Sprintf("== %s ", title)
	fmt.Printf("\n%s%s\n", h, strings.Repeat("=", max(3, 78-len(h))))
}

func say(format string, args ...any) { fmt.Printf(strings.TrimRight("  "+format, " ")+"\n", args...) }

func cmdLine(format string, args ...any) { say("gateway# "+format, args...) }

// block prints text indented under the current line.
func block(text string) {
	for _, l := range strings.Split(strings.Trim(text, "\n"), "\n") {
		fmt.Println(strings.TrimRight("    "+l, " "))
	}
}

// fwddCommand shows `fwdd CMD -c CONFIG args...`, runs it on the gateway and shows its
// output; a reload goes through the harness, which waits for RELOADING=1 and READY=1.
func (d *demo) fwddCommand(cmd string, args ...string) (out string, err error) {
	cmdLine("fwdd %s", strings.Join(append([]string{cmd, "-c", d.fwdd.ConfigPath}, args...), " "))
	if cmd == "reload" {
		out, err = d.fwdd.ReloadCommand()
	} else {
		out, err = d.fwdd.Command(cmd, args...)
	}
	block(out)
	return out, err
}

// showLog prints the daemon's log lines not shown yet, without timestamps.
func (d *demo) showLog(title string) {
	lines := d.fwdd.Log()[d.shown:]
	d.shown += len(lines)
	if len(lines) > 0 {
		say("%s", title)
	}
	for _, l := range lines {
		text := l.Text
		if f := strings.SplitN(text, "\t", 4); len(f) == 4 {
			text = fmt.Sprintf("%-5s  %s  %s", l.Level, l.Msg, f[3])
		}
		block(text)
	}
}

func (d *demo) startServers(context.Context) error {
	d.servers = map[string]sandbox.Server{}
	for _, s := range []struct {
		h                *sandbox.Host
		proto, addr, use string
	}{
		{d.topo.Backend, "tcp", "10.22.0.2:8080", `"web", "direct" (and "admin" later)`},
		{d.topo.Backend, "tcp", "10.22.0.2:8081", `"web" after the reload`},
		{d.topo.Backend, "udp", "10.22.0.2:5353", `"dns"`},
		{d.topo.Backend, "tcp", "[fd22::2]:8080", `"web6"`},
		{d.topo.Backend, "tcp", "10.22.0.2:9100", `"app-range"`},
		{d.topo.Backend, "tcp", "10.22.0.2:9102", `"app-range"`},
		{d.topo.Other, "tcp", "10.44.0.2:80", "no forward: reached by plain routing"},
	} {
		srv, err := s.h.Listen(s.proto, s.addr)
		if err != nil {
			return err
		}
		d.servers[s.addr] = srv
		say("%-8s %-20s %s", s.h.Name, s.addr+"/"+s.proto, s.use)
	}
	say("")
	say("Each server answers every connection or datagram with \"<host> <source address")
	say("it sees>\" and records it: the demo checks where traffic arrived and from whom.")
	return nil
}

// probe is one connection (TCP) or datagram (UDP) from the client, and the
// server it must reach (want "": none) with which source address.
type probe struct {
	proto, addr, fwd, want, wantFrom, note string
}

// probes runs the probes in turn and prints where each arrived and from
// which source address. fwdd must then log the connection of "web" (log =
// true) from conntrack events; the log is shown under logTitle.
func (d *demo) probes(ctx context.Context, logTitle string, ps []probe) error {
	n := len(d.fwdd.Log())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	var errs []error
	for _, p := range ps {
		row, err := d.probe(ctx, p)
		mark := "ok"
		if err != nil {
			mark, errs = "FAIL", append(errs, fmt.Errorf("client -> %s: %w", p.addr, err))
		}
		fmt.Fprintf(tw, "  %s\tclient -> %s/%s\t[%s]\t%s\t(%s)\n", mark, p.addr, p.proto, p.fwd, row, p.note)
	}
	if err := errors.Join(append(errs, tw.Flush())...); err != nil {
		return err
	}
	if _, err := d.fwdd.WaitLog(n, "new connection", 5*time.Second); err != nil {
		return fmt.Errorf(`no "new connection" log line for "web" (log = true): %w`, err)
	}
	say("")
	d.showLog(logTitle)
	return nil
}

// probe returns where p arrived, or an error when not where it should.
func (d *demo) probe(ctx context.Context, p probe) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	greeting, err := d.topo.Client.Greet(ctx, p.proto, p.addr) // "<host> <source it saw>"
	srv := d.servers[p.want]
	switch {
	case srv == nil && err == nil:
		return "answered", fmt.Errorf("%q, want no forward", greeting)
	case srv == nil:
		return "no answer", nil
	case err != nil:
		return "no answer", err
	}
	_, src, _ := strings.Cut(greeting, " ")
	if !slices.ContainsFunc(srv.Peers(), func(pr sandbox.Peer) bool { return pr.Remote.String() == src }) {
		return "answered elsewhere", fmt.Errorf("%q, not from %s", greeting, p.want)
	}
	from, _, _ := net.SplitHostPort(src)
	row := fmt.Sprintf("arrived at %s\tfrom %s", p.want, from)
	if from != p.wantFrom {
		return row, fmt.Errorf("arrived from %s, want %s", from, p.wantFrom)
	}
	return row, nil
}
