package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/fwdd/fwdd/internal/tomlcheck"
)

const (
	portHint = `must be 1-65535 or a range "lo-hi"`
	toHint   = `must be "IP", "IP:port", "IP:lo-hi", "[IPv6]", "[IPv6]:port" or "[IPv6]:lo-hi"`
)

// parseForward validates one [[forward]]; problems go to fs.
func parseForward(fs *fields, t map[string]any) Forward {
	f := Forward{Line: fs.Lines.Line}
	switch name, ok := fs.String("name", t["name"], ""); {
	case !ok:
	case name == "":
		fs.Errorf("name", "required; must be 1-32 of a-z, 0-9, '_' or '-', starting with a letter or digit")
	default:
		if forwardNameRE.MatchString(name) {
			f.Name = name
		} else {
			fs.Errorf("name", "%s is not a valid name; must be 1-32 of a-z, 0-9, '_' or '-', starting with a letter or digit", quote(name))
		}
	}

	f.Protos = parseProtos(fs, t["proto"])
	f.Port = parsePortValue(fs, t["port"])

	parseBalancing(fs, t, &f)

	if s, ok := fs.String("address", t["address"], ""); ok && s != "" {
		switch a, msg := parseIP(s); {
		case msg != "":
			fs.Errorf("address", "%s", msg)
		case a.IsUnspecified():
			fs.Errorf("address", "%s is the unspecified address; use \"\" to match any local address", a)
		case !sameFamily(fs, "address", a.String(), a, f.To):
		default:
			f.Address = a
		}
	}

	if s, ok := fs.String("interface", t["interface"], ""); ok && s != "" {
		if why := checkInterfaceName(s); why != "" {
			fs.Errorf("interface", "%s is not a valid interface name: %s; %s", quote(s), why, ifaceHint)
		} else {
			f.Interface = s
		}
	}

	f.Sources = parseSources(fs, t["sources"], f.To)
	f.SNAT = parseSNAT(fs, t["snat"], f.To)
	f.Log = fs.Bool("log", t["log"], false)
	return f
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// sameFamily reports whether a (written as shown) is of to's family, or to
// is unset, and says so on field when not.
func sameFamily(fs *fields, field, shown string, a, to netip.Addr) bool {
	if to.IsValid() && a.Is4() != to.Is4() {
		fs.Errorf(field, "%s is %s but to (%s) is %s; they must be the same family", shown, family(a), to, family(to))
		return false
	}
	return true
}

func parseProto(fs *fields, v any) (Proto, bool) {
	switch v {
	case "tcp":
		return TCP, true
	case "udp":
		return UDP, true
	}
	if s, ok := v.(string); ok {
		fs.Errorf("proto", "%s is not allowed; must be \"tcp\" or \"udp\"", quote(s))
	} else {
		fs.Errorf("proto", "array elements must be \"tcp\" or \"udp\", not %s", tomlcheck.TypeName(v))
	}
	return 0, false
}

func parseProtos(fs *fields, v any) []Proto {
	switch v := v.(type) {
	case nil:
		return []Proto{TCP}
	case string:
		if p, ok := parseProto(fs, v); ok {
			return []Proto{p}
		}
		return nil
	case []any:
		if len(v) == 0 {
			fs.Errorf("proto", "empty; must be \"tcp\", \"udp\" or [\"tcp\", \"udp\"]")
			return nil
		}
		var ps []Proto
		for _, e := range v {
			p, ok := parseProto(fs, e)
			if !ok {
				return nil
			}
			if slices.Contains(ps, p) {
				fs.Errorf("proto", "%q is listed twice", p)
				return nil
			}
			ps = append(ps, p)
		}
		slices.Sort(ps)
		return ps
	}
	fs.Errorf("proto", "must be \"tcp\", \"udp\" or an array of them, not %s", tomlcheck.TypeName(v))
	return nil
}

func parsePortValue(fs *fields, v any) PortRange {
	switch v := v.(type) {
	case nil:
		fs.Errorf("port", "required; %s", portHint)
	case int64:
		if v < 1 || v > 65535 {
			fs.Errorf("port", "%d is out of range; %s", v, portHint)
			break
		}
		return PortRange{uint16(v), uint16(v)}
	case string:
		r, msg := parsePortRange(v)
		if msg != "" {
			fs.Errorf("port", "%s; %s", msg, portHint)
		}
		return r
	default:
		fs.Errorf("port", "must be an integer or a string \"lo-hi\", not %s", tomlcheck.TypeName(v))
	}
	return PortRange{}
}

// parsePortRange parses "80" or "8000-8099"; msg says what is wrong.
func parsePortRange(s string) (r PortRange, msg string) {
	loStr, hiStr, isRange := strings.Cut(s, "-")
	if !isRange {
		hiStr = loStr
	}
	lo, okLo := parsePortNumber(loStr)
	hi, okHi := parsePortNumber(hiStr)
	switch {
	case !okLo || !okHi:
		return PortRange{}, fmt.Sprintf("%s is not a port or port range", quote(s))
	case lo < 1 || lo > 65535:
		return PortRange{}, fmt.Sprintf("%s is out of range", strings.Trim(quote(loStr), `"`))
	case hi < 1 || hi > 65535:
		return PortRange{}, fmt.Sprintf("%s is out of range", strings.Trim(quote(hiStr), `"`))
	case lo > hi:
		return PortRange{}, fmt.Sprintf("range %s is backwards (%d > %d)", quote(s), lo, hi)
	}
	return PortRange{uint16(lo), uint16(hi)}, ""
}

// parsePortNumber parses decimal digits only (no sign, no spaces); values
// too large for a port come back as 65536.
func parsePortNumber(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = min(n*10+int(c-'0'), 65536)
	}
	return n, true
}

// parseIP parses a single IP address without zone; msg says what is wrong.
func parseIP(s string) (netip.Addr, string) {
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Addr{}, fmt.Sprintf("%s is not an IP address", quote(s))
	case a.Zone() != "":
		return netip.Addr{}, fmt.Sprintf("%s has a zone; zones are not allowed", quote(s))
	case a.Is4In6():
		return netip.Addr{}, fmt.Sprintf("%s is an IPv4-mapped IPv6 address; write the IPv4 address %s instead", quote(s), a.Unmap())
	}
	return a, ""
}

// parseTo parses the backend: "IP", "IP:port", "IP:lo-hi", "[IPv6]",
// "[IPv6]:port", "[IPv6]:lo-hi" or a bare IPv6 address.
func parseTo(fs *fields, s string) (netip.Addr, PortRange) {
	host, port, hasPort := s, "", false
	switch {
	case strings.HasPrefix(s, "["):
		end := strings.IndexByte(s, ']')
		if end < 0 {
			fs.Errorf("to", "%s has no closing ']'; %s", quote(s), toHint)
			return netip.Addr{}, PortRange{}
		}
		host = s[1:end]
		switch rest := s[end+1:]; {
		case rest == "":
		case rest[0] == ':':
			port, hasPort = rest[1:], true
		default:
			fs.Errorf("to", "%s: unexpected %s after ']'; %s", quote(s), quote(rest), toHint)
			return netip.Addr{}, PortRange{}
		}
		if a, err := netip.ParseAddr(host); err == nil && !a.Is6() {
			fs.Errorf("to", "%s: brackets are only for IPv6 addresses; write %s", quote(s), strings.Replace(s[1:], "]", "", 1))
			return netip.Addr{}, PortRange{}
		}
	default:
		if a, err := netip.ParseAddr(s); err == nil {
			if i := strings.LastIndexByte(s, ':'); a.Is6() && looksLikePort(s[i+1:]) {
				if b, err := netip.ParseAddr(s[:i]); err == nil && b.Is6() && !strings.HasSuffix(s[:i], ":") {
					fs.Errorf("to", "%s is ambiguous: its last group looks like a port; write \"[%s]:%s\" for port %s, or \"[%s]\" to keep the original port", quote(s), s[:i], s[i+1:], s[i+1:], s)
					return netip.Addr{}, PortRange{}
				}
			}
			break
		}
		i := strings.LastIndexByte(s, ':')
		if i < 0 || strings.Contains(s[:i], ":") {
			// No port, or an IPv6 address (which needs brackets to take one).
			break
		}
		host, port, hasPort = s[:i], s[i+1:], true
	}
	a, msg := parseIP(host)
	if msg != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			msg += "; " + toHint
		}
		fs.Errorf("to", "%s", msg)
		return netip.Addr{}, PortRange{}
	}
	if why := unusable(a); why != "" {
		fs.Errorf("to", "%s; the backend must be a unicast address of another host", why)
		return netip.Addr{}, PortRange{}
	}
	if a.IsLoopback() {
		fs.Errorf("to", "%s is a loopback address: packets from other hosts DNATed to it are dropped unless route_localnet=1, which opens every service bound to loopback to the network (CVE-2020-8558); for a service on this host, let it listen on the address clients connect to, or forward to another address of this host", a)
		return netip.Addr{}, PortRange{}
	}
	var r PortRange
	if hasPort {
		var msg string
		if r, msg = parsePortRange(port); msg != "" {
			fs.Errorf("to", "port: %s; %s", msg, portHint)
			return netip.Addr{}, PortRange{}
		}
	}
	return a, r
}

// unusable says why an address cannot be a backend or a source, or "".
func unusable(a netip.Addr) string {
	switch {
	case a.IsUnspecified():
		return a.String() + " is the unspecified address"
	case a.IsMulticast():
		return a.String() + " is a multicast address"
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return a.String() + " is the broadcast address"
	case a.Is6() && a.IsLinkLocalUnicast():
		return a.String() + " is an IPv6 link-local address, usable only with an interface, which fwdd has no way to give"
	}
	return ""
}

// looksLikePort reports whether an IPv6 group is also a port: decimal digits.
func looksLikePort(g string) bool {
	n, ok := parsePortNumber(g)
	return ok && n >= 1 && n <= 65535
}

const ifaceHint = `an interface name is 1-15 printable ASCII characters other than '/', ':', '"', '\' and '*'`

// checkInterfaceName allows the names that the kernel takes
// (dev_valid_name) and that nft prints and reads back unchanged: nft strings
// have no escapes, and a '*' is a wildcard to nft but a literal character
// over netlink, so wildcards are not supported.
func checkInterfaceName(s string) string {
	switch {
	case len(s) > 15:
		return "longer than 15 bytes"
	case s == "." || s == "..":
		return "\".\" and \"..\" are not allowed"
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '*':
			return "wildcards ('*') are not supported"
		case c <= ' ' || c == 0x7f:
			return "whitespace and control characters are not allowed"
		case c > 0x7f:
			return "only ASCII characters are allowed"
		case c == '/' || c == ':' || c == '"' || c == '\\':
			return fmt.Sprintf("%q is not allowed", c)
		}
	}
	return ""
}

// parseSources returns the sources masked, sorted, and checked for
// duplicates and overlaps.
func parseSources(fs *fields, v any, to netip.Addr) []netip.Prefix {
	var list []any
	switch v := v.(type) {
	case nil:
		return nil
	case []any:
		list = v
	default:
		fs.Errorf("sources", "must be an array of CIDRs or IPs, e.g. [\"10.0.0.0/8\"], not %s", tomlcheck.TypeName(v))
		return nil
	}
	var prefixes []netip.Prefix
	ok := true
	for _, e := range list {
		s, isString := e.(string)
		if !isString {
			fs.Errorf("sources", "elements must be strings, not %s", tomlcheck.TypeName(e))
			ok = false
			continue
		}
		p, msg := parseSource(s)
		switch {
		case msg != "":
			fs.Errorf("sources", "%s", msg)
			ok = false
		case !sameFamily(fs, "sources", s, p.Addr(), to):
			ok = false
		default:
			prefixes = append(prefixes, p)
		}
	}
	slices.SortFunc(prefixes, netip.Prefix.Compare)
	for i := 1; i < len(prefixes); i++ {
		switch a, b := prefixes[i-1], prefixes[i]; {
		case a == b:
			fs.Errorf("sources", "%s is listed twice", b)
			ok = false
		case a.Overlaps(b):
			fs.Errorf("sources", "%s overlaps %s; list each address once", b, a)
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return prefixes
}

func parseSource(s string) (netip.Prefix, string) {
	if !strings.Contains(s, "/") {
		a, msg := parseIP(s)
		if msg != "" {
			return netip.Prefix{}, msg + "; must be a CIDR or an IP"
		}
		return netip.PrefixFrom(a, a.BitLen()), ""
	}
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Sprintf("%s is not a CIDR; must be a CIDR (10.0.0.0/8) or an IP", quote(s))
	case p.Addr().Is4In6():
		return netip.Prefix{}, fmt.Sprintf("%s is an IPv4-mapped IPv6 prefix; write it as IPv4", quote(s))
	case p.Masked() != p:
		return netip.Prefix{}, fmt.Sprintf("%s has host bits set; write %s (an allow-list must never be wider than written)", s, p.Masked())
	}
	return p, ""
}

func parseSNAT(fs *fields, v any, to netip.Addr) SNAT {
	s, ok := fs.String("snat", v, "masquerade")
	if !ok {
		return SNAT{}
	}
	switch s {
	case "masquerade":
		return SNAT{Kind: SNATMasquerade}
	case "none":
		return SNAT{Kind: SNATNone}
	}
	a, msg := parseIP(s)
	switch {
	case msg != "":
		fs.Errorf("snat", "%s; must be \"masquerade\", \"none\" or an IP address", msg)
	case unusable(a) != "" || a.IsLoopback():
		why := unusable(a)
		if why == "" {
			why = a.String() + " is a loopback address"
		}
		fs.Errorf("snat", "%s cannot be a source address: %s; must be \"masquerade\", \"none\" or a unicast IP address of this host", a, why)
	case !sameFamily(fs, "snat", a.String(), a, to):
	default:
		return SNAT{Kind: SNATFixed, Addr: a}
	}
	return SNAT{}
}

// String renders "80" or "8000-8099".
func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}
