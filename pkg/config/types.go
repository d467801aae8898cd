// Package config turns fwdd's TOML files into a validated, immutable Config.
//
// Every parse goes the same way (cache.go): each file is cut at its
// [[forward]] headers, the blocks not seen before are decoded with
// BurntSushi/toml into the library's own maps, which keep each key as
// written, and each table is validated into the typed values below
// (parse.go, forward.go, balance.go), then the forwards against each other
// (overlap.go). When anything is wrong the files are decoded whole, and a
// scan of the text (internal/tomlpos) finds the line of each key for the
// messages (errors.go); internal/tomlcheck words the problems that are not
// about what a key means (a value of the wrong type, a TOML syntax error).
// Nothing outside this package sees the decoded maps.
package config

import (
	"net/netip"
	"slices"

	"github.com/fwdd/fwdd/pkg/ctmark"
	"github.com/fwdd/fwdd/pkg/health"
)

// DefaultPath is where fwdd looks for its configuration.
const DefaultPath = "/etc/fwdd/fwdd.toml"

// Config is a whole validated configuration file.
type Config struct {
	// Path is the file the configuration was read from ("" when parsed from memory).
	Path      string
	Daemon    Daemon
	Sysctl    Sysctl
	Conntrack Conntrack
	// Forwards in file order: the file's, then those of each file of its
	// config directory.
	Forwards []Forward
	// Warnings are problems that do not make the configuration invalid
	// (such as /metrics on a non-loopback address). fwdd check prints them
	// and the daemon logs them.
	Warnings []Problem
}

// OnStop says what happens to fwdd's table when the daemon stops.
type OnStop string

const (
	OnStopFlush OnStop = "flush" // remove the table
	OnStopKeep  OnStop = "keep"  // leave the rules in the kernel
)

// Daemon is the [daemon] section.
//
// The key tags of Daemon, Sysctl and Conntrack name each field's key in the
// file, for Diff and TOML.
type Daemon struct {
	Table    string `key:"table"`     // nftables table name, family inet; default "fwdd"
	OnStop   OnStop `key:"on_stop"`   // default flush
	LogLevel string `key:"log_level"` // debug | info | warn | error; default info
	Metrics  string `key:"metrics"`   // listen address for /metrics, "" = off
	// ForwardPolicy is what fwdd's forward-hook chain does with forwarded
	// packets of connections fwdd did not forward; default accept.
	ForwardPolicy ForwardPolicy `key:"forward_policy"`
	// CtMark is where fwdd's bits are in the ct mark ([daemon] ct_mark and
	// ct_mask); default ctmark.Default.
	CtMark ctmark.Layout `key:"ct_mark"`
}

// ForwardPolicy is the verdict of fwdd's forward chain for traffic that is
// not fwdd's.
type ForwardPolicy string

const (
	// ForwardAccept leaves other forwarded traffic to the rest of the host's
	// firewall.
	ForwardAccept ForwardPolicy = "accept"
	// ForwardDrop drops every forwarded packet that does not belong to a
	// connection fwdd forwarded: a drop-by-default FORWARD chain.
	ForwardDrop ForwardPolicy = "drop"
)

// RPFilter is the reverse-path filter mode fwdd applies.
type RPFilter string

const (
	RPFilterKeep  RPFilter = "keep"  // leave as is
	RPFilterLoose RPFilter = "loose" // 2
	RPFilterOff   RPFilter = "off"   // 0
)

// Sysctl is the [sysctl] section.
type Sysctl struct {
	IPForward    bool     `key:"ip_forward"`    // default true
	RPFilter     RPFilter `key:"rp_filter"`     // default keep
	ConntrackMax int      `key:"conntrack_max"` // 0 = leave alone
	// ConntrackBuckets sets nf_conntrack_buckets (the conntrack hash
	// table's size) where the kernel allows it; 0 = leave alone.
	ConntrackBuckets int `key:"conntrack_buckets"`
}

// Conntrack is the [conntrack] section.
type Conntrack struct {
	WarnPercent     int `key:"warn_percent"`     // default 80
	CriticalPercent int `key:"critical_percent"` // default 95
}

// Proto is an IP protocol number fwdd forwards.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return "proto?"
}

// PortRange is an inclusive port range; a single port has Lo == Hi.
// The zero value means "unset".
type PortRange struct{ Lo, Hi uint16 }

// IsZero reports whether the range is unset.
func (r PortRange) IsZero() bool { return r.Lo == 0 && r.Hi == 0 }

// Len is the number of ports in the range.
func (r PortRange) Len() int {
	if r.IsZero() {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}

// SNATKind says how the source of forwarded connections is rewritten.
type SNATKind uint8

const (
	SNATMasquerade SNATKind = iota // source = the gateway's address on the egress interface
	SNATNone                       // backend sees the client's address
	SNATFixed                      // source = SNAT.Addr (e.g. a VRRP VIP)
)

// SNAT is a forward's source translation.
type SNAT struct {
	Kind SNATKind
	Addr netip.Addr // only with SNATFixed
}

// Forward is one validated [[forward]] entry.
type Forward struct {
	Name string
	// File is the file the forward is in: Config.Path, or a file of its
	// config directory.
	File string
	// Line is the line of the [[forward]] header in File (0 when unknown).
	Line int
	// Protos is sorted and without duplicates: [TCP], [UDP] or [TCP, UDP].
	Protos []Proto
	// Port is the port or range matched.
	Port PortRange
	// Address is the destination matched; invalid (zero) means any address
	// local to this host.
	Address netip.Addr
	// To is the backend address; it sets the forward's family.
	To netip.Addr
	// ToPort is the backend port or range; zero means "keep the original port".
	// Either zero, one port, or a range of the same length as Port (mapped 1:1).
	ToPort    PortRange
	Interface string         // "" = any
	Sources   []netip.Prefix // empty = any; masked, sorted, disjoint, same family as To
	SNAT      SNAT
	Log       bool
	// Backends are the forward's backends, one at least, all of To's
	// family; To and ToPort are the first one's.
	Backends []Backend
	Balance  Balance
	Health   health.Spec // the checks that take a backend out and back (HAProxy's meaning)
	OnChange OnChange
}

// IPv6 reports whether the forward is for IPv6 traffic.
func (f *Forward) IPv6() bool { return f.To.Is6() }

// Local reports whether the forward matches any local address (address = "").
func (f *Forward) Local() bool { return !f.Address.IsValid() }

// TargetPort returns the backend port for original port p (p within f.Port):
// p itself when the forward keeps the original port, the one to port, or
// the port at the same offset in a 1:1 mapped range.
func (f *Forward) TargetPort(p uint16) uint16 {
	switch {
	case f.ToPort.IsZero():
		return p
	case f.ToPort.Lo == f.ToPort.Hi:
		return f.ToPort.Lo
	default:
		return f.ToPort.Lo + (p - f.Port.Lo)
	}
}

// Equal reports whether f and g forward the same packets the same way. File
// and Line are ignored, so moving a forward within or between files is not a
// change.
func (f *Forward) Equal(g *Forward) bool {
	return f.Name == g.Name &&
		slices.Equal(f.Protos, g.Protos) &&
		f.Port == g.Port &&
		f.Address == g.Address &&
		f.To == g.To &&
		f.ToPort == g.ToPort &&
		f.Interface == g.Interface &&
		slices.Equal(f.Sources, g.Sources) &&
		f.SNAT == g.SNAT &&
		f.Log == g.Log &&
		slices.Equal(f.Backends, g.Backends) &&
		f.Balance == g.Balance &&
		f.Health == g.Health &&
		f.OnChange == g.OnChange
}

// ForwardsByName indexes the forwards by name (names are unique).
func (c *Config) ForwardsByName() map[string]*Forward {
	m := make(map[string]*Forward, len(c.Forwards))
	for i := range c.Forwards {
		m[c.Forwards[i].Name] = &c.Forwards[i]
	}
	return m
}
