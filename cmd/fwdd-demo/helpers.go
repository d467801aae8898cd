package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// ---- output ----

const width = 78

// header starts the next numbered section.
func (d *demo) header(title string) {
	d.section++
	d.banner(fmt.Sprintf("%d. %s", d.section, title))
}

func (d *demo) banner(title string) {
	h := fmt.Sprintf("== %s ", title)
	fmt.Fprintf(d.out, "\n%s%s\n", h, strings.Repeat("=", max(3, width-len(h))))
}

// say prints one indented line.
func (d *demo) say(format string, args ...any) {
	if format == "" {
		fmt.Fprintln(d.out)
		return
	}
	fmt.Fprintf(d.out, "  "+format+"\n", args...)
}

// block prints text indented under the current line.
func (d *demo) block(text string) {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return
	}
	for _, l := range strings.Split(text, "\n") {
		fmt.Fprintln(d.out, strings.TrimRight("    "+l, " "))
	}
}

func (d *demo) cmdLine(name string, args ...string) {
	d.say("gateway# %s", strings.Join(append([]string{name}, args...), " "))
}

// excerpt keeps the first n lines of text.
func excerpt(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	if len(lines) <= n {
		return text
	}
	return strings.Join(lines[:n], "\n") + fmt.Sprintf("\n... (%d more lines)\n", len(lines)-n)
}

func firstLine(text string) string {
	l, _, _ := strings.Cut(text, "\n")
	return l
}

// nftExcerpt keeps the parts of `nft list table` that say where traffic
// goes: the maps and sets whose elements mention one of the backends. The
// rest (empty maps, marks, counters and the chains that look packets up in
// these maps) is summed up in one line.
func nftExcerpt(text string, backends ...string) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	var out []string
	skipped := 0
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		kind, _, _ := strings.Cut(strings.TrimPrefix(l, "\t"), " ")
		if !strings.HasPrefix(l, "\t") || strings.HasPrefix(l, "\t\t") ||
			(kind != "map" && kind != "set" && kind != "chain") {
			if strings.TrimSpace(l) != "" {
				out = append(out, l)
			}
			continue
		}
		end := i
		for end < len(lines) && lines[end] != "\t}" {
			end++
		}
		if end == len(lines) {
			return excerpt(text, 40) // not the layout we know
		}
		block := lines[i : end+1]
		i = end
		_, elems, ok := strings.Cut(strings.Join(block, "\n"), "elements = ")
		if ok && kind != "chain" && slices.ContainsFunc(backends, func(b string) bool {
			return strings.Contains(elems, b)
		}) {
			out = append(out, block...)
		} else {
			skipped++
		}
	}
	if skipped > 0 && len(out) > 0 {
		last := out[len(out)-1]
		out = append(out[:len(out)-1],
			fmt.Sprintf("\t... and %d more maps, sets and chains (the chains look packets up in these maps)", skipped),
			last)
	}
	return strings.Join(out, "\n") + "\n"
}

// diffLines shows the lines that differ between a and b, with one line of
// context, like a unified diff without the hunk headers.
func diffLines(a, b string) string {
	x := strings.Split(strings.TrimRight(a, "\n"), "\n")
	y := strings.Split(strings.TrimRight(b, "\n"), "\n")
	n, m := len(x), len(y)
	lcs := make([][]int, n+1)
	for i := range lcs {
		lcs[i] = make([]int, m+1)
	}
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	type op struct {
		kind byte
		text string
	}
	var ops []op
	for i, j := 0, 0; i < n || j < m; {
		switch {
		case i < n && j < m && x[i] == y[j]:
			ops = append(ops, op{' ', x[i]})
			i++
			j++
		case i < n && (j == m || lcs[i+1][j] >= lcs[i][j+1]):
			ops = append(ops, op{'-', x[i]})
			i++
		default:
			ops = append(ops, op{'+', y[j]})
			j++
		}
	}
	const context = 1
	keep := make([]bool, len(ops))
	for k, o := range ops {
		if o.kind != ' ' {
			for l := max(0, k-context); l <= min(len(ops)-1, k+context); l++ {
				keep[l] = true
			}
		}
	}
	var sb strings.Builder
	gap := false
	for k, o := range ops {
		if !keep[k] {
			gap = true
			continue
		}
		if gap && sb.Len() > 0 {
			sb.WriteString("  ...\n")
		}
		gap = false
		fmt.Fprintf(&sb, "%c %s\n", o.kind, o.text)
	}
	return sb.String()
}

// ---- files and commands ----

// writeConfig writes the config file, root-owned (we run as root) and 0644
// whatever the umask: fwdd refuses files others could have written.
func (d *demo) writeConfig(text string) error {
	if err := os.WriteFile(d.cfgPath, []byte(text), 0o644); err != nil {
		return err
	}
	return os.Chmod(d.cfgPath, 0o644)
}

// gatewayCmd shows and runs a command in the gateway namespace ("fwdd" is
// the binary under test) and returns its combined output. A non-zero exit
// is an error wrapping the *exec.ExitError.
func (d *demo) gatewayCmd(ctx context.Context, name string, args ...string) (string, error) {
	d.cmdLine(name, args...)
	bin := name
	if name == "fwdd" {
		bin = d.fwdd
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()
	out, err := d.topo.Gateway.Run(ctx, append([]string{bin}, args...)...)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%s %s: %w", name, args[0], ee)
		}
	}
	return string(out), err
}

// ---- the daemon's log ----

// logLines returns the complete lines of the daemon's output from byte
// offset from on, and the offset after them.
func (d *demo) logLines(from int) ([]string, int) {
	out := d.proc.Output()
	end := strings.LastIndexByte(out, '\n') + 1
	if end <= from {
		return nil, from
	}
	return strings.Split(strings.TrimSuffix(out[from:end], "\n"), "\n"), end
}

// logMessage returns the message of a zap console line:
// "<time>\t<LEVEL>\t<message>\t<fields>".
func logMessage(line string) string {
	f := strings.Split(line, "\t")
	if len(f) < 3 {
		return ""
	}
	return f[2]
}

// formatLog drops the timestamp and lines the rest up.
func formatLog(line string) string {
	f := strings.Split(line, "\t")
	if len(f) >= 3 {
		return strings.Join(append([]string{fmt.Sprintf("%-5s", f[1])}, f[2:]...), "  ")
	}
	return line
}

// waitLog waits until a not yet shown daemon log line has message msg and
// returns it. It fails at once if the daemon exits.
func (d *demo) waitLog(ctx context.Context, timeout time.Duration, msg string) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		lines, _ := d.logLines(d.logShown)
		for _, l := range lines {
			if logMessage(l) == msg {
				return l, nil
			}
		}
		select {
		case <-d.proc.Done():
			return "", fmt.Errorf("fwdd exited (%v) without logging %q", d.proc.Wait(), msg)
		case <-ctx.Done():
			return "", context.Cause(ctx)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("no %q log line within %v", msg, timeout)
		}
	}
}

// showNewLog prints the daemon's log lines not shown yet, under title, and
// returns how many there were.
func (d *demo) showNewLog(title string) int {
	lines, end := d.logLines(d.logShown)
	d.logShown = end
	if len(lines) == 0 {
		return 0
	}
	d.say("%s", title)
	for _, l := range lines {
		d.block(formatLog(l))
	}
	return len(lines)
}

// takeNewLog returns the daemon's log lines not shown yet and marks them
// as shown.
func (d *demo) takeNewLog() []string {
	lines, end := d.logLines(d.logShown)
	d.logShown = end
	return lines
}

// dumpDaemonLog prints the rest of the daemon's output after a failure.
func (d *demo) dumpDaemonLog() {
	if d.proc == nil {
		return
	}
	out := d.proc.Output()
	if d.logShown >= len(out) {
		return
	}
	fmt.Fprintln(d.out, "fwdd's log since the last excerpt:")
	d.block(out[d.logShown:])
	d.logShown = len(out)
}

// ---- servers and traffic ----

// server is a sandbox TCP or UDP server that records who reached it.
type server struct {
	host  *sandbox.Host
	peers func() []sandbox.Peer
}

func (d *demo) listen(h *sandbox.Host, proto, addr string) (*server, error) {
	if proto == "udp" {
		s, err := h.ListenUDP(addr)
		if err != nil {
			return nil, err
		}
		return &server{host: h, peers: s.Peers}, nil
	}
	s, err := h.ListenTCP(addr)
	if err != nil {
		return nil, err
	}
	return &server{host: h, peers: s.Peers}, nil
}

// probe is one connection (TCP) or datagram (UDP) and what should happen.
type probe struct {
	from     *sandbox.Host
	proto    string // "tcp" or "udp"
	addr     string // destination as the client sees it
	fwd      string // forward expected to handle it; "" for none
	want     string // server address it must arrive at; "" = must be refused
	wantFrom string // source address the server must see
	note     string
}

// probes runs the probes one after the other and prints a table: which
// server each one reached and with which source address.
func (d *demo) probes(ctx context.Context, ps []probe) error {
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	var errs []error
	for _, p := range ps {
		row, err := d.probe(ctx, p)
		mark := "ok"
		if err != nil {
			mark = "FAIL"
			errs = append(errs, err)
		}
		fmt.Fprintf(tw, "  %s\t%s\n", mark, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return errors.Join(errs...)
}

func (d *demo) probe(ctx context.Context, p probe) (row []string, err error) {
	what := fmt.Sprintf("%s -> %s/%s", p.from.Name, p.addr, p.proto)
	fwd := "(no forward)"
	if p.fwd != "" {
		fwd = "[" + p.fwd + "]"
	}
	row = []string{what, fwd}
	before := make([]int, len(d.servers))
	for i, s := range d.servers {
		before[i] = len(s.peers())
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	switch p.proto {
	case "tcp":
		var c net.Conn
		c, _, err = p.from.DialTCP(pctx, p.addr)
		if err == nil {
			c.Close()
		}
	case "udp":
		_, err = p.from.AskUDP(pctx, p.addr, []byte("hello"))
	default:
		err = fmt.Errorf("unknown protocol %q", p.proto)
	}
	var srv *server
	var peer sandbox.Peer
	for i, s := range d.servers {
		if peers := s.peers(); len(peers) > before[i] {
			srv, peer = s, peers[len(peers)-1]
		}
	}
	note := "(" + p.note + ")"

	if p.want == "" {
		if srv != nil {
			return append(row, fmt.Sprintf("arrived at %s %s", srv.host.Name, peer.Local), "", note),
				fmt.Errorf("%s: reached %s %s, want no forward", what, srv.host.Name, peer.Local)
		}
		if err == nil {
			return append(row, "answered", "", note), fmt.Errorf("%s: answered, want no forward", what)
		}
		outcome := "no answer"
		if errors.Is(err, syscall.ECONNREFUSED) {
			outcome = "refused"
		}
		return append(row, outcome, "", note), nil
	}
	if srv == nil {
		if err == nil {
			err = errors.New("answered, but by none of the demo's servers")
		}
		return append(row, "no answer", "", note), fmt.Errorf("%s: %w", what, err)
	}
	row = append(row, fmt.Sprintf("arrived at %s %s", srv.host.Name, peer.Local), "from "+peer.Remote.Addr().String(), note)
	switch {
	case err != nil:
		return row, fmt.Errorf("%s: %w", what, err)
	case peer.Local.String() != p.want:
		return row, fmt.Errorf("%s: arrived at %s, want %s", what, peer.Local, p.want)
	case peer.Remote.Addr().String() != p.wantFrom:
		return row, fmt.Errorf("%s: the server saw source %s, want %s", what, peer.Remote.Addr(), p.wantFrom)
	}
	return row, nil
}

// echo checks that a connection to a sandbox TCP server still echoes.
func echo(c net.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(probeTimeout)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	buf := make([]byte, len(msg)+1)
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg+"\n" {
		return fmt.Errorf("echoed %q, want %q", buf, msg+"\n")
	}
	return nil
}
