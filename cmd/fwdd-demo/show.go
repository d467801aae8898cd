package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
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

// mapsWith keeps the top-level blocks of `nft list table` (maps, sets)
// whose elements mention one of addrs; the rest is summed up in one line.
func mapsWith(table string, addrs ...string) string {
	var kept []string
	skipped := 0
	lines := strings.Split(table, "\n")
	for i := 0; i < len(lines); i++ {
		if !strings.HasPrefix(lines[i], "\t") || strings.HasPrefix(lines[i], "\t\t") {
			continue // the table's own lines
		}
		j := i
		for j < len(lines)-1 && lines[j] != "\t}" {
			j++
		}
		blk := strings.Join(lines[i:j+1], "\n")
		i = j
		if strings.Contains(blk, "elements") && slices.ContainsFunc(addrs, func(a string) bool { return strings.Contains(blk, a) }) {
			kept = append(kept, blk)
		} else {
			skipped++
		}
	}
	return "table inet fwdd {\n" + strings.Join(kept, "\n") +
		fmt.Sprintf("\n\t... and %d more maps, sets and chains (the chains look packets up in these maps)\n}", skipped)
}

// ---- servers and traffic ----

// server is a sandbox TCP or UDP server that records who reached it.
type server struct {
	host  *sandbox.Host
	peers func() []sandbox.Peer
}

func (d *demo) startServers(context.Context) error {
	be, other := d.topo.Backend, d.topo.Other
	for _, s := range []struct {
		host        *sandbox.Host
		proto, addr string
		role        string
	}{
		{be, "tcp", "10.22.0.2:8080", `"web", "direct" (and "admin" later)`},
		{be, "tcp", "10.22.0.2:8081", `"web" after the reload`},
		{be, "udp", "10.22.0.2:5353", `"dns"`},
		{be, "tcp", "[fd22::2]:8080", `"web6"`},
		{be, "tcp", "10.22.0.2:9100", `"app-range"`},
		{be, "tcp", "10.22.0.2:9101", `"app-range"`},
		{be, "tcp", "10.22.0.2:9102", `"app-range"`},
		{other, "tcp", "10.44.0.2:80", "no forward: reached by plain routing"},
	} {
		srv := server{host: s.host}
		if s.proto == "udp" {
			u, err := s.host.ListenUDP(s.addr)
			if err != nil {
				return err
			}
			srv.peers = u.Peers
		} else {
			t, err := s.host.ListenTCP(s.addr)
			if err != nil {
				return err
			}
			srv.peers = t.Peers
		}
		d.servers = append(d.servers, srv)
		say("%-8s %-20s %s", s.host.Name, s.addr+"/"+s.proto, s.role)
	}
	say("")
	say("Each server answers every connection or datagram with \"<host> <source address")
	say("it sees>\" and records it: the demo checks where traffic arrived and from whom.")
	return nil
}

// probe is one connection (TCP) or datagram (UDP) from the client, and
// where it must arrive (want "": nowhere) with which source address.
type probe struct {
	proto, addr, fwd, want, wantFrom, note string
}

// probes runs the probes one after the other and prints a table: which
// server each one reached and with which source address. A connection of
// "web" (log = true) must then be logged, from conntrack events a moment
// later; the log is shown under logTitle.
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
		fmt.Fprintf(tw, "  %s\t%s\n", mark, row)
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

func (d *demo) probe(ctx context.Context, p probe) (string, error) {
	what := fmt.Sprintf("client -> %s/%s", p.addr, p.proto)
	before := make([]int, len(d.servers))
	for i, s := range d.servers {
		before[i] = len(s.peers())
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
	var srv *server
	var peer sandbox.Peer
	for i, s := range d.servers {
		if peers := s.peers(); len(peers) > before[i] {
			srv, peer = &d.servers[i], peers[len(peers)-1]
		}
	}
	got, from, fwd := "no answer", "", "(no forward)"
	if errors.Is(err, syscall.ECONNREFUSED) {
		got = "refused"
	}
	if srv != nil {
		got, from = fmt.Sprintf("arrived at %s %s", srv.host.Name, peer.Local), "from "+peer.Remote.Addr().String()
	}
	if p.fwd != "" {
		fwd = "[" + p.fwd + "]"
	}
	row := strings.Join([]string{what, fwd, got, from, "(" + p.note + ")"}, "\t")
	switch {
	case p.want == "" && (srv != nil || err == nil):
		return row, fmt.Errorf("%s: %s, want no forward", what, got)
	case p.want == "":
		return row, nil
	case err != nil:
		return row, fmt.Errorf("%s: %w", what, err)
	case srv == nil:
		return row, fmt.Errorf("%s: answered, but by none of the demo's servers", what)
	case peer.Local.String() != p.want || peer.Remote.Addr().String() != p.wantFrom:
		return row, fmt.Errorf("%s: %s %s, want %s from %s", what, got, from, p.want, p.wantFrom)
	}
	return row, nil
}
