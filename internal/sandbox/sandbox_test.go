package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// rootLinks returns "ip -o link" of the root namespace (read-only).
func rootLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -o link: %v: %s", err, out)
	}
	return string(out)
}

// rootSysctl reads a sysctl of the root namespace (read-only; the test
// goroutine never switches namespaces).
func rootSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func netnsList(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			names = append(names, f[0])
		}
	}
	return names
}

func withPrefix(names []string, prefix string) []string {
	var r []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix+"-") {
			r = append(r, n)
		}
	}
	return r
}

// uniqueBase returns a base of its own for tests that crash runs on
// purpose, so that concurrent test binaries do not sweep them first.
func uniqueBase(t *testing.T) string {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	base := "fwddt_" + hex.EncodeToString(b[:])
	t.Cleanup(func() { Sweep(base) }) // in case the test failed midway
	return base
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echo checks that c still echoes.
func echo(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := Echo(c, msg); err != nil {
		t.Fatal(err)
	}
}

func TestKernelTopologyLocal(t *testing.T) {
	needRoot(t)
	sb := New(t)
	ctx := ctxT(t)
	gw := sb.Gateway

	if len(sb.Hosts()) != 5 {
		t.Fatalf("hosts = %d, want 5", len(sb.Hosts()))
	}
	for _, h := range sb.Hosts() {
		if !strings.HasPrefix(h.NS, sb.Prefix+"-") || h.Fd() < 0 {
			t.Errorf("host %s: NS %q fd %d", h.Name, h.NS, h.Fd())
		}
	}
	if v, err := gw.Sysctl("net.ipv4.ip_forward"); err != nil || v != "0" {
		t.Fatalf("gateway ip_forward = %q, %v; want 0", v, err)
	}

	tcp, err := gw.ListenTCP(":7000") // dual-stack
	if err != nil {
		t.Fatal(err)
	}
	udp, err := gw.ListenUDP(":7001") // dual-stack
	if err != nil {
		t.Fatal(err)
	}
	udp4, err := gw.ListenUDP("0.0.0.0:7002")
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		from *Host
		to   string // gateway address
		src  string // client address as seen by the gateway
	}{
		{sb.Client, "10.11.0.1", "10.11.0.2"},
		{sb.Client, "fd11::1", "fd11::2"},
		{sb.Client2, "10.33.0.1", "10.33.0.2"},
		{sb.Client2, "fd33::1", "fd33::2"},
		// The gateway's backend-side address, from the client side: the
		// reply must leave from 10.22.0.1 (pktinfo), not from 10.11.0.1.
		{sb.Client, "10.22.0.1", "10.11.0.2"},
		{sb.Backend, "10.22.0.1", "10.22.0.2"},
		{sb.Other, "fd44::1", "fd44::2"},
	}
	for _, c := range cases {
		dst := net.JoinHostPort(c.to, "7000")
		conn, greeting, err := c.from.DialTCP(ctx, dst)
		if err != nil {
			t.Fatalf("%s -> %s: %v", c.from.Name, dst, err)
		}
		if want := "gateway " + c.src + ":"; !strings.HasPrefix(greeting, want) &&
			!strings.HasPrefix(greeting, "gateway ["+c.src+"]:") {
			t.Errorf("%s -> %s: greeting %q, want source %s", c.from.Name, dst, greeting, c.src)
		}
		echo(t, conn, "ping "+dst+"\n")
		conn.Close()

		dst = net.JoinHostPort(c.to, "7001")
		reply, err := c.from.AskUDP(ctx, dst, []byte("hi"))
		if err != nil {
			t.Fatalf("udp %s -> %s: %v", c.from.Name, dst, err)
		}
		if !strings.Contains(reply, c.src) {
			t.Errorf("udp %s -> %s: reply %q, want source %s", c.from.Name, dst, reply, c.src)
		}
	}
	if n := len(tcp.Peers()); n != len(cases) {
		t.Errorf("tcp peers = %d, want %d", n, len(cases))
	}
	for i, p := range udp.Peers() {
		if got, want := p.Local.Addr().String(), cases[i].to; got != want {
			t.Errorf("udp peer %d: local %s, want %s", i, got, want)
		}
		if got, want := p.Remote.Addr().String(), cases[i].src; got != want {
			t.Errorf("udp peer %d: remote %s, want %s", i, got, want)
		}
	}

	// IPv4-only socket, fixed source port.
	reply, err := sb.Client.AskUDP(ctx, "10.22.0.1:7002", []byte("x"), FromPort(40000))
	if err != nil {
		t.Fatal(err)
	}
	if want := "gateway 10.11.0.2:40000"; reply != want {
		t.Errorf("reply %q, want %q", reply, want)
	}
	if p := udp4.Peers(); len(p) != 1 || p[0].Local.String() != "10.22.0.1:7002" {
		t.Errorf("udp4 peers %v", p)
	}
	// Fixed TCP source port, twice in a row: SO_REUSEADDR for the bind,
	// SetLinger(0) so no TIME_WAIT entry blocks the same 4-tuple.
	for range 2 {
		c, greeting, err := sb.Client.DialTCP(ctx, "[fd11::1]:7000", FromPort(40001))
		if err != nil {
			t.Fatal(err)
		}
		if want := "gateway [fd11::2]:40001"; greeting != want {
			t.Errorf("greeting %q, want %q", greeting, want)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
}

func TestKernelRouting(t *testing.T) {
	needRoot(t)
	rootFwd := rootSysctl(t, "net.ipv4.ip_forward")
	rootFwd6 := rootSysctl(t, "net.ipv6.conf.all.forwarding")
	sb := New(t)
	gw := sb.Gateway

	if _, err := sb.Backend.ListenTCP(":8000"); err != nil {
		t.Fatal(err)
	}
	bu, err := sb.Backend.ListenUDP(":8001")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Other.ListenTCP(":8000"); err != nil {
		t.Fatal(err)
	}

	// Forwarding is off: the backend is not reachable from the client.
	short, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	_, _, err = sb.Client.DialTCP(short, "10.22.0.2:8000")
	cancel()
	if err == nil {
		t.Fatal("reached the backend with ip_forward=0")
	}

	if err := gw.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := gw.SetSysctl("net.ipv6.conf.all.forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	// Read back through an independent path (ip netns exec).
	out, err := gw.Run(ctxT(t), "cat", "/proc/sys/net/ipv4/ip_forward")
	if err != nil || strings.TrimSpace(string(out)) != "1" {
		t.Fatalf("ip_forward in gateway = %q, %v", out, err)
	}
	if got := rootSysctl(t, "net.ipv4.ip_forward"); got != rootFwd {
		t.Fatalf("root ip_forward changed: %s -> %s", rootFwd, got)
	}
	if got := rootSysctl(t, "net.ipv6.conf.all.forwarding"); got != rootFwd6 {
		t.Fatalf("root ipv6 forwarding changed: %s -> %s", rootFwd6, got)
	}

	ctx := ctxT(t)
	cases := []struct {
		from *Host
		to   *Host
		dst  string
		src  string
	}{
		{sb.Client, sb.Backend, "10.22.0.2", "10.11.0.2"},
		{sb.Client, sb.Backend, "fd22::2", "fd11::2"},
		{sb.Client2, sb.Backend, "10.22.0.2", "10.33.0.2"},
		{sb.Client2, sb.Other, "fd44::2", "fd33::2"},
		{sb.Backend, sb.Other, "10.44.0.2", "10.22.0.2"},
	}
	for _, c := range cases {
		var conn net.Conn
		var greeting string
		err := Eventually(5*time.Second, func() error {
			var err error
			conn, greeting, err = c.from.DialTCP(ctx, net.JoinHostPort(c.dst, "8000"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("%s %s:", c.to.Name, c.src)
		if strings.Contains(c.src, ":") {
			want = fmt.Sprintf("%s [%s]:", c.to.Name, c.src)
		}
		if !strings.HasPrefix(greeting, want) {
			t.Errorf("%s -> %s: greeting %q, want prefix %q (no NAT)", c.from.Name, c.dst, greeting, want)
		}
		echo(t, conn, "through the gateway\n")
		conn.Close()
	}
	for _, dst := range []string{"10.22.0.2:8001", "[fd22::2]:8001"} {
		if _, err := sb.Client.AskUDP(ctx, dst, []byte("q")); err != nil {
			t.Fatal(err)
		}
	}
	var remotes []string
	for _, r := range bu.Remotes() {
		remotes = append(remotes, r.Addr().String())
	}
	if !slices.Equal(remotes, []string{"10.11.0.2", "fd11::2"}) {
		t.Errorf("backend udp remotes %v", remotes)
	}
}

func TestKernelCloseCleansUp(t *testing.T) {
	needRoot(t)
	before := rootLinks(t)
	var logs strings.Builder
	var mu sync.Mutex
	sb, err := Build(Options{
		StopGrace: 300 * time.Millisecond,
		Output: writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(p)
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			sb.Close()
		}
	}()
	if got := withPrefix(netnsList(t), sb.Prefix); len(got) != 5 {
		t.Fatalf("namespaces %v, want 5", got)
	}
	if _, err := os.Stat(lockPath(sb.Prefix)); err != nil {
		t.Fatalf("run lock: %v", err)
	}
	if fi, err := os.Stat(sb.Dir()); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("run dir: %v %v", fi, err)
	}
	if err := os.WriteFile(filepath.Join(sb.Dir(), "x.toml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	// A process that ignores SIGTERM: Close must SIGKILL it.
	stubborn, err := sb.Backend.Start(t.Context(), "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	if err := Eventually(5*time.Second, func() error {
		if !strings.Contains(stubborn.Output(), "ready") {
			return fmt.Errorf("output %q", stubborn.Output())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// An open client connection and servers.
	if _, err := sb.Gateway.ListenTCP("10.11.0.1:9000"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := sb.Client.DialTCP(t.Context(), "10.11.0.1:9000"); err != nil {
		t.Fatal(err)
	}

	if got := rootLinks(t); got != before {
		t.Fatalf("root links changed by setup:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	closed = true
	if err := sb.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := sb.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	select {
	case <-stubborn.Done():
	default:
		t.Fatal("process still running after Close")
	}
	if err := stubborn.Signal(os.Interrupt); err != os.ErrProcessDone {
		t.Errorf("signal after exit: %v", err)
	}
	if got := withPrefix(netnsList(t), sb.Prefix); len(got) != 0 {
		t.Fatalf("namespaces left after Close: %v", got)
	}
	if _, err := os.Stat(lockPath(sb.Prefix)); !os.IsNotExist(err) {
		t.Fatalf("run lock left: %v", err)
	}
	if _, err := os.Stat(sb.Dir()); !os.IsNotExist(err) {
		t.Fatalf("run dir left: %v", err)
	}
	if got := rootLinks(t); got != before {
		t.Fatalf("root links changed:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	for _, h := range sb.Hosts() {
		if h.Fd() != -1 {
			t.Errorf("%s: fd still open", h.Name)
		}
		if err := h.Do(func() error { return nil }); err == nil {
			t.Errorf("%s: Do after Close succeeded", h.Name)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs.String(), "[backend] ready\n") {
		t.Errorf("streamed output %q", logs.String())
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func TestKernelProc(t *testing.T) {
	needRoot(t)
	sb := New(t, Options{NoClient2: true, NoOther: true, StopGrace: 2 * time.Second})
	if sb.Client2 != nil || sb.Other != nil || len(sb.Hosts()) != 3 {
		t.Fatalf("optional hosts present: %v", sb.Hosts())
	}
	if got := len(sb.Gateway.Links); got != 2 {
		t.Fatalf("gateway links = %d, want 2", got)
	}
	p, err := sb.Gateway.Start(t.Context(), "sh", "-c",
		`echo out; echo err >&2; trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID() <= 0 {
		t.Fatalf("pid %d", p.PID())
	}
	if err := Eventually(5*time.Second, func() error {
		if o := p.Output(); !strings.Contains(o, "out\n") || !strings.Contains(o, "err\n") {
			return fmt.Errorf("output %q", o)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The process runs in the gateway namespace.
	out, err := sb.Gateway.Run(t.Context(), "ip", "netns", "identify", fmt.Sprint(p.PID()))
	if err != nil || strings.TrimSpace(string(out)) != sb.Gateway.NS {
		t.Fatalf("ip netns identify = %q, %v; want %s", out, err, sb.Gateway.NS)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if !strings.Contains(p.Output(), "bye") {
		t.Errorf("output %q: SIGTERM handler did not run", p.Output())
	}

	// Cmd: extra environment, output also to a writer, and a process
	// group of its own (a terminal's Ctrl-C does not reach it).
	var tee strings.Builder
	var teeMu sync.Mutex
	e, err := sb.Gateway.StartCmd(t.Context(), Cmd{
		Args: []string{"sh", "-c", `echo "x=$SANDBOX_X"; exec sleep 60`},
		Env:  []string{"SANDBOX_X=42"},
		Output: writerFunc(func(p []byte) (int, error) {
			teeMu.Lock()
			defer teeMu.Unlock()
			return tee.Write(p)
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := syscall.Getpgid(e.PID())
	if err != nil || pgid != e.PID() {
		t.Errorf("process group %d, %v; want its own (%d)", pgid, err, e.PID())
	}
	if err := Eventually(5*time.Second, func() error {
		teeMu.Lock()
		defer teeMu.Unlock()
		if tee.String() != "x=42\n" || e.Output() != "x=42\n" {
			return fmt.Errorf("output %q, tee %q; want x=42", e.Output(), tee.String())
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	_ = e.Stop() // killed by SIGTERM: an exit error

	// Cancelling the context stops the process too.
	ctx, cancel := context.WithCancel(t.Context())
	q, err := sb.Client.Start(ctx, "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-q.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("process not stopped by context")
	}

	// Run reports failures with output.
	if _, err := sb.Client.Run(t.Context(), "sh", "-c", "echo boom; exit 3"); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("run error %v, want output in it", err)
	}
}

func TestKernelDo(t *testing.T) {
	needRoot(t)
	sb := New(t, Options{NoClient2: true, NoOther: true})
	var names []string
	if err := sb.Gateway.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"bak0", "cli0", "lo"}) {
		t.Errorf("gateway interfaces %v", names)
	}
	// Panics propagate to the caller.
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want boom", r)
			}
		}()
		sb.Client.Do(func() error { panic("boom") })
	}()
	// The calling goroutine's namespace is untouched.
	root, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		sb.Backend.Do(func() error { return nil })
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != root {
		t.Errorf("namespace changed: %s -> %s", root, now)
	}
	if err := sb.Gateway.SetSysctl("kernel.hostname", "x"); err == nil {
		t.Error("non-net sysctl accepted")
	}
}

func TestKernelSweep(t *testing.T) {
	needRoot(t)
	base := uniqueBase(t)
	live, err := Build(Options{Base: base, NoClient2: true, NoOther: true})
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	crashed, err := Build(Options{Base: base, NoClient2: true, NoOther: true})
	if err != nil {
		t.Fatal(err)
	}
	p, err := crashed.Backend.Start(t.Context(), "sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: the run lock is released, nothing else cleaned.
	crashed.lock.Close()

	swept, err := Sweep(base)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(swept)
	want := withPrefix(netnsList(t), crashed.Prefix)
	if len(want) != 0 {
		t.Errorf("crashed run's namespaces left: %v", want)
	}
	if len(swept) != 3 || !strings.HasPrefix(swept[0], crashed.Prefix+"-") {
		t.Errorf("swept %v, want the 3 namespaces of %s", swept, crashed.Prefix)
	}
	if _, err := os.Stat(lockPath(crashed.Prefix)); !os.IsNotExist(err) {
		t.Errorf("crashed run's lock file left: %v", err)
	}
	if _, err := os.Stat(crashed.Dir()); !os.IsNotExist(err) {
		t.Errorf("crashed run's dir left: %v", err)
	}
	if _, err := os.Stat(live.Dir()); err != nil {
		t.Errorf("live run's dir: %v", err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Error("process of crashed run not killed")
	}
	if got := withPrefix(netnsList(t), live.Prefix); len(got) != 3 {
		t.Errorf("live run's namespaces %v, want 3", got)
	}
	if _, err := os.Stat(lockPath(crashed.Prefix)); !os.IsNotExist(err) {
		t.Errorf("crashed run's lock file left: %v", err)
	}
	// The live run is still usable.
	if _, err := live.Gateway.ListenTCP("10.11.0.1:80"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := live.Client.DialTCP(t.Context(), "10.11.0.1:80"); err != nil {
		t.Fatal(err)
	}
	if err := live.Close(); err != nil {
		t.Fatal(err)
	}
	// Closing the crashed run's handle after a sweep is harmless.
	if err := crashed.Close(); err != nil {
		t.Errorf("close after sweep: %v", err)
	}
}

// TestKernelCrashRecovery runs a child test binary that builds a topology,
// starts a process and exits without cleaning up; Sweep must then remove
// the namespaces it left.
func TestKernelCrashRecovery(t *testing.T) {
	needRoot(t)
	base := os.Getenv("SANDBOX_CRASH_BASE")
	if base != "" {
		sb, err := Build(Options{Base: base, NoClient2: true, NoOther: true})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		p, err := sb.Backend.Start(context.Background(), "sleep", "60")
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		fmt.Printf("PREFIX %s PID %d\n", sb.Prefix, p.PID())
		os.Exit(1) // crash: no Close
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestKernelCrashRecovery$")
	base = uniqueBase(t)
	cmd.Env = append(os.Environ(), "SANDBOX_CRASH_BASE="+base)
	out, _ := cmd.CombinedOutput()
	var prefix string
	var pid int
	for _, l := range strings.Split(string(out), "\n") {
		if _, err := fmt.Sscanf(l, "PREFIX %s PID %d", &prefix, &pid); err == nil {
			break
		}
	}
	if prefix == "" {
		t.Fatalf("child output: %s", out)
	}
	left := withPrefix(netnsList(t), prefix)
	if len(left) != 3 {
		t.Fatalf("crashed child left %v, want 3 namespaces", left)
	}
	// Pdeathsig: the child's process died with it.
	if err := Eventually(5*time.Second, func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return fmt.Errorf("pid %d still alive", pid)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	swept, err := Sweep(base)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(swept)
	slices.Sort(left)
	if !slices.Equal(swept, left) {
		t.Errorf("swept %v, want %v", swept, left)
	}
	if got := withPrefix(netnsList(t), prefix); len(got) != 0 {
		t.Errorf("left after sweep: %v", got)
	}
	if _, err := os.Stat(lockPath(prefix)); !os.IsNotExist(err) {
		t.Errorf("lock file left: %v", err)
	}
}
