package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/sysctl"
)

// Host is one network namespace of a [Topology].
type Host struct {
	Name string // short name: "client", "gateway", ...
	NS   string // netns name as used by "ip netns", e.g. "fwdd-3fa9c1-client"
	// IPv4 and IPv6 are the host's main addresses: a leaf host's eth0
	// addresses; for the gateway its addresses on cli0 (the client side).
	IPv4 netip.Addr
	IPv6 netip.Addr
	// Links lists the host's interfaces toward other hosts.
	Links []Link
	// Extra lists the backend's further addresses (Options.BackendAddrs),
	// IPv4 and IPv6 in turn.
	Extra []netip.Addr

	topo *Topology

	mu      sync.Mutex
	fd      int // open handle of the namespace, -1 once closed
	procs   []*Proc
	closers map[io.Closer]struct{}
	conns   []*net.TCPConn // client connections (DialTCP)
	pruneAt int
	closed  bool
}

// Topology returns the topology the host belongs to.
func (h *Host) Topology() *Topology { return h.topo }

// Link returns the interface called name. It panics if there is none, as
// that is a bug in the calling test.
func (h *Host) Link(name string) Link {
	for _, l := range h.Links {
		if l.Name == name {
			return l
		}
	}
	panic(fmt.Sprintf("sandbox: host %s has no link %q", h.Name, name))
}

// Fd returns an open file descriptor of the host's network namespace, for
// APIs such as nftables.WithNetNSFd or netlink.Config{NetNS: fd}. It stays
// valid until the topology is closed; do not close it. It returns -1 after
// Close.
func (h *Host) Fd() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fd
}

// Run runs "ip netns exec NS args..." and returns its combined output. A
// non-zero exit yields an error that includes the output.
func (h *Host) Run(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("run: no command")
	}
	return runIP(ctx, h.topo.ip, append([]string{"netns", "exec", h.NS}, args...)...)
}

// Do runs fn on a locked OS thread that has been switched into the host's
// network namespace, and switches the thread back afterwards. Sockets fn
// creates stay in the namespace for their whole life, so they can be used
// freely after Do returns.
//
// fn runs on its own goroutine: goroutines it starts do NOT run in the
// namespace, and it must not call t.FailNow and friends (return an error
// instead). A panic in fn is re-raised in the caller. If the thread cannot
// be switched back, it is never handed back to the Go runtime (it exits
// with its goroutine).
func (h *Host) Do(fn func() error) error {
	// A private duplicate, so a concurrent Close cannot make the number
	// refer to another file (or namespace) while we use it.
	h.mu.Lock()
	if h.fd < 0 {
		h.mu.Unlock()
		return fmt.Errorf("do in %s: namespace closed", h.NS)
	}
	fd, err := unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("do in %s: dup netns fd: %w", h.NS, err)
	}
	defer unix.Close(fd)
	done := make(chan doResult, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread unless the original namespace is restored:
		// a goroutine that exits locked takes its thread with it.
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- doResult{err: fmt.Errorf("do in %s: open current netns: %w", h.NS, err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			done <- doResult{err: fmt.Errorf("do in %s: setns: %w", h.NS, err)}
			return
		}
		var res doResult
		if err := checkThreadNS(fd); err != nil {
			res.err = fmt.Errorf("do in %s: %w", h.NS, err)
		} else {
			res = callFn(fn)
		}
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			res.err = errors.Join(res.err, fmt.Errorf("do in %s: restore netns (thread discarded): %w", h.NS, err))
			done <- res
			return // still locked: the runtime terminates the thread
		}
		if err := checkThreadNS(orig); err != nil {
			res.err = errors.Join(res.err, fmt.Errorf("do in %s: restore netns (thread discarded): %w", h.NS, err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

type doResult struct {
	err   error
	panic any
}

// callFn calls fn, turning a panic into a value to re-raise elsewhere.
func callFn(fn func() error) (res doResult) {
	defer func() {
		if p := recover(); p != nil {
			res.panic = p
		}
	}()
	res.err = fn()
	return res
}

// checkThreadNS verifies that the calling thread's network namespace is the
// one nsFd refers to.
func checkThreadNS(nsFd int) error {
	var want, got unix.Stat_t
	if err := unix.Fstat(nsFd, &want); err != nil {
		return fmt.Errorf("stat netns fd: %w", err)
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
		return fmt.Errorf("stat thread netns: %w", err)
	}
	if want.Dev != got.Dev || want.Ino != got.Ino {
		return errors.New("thread is not in the expected network namespace")
	}
	return nil
}

// SetSysctl sets a sysctl inside the host's namespace, e.g.
// SetSysctl("net.ipv4.ip_forward", "1"). Only net.* keys are accepted,
// because only those are per network namespace; pkg/sysctl writes them on
// a thread moved into the namespace, so the root namespace is never
// written.
func (h *Host) SetSysctl(key, value string) error {
	h.topo.opts.Logf("sandbox: %s: sysctl %s=%s", h.Name, key, value)
	return h.sysctl(key, func(s sysctl.Sysctls) error {
		_, _, err := s.Set(key, value)
		return err
	})
}

// Sysctl reads a net.* sysctl inside the host's namespace.
func (h *Host) Sysctl(key string) (string, error) {
	var v string
	err := h.sysctl(key, func(s sysctl.Sysctls) error {
		var err error
		v, err = s.Get(key)
		return err
	})
	return strings.TrimSpace(v), err
}

// TCPExt reads a TcpExt counter (e.g. "TCPSynRetrans") of the host's
// namespace from its /proc/net/netstat.
func (h *Host) TCPExt(ctx context.Context, name string) (int64, error) {
	out, err := h.Run(ctx, "cat", "/proc/net/netstat")
	if err != nil {
		return 0, err
	}
	v, err := TCPExt(out, name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", h.Name, err)
	}
	return v, nil
}

// TCPExt returns the TcpExt counter name from netstat, the text of a
// /proc/net/netstat (a line of names, then a line of values, per group),
// for a program that runs inside the namespace itself.
func TCPExt(netstat []byte, name string) (int64, error) {
	lines := strings.Split(string(netstat), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(names) != len(values) {
			continue
		}
		if j := slices.Index(names, name); j > 0 {
			return strconv.ParseInt(values[j], 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/net/netstat: no TcpExt %s", name)
}

// sysctl runs fn with the host's namespace's sysctls (key must be net.*).
func (h *Host) sysctl(key string, fn func(sysctl.Sysctls) error) error {
	if !strings.HasPrefix(key, "net.") && !strings.HasPrefix(key, "net/") {
		return fmt.Errorf("sysctl %q: only net.* keys are per namespace", key)
	}
	// A private duplicate of the namespace handle, as in Do.
	h.mu.Lock()
	if h.fd < 0 {
		h.mu.Unlock()
		return fmt.Errorf("sysctl %s in %s: namespace closed", key, h.NS)
	}
	fd, err := unix.FcntlInt(uintptr(h.fd), unix.F_DUPFD_CLOEXEC, 0)
	h.mu.Unlock()
	if err != nil {
		return fmt.Errorf("sysctl %s in %s: dup netns fd: %w", key, h.NS, err)
	}
	defer unix.Close(fd)
	if err := fn(sysctl.InNetNS(fd, sysctl.NewFS(""))); err != nil {
		return fmt.Errorf("in %s: %w", h.NS, err)
	}
	return nil
}

// track registers c to be closed when the host is closed.
func (h *Host) track(c io.Closer) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("host %s is closed", h.Name)
	}
	if h.closers == nil {
		h.closers = map[io.Closer]struct{}{}
	}
	h.closers[c] = struct{}{}
	return nil
}

// trackConn registers a client connection to be closed when the host is
// closed. Connections their users have closed meanwhile are dropped from
// the list now and then, so long benchmarks do not accumulate them.
func (h *Host) trackConn(c *net.TCPConn) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("host %s is closed", h.Name)
	}
	if len(h.conns) >= h.pruneAt {
		h.conns = slices.DeleteFunc(h.conns, isClosed)
		h.pruneAt = max(64, 2*len(h.conns))
	}
	h.conns = append(h.conns, c)
	return nil
}

// isClosed reports whether c has been closed.
func isClosed(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	return err != nil || rc.Control(func(uintptr) {}) != nil
}

// close stops processes, closes helpers and the namespace handle.
func (h *Host) close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	procs, closers, conns := h.procs, h.closers, h.conns
	h.closers, h.conns = nil, nil
	h.mu.Unlock()

	var errs []error
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.kill(); err != nil {
				errs2 := fmt.Errorf("%s: stop pid %d: %w", h.Name, p.PID(), err)
				h.mu.Lock()
				errs = append(errs, errs2)
				h.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, c := range conns {
		c.Close() // error: already closed by its user
	}
	for c := range closers {
		if err := c.Close(); err != nil && !errors.Is(err, os.ErrClosed) && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
		}
	}
	h.mu.Lock()
	if h.fd >= 0 {
		unix.Close(h.fd)
		h.fd = -1
	}
	h.mu.Unlock()
	return errors.Join(errs...)
}
