// Command fwdd-demo shows fwdd at work in a throwaway sandbox of network
// namespaces: it runs the real fwdd binary on a sandboxed gateway, sends
// real TCP and UDP traffic through it, reloads a changed config, refuses a
// broken one and cleans everything up again. It never touches the host's
// own network. `sudo make demo` runs it; it exits non-zero if any step
// fails, so it doubles as a smoke test.
//
// Usage:
//
//	fwdd-demo [--fwdd bin/fwdd] [--keep]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fwdd-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: fwdd-demo [--fwdd PATH] [--keep]\n\n"+
			"Runs fwdd in a throwaway sandbox of network namespaces and sends real\n"+
			"traffic through it. Needs root; never touches the host's own network.\n\n")
		fs.PrintDefaults()
	}
	bin := fs.String("fwdd", "bin/fwdd", "path of the fwdd binary (make build)")
	keep := fs.Bool("keep", false, "pause before cleaning up, to look around in the sandbox")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "fwdd-demo: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(stderr, "fwdd-demo needs root to create network namespaces; run: sudo make demo")
		return 1
	}
	abs, err := filepath.Abs(*bin)
	if err == nil {
		err = checkExecutable(abs)
	}
	if err != nil {
		fmt.Fprintf(stderr, "fwdd-demo: fwdd binary: %v (build it with: make build)\n", err)
		return 1
	}

	if os.Getenv(workerEnv) != "1" {
		return supervise(args, stdout, stderr, *keep)
	}

	// The worker. A signal (forwarded by the supervisor, or sent
	// directly) cancels the context: the step under way fails fast and
	// the cleanup removes the sandbox. Later signals are swallowed, so a
	// second Ctrl-C cannot cut the cleanup short.
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	// No signal.Stop: until the process exits, a signal must not fall
	// back to its default action, which would kill the worker mid-cleanup.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	// Tell the supervisor that signals are handled now.
	if ready := os.NewFile(readyFd, "ready"); ready != nil {
		_, _ = ready.Write([]byte{1})
		ready.Close()
	}
	go func() {
		first := true
		for sig := range sigs {
			if first { // the demo says so in its output
				cancel(errInterrupted)
				first = false
				continue
			}
			fmt.Fprintf(stderr, "fwdd-demo: %v: still cleaning up, please wait\n", sig)
		}
	}()

	// fwdd logs in journald's format under systemd; the demo reads its
	// terminal format.
	os.Unsetenv("JOURNAL_STREAM")
	d := &demo{out: stdout, fwdd: abs, keep: *keep}
	return d.run(ctx)
}

// workerEnv marks the worker process (see supervise).
const workerEnv = "FWDD_DEMO_WORKER"

// readyFd is the worker's end of a pipe (ExtraFiles[0]) on which it says
// that it handles signals: until then a signal would kill it outright.
const readyFd = 3

// supervise runs the demo in a worker process of its own process group and
// relays signals to it.
//
// Ctrl-C makes the terminal send SIGINT to its whole foreground process
// group. Had the demo run there itself, that SIGINT would also hit the
// programs it happens to be running (an "ip netns del" of the cleanup, the
// fwdd daemon, ...), and a namespace could be left behind. The worker and
// everything it starts live in a process group of their own, so only the
// supervisor gets the terminal's signals, and it hands them on to the
// worker alone.
func supervise(args []string, stdout, stderr io.Writer, keep bool) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(stderr, "fwdd-demo:", err)
		return 1
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	// Not the terminal itself: a process outside the foreground group is
	// stopped when it reads from the terminal (SIGTTIN), and also when it
	// writes to it if "stty tostop" is set.
	cmd.Stdout = struct{ io.Writer }{stdout}
	cmd.Stderr = struct{ io.Writer }{stderr}
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	var stdinW *os.File
	if keep { // the pause reads a line
		r, w, err := os.Pipe()
		if err != nil {
			fmt.Fprintln(stderr, "fwdd-demo:", err)
			return 1
		}
		cmd.Stdin, stdinW = r, w
		defer r.Close()
	}

	readyR, readyW, err := os.Pipe()
	if err != nil {
		fmt.Fprintln(stderr, "fwdd-demo:", err)
		return 1
	}
	cmd.ExtraFiles = []*os.File{readyW}

	// No signal.Stop: a late Ctrl-C must not kill the supervisor while
	// the worker is still finishing.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		fmt.Fprintln(stderr, "fwdd-demo: start worker:", err)
		return 1
	}
	if stdinW != nil {
		go func() {
			_, _ = io.Copy(stdinW, os.Stdin)
			stdinW.Close()
		}()
	}
	ready := make(chan struct{})
	go func() {
		var b [1]byte
		if n, _ := readyR.Read(b[:]); n == 1 {
			close(ready)
		}
		readyR.Close()
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var pending []os.Signal // received before the worker was ready
	for {
		select {
		case <-ready:
			ready = nil
			for _, sig := range pending {
				_ = cmd.Process.Signal(sig)
			}
			pending = nil
		case sig := <-sigs:
			if ready != nil {
				pending = append(pending, sig)
				continue
			}
			_ = cmd.Process.Signal(sig)
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &ee) && ee.Exited():
				return ee.ExitCode()
			}
			fmt.Fprintf(stderr, "fwdd-demo: worker: %v (a later run removes what it left behind)\n", err)
			return 1
		}
	}
}

var errInterrupted = errors.New("interrupted")

func checkExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not an executable file", path)
	}
	return nil
}
