package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

// stream records when a long-lived flow made progress and how it ended.
type stream struct {
	name  string
	mu    sync.Mutex
	times []time.Time
	err   error
	stop  chan struct{}
	done  chan struct{}
}

func newStream(name string) *stream {
	return &stream{name: name, stop: make(chan struct{}), done: make(chan struct{})}
}

func (s *stream) progress() {
	s.mu.Lock()
	s.times = append(s.times, time.Now())
	s.mu.Unlock()
}

func (s *stream) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// end stops the flow and returns its error (nil: it never broke).
func (s *stream) end() error {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// failed returns the error that broke the flow, if any, without stopping it.
func (s *stream) failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// count is the number of steps the flow made.
func (s *stream) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.times)
}

// maxGap is the longest time without progress between from and to (the
// progress just before from counts as its start).
func (s *stream) maxGap(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gap time.Duration
	var last time.Time
	for _, t := range s.times {
		if t.Before(from) {
			last = t
			continue
		}
		if t.After(to) {
			break
		}
		if !last.IsZero() && t.Sub(last) > gap {
			gap = t.Sub(last)
		}
		last = t
	}
	if !last.IsZero() && to.Sub(last) > gap && time.Now().After(to) {
		gap = to.Sub(last) // no progress at all until to
	}
	return gap
}

func (s *stream) finish(err error) {
	s.mu.Lock()
	if err != nil && s.err == nil && !s.stopped() {
		s.err = fmt.Errorf("%s: %w", s.name, err)
	}
	s.mu.Unlock()
	close(s.done)
}

// serveDownload listens on addr in h and sends every connection an endless
// sequence of 8-byte counters, one every 10 ms: a flow the backend drives.
func serveDownload(t *testing.T, h *sandbox.Host, addr string) {
	t.Helper()
	var ln net.Listener
	if err := h.Do(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var b [8]byte
				for n := uint64(0); ; n++ {
					binary.BigEndian.PutUint64(b[:], n)
					if _, err := c.Write(b[:]); err != nil {
						return
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
		}
	}()
}

// download connects from h to addr (a serveDownload server behind a
// forward) and reads the counters until stopped; any error, a missing or
// repeated counter, or 10 s without data breaks it. It returns the stream
// and the client's "ip:port".
func download(t *testing.T, h *sandbox.Host, addr string) (*stream, string) {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.DialTimeout("tcp", addr, 3*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	s := newStream("download via " + addr)
	go func() {
		var b [8]byte
		var err error
		for want := uint64(0); !s.stopped(); want++ {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err = io.ReadFull(c, b[:]); err != nil {
				break
			}
			if got := binary.BigEndian.Uint64(b[:]); got != want {
				err = fmt.Errorf("counter %d, want %d", got, want)
				break
			}
			s.progress()
		}
		c.Close()
		s.finish(err)
	}()
	return s, c.LocalAddr().String()
}

// echo connects from h to addr (a sandbox TCPServer behind a forward) and
// sends a line every 20 ms, waiting for each echo: a flow the client
// drives. Any error or 10 s without an echo breaks it.
func echo(t *testing.T, h *sandbox.Host, addr string) (*stream, string) {
	t.Helper()
	c, _, err := h.DialTCP(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	s := newStream("echo via " + addr)
	go func() {
		var err error
		buf := make([]byte, 64)
		for i := 0; !s.stopped(); i++ {
			msg := fmt.Sprintf("%09d\n", i)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err = io.WriteString(c, msg); err != nil {
				break
			}
			if _, err = io.ReadFull(c, buf[:len(msg)]); err != nil {
				break
			}
			if string(buf[:len(msg)]) != msg {
				err = fmt.Errorf("echo %q, want %q", buf[:len(msg)], msg)
				break
			}
			s.progress()
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
		s.finish(err)
	}()
	return s, c.LocalAddr().String()
}

// udpStream sends a datagram from one socket of h to addr (a sandbox
// UDPServer behind a forward) every 20 ms and waits up to 1 s for each
// reply; a missing reply breaks it.
func udpStream(t *testing.T, h *sandbox.Host, addr string) *stream {
	t.Helper()
	var c net.Conn
	if err := h.Do(func() (err error) { c, err = net.Dial("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	s := newStream("udp via " + addr)
	go func() {
		var err error
		buf := make([]byte, 512)
		for i := 0; !s.stopped(); i++ {
			c.SetDeadline(time.Now().Add(time.Second))
			if _, err = fmt.Fprintf(c, "%d", i); err != nil {
				break
			}
			if _, err = c.Read(buf); err != nil {
				err = fmt.Errorf("datagram %d: %w", i, err)
				break
			}
			s.progress()
			time.Sleep(20 * time.Millisecond)
		}
		c.Close()
		s.finish(err)
	}()
	return s
}
