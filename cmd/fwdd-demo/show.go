package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// ---- the configs: forwards, rendered with the TOML encoder ----

// forward is a [[forward]] of fwdd.toml (deploy/fwdd.toml explains every key).
type forward struct {
	Note    string   `toml:"-"` // written as a comment above it
	Name    string   `toml:"name"`
	Proto   string   `toml:"proto,omitempty"`
	Port    any      `toml:"port"`
	To      string   `toml:"to"`
	SNAT    string   `toml:"snat,omitempty"`
	Sources []string `toml:"sources,omitempty"`
	Log     bool     `toml:"log,omitempty"`
}

var firstForwards = []forward{
	{Note: "HTTP; the backend sees the gateway as the source (snat defaults to masquerade)",
		Name: "web", Port: 80, To: "10.22.0.2:8080", Log: true},
	{Name: "dns", Proto: "udp", Port: 53, To: "10.22.0.2:5353"},
	{Note: "the same web server over IPv6", Name: "web6", Port: 80, To: "[fd22::2]:8080"},
	{Note: "no source NAT: the backend sees the client (and must route its replies back here)",
		Name: "direct", Port: 81, To: "10.22.0.2:8080", SNAT: "none"},
	{Note: "a range mapped 1:1: 9000 -> 9100, ..., 9002 -> 9102",
		Name: "app-range", Port: "9000-9002", To: "10.22.0.2:9100-9102"},
}

var adminForward = []forward{{Note: "only for clients in 10.11.0.0/24",
	Name: "admin", Port: 82, To: "10.22.0.2:8080", Sources: []string{"10.11.0.0/24"}}}

var brokenForward = []forward{{Name: "broken", Port: 70000, To: "10.22.0.2"}}

// secondForwards: "web" moves to port 8081, "app-range" is gone, "admin" is new.
func secondForwards() []forward {
	var fs []forward
	for _, f := range firstForwards {
		switch f.Name {
		case "web":
			f.To = "10.22.0.2:8081"
		case "app-range":
			continue
		}
		fs = append(fs, f)
	}
	return append(fs, adminForward...)
}

func render(fs []forward) string {
	var b bytes.Buffer
	for _, f := range fs {
		if b.Len() > 0 {
			b.WriteString("\n")
		}
		if f.Note != "" {
			b.WriteString("# " + f.Note + "\n")
		}
		enc := toml.NewEncoder(&b)
		enc.Indent = ""
		if err := enc.Encode(map[string][]forward{"forward": {f}}); err != nil {
			panic(err) // a bug in the tables above
		}
	}
	return b.String()
}

// ---- output ----

func (d *demo) header(title string) {
	d.section++
	banner(fmt.Sprintf("%d. %s", d.section, title))
}

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

func firstLine(text string) string {
	l, _, _ := strings.Cut(text, "\n")
	return l
}

// showLog prints the daemon's log lines not shown yet, without timestamps.
func (d *demo) showLog(title string) {
	lines := d.fwdd.Log()[d.shown:]
	d.shown += len(lines)
	if len(lines) > 0 {
		say("%s", title)
	}
	for _, l := range lines {
		if f := strings.SplitN(l.Text, "\t", 4); len(f) == 4 {
			block(fmt.Sprintf("%-5s  %s  %s", l.Level, l.Msg, f[3]))
		} else {
			block(l.Text)
		}
	}
}

// ---- servers and traffic ----

// peers lists who reached one of the demo's servers.
type peers func() []sandbox.Peer

func (d *demo) startServers(context.Context) error {
	d.servers = map[string]peers{}
	for _, s := range []struct{ host, proto, addr, role string }{
		{"backend", "tcp", "10.22.0.2:8080", `"web", "direct" (and "admin" later)`},
		{"backend", "tcp", "10.22.0.2:8081", `"web" after the reload`},
		{"backend", "udp", "10.22.0.2:5353", `"dns"`},
		{"backend", "tcp", "[fd22::2]:8080", `"web6"`},
		{"backend", "tcp", "10.22.0.2:9100", `"app-range"`},
		{"backend", "tcp", "10.22.0.2:9102", `"app-range"`},
		{"other", "tcp", "10.44.0.2:80", "no forward: reached by plain routing"},
	} {
		h := d.topo.Backend
		if s.host == "other" {
			h = d.topo.Other
		}
		if s.proto == "udp" {
			u, err := h.ListenUDP(s.addr)
			if err != nil {
				return err
			}
			d.servers[s.addr] = u.Peers
		} else {
			t, err := h.ListenTCP(s.addr)
			if err != nil {
				return err
			}
			d.servers[s.addr] = t.Peers
		}
		say("%-8s %-20s %s", s.host, s.addr+"/"+s.proto, s.role)
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

// probes runs the probes one after the other and prints a table: where
// each one arrived and with which source address. A connection of "web"
// (log = true) must then be logged, from conntrack events a moment later;
// the log is shown under logTitle.
func (d *demo) probes(ctx context.Context, logTitle string, ps []probe) error {
	n := len(d.fwdd.Log())
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	var errs []error
	for _, p := range ps {
		row, err := d.probe(ctx, p)
		mark := "ok"
		if err != nil {
			mark = "FAIL"
			errs = append(errs, err)
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
	var before int
	if seen := d.servers[p.want]; seen != nil {
		before = len(seen())
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var err error
	if p.proto == "udp" {
		_, err = d.topo.Client.AskUDP(pctx, p.addr, []byte("hello"))
	} else {
		var c net.Conn
		if c, _, err = d.topo.Client.DialTCP(pctx, p.addr); err == nil {
			c.Close()
		}
	}
	switch {
	case p.want == "" && err == nil:
		return "answered", fmt.Errorf("client -> %s: answered, want no forward", p.addr)
	case p.want == "":
		return "no answer", nil
	case err != nil:
		return "no answer", fmt.Errorf("client -> %s: %w", p.addr, err)
	}
	seen := d.servers[p.want]()
	if len(seen) == before {
		return "answered elsewhere", fmt.Errorf("client -> %s: answered, but not by %s", p.addr, p.want)
	}
	from := seen[len(seen)-1].Remote.Addr().String()
	row := fmt.Sprintf("arrived at %s\tfrom %s", p.want, from)
	if from != p.wantFrom {
		return row, fmt.Errorf("client -> %s: arrived from %s, want %s", p.addr, from, p.wantFrom)
	}
	return row, nil
}
