package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds DialTCP's greeting and AskUDP's reply when ctx has
// no deadline.
const DefaultTimeout = 5 * time.Second

// Peer is one connection (TCP) or datagram (UDP) a server saw.
type Peer struct {
	Remote netip.AddrPort // source as seen by the server (after any NAT)
	Local  netip.AddrPort // destination it arrived on (after any NAT)
}

// peerLog is a thread-safe list of peers.
type peerLog struct {
	mu    sync.Mutex
	peers []Peer
}

func (l *peerLog) add(p Peer) {
	l.mu.Lock()
	l.peers = append(l.peers, p)
	l.mu.Unlock()
}

func (l *peerLog) Peers() []Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Peer(nil), l.peers...)
}

func (l *peerLog) Remotes() []netip.AddrPort {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := make([]netip.AddrPort, len(l.peers))
	for i, p := range l.peers {
		r[i] = p.Remote
	}
	return r
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// network picks "tcp4"/"tcp6" (or udp) for a literal address; an empty host
// (":port") listens dual-stack.
func network(proto, addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "" {
		return proto, nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "", fmt.Errorf("address %q: want an IP literal: %w", addr, err)
	}
	if ip.Is4() {
		return proto + "4", nil
	}
	return proto + "6", nil
}

// TCPServer is a test server inside a namespace. For every connection it
// first writes "<host name> <remote addr>\n" (remote as seen by the server,
// e.g. "backend 10.11.0.2:40312") and then echoes everything it reads.
type TCPServer struct {
	Name string // host name used in greetings
	peerLog

	ln   net.Listener
	mu   sync.Mutex
	conn map[net.Conn]struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// ListenTCP starts a [TCPServer] in the namespace. addr is "ip:port" for
// one address family or ":port" for dual-stack; port 0 picks a free port
// (see Addr). The server is closed with the topology.
func (h *Host) ListenTCP(addr string) (*TCPServer, error) {
	nw, err := network("tcp", addr)
	if err != nil {
		return nil, err
	}
	var ln net.Listener
	err = h.Do(func() error {
		var err error
		ln, err = net.Listen(nw, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen tcp %s in %s: %w", addr, h.NS, err)
	}
	s := &TCPServer{Name: h.Name, ln: ln, conn: map[net.Conn]struct{}{}}
	if err := h.track(s); err != nil {
		ln.Close()
		return nil, err
	}
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// Addr returns the listening address.
func (s *TCPServer) Addr() netip.AddrPort {
	return unmap(s.ln.Addr().(*net.TCPAddr).AddrPort())
}

// Peers returns every connection accepted so far, in order.
func (s *TCPServer) Peers() []Peer { return s.peerLog.Peers() }

// Remotes returns the remote address of every connection accepted so far.
func (s *TCPServer) Remotes() []netip.AddrPort { return s.peerLog.Remotes() }

func (s *TCPServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		if s.conn == nil { // closed meanwhile
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conn[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *TCPServer) handle(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conn, c)
		s.mu.Unlock()
		c.Close()
	}()
	remote := unmap(c.RemoteAddr().(*net.TCPAddr).AddrPort())
	local := unmap(c.LocalAddr().(*net.TCPAddr).AddrPort())
	s.add(Peer{Remote: remote, Local: local})
	if _, err := fmt.Fprintf(c, "%s %s\n", s.Name, remote); err != nil {
		return
	}
	_, _ = io.Copy(c, c)
}

// Echo checks that c, a connection to a [TCPServer] (after its greeting),
// still works: msg comes back within DefaultTimeout.
func Echo(c net.Conn, msg string) error {
	if err := c.SetDeadline(time.Now().Add(DefaultTimeout)); err != nil {
		return err
	}
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

// Close stops the listener and closes all open connections. It is
// idempotent.
func (s *TCPServer) Close() error {
	var err error
	s.once.Do(func() {
		err = s.ln.Close()
		s.mu.Lock()
		for c := range s.conn {
			c.Close()
		}
		s.conn = nil
		s.mu.Unlock()
		s.wg.Wait()
	})
	return err
}

// Server is a [TCPServer] or a [UDPServer].
type Server interface {
	Addr() netip.AddrPort
	Peers() []Peer
	Remotes() []netip.AddrPort
	Close() error
}

// Listen starts a [TCPServer] (proto "tcp") or a [UDPServer] ("udp") at
// addr in the namespace; see ListenTCP.
func (h *Host) Listen(proto, addr string) (Server, error) {
	var s Server
	var err error
	if proto == "udp" {
		s, err = h.ListenUDP(addr)
	} else {
		s, err = h.ListenTCP(addr)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// UDPServer is a test server inside a namespace. It answers every
// datagram with "<host name> <remote addr>" (no newline), sent from the
// address the datagram was addressed to.
type UDPServer struct {
	Name string
	peerLog

	conn *net.UDPConn
	v6   bool // AF_INET6 socket (udp6 or dual-stack)
	done chan struct{}
	once sync.Once
}

// ListenUDP starts a [UDPServer] in the namespace; addr as for ListenTCP.
// The server is closed with the topology.
func (h *Host) ListenUDP(addr string) (*UDPServer, error) {
	nw, err := network("udp", addr)
	if err != nil {
		return nil, err
	}
	var conn *net.UDPConn
	err = h.Do(func() error {
		ua, err := net.ResolveUDPAddr(nw, addr)
		if err != nil {
			return err
		}
		conn, err = net.ListenUDP(nw, ua)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, h.NS, err)
	}
	s := &UDPServer{Name: h.Name, conn: conn, done: make(chan struct{})}
	if err := s.enablePktinfo(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("listen udp %s in %s: %w", addr, h.NS, err)
	}
	if err := h.track(s); err != nil {
		conn.Close()
		return nil, err
	}
	go s.serve()
	return s, nil
}

// enablePktinfo asks for the destination address of every datagram, so
// that replies leave from it (matters for servers on wildcard addresses of
// a host with several addresses).
func (s *UDPServer) enablePktinfo() error {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		var domain int
		domain, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if serr != nil {
			return
		}
		s.v6 = domain == unix.AF_INET6
		if s.v6 {
			if serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1); serr != nil {
				return
			}
			if v6only, _ := unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); v6only == 1 {
				return
			}
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("enable pktinfo: %w", serr)
	}
	return nil
}

// Addr returns the listening address.
func (s *UDPServer) Addr() netip.AddrPort {
	return unmap(s.conn.LocalAddr().(*net.UDPAddr).AddrPort())
}

// Peers returns every datagram's source and destination so far, in order.
func (s *UDPServer) Peers() []Peer { return s.peerLog.Peers() }

// Remotes returns every datagram's source address so far.
func (s *UDPServer) Remotes() []netip.AddrPort { return s.peerLog.Remotes() }

func (s *UDPServer) serve() {
	defer close(s.done)
	buf := make([]byte, 65536)
	oob := make([]byte, 512)
	port := s.Addr().Port()
	for {
		_, oobn, _, from, err := s.conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. ICMP errors reported on the socket
		}
		dst, ok := pktinfoDst(oob[:oobn])
		remote := unmap(from)
		p := Peer{Remote: remote}
		var reply []byte
		if ok {
			p.Local = netip.AddrPortFrom(dst, port)
			reply = s.srcControl(dst)
		}
		s.add(p)
		msg := fmt.Sprintf("%s %s", s.Name, remote)
		_, _, _ = s.conn.WriteMsgUDPAddrPort([]byte(msg), reply, from)
	}
}

// pktinfoDst extracts the destination address from IP(V6)_PKTINFO.
func pktinfoDst(oob []byte) (netip.Addr, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}, false
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO &&
			len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex(4) spec_dst(4) addr(4)
			return netip.AddrFrom4([4]byte(m.Data[8:12])), true
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO &&
			len(m.Data) >= unix.SizeofInet6Pktinfo:
			// struct in6_pktinfo: addr(16) ifindex(4)
			return netip.AddrFrom16([16]byte(m.Data[:16])).Unmap(), true
		}
	}
	return netip.Addr{}, false
}

// srcControl builds the control message that makes a reply leave from src.
func (s *UDPServer) srcControl(src netip.Addr) []byte {
	if s.v6 {
		return unix.PktInfo6(&unix.Inet6Pktinfo{Addr: src.As16()}) // v4 as ::ffff:a.b.c.d
	}
	return unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: src.As4()})
}

// Close stops the server. It is idempotent.
func (s *UDPServer) Close() error {
	var err error
	s.once.Do(func() {
		err = s.conn.Close()
		<-s.done
	})
	return err
}

// DialOption modifies DialTCP and AskUDP.
type DialOption func(*dialConfig)

type dialConfig struct {
	localIP   netip.Addr
	localPort int
}

// FromPort makes the client socket bind to a fixed local (source) port
// (with SO_REUSEADDR; see DialTCP about TIME_WAIT).
func FromPort(port int) DialOption { return func(c *dialConfig) { c.localPort = port } }

// FromIP makes the client socket bind to a fixed local (source) address.
func FromIP(ip netip.Addr) DialOption { return func(c *dialConfig) { c.localIP = ip } }

func (c *dialConfig) local() net.IP {
	if !c.localIP.IsValid() {
		return nil
	}
	return net.IP(c.localIP.AsSlice())
}

func reuseAddr(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(DefaultTimeout)
}

// DialTCP connects from the namespace to addr ("ip:port") and reads the
// greeting line of a [TCPServer] (returned without the newline). The
// connection (a *net.TCPConn) is left open for the caller, who should close
// it; the topology closes it otherwise. ctx bounds the connect and the
// greeting; without a deadline DefaultTimeout applies.
//
// Reusing a fixed source port (FromPort) for the same destination right
// after closing fails with EADDRNOTAVAIL while the old connection is in
// TIME_WAIT; call SetLinger(0) before Close to avoid that.
func (h *Host) DialTCP(ctx context.Context, addr string, opts ...DialOption) (net.Conn, string, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline(ctx))
	defer cancel()
	c, err := h.dialIn(ctx, "tcp", addr, opts)
	if err != nil {
		return nil, "", err
	}
	if err := h.trackConn(c.(*net.TCPConn)); err != nil {
		c.Close()
		return nil, "", err
	}
	dl, _ := ctx.Deadline()
	c.SetReadDeadline(dl)
	greeting, err := readLine(c)
	c.SetReadDeadline(time.Time{})
	if err != nil {
		c.Close()
		return nil, "", fmt.Errorf("read greeting from %s via %s: %w", addr, h.Name, err)
	}
	return c, greeting, nil
}

// Greet reaches a [TCPServer] (proto "tcp": connect, read the greeting,
// close) or a [UDPServer] ("udp": one datagram, see AskUDP) at addr from
// the namespace and returns its answer, "<host name> <remote addr>".
func (h *Host) Greet(ctx context.Context, proto, addr string, opts ...DialOption) (string, error) {
	if proto == "udp" {
		return h.AskUDP(ctx, addr, []byte("hello"), opts...)
	}
	c, greeting, err := h.DialTCP(ctx, addr, opts...)
	if err == nil {
		c.Close()
	}
	return greeting, err
}

// dialIn connects from the namespace (the socket is made there, on a
// thread switched into it) to addr over proto, "tcp" or "udp".
func (h *Host) dialIn(ctx context.Context, proto, addr string, opts []DialOption) (net.Conn, error) {
	nw, err := network(proto, addr)
	if err != nil {
		return nil, err
	}
	var cfg dialConfig
	for _, o := range opts {
		o(&cfg)
	}
	d := net.Dialer{Control: reuseAddr}
	if cfg.localPort != 0 || cfg.localIP.IsValid() {
		if proto == "tcp" {
			d.LocalAddr = &net.TCPAddr{IP: cfg.local(), Port: cfg.localPort}
		} else {
			d.LocalAddr = &net.UDPAddr{IP: cfg.local(), Port: cfg.localPort}
		}
	}
	var c net.Conn
	err = h.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, nw, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", proto, addr, h.Name, err)
	}
	return c, nil
}

// readLine reads up to '\n' byte by byte, so nothing after it is consumed.
func readLine(r io.Reader) (string, error) {
	var sb strings.Builder
	var b [1]byte
	for sb.Len() < 4096 {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return sb.String(), err
		}
		if b[0] == '\n' {
			return sb.String(), nil
		}
		sb.WriteByte(b[0])
	}
	return sb.String(), errors.New("line too long")
}

// AskUDP sends payload from the namespace to addr ("ip:port") and returns
// the first reply (for a [UDPServer]: "<host name> <remote addr>"). ctx
// bounds the wait; without a deadline DefaultTimeout applies. There are no
// retries: wrap it in Eventually where loss is expected.
func (h *Host) AskUDP(ctx context.Context, addr string, payload []byte, opts ...DialOption) (string, error) {
	ctx, cancel := context.WithDeadline(ctx, deadline(ctx))
	defer cancel()
	c, err := h.dialIn(ctx, "udp", addr, opts)
	if err != nil {
		return "", err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	if _, err := c.Write(payload); err != nil {
		return "", fmt.Errorf("udp %s from %s: send: %w", addr, h.Name, err)
	}
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("udp %s from %s: no reply: %w", addr, h.Name, err)
	}
	return string(buf[:n]), nil
}
