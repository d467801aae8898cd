package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultBase is the base of the namespace prefix when Options.Base is empty.
const DefaultBase = "fwdd"

// LockDir holds one lock file per live run (see [Sweep]).
const LockDir = "/run/fwdd-sandbox"

// setupTimeout bounds each setup/teardown command.
const setupTimeout = 30 * time.Second

// Options configure [Build] and [New]. The zero value builds the full
// standard topology.
type Options struct {
	// Base is the first part of the namespace prefix "<Base>-<6 hex>"
	// (default "fwdd"). It may contain letters, digits and '_'.
	Base string
	// Logf receives a line for every setup/teardown command. Nil discards
	// them for Build and uses tb.Logf for New.
	Logf func(format string, args ...any)
	// Output, if set, additionally receives the output of every process
	// started with Host.Start, line by line, prefixed with "[host] ".
	// New defaults it to tb.Logf.
	Output io.Writer
	// NoClient2 omits client2 and the gateway's cli1 interface.
	NoClient2 bool
	// NoOther omits other and the gateway's oth0 interface.
	NoOther bool
	// Bare builds no hosts at all: the caller builds its own topology
	// (e.g. two gateways sharing LANs) with AddHost and Connect, and every
	// host field of the Topology stays nil.
	Bare bool
	// StopGrace is how long Proc.Stop waits after SIGTERM before sending
	// SIGKILL (default 5s).
	StopGrace time.Duration
	// IP is the path of the iproute2 "ip" binary (default: "ip" from PATH,
	// falling back to /usr/sbin/ip).
	IP string
	// BackendAddrs gives the backend host this many more addresses on its
	// eth0 (at most 200): 10.22.0.3, 10.22.0.4, ... and fd22::3, ...,
	// listed in its Host.Extra. Servers bound to each stand for separate
	// backends of one forward.
	BackendAddrs int
}

// Link describes one interface of a host and the addresses on it.
type Link struct {
	Name string       // interface name inside the host's namespace
	IPv4 netip.Prefix // e.g. 10.11.0.1/24
	IPv6 netip.Prefix // e.g. fd11::1/64
	Peer *Host        // host at the other end of the veth pair
}

// Topology is a built sandbox. Client2 and Other are nil when disabled in
// [Options].
type Topology struct {
	// Prefix is the unique per-run namespace prefix, "<base>-<6 hex>".
	Prefix  string
	Client  *Host
	Client2 *Host
	Gateway *Host
	Backend *Host
	Other   *Host

	opts  Options
	ip    string
	hosts []*Host // creation order
	lock  *os.File

	closeOnce sync.Once
	closeErr  error
}

// segment describes one leaf host and its veth pair to the gateway.
type segment struct {
	host   string // leaf host name
	gwIf   string // gateway-side interface name
	subnet int    // second octet / second hextet: 10.<n>.0.0/24, fd<n>::/64
}

// LeafIface is the name of every leaf host's interface toward the gateway.
const LeafIface = "eth0"

// New builds the topology for a test or benchmark, registers its Close with
// tb.Cleanup and fails tb if setup fails. It skips tb when not running as
// root. At most one Options may be given.
func New(tb testing.TB, opts ...Options) *Topology {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("sandbox: needs root (network namespaces)")
	}
	var o Options
	if len(opts) > 1 {
		tb.Fatalf("sandbox.New: at most one Options, got %d", len(opts))
	}
	if len(opts) == 1 {
		o = opts[0]
	}
	if o.Logf == nil {
		o.Logf = tb.Logf
	}
	if o.Output == nil {
		o.Output = tbWriter{tb}
	}
	topo, err := Build(o)
	if err != nil {
		tb.Fatalf("sandbox: %v", err)
	}
	tb.Cleanup(func() {
		if err := topo.Close(); err != nil {
			tb.Errorf("sandbox: close: %v", err)
		}
	})
	return topo
}

// tbWriter logs each write with tb.Logf.
type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Build creates the standard topology (see the package documentation); it
// needs root. Before that it sweeps stale namespaces of crashed runs with
// the same base. On error everything created so far is removed again. The
// caller must call Close.
func Build(opts Options) (*Topology, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("sandbox: needs root to create network namespaces (run with sudo)")
	}
	if opts.Base == "" {
		opts.Base = DefaultBase
	}
	if !baseRE.MatchString(opts.Base) {
		return nil, fmt.Errorf("invalid base %q: want letters, digits and '_'", opts.Base)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.StopGrace <= 0 {
		opts.StopGrace = 5 * time.Second
	}
	ip, err := findIP(opts.IP)
	if err != nil {
		return nil, err
	}
	if swept, err := sweep(ip, opts.Base, opts.Logf); err != nil {
		opts.Logf("sandbox: sweep of stale %s-* namespaces: %v", opts.Base, err)
	} else if len(swept) > 0 {
		opts.Logf("sandbox: swept stale namespaces %v", swept)
	}

	t := &Topology{opts: opts, ip: ip}
	if err := t.lockRun(); err != nil {
		return nil, err
	}
	err = os.Mkdir(t.Dir(), 0o755)
	if err == nil {
		err = t.setup()
	}
	if err != nil {
		if cerr := t.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup after failed setup: %w", cerr))
		}
		return nil, err
	}
	return t, nil
}

var baseRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,16}$`)

func findIP(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/ip"); err == nil {
		return "/usr/sbin/ip", nil
	}
	return "", errors.New(`iproute2 "ip" binary not found (install iproute2)`)
}

// lockRun picks a fresh random prefix and takes its run lock.
func (t *Topology) lockRun() error {
	if err := os.MkdirAll(LockDir, 0o700); err != nil {
		return fmt.Errorf("create lock dir: %w", err)
	}
	for range 10 {
		var b [3]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("random prefix: %w", err)
		}
		prefix := t.opts.Base + "-" + hex.EncodeToString(b[:])
		f, err := os.OpenFile(lockPath(prefix), os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("create run lock: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			os.Remove(f.Name())
			return fmt.Errorf("lock %s: %w", f.Name(), err)
		}
		if !samePath(f) {
			// A concurrent Sweep removed the fresh, not yet locked file.
			f.Close()
			continue
		}
		fmt.Fprintf(f, "%d\n", os.Getpid())
		t.Prefix, t.lock = prefix, f
		return nil
	}
	return errors.New("no free random prefix after 10 tries")
}

// samePath reports whether f's path still names f.
func samePath(f *os.File) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(f.Name())
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

func lockPath(prefix string) string { return filepath.Join(LockDir, prefix+".lock") }

// runDir is a run's directory for files (see [Topology.Dir]).
func runDir(prefix string) string { return filepath.Join(LockDir, prefix) }

// Dir is a directory for the run's files (configs, sockets, state of the
// daemons a test starts): owned by root, not writable by others, in a
// root-only parent, so that programs that refuse files others could have
// written (fwdd's config) accept what is put there. Close removes it, and
// so does a later Sweep after a crash.
func (t *Topology) Dir() string { return runDir(t.Prefix) }

func (t *Topology) setup() error {
	if t.opts.Bare {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	var err error
	if t.Gateway, err = t.addHost(ctx, "gateway"); err != nil {
		return err
	}
	// A new namespace may inherit IPv4 forwarding from the root namespace;
	// start from a known state.
	for _, k := range []string{"net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"} {
		if err := t.Gateway.SetSysctl(k, "0"); err != nil {
			return err
		}
	}
	segs := []segment{{"client", "cli0", 11}}
	if !t.opts.NoClient2 {
		segs = append(segs, segment{"client2", "cli1", 33})
	}
	segs = append(segs, segment{"backend", "bak0", 22})
	if !t.opts.NoOther {
		segs = append(segs, segment{"other", "oth0", 44})
	}
	for _, s := range segs {
		h, err := t.addHost(ctx, s.host)
		if err != nil {
			return err
		}
		switch s.host {
		case "client":
			t.Client = h
		case "client2":
			t.Client2 = h
		case "backend":
			t.Backend = h
		case "other":
			t.Other = h
		}
		if err := t.connect(ctx, h, s); err != nil {
			return err
		}
	}
	return nil
}

// AddHost adds a host (a namespace "<prefix>-<name>", lo up, no DAD) to
// the topology; it is cleaned up with the topology like the standard hosts.
func (t *Topology) AddHost(name string) (*Host, error) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	return t.addHost(ctx, name)
}

// Connect links a and b with a veth pair, aIf in a and bIf in b, both up
// and without addresses (add them with Host.Run("ip", ...)). The pair is
// created inside a's namespace with its peer placed straight into b's, so
// nothing appears in the root namespace.
func (t *Topology) Connect(a *Host, aIf string, b *Host, bIf string) error {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	for _, c := range [][]string{
		{"-n", a.NS, "link", "add", aIf, "type", "veth", "peer", "name", bIf, "netns", b.NS},
		{"-n", a.NS, "link", "set", aIf, "up"},
		{"-n", b.NS, "link", "set", bIf, "up"},
	} {
		if _, err := t.runIP(ctx, c...); err != nil {
			return err
		}
	}
	a.Links = append(a.Links, Link{Name: aIf, Peer: b})
	b.Links = append(b.Links, Link{Name: bIf, Peer: a})
	return nil
}

// addHost creates a namespace with lo up and IPv6 DAD disabled.
func (t *Topology) addHost(ctx context.Context, name string) (*Host, error) {
	h := &Host{Name: name, NS: t.Prefix + "-" + name, fd: -1, topo: t}
	if _, err := t.runIP(ctx, "netns", "add", h.NS); err != nil {
		return nil, err
	}
	t.hosts = append(t.hosts, h)
	fd, err := unix.Open(filepath.Join("/run/netns", h.NS), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", h.NS, err)
	}
	h.fd = fd
	for _, k := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
		if err := h.SetSysctl(k, "0"); err != nil {
			return nil, err
		}
	}
	if _, err := t.runIP(ctx, "-n", h.NS, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return h, nil
}

// connect creates the veth pair between the gateway and leaf h, addresses
// both ends and installs h's default routes.
func (t *Topology) connect(ctx context.Context, h *Host, s segment) error {
	gw := t.Gateway
	gw4 := netip.MustParsePrefix(fmt.Sprintf("10.%d.0.1/24", s.subnet))
	gw6 := netip.MustParsePrefix(fmt.Sprintf("fd%d::1/64", s.subnet))
	leaf4 := netip.MustParsePrefix(fmt.Sprintf("10.%d.0.2/24", s.subnet))
	leaf6 := netip.MustParsePrefix(fmt.Sprintf("fd%d::2/64", s.subnet))

	gw.Links = append(gw.Links, Link{Name: s.gwIf, IPv4: gw4, IPv6: gw6, Peer: h})
	h.Links = append(h.Links, Link{Name: LeafIface, IPv4: leaf4, IPv6: leaf6, Peer: gw})
	h.IPv4, h.IPv6 = leaf4.Addr(), leaf6.Addr()
	if s.host == "client" {
		gw.IPv4, gw.IPv6 = gw4.Addr(), gw6.Addr()
	}

	cmds := [][]string{
		// Created inside the gateway namespace, peer placed directly in
		// the leaf namespace: nothing ever appears in the root namespace.
		{"-n", gw.NS, "link", "add", s.gwIf, "type", "veth", "peer", "name", LeafIface, "netns", h.NS},
		{"-n", gw.NS, "addr", "add", gw4.String(), "dev", s.gwIf},
		{"-n", gw.NS, "-6", "addr", "add", gw6.String(), "dev", s.gwIf, "nodad"},
		{"-n", gw.NS, "link", "set", s.gwIf, "up"},
		{"-n", h.NS, "addr", "add", leaf4.String(), "dev", LeafIface},
		{"-n", h.NS, "-6", "addr", "add", leaf6.String(), "dev", LeafIface, "nodad"},
		{"-n", h.NS, "link", "set", LeafIface, "up"},
		{"-n", h.NS, "route", "add", "default", "via", gw4.Addr().String()},
		{"-n", h.NS, "-6", "route", "add", "default", "via", gw6.Addr().String()},
	}
	if s.host == "backend" {
		for i := range min(t.opts.BackendAddrs, 200) {
			a4 := netip.MustParseAddr(fmt.Sprintf("10.%d.0.%d", s.subnet, 3+i))
			a6 := netip.MustParseAddr(fmt.Sprintf("fd%d::%x", s.subnet, 3+i))
			h.Extra = append(h.Extra, a4, a6)
			cmds = append(cmds,
				[]string{"-n", h.NS, "addr", "add", a4.String() + "/24", "dev", LeafIface},
				[]string{"-n", h.NS, "-6", "addr", "add", a6.String() + "/64", "dev", LeafIface, "nodad"})
		}
	}
	for _, c := range cmds {
		if _, err := t.runIP(ctx, c...); err != nil {
			return err
		}
	}
	return nil
}

// runIP runs the ip binary with args, logging the command.
func (t *Topology) runIP(ctx context.Context, args ...string) ([]byte, error) {
	t.opts.Logf("sandbox: ip %s", strings.Join(args, " "))
	return runIP(ctx, t.ip, args...)
}

func runIP(ctx context.Context, ip string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, ip, args...)
	// Its own process group: a Ctrl-C meant for the program running the
	// sandbox must not kill a setup or cleanup step half-way.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Hosts returns the topology's hosts in creation order (gateway first).
func (t *Topology) Hosts() []*Host { return append([]*Host(nil), t.hosts...) }

// Close stops every process the sandbox started, closes all traffic
// helpers and namespace handles, deletes the namespaces and releases the
// run lock. It is idempotent: later calls return the first call's result.
func (t *Topology) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.close() })
	return t.closeErr
}

func (t *Topology) close() error {
	var errs []error
	// Leaves first, the gateway last: the reverse of creation order.
	for i := len(t.hosts) - 1; i >= 0; i-- {
		if err := t.hosts[i].close(); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	for i := len(t.hosts) - 1; i >= 0; i-- {
		ns := t.hosts[i].NS
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(err, os.ErrNotExist) {
			continue // already gone (e.g. swept)
		}
		if _, err := t.runIP(ctx, "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(t.Dir()); err != nil {
		errs = append(errs, fmt.Errorf("remove run dir: %w", err))
	}
	if t.lock != nil {
		if len(errs) == 0 {
			// Keep the lock file when something is left over, so a
			// later Sweep finds it.
			os.Remove(t.lock.Name())
		}
		if err := t.lock.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
			errs = append(errs, fmt.Errorf("release run lock: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Sweep deletes the namespaces of crashed earlier runs whose prefix has the
// form "<base>-<6 hex>": those whose run lock file in [LockDir] exists but
// is no longer locked by a live process. Processes still running in such a
// namespace are killed first (by PID, as listed by "ip netns pids").
// Namespaces of live runs and namespaces without a lock file are left
// alone. It returns the deleted namespace names.
func Sweep(base string) ([]string, error) {
	if !baseRE.MatchString(base) {
		return nil, fmt.Errorf("invalid base %q", base)
	}
	ip, err := findIP("")
	if err != nil {
		return nil, err
	}
	return sweep(ip, base, func(string, ...any) {})
}

func sweep(ip, base string, logf func(string, ...any)) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	nsRE := regexp.MustCompile(`^(` + regexp.QuoteMeta(base) + `-[0-9a-f]{6})-`)

	byPrefix, err := listRuns(ctx, ip, nsRE)
	if err != nil {
		return nil, err
	}
	// Lock files of crashed runs without namespaces left.
	locks, _ := filepath.Glob(filepath.Join(LockDir, base+"-*.lock"))
	for _, l := range locks {
		p := strings.TrimSuffix(filepath.Base(l), ".lock")
		if _, ok := byPrefix[p]; !ok && nsRE.MatchString(p+"-") {
			byPrefix[p] = nil
		}
	}

	var swept []string
	var errs []error
	for prefix, names := range byPrefix {
		f, err := os.OpenFile(lockPath(prefix), os.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			if len(names) > 0 {
				logf("sandbox: sweep: leaving %v alone: no run lock (%v)", names, err)
			}
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close() // a live run (or another Sweep) holds it
			continue
		}
		if !samePath(f) {
			f.Close() // a concurrent Sweep has just finished with it
			continue
		}
		// The run is dead and we own its lock: nobody adds namespaces for
		// it any more, so list them afresh (the first listing may have
		// been taken while the run was still building).
		runs, err := listRuns(ctx, ip, nsRE)
		if err != nil {
			f.Close()
			errs = append(errs, err)
			continue
		}
		ok := true
		for _, ns := range runs[prefix] {
			if err := killNSProcs(ctx, ip, ns, logf); err != nil {
				errs = append(errs, err)
				ok = false
				continue // deleting it would hide the processes
			}
			if _, err := runIP(ctx, ip, "netns", "del", ns); err != nil {
				errs = append(errs, err)
				ok = false
				continue
			}
			swept = append(swept, ns)
		}
		if err := os.RemoveAll(runDir(prefix)); err != nil {
			errs = append(errs, err)
			ok = false
		}
		if ok {
			os.Remove(f.Name())
		}
		f.Close()
	}
	return swept, errors.Join(errs...)
}

// listRuns lists the named namespaces matching nsRE by run prefix.
func listRuns(ctx context.Context, ip string, nsRE *regexp.Regexp) (map[string][]string, error) {
	out, err := runIP(ctx, ip, "netns", "list")
	if err != nil {
		return nil, err
	}
	runs := map[string][]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if m := nsRE.FindStringSubmatch(f[0]); m != nil {
			runs[m[1]] = append(runs[m[1]], f[0])
		}
	}
	return runs, nil
}

// killNSProcs SIGKILLs the processes left in a stale sandbox namespace.
func killNSProcs(ctx context.Context, ip, ns string, logf func(string, ...any)) error {
	out, err := runIP(ctx, ip, "netns", "pids", ns)
	if err != nil {
		return err
	}
	for _, f := range strings.Fields(string(out)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err != nil || pid <= 1 || pid == os.Getpid() {
			continue
		}
		logf("sandbox: sweep: killing pid %d left in %s", pid, ns)
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill pid %d in %s: %w", pid, ns, err)
		}
	}
	return nil
}

// Eventually calls f every 50ms until it returns nil or timeout has passed;
// it then returns f's last error.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still failing after %v: %w", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
