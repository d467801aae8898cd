package doctor

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/pkg/config"
)

type link struct {
	name     string
	index    uint32
	up       bool // administratively up
	running  bool // operationally up (or unknown, as for lo and some virtual links)
	loopback bool
	kind     string // veth, vxlan, bridge...; "" for a physical NIC
	stats    rtnetlink.LinkStats64
	addrs    []netip.Addr
}

type netInfo struct {
	links []*link
	conn  *rtnetlink.Conn
	// lookup, when set, answers route in place of the kernel (tests).
	lookup func(dst netip.Addr) (*link, netip.Addr, error)
}

func (n *netInfo) owner(a netip.Addr) string {
	for _, l := range n.links {
		if slices.Contains(l.addrs, a) {
			return l.name
		}
	}
	return ""
}

func (n *netInfo) byIndex(i uint32) *link {
	for _, l := range n.links {
		if l.index == i {
			return l
		}
	}
	return nil
}

// netInfo reads the interfaces once, over rtnetlink (what `ip -s link` and
// `ip addr` show).
func (e *Env) netInfo() (*netInfo, error) {
	if e.net != nil {
		return e.net, nil
	}
	c, err := rtnetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink: %w", err)
	}
	msgs, err := c.Link.List()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("list links: %w", err)
	}
	n := &netInfo{conn: c}
	for _, m := range msgs {
		l := &link{name: m.Attributes.Name, index: m.Index, up: m.Flags&unix.IFF_UP != 0,
			loopback: m.Flags&unix.IFF_LOOPBACK != 0}
		st := m.Attributes.OperationalState
		l.running = l.up && (st == rtnetlink.OperStateUp || st == rtnetlink.OperStateUnknown)
		if m.Attributes.Info != nil {
			l.kind = m.Attributes.Info.Kind
		}
		if m.Attributes.Stats64 != nil {
			l.stats = *m.Attributes.Stats64
		}
		n.links = append(n.links, l)
	}
	addrs, err := c.Address.List()
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.Attributes.Address)
		if l := n.byIndex(a.Index); l != nil && ok {
			l.addrs = append(l.addrs, ip.Unmap())
		}
	}
	e.net = n
	return n, nil
}

// route asks the kernel how it would send a packet to dst (ip route get).
func (n *netInfo) route(dst netip.Addr) (*link, netip.Addr, error) {
	if n.lookup != nil {
		return n.lookup(dst)
	}
	fam := uint8(unix.AF_INET)
	bits := uint8(32)
	if dst.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	rs, err := n.conn.Route.Get(&rtnetlink.RouteMessage{Family: fam, DstLength: bits,
		Attributes: rtnetlink.RouteAttributes{Dst: dst.AsSlice()}})
	if err != nil {
		return nil, netip.Addr{}, err
	}
	if len(rs) == 0 {
		return nil, netip.Addr{}, errors.New("no route")
	}
	gw, _ := netip.AddrFromSlice(rs[0].Attributes.Gateway)
	return n.byIndex(rs[0].Attributes.OutIface), gw.Unmap(), nil
}

func checkBackends(e *Env) []Result {
	n, err := e.netInfo()
	if err != nil {
		return []Result{warn("", "", "%v", err)}
	}
	var out []Result
	for i := range e.Cfg.Forwards {
		f := &e.Cfg.Forwards[i]
		for _, b := range f.Backends {
			out = append(out, backendResult(e, n, f, b))
		}
	}
	if len(out) == 0 {
		out = append(out, ok("", "no forwards configured"))
	}
	return out
}

// backendPort is the port b receives for the first port of f.
func backendPort(f *config.Forward, b config.Backend) uint16 {
	if b.ToPort.IsZero() {
		return f.Port.Lo
	}
	return b.ToPort.Lo
}

// backendResult checks one backend of f: its route, its link and, with
// --probe, a connection to it.
func backendResult(e *Env, n *netInfo, f *config.Forward, b config.Backend) Result {
	target := netip.AddrPortFrom(b.To, backendPort(f, b)).String()
	l, gw, err := n.route(b.To)
	if err != nil {
		return fail(f.Name, fmt.Sprintf("add a route to %s (ip route add %s via GATEWAY), or fix to = in the [[forward]] at %s line %d", b.To, b.To, f.File, f.Line),
			"no route to backend %s: %v", b.To, err)
	}
	if l == nil {
		return fail(f.Name, "", "the route to %s leaves by an unknown interface", b.To)
	}
	via := l.name
	if gw.IsValid() {
		via = gw.String() + " on " + l.name
	}
	if l.loopback {
		return ok(f.Name, "backend %s is this host", target)
	}
	if !l.running {
		fix := "ip link set " + l.name + " up"
		if l.up {
			fix = "check the cable or peer of " + l.name + " (ip link show " + l.name + ")"
		}
		return fail(f.Name, fix, "the route to backend %s leaves by %s, which is down", b.To, l.name)
	}
	if !e.Probe {
		return ok(f.Name, "backend %s via %s (up); --probe connects to it", target, via)
	}
	return probe(e, f, target, via)
}

// probe connects to the backend from the gateway: TCP if the forward has
// it, else a UDP datagram (an ICMP port unreachable shows as refused).
func probe(e *Env, f *config.Forward, target, via string) Result {
	proto := "udp"
	if slices.Contains(f.Protos, config.TCP) {
		proto = "tcp"
	}
	dial := e.dial
	if dial == nil {
		dial = net.DialTimeout
	}
	start := time.Now()
	c, err := dial(proto, target, e.ProbeTimeout)
	if err == nil && proto == "udp" {
		_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err = c.Write([]byte("fwdd doctor probe\n")); err == nil {
			_, err = c.Read(make([]byte, 1))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				err = nil // no answer is normal for UDP; no ICMP error is what counts
			}
		}
	}
	elapsed := time.Since(start)
	if c != nil {
		_ = c.Close()
	}
	if err != nil {
		fix := fmt.Sprintf("check that the backend listens on %s %s (ss -lnp on the backend) and that its firewall allows this host", proto, target)
		return fail(f.Name, fix, "%s connect to %s via %s failed after %s: %v", proto, target, via, elapsed.Round(time.Microsecond), err)
	}
	if proto == "udp" {
		return ok(f.Name, "udp datagram to %s via %s sent, no ICMP error", target, via)
	}
	return ok(f.Name, "tcp connect to %s via %s in %s", target, via, elapsed.Round(time.Microsecond))
}

// involved are the interfaces forwarded traffic crosses: those receiving it
// (see rpInterfaces, IPv6 included) and those leading to the backends.
func involved(e *Env, n *netInfo) []*link {
	set := map[string]bool{}
	for i := range e.Cfg.Forwards {
		f := &e.Cfg.Forwards[i]
		for _, b := range f.Backends {
			if l, _, err := n.route(b.To); err == nil && l != nil && !l.loopback {
				set[l.name] = true
			}
		}
		switch {
		case f.Interface != "":
			set[f.Interface] = true
		case !f.Local():
			if o := n.owner(f.Address); o != "" {
				set[o] = true
			}
		default:
			for _, l := range n.links {
				if l.up && !l.loopback {
					set[l.name] = true
				}
			}
		}
	}
	var out []*link
	for _, l := range n.links {
		if set[l.name] && !l.loopback {
			out = append(out, l)
		}
	}
	return out
}

func checkDrops(e *Env) []Result {
	n, err := e.netInfo()
	if err != nil {
		return []Result{warn("", "", "%v", err)}
	}
	var out []Result
	for _, l := range involved(e, n) {
		out = append(out, dropsResult(l.name, l.stats))
	}
	if len(out) == 0 {
		out = append(out, ok("", "no interfaces involved"))
	}
	return out
}

func dropsResult(name string, s rtnetlink.LinkStats64) Result {
	var parts []string
	for _, c := range []struct {
		what string
		n    uint64
	}{{"dropped", s.RXDropped}, {"overruns", s.RXOverErrors}, {"fifo errors", s.RXFIFOErrors}, {"missed", s.RXMissedErrors}} {
		if c.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", c.n, c.what))
		}
	}
	if len(parts) == 0 {
		return ok(name, "%d packets received, no drops", s.RXPackets)
	}
	return warn(name, fmt.Sprintf("watch `ip -s link show %s`; if the numbers grow under load enlarge the ring (ethtool -G %s rx 4096) and spread its interrupts over CPUs (see rx_queues)", name, name),
		"receive: %s of %d packets since it came up", strings.Join(parts, ", "), s.RXPackets)
}

// badOffloads are offloads known to corrupt checksums of packets the
// kernel rewrote (NAT), by driver (the link kind for virtual links) and the
// kernel release that fixed them.
var badOffloads = []struct {
	driver  string
	fixedIn [2]int // major, minor; zero = not fixed
	what    string
	fix     string
}{
	// vxlan with tx checksum offload sent NATed packets with bad checksums
	// (kubernetes#88986, fixed by "udp: ... GSO" in 5.7; flannel.1 and Calico's vxlan).
	{"vxlan", [2]int{5, 7}, "tx checksum offload on vxlan corrupts NATed packets on this kernel", "ethtool -K %s tx-checksum-ip-generic off"},
}

func checkOffloads(e *Env) []Result {
	n, err := e.netInfo()
	if err != nil {
		return []Result{warn("", "", "%v", err)}
	}
	rel := kernelRelease()
	var out []Result
	for _, l := range involved(e, n) {
		driver := l.kind
		if d, err := ethtoolDriver(l.name); err == nil && d != "" {
			driver = d
		}
		tx, txErr := ethtoolValue(l.name, unix.ETHTOOL_GTXCSUM)
		out = append(out, offloadResult(l.name, driver, tx, txErr == nil, rel))
	}
	if len(out) == 0 {
		out = append(out, ok("", "no interfaces involved"))
	}
	return out
}

func offloadResult(name, driver string, txCsum, known bool, rel [2]int) Result {
	for _, b := range badOffloads {
		if b.driver != driver || !txCsum {
			continue
		}
		if b.fixedIn == ([2]int{}) || rel[0] < b.fixedIn[0] || (rel[0] == b.fixedIn[0] && rel[1] < b.fixedIn[1]) {
			return fail(name, fmt.Sprintf(b.fix, name), "%s (driver %s, kernel %d.%d)", b.what, driver, rel[0], rel[1])
		}
	}
	state := "off"
	if !known {
		state = "unknown"
	} else if txCsum {
		state = "on"
	}
	if driver == "" {
		driver = "unknown"
	}
	return ok(name, "driver %s, tx checksum offload %s: no known problem with rewritten packets", driver, state)
}

func kernelRelease() [2]int {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return [2]int{}
	}
	var maj, min int
	_, _ = fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min)
	return [2]int{maj, min}
}

func ethtoolDriver(name string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
	if err != nil {
		return "", err
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

// ethtoolValue runs a legacy ethtool get command that returns one value
// (struct ethtool_value), such as ETHTOOL_GTXCSUM or ETHTOOL_GGRO. x/sys
// wraps only a few ethtool requests.
func ethtoolValue(name string, cmd uint32) (bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	value := struct{ cmd, data uint32 }{cmd: cmd}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data unsafe.Pointer
		_    [16]byte
	}
	copy(ifr.name[:], name)
	ifr.data = unsafe.Pointer(&value)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); errno != 0 {
		return false, errno
	}
	return value.data != 0, nil
}

// hardware reports whether a link is backed by a device (has queues and
// interrupts of its own), as /sys/class/net/NAME/device shows.
func hardware(sys, name string) bool {
	_, err := os.Stat(filepath.Join(sys, "class", "net", name, "device"))
	return err == nil
}
