package sysctl

import (
	"errors"
	"io/fs"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// RPFilter is a reverse-path filter mode (the names fwdd's config uses).
type RPFilter string

const (
	RPFilterKeep  RPFilter = "keep"  // write nothing
	RPFilterLoose RPFilter = "loose" // 2
	RPFilterOff   RPFilter = "off"   // 0
)

// Plan is what fwdd wants of the kernel, derived from the configuration.
// The zero Plan changes nothing.
type Plan struct {
	// IPForward enables net.ipv4.ip_forward. false leaves it as it is: fwdd
	// never turns forwarding off, other software on the host may need it.
	IPForward bool
	// IPv6Forward enables net.ipv6.conf.all.forwarding. Note that the kernel
	// then ignores router advertisements on interfaces with accept_ra=1.
	IPv6Forward bool
	// RPFilter is the reverse-path filter mode; "" or RPFilterKeep keeps it.
	//
	// The kernel uses max(conf.all.rp_filter, conf.<iface>.rp_filter), and 2
	// (loose) is the largest value, so:
	//   - loose writes 2 to all, default and each interface in Interfaces;
	//     all=2 alone already makes every interface loose, the other writes
	//     make the intent visible where people look for it;
	//   - off writes 0 to all, default and each interface in Interfaces; an
	//     interface not named keeps its own value (max(0, x) = x). One that
	//     appears later starts with default's 0, but under systemd udev runs
	//     systemd-sysctl for each new interface (99-systemd.rules), which
	//     applies sysctl.d's conf.*.rp_filter to it (upstream systemd's
	//     50-default.conf says 2; Debian does not ship that file); fwdd
	//     writes it at its next start or reload only;
	//   - keep writes nothing.
	RPFilter RPFilter
	// Interfaces are the interfaces forwards are bound to. One that does not
	// exist (yet) is logged as a warning, not an error.
	Interfaces []string
	// ConntrackMax sets net.netfilter.nf_conntrack_max when > 0. Inside a
	// child network namespace the kernel refuses; Apply then returns a
	// *ReadOnlyError saying to set it on the host. The parameter exists
	// only once nf_conntrack is loaded: see Later.
	ConntrackMax int
	// ConntrackBuckets sets net.netfilter.nf_conntrack_buckets (the hash
	// table's size) when > 0; like ConntrackMax, only on the host and only
	// once nf_conntrack is loaded.
	ConntrackBuckets int
}

type setting struct {
	name, value string
	iface       string // the interface whose directory may be missing, or ""
	// conntrack: a parameter of the nf_conntrack module, missing until it
	// is loaded.
	conntrack bool
}

func (p Plan) settings() []setting {
	var ss []setting
	if p.IPForward {
		ss = append(ss, setting{name: "net.ipv4.ip_forward", value: "1"})
	}
	if p.IPv6Forward {
		ss = append(ss, setting{name: Conf("ipv6", "all", "forwarding"), value: "1"})
	}
	var rp string
	switch p.RPFilter {
	case RPFilterLoose:
		rp = "2"
	case RPFilterOff:
		rp = "0"
	}
	if rp != "" {
		ss = append(ss,
			setting{name: Conf("ipv4", "all", "rp_filter"), value: rp},
			setting{name: Conf("ipv4", "default", "rp_filter"), value: rp})
		for _, ifc := range p.Interfaces {
			ss = append(ss, setting{name: Conf("ipv4", ifc, "rp_filter"), value: rp, iface: ifc})
		}
	}
	if p.ConntrackMax > 0 {
		ss = append(ss, setting{name: "net.netfilter.nf_conntrack_max", value: strconv.Itoa(p.ConntrackMax), conntrack: true})
	}
	if p.ConntrackBuckets > 0 {
		ss = append(ss, setting{name: "net.netfilter.nf_conntrack_buckets", value: strconv.Itoa(p.ConntrackBuckets), conntrack: true})
	}
	return ss
}

// laterNote says what rp_filter an interface that appears later gets, by
// the value fwdd wrote to conf.all and conf.default.
var laterNote = map[string]string{
	"2": "conf.all.rp_filter = 2 makes it loose when it appears, whatever its own value",
	"0": "when it appears its own value counts (conf.all is 0): it starts with conf.default's 0 " +
		"unless sysctl.d sets net.ipv4.conf.*.rp_filter, which udev applies to each new interface " +
		"through systemd-sysctl; fwdd sets it only at its next start or reload",
}

// raNote is logged when fwdd turns IPv6 forwarding on: a router does not
// autoconfigure from router advertisements, so a host that relied on SLAAC
// for its own address or default route loses them when they expire.
const raNote = "the kernel now ignores IPv6 router advertisements on interfaces with accept_ra=1; set accept_ra=2 on those this host autoconfigures from"

// Apply brings the kernel to p. It logs one line per value it changed and
// nothing for values already right. It tries every setting and returns the
// errors of those that failed, joined.
//
// A setting of nf_conntrack (ConntrackMax, ConntrackBuckets) whose
// parameter does not exist is no error: on a modular kernel the module is
// loaded by the first rule that uses conntrack, which early in boot nothing
// may have installed yet, and fwdd's own table is such a rule. Apply
// returns those settings in later, for Later.Apply once the table is in.
func Apply(s Sysctls, p Plan, log *zap.Logger) (later Later, err error) {
	return apply(s, p.settings(), true, log)
}

// Later are the settings Apply left until nf_conntrack is loaded.
type Later struct{ settings []setting }

// Empty reports whether nothing was left.
func (l Later) Empty() bool { return len(l.settings) == 0 }

// Apply writes what Apply left, as Apply does; a parameter still missing
// is an error now.
func (l Later) Apply(s Sysctls, log *zap.Logger) error {
	_, err := apply(s, l.settings, false, log)
	return err
}

func apply(s Sysctls, settings []setting, deferConntrack bool, log *zap.Logger) (Later, error) {
	var later Later
	var errs []error
	for _, st := range settings {
		old, changed, err := s.Set(st.name, st.value)
		switch {
		case err != nil && st.conntrack && deferConntrack && errors.Is(err, fs.ErrNotExist):
			log.Info("sysctl left until fwdd's table is in: nf_conntrack is not loaded yet",
				zap.String("sysctl", Display(st.name)), zap.String("value", st.value))
			later.settings = append(later.settings, st)
		case err != nil && st.iface != "" && errors.Is(err, fs.ErrNotExist):
			log.Warn("interface not present, rp_filter not set on it",
				zap.String("sysctl", Display(st.name)), zap.String("interface", st.iface), zap.String("note", laterNote[st.value]))
		case err != nil:
			errs = append(errs, err)
		case changed && st.name == Conf("ipv6", "all", "forwarding") && st.value == "1":
			log.Warn("sysctl changed", zap.String("sysctl", Display(st.name)),
				zap.String("old", old), zap.String("new", st.value), zap.String("note", raNote))
		case changed:
			log.Info("sysctl changed", zap.String("sysctl", Display(st.name)),
				zap.String("old", old), zap.String("new", st.value))
		}
	}
	if len(errs) == 0 {
		return later, nil
	}
	return later, joined(errs)
}

// joined is errors.Join on one line: errors carry no newlines.
type joined []error

func (j joined) Error() string {
	parts := make([]string, len(j))
	for i, e := range j {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (j joined) Unwrap() []error { return j }
