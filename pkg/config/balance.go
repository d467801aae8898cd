package config

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/fwdd/fwdd/internal/tomlcheck"
	"github.com/fwdd/fwdd/internal/tomlpos"
	"github.com/fwdd/fwdd/pkg/health"
)

// Backend is one backend of a forward.
type Backend struct {
	To netip.Addr
	// ToPort is as Forward.ToPort: zero keeps the original port.
	ToPort PortRange
	Weight int // 1-100
}

// String writes the backend as to = takes it. An IPv6 address is in
// brackets with or without a port: bare, one whose last group looks like a
// port (2001:db8::1:80) would not read back.
func (b Backend) String() string {
	host := b.To.String()
	if b.To.Is6() {
		host = "[" + host + "]"
	}
	if b.ToPort.IsZero() {
		return host
	}
	return host + ":" + b.ToPort.String()
}

// Balance is how new connections are spread over several backends.
type Balance string

const (
	// BalanceRandom spreads new connections at random, by weight.
	BalanceRandom Balance = "random"
	// BalanceSource sends a client address always to the same backend
	// while the set of healthy backends does not change.
	BalanceSource Balance = "source"
)

// OnChange says what happens to a forward's established TCP connections
// when their backend goes down or a reload changes the forward's target.
type OnChange string

const (
	OnChangeKeep OnChange = "keep" // they keep their backend
	OnChangeCut  OnChange = "cut"  // their conntrack entries are deleted
)

// Limits of the balancing keys.
const (
	MaxBackends = 256
	MaxWeight   = 100
	minInterval = 100 * time.Millisecond
	maxInterval = time.Hour
	minTimeout  = 10 * time.Millisecond
)

// Default health checks: none, and HAProxy's timing.
var defaultHealth = health.Spec{Kind: health.KindNone, Interval: health.DefaultInterval, Timeout: health.DefaultTimeout,
	Fall: health.DefaultFall, Rise: health.DefaultRise}

var healthKeys = []string{"check", "interval", "timeout", "fall", "rise", "path"}

// Balanced reports whether the forward has several backends.
func (f *Forward) Balanced() bool { return len(f.Backends) > 1 }

// parseBalancing reads to (a string or a list), [[forward.backend]],
// balance, health and on_change into f. To and ToPort are the first
// backend's, so code that knows one backend sees it there.
func parseBalancing(fs *fields, t map[string]any, f *Forward) {
	f.Balance = Balance(fs.OneOf("balance", t["balance"], string(BalanceRandom), string(BalanceRandom), string(BalanceSource)))
	f.OnChange = OnChange(fs.OneOf("on_change", t["on_change"], string(OnChangeKeep), string(OnChangeKeep), string(OnChangeCut)))
	f.Health = parseHealth(fs, t["health"])

	to, list := t["to"], t["backend"]
	switch {
	case to != nil && list != nil:
		fs.Errorf("backend", "to and [[forward.backend]] are exclusive: list the backends in to = [...] or give each a [[forward.backend]] with to and weight, not both")
		return
	case to == nil && list == nil:
		fs.Errorf("to", "required; %s, a list of them, or [[forward.backend]] tables", toHint)
		return
	}
	var bs []Backend
	var at []*fields // where each backend's problems are reported
	add := func(bfs *fields, s string, weight any) bool {
		a, p := parseTo(bfs, s)
		if a.IsValid() {
			w := int(bfs.Int("weight", weight, 1, 1, MaxWeight))
			bs, at = append(bs, Backend{To: a, ToPort: p, Weight: w}), append(at, bfs)
		}
		return a.IsValid()
	}
	switch v := to.(type) {
	case nil:
		tables, ok := list.([]map[string]any)
		if !ok {
			fs.Errorf("backend", "must be [[forward.backend]] tables, each with to and weight, not %s", tomlcheck.TypeName(list))
			return
		}
		subs := fs.Lines.Array("backend")
		for i, bt := range tables {
			kl := &tomlpos.Table{Line: fs.Lines.Key("backend")}
			if i < len(subs) {
				kl = subs[i]
			}
			bfs := newFields(fs.ps, kl, "")
			bfs.forward, bfs.name = fs.forward, fs.name
			for key := range bt {
				if key != "to" && key != "weight" {
					bfs.Errorf(key, "unknown key %s in [[forward.backend]]; allowed: to, weight", quote(key))
				}
			}
			s, ok := bfs.String("to", bt["to"], "")
			if ok && s == "" {
				bfs.Errorf("to", "required in every [[forward.backend]]; %s", toHint)
			}
			if s == "" || !add(bfs, s, bt["weight"]) {
				return
			}
		}
	case string:
		if v == "" {
			fs.Errorf("to", "required; %s", toHint)
			return
		}
		if !add(fs, v, nil) {
			return
		}
	case []any:
		if len(v) == 0 {
			fs.Errorf("to", "empty list; give at least one backend: %s", toHint)
			return
		}
		for _, e := range v {
			s, ok := e.(string)
			if !ok || s == "" {
				fs.Errorf("to", "list elements must be backend addresses (%s), not %s", toHint, tomlcheck.TypeName(e))
				return
			}
			if !add(fs, s, nil) {
				return
			}
		}
	default:
		fs.Errorf("to", "must be a string or a list of strings, not %s; %s", tomlcheck.TypeName(to), toHint)
		return
	}
	if len(bs) > MaxBackends {
		fs.Errorf("to", "%d backends; at most %d per forward", len(bs), MaxBackends)
		return
	}
	for i, b := range bs {
		at := at[i]
		same := slices.IndexFunc(bs[:i], func(c Backend) bool { return sameTarget(c, b, f.Port) })
		switch {
		case b.To.Is4() != bs[0].To.Is4():
			at.Errorf("to", "backend %s is %s but backend %s is %s; all backends of a forward must be one family", b, family(b.To), bs[0], family(bs[0].To))
		case same >= 0 && bs[same].ToPort == b.ToPort:
			at.Errorf("to", "backend %s is listed twice", b)
		case same >= 0:
			at.Errorf("to", "backend %s is backend %s again: with port %s both get the same connections; list it once", b, bs[same], f.Port)
		case !checkPortMapping(at, "to", f.Port, b.ToPort):
		case len(bs) > 1 && f.Port.Len() > 1 && mapping(b.ToPort) != mapping(bs[0].ToPort):
			at.Errorf("to", "backend %s maps the port range %s differently from backend %s; every backend of a port range forward must map it the same way (all keep the port, all one port, or all a range of %d ports)",
				b, f.Port, bs[0], f.Port.Len())
		default:
			continue
		}
		return
	}
	f.Backends = bs
	f.To, f.ToPort = bs[0].To, bs[0].ToPort
}

// sameTarget reports whether two backends of a forward on port get the
// same connections: "10.0.0.2" keeps the port, so with port = 80 it is
// "10.0.0.2:80", and the checker and the kernel would see one backend twice.
func sameTarget(a, b Backend, port PortRange) bool {
	if a.ToPort.IsZero() {
		a.ToPort = port
	}
	if b.ToPort.IsZero() {
		b.ToPort = port
	}
	return a.To == b.To && a.ToPort == b.ToPort
}

// mapping names how a backend's port spec maps a range.
func mapping(p PortRange) int {
	switch {
	case p.IsZero():
		return 0
	case p.Len() == 1:
		return 1
	}
	return 2
}

// checkPortMapping checks one backend's port against the forward's.
func checkPortMapping(fs *fields, field string, port, to PortRange) bool {
	if port.IsZero() || to.IsZero() {
		return true
	}
	switch {
	case to.Len() == 1:
		// The whole range goes to one port.
	case port.Len() == 1:
		fs.Errorf(field, "a single port (%d) cannot be sent to a port range (%s); use a single to port", port.Lo, to)
		return false
	case port.Len() != to.Len():
		fs.Errorf(field, "port range %s has %d ports but to range %s has %d; they must be equal, or to must be a single port",
			port, port.Len(), to, to.Len())
		return false
	}
	return true
}

// parseHealth reads health = { check, interval, timeout, fall, rise, path }.
func parseHealth(fs *fields, v any) health.Spec {
	h := defaultHealth
	if v == nil {
		return h
	}
	t, ok := v.(map[string]any)
	if !ok {
		fs.Errorf("health", "must be a table, e.g. health = { check = \"tcp\", interval = \"2s\", timeout = \"1s\", fall = 3, rise = 2 }, not %s", tomlcheck.TypeName(v))
		return h
	}
	for _, key := range slices.Sorted(maps.Keys(t)) { // the same key every time
		if !slices.Contains(healthKeys, key) {
			fs.Errorf("health", "unknown key %s in health; allowed: %s", quote(key), strings.Join(healthKeys, ", "))
			return h
		}
	}
	switch c := t["check"].(type) {
	case nil:
	case string:
		if !slices.Contains([]health.Kind{health.KindNone, health.KindTCP, health.KindHTTP}, health.Kind(c)) {
			fs.Errorf("health", "check %s is not allowed; must be \"none\", \"tcp\" or \"http\"", quote(c))
			return h
		}
		h.Kind = health.Kind(c)
	default:
		fs.Errorf("health", "check must be \"none\", \"tcp\" or \"http\", not %s", tomlcheck.TypeName(c))
		return h
	}
	interval, iok := duration(fs, "interval", t["interval"], h.Interval, minInterval, maxInterval)
	timeout, tok := duration(fs, "timeout", t["timeout"], h.Timeout, minTimeout, maxInterval)
	if !iok || !tok {
		return h
	}
	if _, set := t["timeout"]; !set && timeout > interval {
		timeout = interval // a short interval shortens the default timeout
	}
	if timeout > interval {
		fs.Errorf("health", "interval %v is below timeout %v; timeout must be at most interval", interval, timeout)
		return h
	}
	h.Interval, h.Timeout = interval, timeout
	h.Fall = int(healthInt(fs, "fall", t["fall"], int64(h.Fall)))
	h.Rise = int(healthInt(fs, "rise", t["rise"], int64(h.Rise)))
	if p, ok := t["path"]; ok {
		s, isStr := p.(string)
		switch {
		case h.Kind != health.KindHTTP:
			fs.Errorf("health", "path is only for check = \"http\" (check is %s)", quote(string(h.Kind)))
		case !isStr:
			fs.Errorf("health", "path must be a string, not %s", tomlcheck.TypeName(p))
		default:
			if why := checkPath(s); why != "" {
				fs.Errorf("health", "path %s %s; it must start with / and hold printable ASCII only, no blanks (%%XX for other bytes)", quote(s), why)
			} else {
				h.Path = s
			}
		}
	}
	if h.Kind == health.KindHTTP && h.Path == "" {
		h.Path = health.DefaultPath
	}
	return h
}

// checkPath says why an HTTP check cannot ask for path, or "": the request
// must be one the checker can send (the URL it builds parses), and the path
// one WriteTOML's quoting writes back as it is.
func checkPath(path string) string {
	if !strings.HasPrefix(path, "/") {
		return "does not start with /"
	}
	for i := 0; i < len(path); i++ {
		if c := path[i]; c <= ' ' || c >= 0x7f {
			return fmt.Sprintf("has the byte %q", c)
		}
	}
	if _, err := url.Parse("http://192.0.2.1" + path); err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return "is not a URL path: " + err.Error()
	}
	return ""
}

// duration reads a duration such as "2s" or "500ms" within lo-hi.
func duration(fs *fields, key string, v any, def, lo, hi time.Duration) (time.Duration, bool) {
	if v == nil {
		return def, true
	}
	s, ok := v.(string)
	if !ok {
		fs.Errorf("health", "%s must be a duration such as \"2s\" or \"500ms\", not %s", key, tomlcheck.TypeName(v))
		return def, false
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		fs.Errorf("health", "%s %s is not a duration; write e.g. \"2s\" or \"500ms\"", key, quote(s))
		return def, false
	}
	if d < lo || d > hi {
		fs.Errorf("health", "%s %s is out of range; must be between %v and %v", key, quote(s), lo, hi)
		return def, false
	}
	return d, true
}

func healthInt(fs *fields, key string, v any, def int64) int64 {
	if v == nil {
		return def
	}
	n, ok := v.(int64)
	if !ok || n < 1 || n > 100 {
		fs.Errorf("health", "%s must be an integer between 1 and 100, not %v", key, v)
		return def
	}
	return n
}
