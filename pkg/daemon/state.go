package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultStateDir holds the daemon's record of its latest apply, read by
// `fwdd reload` to wait until a reload is done (systemd: RuntimeDirectory).
const DefaultStateDir = "/run/fwdd"

const stateFile = "state.json"

// maxStateSize bounds what a reader takes from the state file: the daemon
// writes a few hundred bytes and about 150 per health-checked backend;
// more is not its.
const maxStateSize = 32 << 20

// State is the record of the daemon's latest apply, and of which process
// it is: `fwdd reload` trusts it only after checking that PID is this
// daemon (same start time, an fwdd executable, same config and network
// namespace), since a PID alone may have been reused or written by others.
type State struct {
	PID int `json:"pid"`
	// StartTime is field 22 of /proc/PID/stat (clock ticks since boot):
	// with PID it names one process for the life of the system.
	StartTime uint64 `json:"startTime"`
	// Config is the absolute path of the daemon's config file.
	Config string `json:"config"`
	// NetNS is the inode of the daemon's network namespace.
	NetNS uint64 `json:"netns"`

	Applies uint64 `json:"applies"` // start counts as the first; repairs count too
	// Loaded is when (CLOCK_MONOTONIC, µs) the latest start or reload began
	// to read the config: the result recorded is that of a reload signalled
	// before then, and of no earlier one (see Running.Reload).
	Loaded   int64     `json:"loaded"`
	OK       bool      `json:"ok"`
	Error    string    `json:"error,omitempty"`
	Forwards int       `json:"forwards"`
	Time     time.Time `json:"time"`
	// Backends is the health of every health-checked backend, in config
	// order, rewritten when one changes (at most once a second).
	Backends []BackendHealth `json:"backends,omitempty"`
}

// NewState returns the identity of the calling process running the config
// at configPath. Fields it cannot read stay zero, and a zero field makes
// FindDaemon refuse the state.
func NewState(configPath string) State {
	st := State{PID: os.Getpid(), Config: absPath(configPath)}
	st.StartTime, _ = procStartTime("self")
	st.NetNS, _ = netNSInode("self")
	return st
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// procStartTime reads field 22 of /proc/<pid>/stat.
func procStartTime(pid string) (uint64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything,
	// so count fields after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%s/stat: no command field", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startTimeField = 22 - 3 // fields 3.. follow the ')'
	if len(f) <= startTimeField {
		return 0, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[startTimeField], 10, 64)
}

func netNSInode(pid string) (uint64, error) {
	var s unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/ns/net", &s); err != nil {
		return 0, err
	}
	return s.Ino, nil
}

// openStateDir opens dir without following a symlink in its last element.
func openStateDir(dir string) (int, error) {
	return unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
}

// WriteState records st in dir atomically (see writeStateFile).
func WriteState(dir string, st State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return writeStateFile(dir, stateFile, "state", func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// writeStateFile writes the file name in the state dir atomically, what
// being what it holds, for messages. dir is created 0700 if absent and
// brought to 0700 if it is looser; a dir owned by another user is refused.
// The file is written through a directory fd with O_NOFOLLOW and renamed
// into place, so no symlink planted in dir is ever followed.
func writeStateFile(dir, name, what string, write func(io.Writer) error) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	dfd, err := openStateDir(dir)
	if err != nil {
		return fmt.Errorf("open state dir %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var s unix.Stat_t
	if err := unix.Fstat(dfd, &s); err != nil {
		return fmt.Errorf("stat state dir %s: %w", dir, err)
	}
	if int(s.Uid) != os.Geteuid() {
		return fmt.Errorf("state dir %s is owned by uid %d, not by this daemon's uid %d; remove it or give it to uid %d", dir, s.Uid, os.Geteuid(), os.Geteuid())
	}
	if s.Mode&0o777 != 0o700 {
		if err := unix.Fchmod(dfd, 0o700); err != nil {
			return fmt.Errorf("chmod 0700 state dir %s: %w", dir, err)
		}
	}
	tmp := name + ".tmp"
	if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("write %s: remove stale %s: %w", what, tmp, err)
	}
	fd, err := unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(dir, tmp))
	werr := write(f)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("write %s: %w", what, werr)
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return fmt.Errorf("write %s: %w", what, err)
	}
	return nil
}

// RemoveState deletes the state in dir if it is st's (same PID and start
// time): a daemon removes its record when it exits, and only its own.
func RemoveState(dir string, st State) error {
	dfd, err := openStateDir(dir)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove state: %w", err)
	}
	defer unix.Close(dfd)
	cur, _, err := readStateAt(dfd, dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil || cur.PID != st.PID || cur.StartTime != st.StartTime {
		return nil // not ours (or not readable): leave it
	}
	if err := unix.Unlinkat(dfd, stateFile, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// RemoveState removes the daemon's record; call it when the daemon exits.
func (d *Daemon) RemoveState() error { return RemoveState(d.opts.StateDir, d.state) }

// readStateAt reads the state file in the directory dfd without following a
// symlink, and returns the file's owner.
func readStateAt(dfd int, dir string) (State, uint32, error) {
	var st State
	path := filepath.Join(dir, stateFile)
	fd, err := unix.Openat(dfd, stateFile, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ELOOP) {
			return st, 0, fmt.Errorf("read daemon state: %s is a symlink; fwdd never writes one", path)
		}
		return st, 0, fmt.Errorf("read daemon state: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return st, 0, fmt.Errorf("read daemon state: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return st, 0, fmt.Errorf("read daemon state: %s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxStateSize+1))
	if err != nil {
		return st, 0, fmt.Errorf("read daemon state: %w", err)
	}
	if len(b) > maxStateSize {
		return st, 0, fmt.Errorf("read daemon state: %s is larger than %d bytes; fwdd did not write it", path, maxStateSize)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, 0, fmt.Errorf("read daemon state %s: %w", path, err)
	}
	return st, fi.Sys().(*syscall.Stat_t).Uid, nil
}

// ReadState reads the record the daemon keeps in dir. It does not check
// who wrote it: use FindDaemon before acting on the PID.
func ReadState(dir string) (State, error) {
	dfd, err := openStateDir(dir)
	if err != nil {
		return State{}, fmt.Errorf("read daemon state: open %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	st, _, err := readStateAt(dfd, dir)
	return st, err
}

// Running is a daemon process verified by FindDaemon, held by a pidfd so
// that a signal can only reach that process, never one that reused its PID.
type Running struct {
	State
	dir   string
	pidfd int
}

// FindDaemon reads the state in dir and checks that it names a running
// fwdd daemon for configPath in the caller's network namespace: the state
// dir is a directory not writable by group or others, the file is owned by
// the process it names, and that process has the recorded start time, runs
// the same fwdd executable as the caller, serves the same config file and
// lives in the same network namespace. Close the result.
func FindDaemon(dir, configPath string) (*Running, error) {
	dfd, err := openStateDir(dir)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("no daemon state in %s: fwdd is not running with this --state-dir", dir)
		}
		return nil, fmt.Errorf("open state dir %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	var ds unix.Stat_t
	if err := unix.Fstat(dfd, &ds); err != nil {
		return nil, fmt.Errorf("stat state dir %s: %w", dir, err)
	}
	if ds.Mode&0o022 != 0 {
		return nil, fmt.Errorf("state dir %s is writable by group or others (mode %04o); fwdd keeps it 0700 and does not trust it so", dir, ds.Mode&0o7777)
	}
	st, owner, err := readStateAt(dfd, dir)
	if err != nil {
		return nil, err
	}
	if st.PID <= 0 || st.StartTime == 0 || st.NetNS == 0 || st.Config == "" {
		return nil, fmt.Errorf("daemon state %s lacks the daemon's identity (pid, start time, netns, config): written by another fwdd version or not by fwdd", filepath.Join(dir, stateFile))
	}
	pidfd, err := unix.PidfdOpen(st.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return nil, fmt.Errorf("fwdd is not running: the state in %s names pid %d, which has exited", dir, st.PID)
		}
		return nil, fmt.Errorf("open pid %d: %w", st.PID, err)
	}
	r := &Running{State: st, dir: dir, pidfd: pidfd}
	if err := r.verify(owner, configPath); err != nil {
		r.Close()
		return nil, err
	}
	// The checks read /proc/PID; if the process is still alive now, PID
	// was not reused in between and they were about the process of pidfd.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		r.Close()
		return nil, fmt.Errorf("fwdd (pid %d) exited while being checked", st.PID)
	}
	return r, nil
}

func (r *Running) verify(owner uint32, configPath string) error {
	pid := strconv.Itoa(r.PID)
	notOurs := func(format string, args ...any) error {
		return fmt.Errorf("pid %d named by %s is not the fwdd daemon for %s: %s", r.PID, filepath.Join(r.dir, stateFile), absPath(configPath), fmt.Sprintf(format, args...))
	}
	start, err := procStartTime(pid)
	if err != nil {
		return fmt.Errorf("check pid %d: %w", r.PID, err)
	}
	if start != r.StartTime {
		return notOurs("it started at tick %d, the daemon at %d (the PID was reused)", start, r.StartTime)
	}
	var ps unix.Stat_t
	if err := unix.Stat("/proc/"+pid, &ps); err != nil {
		return fmt.Errorf("check pid %d: %w", r.PID, err)
	}
	if owner != ps.Uid {
		return notOurs("the state file is owned by uid %d, the process runs as uid %d", owner, ps.Uid)
	}
	if err := sameExecutable(pid); err != nil {
		return notOurs("%v", err)
	}
	cmdline, err := os.ReadFile("/proc/" + pid + "/cmdline")
	if err != nil {
		return fmt.Errorf("check pid %d: %w", r.PID, err)
	}
	if args := strings.Split(string(cmdline), "\x00"); len(args) < 2 || args[1] != "run" {
		return notOurs("it is not running `fwdd run`")
	}
	ns, err := netNSInode(pid)
	if err != nil {
		return fmt.Errorf("check pid %d: %w", r.PID, err)
	}
	self, err := netNSInode("self")
	if err != nil {
		return fmt.Errorf("read own network namespace: %w", err)
	}
	if ns != r.NetNS || ns != self {
		return notOurs("it runs in network namespace %d, the state says %d and this command runs in %d", ns, r.NetNS, self)
	}
	if !samePath(r.Config, configPath) {
		return notOurs("it serves %s", r.Config)
	}
	return nil
}

// sameExecutable checks that /proc/PID/exe is the caller's own executable,
// or was at the same path before a package upgrade replaced the file.
func sameExecutable(pid string) error {
	var a, b unix.Stat_t
	if err := unix.Stat("/proc/"+pid+"/exe", &a); err != nil {
		return fmt.Errorf("cannot read its executable: %w", err)
	}
	if err := unix.Stat("/proc/self/exe", &b); err != nil {
		return fmt.Errorf("cannot read own executable: %w", err)
	}
	if a.Dev == b.Dev && a.Ino == b.Ino {
		return nil
	}
	theirs, err1 := os.Readlink("/proc/" + pid + "/exe")
	ours, err2 := os.Readlink("/proc/self/exe")
	if err1 == nil && err2 == nil && theirs == ours+" (deleted)" {
		return nil
	}
	return fmt.Errorf("it runs %s, not %s", theirs, ours)
}

func samePath(a, b string) bool {
	if absPath(a) == absPath(b) {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// Signal sends sig to the verified daemon through its pidfd.
func (r *Running) Signal(sig syscall.Signal) error {
	if err := unix.PidfdSendSignal(r.pidfd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal fwdd (pid %d): %w", r.PID, err)
	}
	return nil
}

// Exited reports whether the daemon has exited (its pidfd is readable).
func (r *Running) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(r.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0
}

// Latest reads the state again, as long as it is still this daemon's.
func (r *Running) Latest() (State, error) {
	st, err := ReadState(r.dir)
	if err != nil {
		return st, err
	}
	if st.PID != r.PID || st.StartTime != r.StartTime {
		return st, fmt.Errorf("the state in %s now names another process (pid %d)", r.dir, st.PID)
	}
	return st, nil
}

// Reload signals the daemon to reload and waits, until timeout, for the
// result of a reload that read the config after the signal. A reload
// already running when the signal came (another fwdd reload's) may have
// read the file before it changed: its result is not this one's, and the
// daemon reloads once more for this signal.
func (r *Running) Reload(timeout time.Duration) (State, error) {
	signalled := monotonicUsec()
	if err := r.Signal(syscall.SIGHUP); err != nil {
		return State{}, err
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if st, err := r.Latest(); err == nil && r.reloaded(st, signalled) {
			return st, nil
		}
		if r.Exited() {
			return State{}, fmt.Errorf("fwdd (pid %d) exited during the reload", r.PID)
		}
	}
	return State{}, fmt.Errorf("fwdd (pid %d) did not finish the reload within %s", r.PID, timeout)
}

// reloaded reports whether st records a reload that began after signalled.
// A daemon of a version before Loaded writes none: any later record is then
// taken, as before.
func (r *Running) reloaded(st State, signalled int64) bool {
	return st.Applies > r.Applies && (st.Loaded >= signalled || st.Loaded == 0)
}

// Close releases the pidfd.
func (r *Running) Close() { unix.Close(r.pidfd) }
