package config

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// MaxElements caps the nftables map elements a configuration may expand to:
// per forward, protocols × (ports in the range when ports are mapped per port,
// else 1).
const MaxElements = 2_000_000

// Raw structs mirror the file. Sections are pointers (nil = absent); leaf
// values are `any` (nil = unset) rather than typed pointers because a typed
// field makes the decoder stop at the first value of the wrong type, and for
// a [[forward]] key it would even blame the line of the last forward. Decoding
// into `any` lets every wrong type become its own Problem on the right line.
type rawFile struct {
	Daemon    *rawDaemon    `toml:"daemon"`
	Sysctl    *rawSysctl    `toml:"sysctl"`
	Conntrack *rawConntrack `toml:"conntrack"`
	Forward   []rawForward  `toml:"forward"`
}

type rawDaemon struct {
	Table    any `toml:"table"`
	OnStop   any `toml:"on_stop"`
	LogLevel any `toml:"log_level"`
	Metrics  any `toml:"metrics"`
	// ForwardPolicy is forward_policy.
	ForwardPolicy any `toml:"forward_policy"`
}

type rawSysctl struct {
	IPForward        any `toml:"ip_forward"`
	RPFilter         any `toml:"rp_filter"`
	ConntrackMax     any `toml:"conntrack_max"`
	ConntrackBuckets any `toml:"conntrack_buckets"`
}

type rawConntrack struct {
	WarnPercent     any `toml:"warn_percent"`
	CriticalPercent any `toml:"critical_percent"`
}

type rawForward struct {
	Name      any `toml:"name"`
	Proto     any `toml:"proto"` // "tcp" or ["tcp", "udp"]
	Port      any `toml:"port"`  // 80 or "8000-8099"
	Address   any `toml:"address"`
	To        any `toml:"to"`
	Interface any `toml:"interface"`
	Sources   any `toml:"sources"`
	SNAT      any `toml:"snat"`
	Log       any `toml:"log"`
}

// allowedKeys lists the keys of the file ("") and of each section.
var allowedKeys = map[string][]string{
	"":          {"daemon", "sysctl", "conntrack", "forward"},
	"daemon":    {"table", "on_stop", "log_level", "metrics", "forward_policy"},
	"sysctl":    {"ip_forward", "rp_filter", "conntrack_max", "conntrack_buckets"},
	"conntrack": {"warn_percent", "critical_percent"},
	"forward":   {"name", "proto", "port", "address", "to", "interface", "sources", "snat", "log"},
}

var (
	tableNameRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_-]{0,31}$`)
	forwardNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

// Parse decodes and validates a configuration file. path is only used in
// messages. When the file is invalid the error is a *Errors listing every
// problem found.
//
// Parse decodes the [[forward]] blocks in parallel (see Parser); to parse
// successive versions of a file, keep a Parser, which also reuses the blocks
// that did not change.
func Parse(path string, data []byte) (*Config, error) {
	p := Parser{noCache: true}
	return p.parse(path, string(data))
}

// messageName is the file name used in messages.
func messageName(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

// parseWhole decodes the whole file in one toml.Decode call. It is the
// reference the block-wise decoding of Parser must agree with, and what
// Parser falls back to whenever it cannot tell that the two agree.
func parseWhole(path, text string) (*Config, error) {
	name := messageName(path)
	ps := &problems{path: name}

	var raw rawFile
	md, err := toml.Decode(text, &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			ps.list = append(ps.list, &Problem{
				Path: name,
				Line: pe.Position.Line,
				Msg:  "invalid TOML: " + pe.Message,
				Err:  err,
			})
		} else {
			structureProblems(ps, &md, scanPositions(text), err)
		}
		return nil, ps.err()
	}
	pos := scanPositions(text)
	unknownKeys(ps, &md, pos, &raw)

	c := &Config{Path: path}
	c.Daemon = parseDaemon(ps, raw.Daemon, pos.section("daemon"))
	c.Sysctl = parseSysctl(ps, raw.Sysctl, pos.section("sysctl"))
	c.Conntrack = parseConntrack(ps, raw.Conntrack, pos.section("conntrack"))

	lines := pos.forwards
	if len(lines) != len(raw.Forward) {
		// Forwards written as an inline array have no headers to point at.
		lines = nil
	}
	c.Forwards = make([]Forward, 0, len(raw.Forward))
	valid := make([]bool, 0, len(raw.Forward))
	for i := range raw.Forward {
		kl := &keyLines{}
		if lines != nil {
			kl = lines[i]
		}
		before := len(ps.list)
		f := parseForward(ps, i, &raw.Forward[i], kl)
		c.Forwards = append(c.Forwards, f)
		valid = append(valid, len(ps.list) == before)
	}
	var nameLines []int
	if lines != nil {
		nameLines = make([]int, len(lines))
		for i, kl := range lines {
			nameLines[i] = kl.line("name")
		}
	}
	checkNames(ps, c.Forwards, nameLines)
	checkOverlaps(ps, c.Forwards, valid)
	checkBudget(ps, c.Forwards, valid)

	if err := ps.err(); err != nil {
		return nil, err
	}
	if len(c.Forwards) == 0 {
		c.Forwards = nil
	}
	return c, nil
}

// structureProblems explains a decode error that is not a syntax error: a
// section of the wrong kind, such as [forward] instead of [[forward]].
func structureProblems(ps *problems, md *toml.MetaData, pos *positions, err error) {
	before := len(ps.list)
	for _, s := range []string{"daemon", "sysctl", "conntrack"} {
		if t := md.Type(s); t != "" && t != "Hash" {
			line := pos.top.keys[s]
			if line == 0 {
				line = pos.section(s).header
			}
			ps.add(line, "", s, "must be a table ([%s]), not %s", s, metaType(t))
		}
	}
	switch t := md.Type("forward"); t {
	case "", "ArrayHash", "Array":
	case "Hash":
		ps.add(pos.section("forward").header, "", "", "[forward] must be written [[forward]]: each forward is one element of an array of tables")
	default:
		ps.add(pos.top.keys["forward"], "", "forward", "must be an array of tables ([[forward]]), not %s", metaType(t))
	}
	if len(ps.list) == before {
		ps.list = append(ps.list, &Problem{Path: ps.path, Msg: strings.TrimPrefix(err.Error(), "toml: "), Err: err})
	}
}

// metaType names a toml.MetaData.Type for messages.
func metaType(t string) string {
	switch t {
	case "Hash":
		return "a table"
	case "ArrayHash":
		return "an array of tables"
	case "Array":
		return "an array"
	case "Integer":
		return "an integer"
	}
	return "a " + strings.ToLower(t)
}

// unknownKeys reports keys the raw structs did not take.
func unknownKeys(ps *problems, md *toml.MetaData, pos *positions, raw *rawFile) {
	seen := make(map[string]bool)
	for _, k := range md.Undecoded() {
		// Report the topmost unknown part: "forward.x" for forward.x.y. Keys
		// under a known field (name = {a = 1}) are that field's type problem.
		var section, key string
		if _, known := allowedKeys[k[0]]; known && len(k) >= 2 {
			section, key = k[0], k[1]
		} else {
			key = k[0]
		}
		if slices.Contains(allowedKeys[section], key) || seen[section+"."+key] {
			continue
		}
		seen[section+"."+key] = true
		msg := fmt.Sprintf("unknown key %q; allowed: %s", key, strings.Join(allowedKeys[section], ", "))
		switch section {
		case "":
			line := pos.top.keys[key]
			if s, ok := pos.sections[key]; ok && line == 0 {
				line = s.header
			}
			ps.add(line, "", "", "%s", msg)
		case "forward":
			found := false
			for i, f := range pos.forwards {
				if l, ok := f.keys[key]; ok {
					found = true
					ps.add(l, forwardWhere(i, raw), "", "%s", msg)
				}
			}
			if !found {
				ps.add(0, "forward", "", "%s", msg)
			}
		default:
			ps.add(pos.section(section).line(key), section, "", "%s", msg)
		}
	}
}

func forwardWhere(i int, raw *rawFile) string {
	if i < len(raw.Forward) {
		if name, ok := raw.Forward[i].Name.(string); ok && name != "" {
			return fmt.Sprintf("forward %q", name)
		}
	}
	return fmt.Sprintf("forward #%d", i+1)
}

// fields reports problems with the keys of one table.
type fields struct {
	ps    *problems
	where string // the section; for a forward, see forward and name
	lines *keyLines
	// A forward is `forward "name"` once its name is known, else `forward #N`.
	forward int // N
	name    string
}

func (fs *fields) errorf(field, format string, args ...any) {
	where := fs.where
	switch {
	case fs.name != "":
		where = fmt.Sprintf("forward %q", fs.name)
	case fs.forward > 0:
		where = fmt.Sprintf("forward #%d", fs.forward)
	}
	fs.ps.add(fs.lines.line(field), where, field, format, args...)
}

func (fs *fields) str(field string, v any, def string) (string, bool) {
	switch v := v.(type) {
	case nil:
		return def, true
	case string:
		return v, true
	}
	fs.errorf(field, "must be a string, not %s", tomlType(v))
	return def, false
}

func (fs *fields) boolean(field string, v any, def bool) bool {
	switch v := v.(type) {
	case nil:
		return def
	case bool:
		return v
	}
	fs.errorf(field, "must be true or false, not %s", tomlType(v))
	return def
}

// integer returns v if it is an integer within lo-hi.
func (fs *fields) integer(field string, v any, def, lo, hi int64) int64 {
	switch v := v.(type) {
	case nil:
		return def
	case int64:
		if v < lo || v > hi {
			fs.errorf(field, "%d is out of range; must be between %d and %d", v, lo, hi)
			return def
		}
		return v
	}
	fs.errorf(field, "must be an integer between %d and %d, not %s", lo, hi, tomlType(v))
	return def
}

// oneOf returns v if it is one of the allowed strings.
func (fs *fields) oneOf(field string, v any, def string, allowed ...string) string {
	s, ok := fs.str(field, v, def)
	if !ok {
		return def
	}
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	fs.errorf(field, "%q is not allowed; must be %s", s, quotedList(allowed))
	return def
}

// quotedList renders ["a", "b", "c"] as `"a", "b" or "c"`.
func quotedList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// tomlType names the TOML type of a decoded value.
func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any, []map[string]any:
		return "an array"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date or time"
	}
	return fmt.Sprintf("%T", v)
}

func parseDaemon(ps *problems, raw *rawDaemon, lines *keyLines) Daemon {
	if raw == nil {
		raw = &rawDaemon{}
	}
	fs := &fields{ps: ps, where: "daemon", lines: lines}
	d := Daemon{
		OnStop:   OnStop(fs.oneOf("on_stop", raw.OnStop, string(OnStopFlush), string(OnStopFlush), string(OnStopKeep))),
		LogLevel: fs.oneOf("log_level", raw.LogLevel, "info", "debug", "info", "warn", "error"),
		ForwardPolicy: ForwardPolicy(fs.oneOf("forward_policy", raw.ForwardPolicy, string(ForwardAccept),
			string(ForwardAccept), string(ForwardDrop))),
	}
	if t, ok := fs.str("table", raw.Table, "fwdd"); ok {
		if tableNameRE.MatchString(t) {
			d.Table = t
		} else {
			fs.errorf("table", "%q is not a valid table name; must be 1-32 letters, digits, '_' or '-', starting with a letter", t)
		}
	}
	if m, ok := fs.str("metrics", raw.Metrics, ""); ok && m != "" {
		if err := checkListenAddr(m); err != nil {
			fs.errorf("metrics", "%q: %v; must be \"\" (off) or host:port, e.g. \"127.0.0.1:9650\" or \":9650\"", m, err)
		} else {
			d.Metrics = m
		}
	}
	return d
}

func checkListenAddr(s string) error {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		// net's messages repeat the address; keep just the reason.
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if n, ok := parsePortNumber(port); !ok || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not a number between 1 and 65535", port)
	}
	return nil
}

func parseSysctl(ps *problems, raw *rawSysctl, lines *keyLines) Sysctl {
	if raw == nil {
		raw = &rawSysctl{}
	}
	fs := &fields{ps: ps, where: "sysctl", lines: lines}
	return Sysctl{
		IPForward: fs.boolean("ip_forward", raw.IPForward, true),
		RPFilter: RPFilter(fs.oneOf("rp_filter", raw.RPFilter, string(RPFilterKeep),
			string(RPFilterKeep), string(RPFilterLoose), string(RPFilterOff))),
		// nf_conntrack_max is a C int.
		ConntrackMax: int(fs.integer("conntrack_max", raw.ConntrackMax, 0, 0, 1<<31-1)),
		// nf_conntrack_buckets is an unsigned int the kernel caps at 2^30.
		ConntrackBuckets: int(fs.integer("conntrack_buckets", raw.ConntrackBuckets, 0, 0, 1<<30)),
	}
}

func parseConntrack(ps *problems, raw *rawConntrack, lines *keyLines) Conntrack {
	if raw == nil {
		raw = &rawConntrack{}
	}
	fs := &fields{ps: ps, where: "conntrack", lines: lines}
	c := Conntrack{
		WarnPercent:     int(fs.integer("warn_percent", raw.WarnPercent, 80, 1, 100)),
		CriticalPercent: int(fs.integer("critical_percent", raw.CriticalPercent, 95, 1, 100)),
	}
	if c.CriticalPercent <= c.WarnPercent {
		fs.errorf("critical_percent", "%d must be greater than warn_percent (%d)", c.CriticalPercent, c.WarnPercent)
	}
	return c
}

// checkNames reports forwards whose name another forward already uses.
// nameLines[i] is the line of forward i's name (nil: use its Line).
func checkNames(ps *problems, fwds []Forward, nameLines []int) {
	first := make(map[string]int, len(fwds))
	for i := range fwds {
		name := fwds[i].Name
		if name == "" {
			continue
		}
		j, dup := first[name]
		if !dup {
			first[name] = i
			continue
		}
		line := fwds[i].Line
		if nameLines != nil {
			line = nameLines[i]
		}
		where := fmt.Sprintf("forward %q", name)
		if fwds[j].Line > 0 {
			ps.add(line, where, "name", "%q is already used by the forward on line %d; names must be unique", name, fwds[j].Line)
		} else {
			ps.add(line, where, "name", "%q is already used by forward #%d; names must be unique", name, j+1)
		}
	}
}

// checkBudget caps the map elements all forwards expand to.
func checkBudget(ps *problems, fwds []Forward, valid []bool) {
	total := 0
	for i := range fwds {
		if valid[i] {
			total += fwds[i].elements()
		}
	}
	if total > MaxElements {
		ps.add(0, "", "", "forwards expand to %d nftables elements (protocols × mapped ports); the limit is %d: use fewer or smaller port ranges, or map ranges to a single port", total, MaxElements)
	}
}

// elements is how many map elements the forward needs: one per protocol,
// times one per port when ports are translated one by one.
func (f *Forward) elements() int {
	n := 1
	if f.Port.Len() > 1 && (f.ToPort.Len() > 1 || f.ToPort.IsZero()) {
		n = f.Port.Len()
	}
	return len(f.Protos) * n
}
