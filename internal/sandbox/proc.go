package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Proc is a long-running process started in a namespace with [Host.Start].
type Proc struct {
	Host *Host
	Args []string

	cmd   *exec.Cmd
	out   *procOutput
	grace time.Duration
	done  chan struct{}
	err   error // Wait result, set before done is closed
}

// Cmd describes a process for [Host.StartCmd].
type Cmd struct {
	Args []string // program and arguments
	// Env is added to the sandbox program's environment ("KEY=value";
	// a later entry of the same key wins).
	Env []string
	// Output, if set, also receives everything the process writes to
	// stdout and stderr, as it arrives.
	Output io.Writer
}

// Start starts "ip netns exec NS args..."; see [Host.StartCmd].
func (h *Host) Start(ctx context.Context, args ...string) (*Proc, error) {
	return h.StartCmd(ctx, Cmd{Args: args})
}

// StartCmd starts "ip netns exec NS c.Args..." (ip execs the program, so
// the PID is the program's own). Its stdout and stderr are captured (see
// Output) and, if Options.Output is set, streamed there line by line.
// Cancelling ctx stops the process like Stop. The sandbox stops the process
// on Close if it is still running; it also dies with SIGKILL if the
// starting program dies (Pdeathsig). It runs in a process group of its own,
// so a Ctrl-C at the terminal reaches only the program that started it,
// which can then stop it in order. Do not call StartCmd inside Do.
func (h *Host) StartCmd(ctx context.Context, c Cmd) (*Proc, error) {
	args := c.Args
	if len(args) == 0 {
		return nil, errors.New("start: no command")
	}
	t := h.topo
	p := &Proc{
		Host:  h,
		Args:  args,
		out:   &procOutput{prefix: "[" + h.Name + "] ", stream: t.opts.Output, tee: c.Output},
		grace: t.opts.StopGrace,
		done:  make(chan struct{}),
	}
	cmd := exec.CommandContext(ctx, t.ip, append([]string{"netns", "exec", h.NS}, args...)...)
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = p.grace // SIGKILL this long after a ctx-triggered SIGTERM
	p.cmd = cmd

	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, fmt.Errorf("start in %s: host is closed", h.NS)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v in %s: %w", args, h.NS, err)
	}
	t.opts.Logf("sandbox: %s: started pid %d: %v", h.Name, cmd.Process.Pid, args)
	h.procs = append(h.procs, p)
	go func() {
		p.err = cmd.Wait()
		p.out.flush()
		close(p.done)
	}()
	return p, nil
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output returns everything the process wrote to stdout and stderr so far.
// It is safe to call at any time, from any goroutine.
func (p *Proc) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error (nil for
// exit status 0), like exec.Cmd.Wait. It may be called many times.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process. It returns os.ErrProcessDone once the
// process has exited.
func (p *Proc) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// Stop sends SIGTERM, waits up to Options.StopGrace (default 5s) and then
// sends SIGKILL. It returns the process's exit error as Wait does, joined
// with an error saying it had to be killed if it ignored SIGTERM. Stop on
// an exited process just returns Wait's result.
func (p *Proc) Stop() error {
	killed, err := p.stop()
	if err != nil {
		return err
	}
	werr := p.Wait()
	if killed {
		return errors.Join(fmt.Errorf("pid %d did not exit within %v of SIGTERM: killed", p.PID(), p.grace), werr)
	}
	return werr
}

// stop terminates the process and reports whether SIGKILL was needed.
func (p *Proc) stop() (killed bool, err error) {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return false, nil
		}
		return false, fmt.Errorf("sigterm pid %d: %w", p.PID(), err)
	}
	timer := time.NewTimer(p.grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return false, nil
	case <-timer.C:
	}
	if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return false, fmt.Errorf("sigkill pid %d: %w", p.PID(), err)
	}
	<-p.done
	return true, nil
}

// kill is used by Close: it stops the process and only reports failures to
// stop it, not its exit status.
func (p *Proc) kill() error {
	_, err := p.stop()
	return err
}

// procOutput collects process output and optionally streams it, one
// prefixed line per Write to the stream.
type procOutput struct {
	prefix string
	stream io.Writer
	tee    io.Writer // Cmd.Output

	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte // incomplete last line not yet streamed
}

func (o *procOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all.Write(b)
	if o.tee != nil {
		_, _ = o.tee.Write(b) // like the stream: never break the pipe
	}
	if o.stream != nil {
		o.partial = append(o.partial, b...)
		for {
			i := bytes.IndexByte(o.partial, '\n')
			if i < 0 {
				break
			}
			o.emit(o.partial[:i+1])
			o.partial = o.partial[i+1:]
		}
	}
	return len(b), nil
}

func (o *procOutput) emit(line []byte) {
	// Streaming errors must not break the process's output pipe.
	_, _ = o.stream.Write(append([]byte(o.prefix), line...))
}

// flush streams an unterminated last line.
func (o *procOutput) flush() {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.stream != nil && len(o.partial) > 0 {
		o.emit(append(o.partial, '\n'))
		o.partial = nil
	}
}

func (o *procOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.all.String()
}
