package main

// Helper modes: the benchmark runs its own binary inside the namespaces
// ("ip netns exec NS fwdd-bench serve ...") so that servers and load
// generators are whole processes in their namespace, with no thread
// switching namespaces on every connection.

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// serveMain is "fwdd-bench serve -ports 5000,5001": for every connection it
// writes its own port and a newline, then closes. It prints "ready" once all
// listeners are up and exits on SIGTERM or SIGINT.
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	ports := fs.String("ports", strconv.Itoa(serverPort), "comma-separated ports to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, p := range strings.Split(*ports, ",") {
		ln, err := net.Listen("tcp4", ":"+p)
		if err != nil {
			return err
		}
		greeting := []byte(p + "\n")
		// Two accept loops per port keep up with eight clients on two cores.
		for range 2 {
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						if errors.Is(err, net.ErrClosed) {
							return
						}
						continue // e.g. ECONNABORTED
					}
					_, _ = c.Write(greeting)
					c.Close()
				}
			}()
		}
	}
	fmt.Println("ready")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	<-sigs
	return nil
}

// connResult is what "connload" prints, as JSON.
type connResult struct {
	OK       int64   `json:"ok"`
	Failed   int64   `json:"failed"`
	Seconds  float64 `json:"seconds"`
	FirstErr string  `json:"firstErr,omitempty"`
	// SynRetrans is how many SYNs the client's namespace retransmitted
	// while connload ran (TcpExt TCPSynRetrans): a SYN that was lost or
	// refused costs the connection a retransmit timeout.
	SynRetrans int64 `json:"synRetrans"`
}

// connloadMain is "fwdd-bench connload -addr IP:PORT -workers 8 -duration
// 3s -expect 5000": each worker connects, reads the greeting, checks it and
// closes with SO_LINGER 0 (an RST: no TIME_WAIT, so ephemeral ports are
// never exhausted), in a loop until the duration is over. Plain blocking
// syscalls keep the client's own cost per connection low and steady.
func connloadMain(args []string) error {
	fs := flag.NewFlagSet("connload", flag.ContinueOnError)
	addr := fs.String("addr", "", "server IPv4:port")
	workers := fs.Int("workers", 8, "parallel clients")
	duration := fs.Duration("duration", 3*time.Second, "how long to count connections")
	warmup := fs.Duration("warmup", 0, "how long to run before counting")
	expect := fs.String("expect", "", "greeting every connection must get (without newline)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("-addr %q: want IPv4:port", *addr)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	want := *expect + "\n"

	var ok, failed atomic.Int64
	var firstErr sync.Once
	var res connResult
	retrans0, err := synRetrans()
	if err != nil {
		return err
	}
	start := time.Now().Add(*warmup)
	end := start.Add(*duration)
	var wg sync.WaitGroup
	for range *workers {
		wg.Go(func() {
			buf := make([]byte, 64)
			for {
				err := oneConn(sa, buf, want)
				now := time.Now()
				if now.After(end) {
					return
				}
				if now.Before(start) {
					continue
				}
				if err != nil {
					failed.Add(1)
					firstErr.Do(func() { res.FirstErr = err.Error() })
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	res.Seconds = end.Sub(start).Seconds()
	res.OK, res.Failed = ok.Load(), failed.Load()
	retrans1, err := synRetrans()
	if err != nil {
		return err
	}
	res.SynRetrans = retrans1 - retrans0
	return json.NewEncoder(os.Stdout).Encode(res)
}

// synRetrans reads TcpExt TCPSynRetrans of this network namespace.
func synRetrans() (int64, error) {
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return 0, err
	}
	return sandbox.TCPExt(b, "TCPSynRetrans")
}

var (
	ioTimeout = unix.Timeval{Sec: 2}
	rstLinger = unix.Linger{Onoff: 1, Linger: 0}
)

func oneConn(sa *unix.SockaddrInet4, buf []byte, want string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	// SO_SNDTIMEO bounds connect, SO_RCVTIMEO the greeting.
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &ioTimeout); err != nil {
		return err
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &ioTimeout); err != nil {
		return err
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &rstLinger); err != nil {
		return err
	}
	if err := connect(fd, sa); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	n := 0
	for n < len(want) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR { // the Go runtime's preemption signal
			continue
		}
		if err != nil {
			return fmt.Errorf("read greeting: %w", err)
		}
		if m == 0 {
			break
		}
		n += m
	}
	if got := string(buf[:n]); want != "\n" && got != want {
		return fmt.Errorf("greeting %q, want %q", got, want)
	}
	return nil
}

// connect is a blocking connect that survives EINTR: a connect interrupted
// by a signal (the Go runtime's preemption signal, SIGURG) goes on in the
// background, so wait for it and read its outcome.
func connect(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR && err != unix.EALREADY && err != unix.EINPROGRESS {
		return err
	}
	deadline := time.Now().Add(time.Duration(ioTimeout.Sec) * time.Second)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}
