// Package harness runs the fwdd binary in a sandbox namespace the way
// systemd would, for the end-to-end tests, the demo and the benchmark.
//
// [Start] (programs) and [New] (tests) write the config into a directory of
// the daemon's own under the sandbox's run directory (root-owned, 0640),
// start `fwdd run` in the given host's namespace with NOTIFY_SOCKET set to a
// datagram socket the harness listens on, and return once the daemon has
// sent READY=1, so the sd_notify path (READY=1, RELOADING=1 with
// MONOTONIC_USEC, STOPPING=1) is checked on every start, reload and stop.
// The daemon's output is parsed into [Line]s. The daemon is stopped by PID.
//
//	topo := sandbox.New(t)
//	d := harness.New(t, topo.Gateway, `[[forward]]
//	name = "web"
//	port = 80
//	to = "10.22.0.2:8080"`)
//	// ... traffic through 10.11.0.1:80 ...
//	d.WriteConfig(changed)          // or d.Reload() after editing it
//	line, err := d.Reload()         // SIGHUP; the "reloaded" line, or the refusal
//	out, err := d.ReloadCommand()   // `fwdd reload`
//	d.Kill(); d.Restart()           // SIGKILL, and start again with the same files
//	err = d.Stop()                  // SIGTERM: STOPPING=1 and exit status 0
package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// Options configure a daemon. The zero value is fine.
type Options struct {
	// Bin is the fwdd binary; "" means [Binary].
	Bin string
	// Args are more flags for `fwdd run`.
	Args []string
	// Env is added to the daemon's environment.
	Env []string
	// NoWait makes Start return as soon as the process runs, without
	// waiting for READY=1: for a start that is meant to fail (see Wait).
	NoWait bool
	// ReadyTimeout bounds the wait for READY=1 (default 60s).
	ReadyTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before it kills
	// the daemon and fails (default 20s).
	StopTimeout time.Duration
}

// Daemon is one fwdd daemon in a sandbox host, across restarts.
type Daemon struct {
	Host       *sandbox.Host
	Dir        string // the daemon's own directory: config, state, notify socket
	ConfigPath string
	StateDir   string

	bin        string
	opts       Options
	notify     *net.UnixConn
	readerDone chan struct{}

	mu       sync.Mutex
	proc     *sandbox.Proc
	out      *lineWriter
	started  time.Time
	expected bool // the current process's exit was asked for
	lines    []Line
	notes    []Notification
	wake     chan struct{} // closed when a line or notification arrives
	closed   bool
}

// Start writes config and starts fwdd in h's namespace; see the package
// documentation. On a start error other than a failure to run the process,
// the Daemon is returned too, so that its log can be read; the caller must
// Close it either way.
func Start(h *sandbox.Host, config string, opts Options) (*Daemon, error) {
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = 20 * time.Second
	}
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = Binary(); err != nil {
			return nil, err
		}
	}
	dir, err := newDir(h)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		Host: h, Dir: dir, ConfigPath: filepath.Join(dir, "fwdd.toml"), StateDir: filepath.Join(dir, "state"),
		bin: bin, opts: opts, wake: make(chan struct{}), readerDone: make(chan struct{}),
	}
	if err := d.listenNotify(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := d.WriteConfig(config); err != nil {
		return nil, errors.Join(err, d.Close())
	}
	if err := d.start(); err != nil {
		if d.proc == nil {
			return nil, errors.Join(err, d.Close())
		}
		return d, err
	}
	return d, nil
}

// newDir makes the daemon's directory in the sandbox's run dir: "fwdd-HOST",
// "fwdd-HOST-2", ...
func newDir(h *sandbox.Host) (string, error) {
	base := filepath.Join(h.Topology().Dir(), "fwdd-"+h.Name)
	for i := 1; ; i++ {
		dir := base
		if i > 1 {
			dir = fmt.Sprintf("%s-%d", base, i)
		}
		err := os.Mkdir(dir, 0o755)
		if !errors.Is(err, os.ErrExist) {
			if err != nil {
				return "", fmt.Errorf("fwdd dir: %w", err)
			}
			return dir, nil
		}
	}
}

// New starts a daemon for a test (see [Start]): it fails tb if the daemon
// does not get ready, and stops it and removes its files in tb.Cleanup,
// failing tb if the daemon exited by itself or does not stop cleanly.
func New(tb testing.TB, h *sandbox.Host, config string, opts ...Options) *Daemon {
	tb.Helper()
	var o Options
	if len(opts) > 1 {
		tb.Fatalf("harness.New: at most one Options, got %d", len(opts))
	}
	if len(opts) == 1 {
		o = opts[0]
	}
	d, err := Start(h, config, o)
	if d != nil {
		tb.Cleanup(func() {
			if err := d.Close(); err != nil {
				tb.Errorf("fwdd in %s: %v", h.Name, err)
			}
		})
	}
	if err != nil {
		tb.Fatalf("fwdd in %s: %v", h.Name, err)
	}
	return d
}

// listenNotify binds the datagram socket the daemon gets as NOTIFY_SOCKET
// and reads it. SO_PASSCRED makes the kernel attach the sender's PID, as
// systemd checks it.
func (d *Daemon) listenNotify() error {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(d.Dir, "notify.sock"), Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	rc, err := c.SyscallConn()
	if err == nil {
		cerr := rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
		err = errors.Join(err, cerr)
	}
	if err != nil {
		c.Close()
		return fmt.Errorf("notify socket: SO_PASSCRED: %w", err)
	}
	d.notify = c
	go d.readNotify()
	return nil
}

func (d *Daemon) readNotify() {
	defer close(d.readerDone)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	for {
		n, oobn, _, _, err := d.notify.ReadMsgUnix(buf, oob)
		if err != nil {
			return // closed
		}
		note := Notification{Time: time.Now(), Vars: parseNotification(buf[:n])}
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if cred, err := unix.ParseUnixCredentials(&m); err == nil {
					note.PID = int(cred.Pid)
				}
			}
		}
		d.mu.Lock()
		d.notes = append(d.notes, note)
		d.wakeLocked()
		d.mu.Unlock()
	}
}

func (d *Daemon) wakeLocked() {
	close(d.wake)
	d.wake = make(chan struct{})
}

// start starts a process and, unless NoWait, waits for READY=1.
func (d *Daemon) start() error {
	d.mu.Lock()
	if d.proc != nil {
		select {
		case <-d.proc.Done():
		default:
			d.mu.Unlock()
			return fmt.Errorf("fwdd (pid %d) is still running", d.proc.PID())
		}
	}
	mark := len(d.notes)
	args := append([]string{d.bin, "run", "-c", d.ConfigPath, "--state-dir", d.StateDir}, d.opts.Args...)
	d.out = &lineWriter{d: d}
	env := append([]string{
		"NOTIFY_SOCKET=" + d.notify.LocalAddr().String(),
		"JOURNAL_STREAM=", // zap's console format, which Line parses
	}, d.opts.Env...)
	d.started = time.Now()
	// Held across the start so that the first lines get the PID.
	p, err := d.Host.StartCmd(context.Background(), sandbox.Cmd{Args: args, Env: env, Output: d.out})
	if err != nil {
		d.mu.Unlock()
		return err
	}
	d.proc, d.out.pid, d.expected = p, p.PID(), false
	d.mu.Unlock()
	if d.opts.NoWait {
		return nil
	}
	if _, _, err := d.waitNotify(mark, "READY", d.opts.ReadyTimeout); err != nil {
		return fmt.Errorf("fwdd did not get ready: %w", err)
	}
	return nil
}

// Restart starts the daemon again with the same config and state after it
// stopped or was killed, and waits for READY=1.
func (d *Daemon) Restart() error { return d.start() }

// WriteConfig replaces the config file atomically (owned by root, 0640, as
// fwdd demands). It does not tell the daemon: see Reload.
func (d *Daemon) WriteConfig(text string) error {
	tmp := d.ConfigPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(text), 0o640); err != nil {
		return err
	}
	// WriteFile's mode is filtered by the umask; fwdd checks the mode.
	if err := os.Chmod(tmp, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, d.ConfigPath)
}

// PID returns the PID of the current (or last) process.
func (d *Daemon) PID() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc.PID()
}

// Started returns when the current process was started.
func (d *Daemon) Started() time.Time {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.started
}

// Proc returns the current (or last) process.
func (d *Daemon) Proc() *sandbox.Proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc
}

// Running reports whether the current process has not exited.
func (d *Daemon) Running() bool {
	select {
	case <-d.Proc().Done():
		return false
	default:
		return true
	}
}

// Output returns everything the daemon's processes wrote, one line per
// line, as written.
func (d *Daemon) Output() string {
	var b strings.Builder
	for _, l := range d.Log() {
		b.WriteString(l.Text + "\n")
	}
	return b.String()
}

// Log returns the daemon's output lines so far, of every process.
func (d *Daemon) Log() []Line {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Line(nil), d.lines...)
}

// Notifications returns the sd_notify messages received so far.
func (d *Daemon) Notifications() []Notification {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Notification(nil), d.notes...)
}

// WaitLog waits until a line from index since on has message msg (use
// len(d.Log()) before an action to wait for a line it causes). It fails
// at once if the daemon exits.
func (d *Daemon) WaitLog(since int, msg string, timeout time.Duration) (Line, error) {
	return d.WaitLine(since, timeout, func(l Line) bool { return l.Msg == msg })
}

// WaitLine waits until a line from index since on satisfies match.
func (d *Daemon) WaitLine(since int, timeout time.Duration, match func(Line) bool) (Line, error) {
	var found Line
	err := d.waitFor(timeout, func() bool {
		for _, l := range d.lines[min(since, len(d.lines)):] {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found, err
}

// waitNotify waits for a notification with key set to 1 from the current
// process, at index since or later, and returns its index.
func (d *Daemon) waitNotify(since int, key string, timeout time.Duration) (Notification, int, error) {
	var found Notification
	idx := -1
	err := d.waitFor(timeout, func() bool {
		for i := min(since, len(d.notes)); i < len(d.notes); i++ {
			if n := d.notes[i]; n.Vars[key] == "1" && n.PID == d.proc.PID() {
				found, idx = n, i
				return true
			}
		}
		return false
	})
	if err != nil {
		err = fmt.Errorf("no %s=1 on NOTIFY_SOCKET: %w", key, err)
	}
	return found, idx, err
}

// waitFor calls cond with d.mu held until it returns true, the current
// process exits or timeout passes. After an exit it waits a little longer
// for a notification sent just before it.
func (d *Daemon) waitFor(timeout time.Duration, cond func() bool) error {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	exited := false
	for {
		d.mu.Lock()
		ok, wake, done := cond(), d.wake, d.proc.Done()
		d.mu.Unlock()
		if ok {
			return nil
		}
		if exited {
			done = nil
		}
		select {
		case <-wake:
		case <-done:
			exited = true
			timer.Reset(time.Second)
		case <-timer.C:
			if exited {
				return fmt.Errorf("fwdd exited (%v):\n%s", d.Proc().Wait(), d.tail(20))
			}
			return fmt.Errorf("not within %v:\n%s", timeout, d.tail(20))
		}
	}
}

// tail returns the last n lines of output.
func (d *Daemon) tail(n int) string {
	lines := d.Log()
	var b strings.Builder
	for _, l := range lines[max(0, len(lines)-n):] {
		b.WriteString("\t" + l.Text + "\n")
	}
	return b.String()
}

// Reload sends SIGHUP and waits for RELOADING=1 (with MONOTONIC_USEC, as
// systemd's Type=notify-reload requires) and then READY=1. It returns the
// daemon's "reloaded" line; when the daemon refused the file, it returns
// the error line and an error carrying its message. It reads the log, so
// the daemon's log_level must be info or debug (the default is info).
//
// It first waits until the daemon is ready (its last state notification is
// READY=1, not RELOADING=1), so that the signal is handled at once and not
// queued behind an earlier reload.
func (d *Daemon) Reload() (Line, error) {
	if err := d.waitFor(2*time.Minute, d.readyLocked); err != nil {
		return Line{}, fmt.Errorf("not ready for a reload: %w", err)
	}
	mark, lmark := d.marks()
	if err := d.Signal(syscall.SIGHUP); err != nil {
		return Line{}, err
	}
	return d.reloadOutcome(mark, lmark)
}

// readyLocked reports whether the current process's last state
// notification is READY=1.
func (d *Daemon) readyLocked() bool {
	for i := len(d.notes) - 1; i >= 0; i-- {
		n := d.notes[i]
		if n.PID != d.proc.PID() {
			continue
		}
		switch {
		case n.Vars["READY"] == "1":
			return true
		case n.Vars["RELOADING"] == "1", n.Vars["STOPPING"] == "1":
			return false
		}
	}
	return false
}

func (d *Daemon) marks() (notes, lines int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.notes), len(d.lines)
}

func (d *Daemon) reloadOutcome(mark, lmark int) (Line, error) {
	const timeout = 2 * time.Minute
	n, i, err := d.waitNotify(mark, "RELOADING", timeout)
	if err != nil {
		return Line{}, err
	}
	if _, ok := n.Vars["MONOTONIC_USEC"]; !ok {
		return Line{}, fmt.Errorf("RELOADING=1 without MONOTONIC_USEC: %v", n.Vars)
	}
	if _, _, err := d.waitNotify(i+1, "READY", timeout); err != nil {
		return Line{}, err
	}
	l, err := d.WaitLine(lmark, timeout, func(l Line) bool {
		return l.Msg == "reloaded" || (l.Level == "ERROR" && strings.HasPrefix(l.Msg, "reload failed"))
	})
	switch {
	case err != nil:
		return l, fmt.Errorf("no reload outcome in the log: %w", err)
	case l.Msg != "reloaded":
		return l, fmt.Errorf("%s: %s", l.Msg, l.Str("error"))
	}
	return l, nil
}

// ReloadCommand runs `fwdd reload` for this daemon (args are more flags)
// and returns its output. When it succeeds it also waits for the
// daemon's RELOADING=1 / READY=1 pair. A refusal is an error wrapping the
// command's *exec.ExitError.
func (d *Daemon) ReloadCommand(args ...string) (string, error) {
	mark, lmark := d.marks()
	out, err := d.Command("reload", append([]string{"--state-dir", d.StateDir, "--timeout", "1m"}, args...)...)
	if err != nil {
		return out, err
	}
	_, err = d.reloadOutcome(mark, lmark)
	return out, err
}

// Command runs `fwdd CMD -c CONFIG args...` in the daemon's namespace
// (status, print, check, ...) and returns its combined output; it need
// not run. A non-zero exit is an error wrapping the *exec.ExitError.
func (d *Daemon) Command(cmd string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := d.Host.Run(ctx, append([]string{d.bin, cmd, "-c", d.ConfigPath}, args...)...)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("fwdd %s: %w", cmd, ee)
		}
	}
	return string(out), err
}

// Signal sends sig to the daemon.
func (d *Daemon) Signal(sig os.Signal) error {
	if err := d.Proc().Signal(sig); err != nil {
		return fmt.Errorf("signal fwdd: %w", err)
	}
	return nil
}

// Stop sends SIGTERM and waits for STOPPING=1 and a clean exit (status 0).
// After StopTimeout it kills the daemon and fails.
func (d *Daemon) Stop() error {
	d.mu.Lock()
	p, mark := d.proc, len(d.notes)
	d.expected = true
	d.mu.Unlock()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop fwdd: %w", err)
	}
	select {
	case <-p.Done():
	case <-time.After(d.opts.StopTimeout):
		_ = p.Signal(syscall.SIGKILL)
		<-p.Done()
		return fmt.Errorf("fwdd (pid %d) did not exit within %v of SIGTERM: killed\n%s", p.PID(), d.opts.StopTimeout, d.tail(20))
	}
	if err := p.Wait(); err != nil {
		return fmt.Errorf("fwdd (pid %d) exited with %v on SIGTERM:\n%s", p.PID(), err, d.tail(20))
	}
	if _, _, err := d.waitNotify(mark, "STOPPING", 5*time.Second); err != nil {
		return err
	}
	return nil
}

// Kill sends SIGKILL and waits for the process to die.
func (d *Daemon) Kill() error {
	d.mu.Lock()
	p := d.proc
	d.expected = true
	d.mu.Unlock()
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill fwdd: %w", err)
	}
	<-p.Done()
	return nil
}

// Wait waits for the current process to exit by itself and returns its
// exit error (nil for status 0).
func (d *Daemon) Wait() error {
	d.mu.Lock()
	p := d.proc
	d.expected = true
	d.mu.Unlock()
	return p.Wait()
}

// Close stops the daemon if it runs (as Stop), closes the notify socket
// and removes the daemon's directory. It reports a daemon that exited with
// a status without being asked to (Stop, Kill, Wait): a crash. It is
// idempotent.
func (d *Daemon) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	p, expected := d.proc, d.expected
	d.mu.Unlock()
	var errs []error
	if p != nil {
		select {
		case <-p.Done():
			// Killed by a signal: someone (the test) sent it. An exit
			// status (a crash, a race report) is the daemon's own doing.
			var ee *exec.ExitError
			signaled := errors.As(p.Wait(), &ee) && !ee.Exited()
			if !expected && !signaled {
				errs = append(errs, fmt.Errorf("fwdd (pid %d) exited by itself (%v):\n%s", p.PID(), p.Wait(), d.tail(20)))
			}
		default:
			errs = append(errs, d.Stop())
		}
	}
	d.notify.Close()
	<-d.readerDone
	if err := os.RemoveAll(d.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
