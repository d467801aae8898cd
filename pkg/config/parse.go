package config

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/fwdd/fwdd/internal/tomlcheck"
	"github.com/fwdd/fwdd/internal/tomlpos"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// MaxElements caps the nftables set and map elements a configuration
// compiles to (Forward.Elements): the whole table is one netlink batch, and
// the kernel takes a batch of at most twice fwdd's 64 MiB send buffer less
// 32 bytes (134,217,696; measured on Linux 6.18: 134,216,948 bytes went in,
// 134,224,548 failed with EMSGSIZE). The largest element takes 72 bytes (an
// IPv6 balance interval): a table of 1,600,000 of the largest elements
// there are is a batch of about 115 MB (pkg/nft's
// TestMaxElementsFitOneBatch), which leaves room for rules and chains.
const MaxElements = 1_600_000

// MaxForwards is the most forwards a configuration may hold: each needs its
// own id in the ct mark (see pkg/ctmark), and the default layout carries
// 24-bit ids (ctmark.Default.MaxID). A [daemon] ct_mask with fewer id bits
// lowers the limit.
const MaxForwards = 1<<24 - 1

// MaxFileSize is the largest file fwdd reads (64 MiB), so that a huge file
// cannot exhaust memory.
const MaxFileSize = 64 << 20

// allowedKeys lists the keys of the file ("") and of each table, in the
// order messages list them. The file is decoded into BurntSushi's own maps
// rather than structs: struct fields match keys case-insensitively (Port,
// [Daemon], TABLE would be taken), maps keep each key as written.
var allowedKeys = map[string][]string{
	"":          {"daemon", "sysctl", "conntrack", "forward"},
	"daemon":    {"table", "on_stop", "log_level", "metrics", "forward_policy", "ct_mark", "ct_mask"},
	"sysctl":    {"ip_forward", "rp_filter", "conntrack_max", "conntrack_buckets"},
	"conntrack": {"warn_percent", "critical_percent"},
	"forward":   {"name", "proto", "port", "address", "to", "backend", "balance", "health", "on_change", "interface", "sources", "snat", "log"},
}

// Keys returns every key the configuration accepts, as "table.key" (for
// example "daemon.table", "forward.name").
func Keys() []string {
	var keys []string
	for _, table := range allowedKeys[""] {
		for _, k := range allowedKeys[table] {
			keys = append(keys, table+"."+k)
		}
	}
	return keys
}

var (
	tableNameRE   = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9_-]{0,31}$`)
	forwardNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

// Parse decodes and validates one configuration file (without its config
// directory; see Load). path is only used in messages. When the file is
// invalid the error is a *Errors listing every problem found.
func Parse(path string, data []byte) (*Config, error) {
	return parseFiles([]source{{path: path, text: string(data)}})
}

// parseFiles parses a configuration as a Parser with nothing cached does.
func parseFiles(srcs []source) (*Config, error) {
	p := Parser{CacheLimit: -1}
	return p.parse(srcs)
}

// source is one file of a configuration: the main file first, then the
// files of its config directory.
type source struct {
	path string
	text string
}

// messageName is the file name used in messages.
func messageName(path string) string {
	if path == "" {
		return "config"
	}
	return path
}

func newProblems(srcs []source) *problems {
	ps := &problems{order: make(map[string]int, len(srcs))}
	for i, src := range srcs {
		ps.order[messageName(src.path)] = i
	}
	return ps
}

// checkLimits refuses, before anything is decoded, a configuration larger
// than maxBytes in all, or with more [[forward]] headers than maxForwards.
// It returns each file cut at its headers.
func checkLimits(ps *problems, srcs []source, maxBytes, maxForwards int) ([]split, bool) {
	size, headers := 0, 0
	splits := make([]split, len(srcs))
	for i, src := range srcs {
		size += len(src.text)
		if size > maxBytes {
			ps.addIn(messageName(src.path), 0, "", "", "the configuration is larger than %d bytes (%d MiB), the limit", maxBytes, maxBytes>>20)
			return nil, false
		}
		pre, blocks := tomlpos.Cut(src.text, "forward")
		splits[i] = split{pre: pre, blocks: blocks}
		headers += len(splits[i].blocks)
		if headers > maxForwards {
			ps.addIn(messageName(src.path), 0, "", "", "more than %d [[forward]] entries; the limit is %d (the forward ids a ct mark can carry)", maxForwards, maxForwards)
			return nil, false
		}
	}
	return splits, true
}

// parseWhole decodes every file in full, then checks them together.
func parseWhole(ps *problems, srcs []source) (*Config, error) {
	var fl forwardList
	main := decodeFile(ps, srcs[0], false, &fl)
	for _, src := range srcs[1:] {
		decodeFile(ps, src, true, &fl)
	}
	return assemble(ps, srcs[0].path, main, &fl)
}

// fileResult is the sections of one file, decoded and validated.
type fileResult struct {
	daemon    Daemon
	sysctl    Sysctl
	conntrack Conntrack
	warnings  []Problem
	// ctMaskLine is the line of [daemon] ct_mask (of the section when the
	// key is not set), where too many forwards for its id bits are reported.
	ctMaskLine int
	forward    bool // the file has a forward key, in whatever form
}

// forwardList is the forwards of all the files, in order, with what the
// checks across forwards need.
type forwardList struct {
	fwds      []Forward
	nameLines []int  // line of each forward's name (its header's when unset)
	valid     []bool // the forward has no problem of its own
}

// decodeFile decodes one file with BurntSushi/toml, finds where its keys are,
// validates each table, and appends its forwards to fl. A file of the config
// directory (dropIn) may only hold [[forward]] entries.
func decodeFile(ps *problems, src source, dropIn bool, fl *forwardList) *fileResult {
	r := &fileResult{}
	ps.path = messageName(src.path)
	var doc map[string]any
	if _, err := toml.Decode(src.text, &doc); err != nil {
		ps.list = append(ps.list, syntaxProblem(ps.path, src.text, err))
		return r
	}
	pos := tomlpos.Scan(src.text)
	tables := make(map[string]map[string]any)
	var forwards []map[string]any
	for key, v := range doc {
		line := pos.Key(key)
		switch {
		case !slices.Contains(allowedKeys[""], key):
			ps.add(line, "", "", "unknown key %s%s; allowed: %s", quote(key), caseHint(key, ""), strings.Join(allowedKeys[""], ", "))
		case dropIn && key != "forward":
			ps.add(line, "", "", "%s is not allowed here: a file of the config directory holds only [[forward]] entries; set [%s] in the main file", quote(key), key)
		case key == "forward":
			r.forward = true
			forwards = forwardTables(ps, pos, v)
		default:
			t, ok := v.(map[string]any)
			if !ok {
				ps.add(line, "", key, "must be a table ([%s]), not %s", key, tomlcheck.TypeName(v))
				continue
			}
			tables[key] = t
			unknownKeys(newFields(ps, pos.Table(key), key), key, t)
		}
	}
	if !dropIn {
		r.daemon, r.warnings = parseDaemon(ps, tables["daemon"], pos.Table("daemon"))
		r.ctMaskLine = pos.Table("daemon").Key("ct_mask")
		r.sysctl = parseSysctl(ps, tables["sysctl"], pos.Table("sysctl"))
		r.conntrack = parseConntrack(ps, tables["conntrack"], pos.Table("conntrack"))
	}

	lines := pos.Array("forward")
	if len(lines) != len(forwards) {
		// Forwards written as an inline array have no headers to point at.
		lines = nil
	}
	for i, t := range forwards {
		kl := &tomlpos.Table{}
		if lines != nil {
			kl = lines[i]
		}
		before := len(ps.list)
		f := validateForward(ps, i, t, kl)
		f.File = src.path
		fl.fwds = append(fl.fwds, f)
		fl.valid = append(fl.valid, len(ps.list) == before)
		fl.nameLines = append(fl.nameLines, kl.Key("name"))
	}
	for i := range r.warnings {
		r.warnings[i].Path = ps.path
	}
	return r
}

// validateForward checks the keys of forward #i+1 and validates it.
func validateForward(ps *problems, i int, t map[string]any, kl *tomlpos.Table) Forward {
	// where is only spelled out for a problem: most forwards have none.
	fs := newFields(ps, kl, "")
	fs.forward = i + 1
	if name, ok := t["name"].(string); ok {
		fs.name = name
	}
	unknownKeys(fs, "forward", t)
	return parseForward(fs, t)
}

// forwardTables returns the [[forward]] entries of a file.
func forwardTables(ps *problems, pos *tomlpos.Table, v any) []map[string]any {
	switch v := v.(type) {
	case []map[string]any:
		return v
	case []any: // forward = [{...}, ...]
		ts := make([]map[string]any, 0, len(v))
		for _, e := range v {
			t, ok := e.(map[string]any)
			if !ok {
				ps.add(pos.Key("forward"), "", "forward", "must be an array of tables ([[forward]]), not an array of %s", strings.TrimPrefix(strings.TrimPrefix(tomlcheck.TypeName(e), "a "), "an "))
				return nil
			}
			ts = append(ts, t)
		}
		return ts
	case map[string]any:
		if h := pos.Table("forward").Line; h > 0 {
			ps.add(h, "", "", "[forward] must be written [[forward]]: each forward is one element of an array of tables")
		} else {
			ps.add(pos.Key("forward"), "", "forward", "must be an array of tables, not a table: write [[forward]] on a line of its own, then its keys (name = ..., port = ...) on the lines below")
		}
		return nil
	}
	ps.add(pos.Key("forward"), "", "forward", "must be an array of tables ([[forward]]), not %s", tomlcheck.TypeName(v))
	return nil
}

// unknownKeys reports the keys of a table that are not allowed.
func unknownKeys(fs *fields, table string, t map[string]any) {
	allowed := allowedKeys[table]
	for key := range t {
		if !slices.Contains(allowed, key) {
			fs.ps.add(fs.Lines.Key(key), fs.at(), "", "unknown key %s%s; allowed: %s", quote(key), caseHint(key, table), strings.Join(allowed, ", "))
		}
	}
}

// caseHint says which key was meant when key differs from one only in case.
func caseHint(key, table string) string {
	for _, a := range allowedKeys[table] {
		if strings.EqualFold(a, key) {
			return fmt.Sprintf(" (keys are lower case: %s)", a)
		}
	}
	return ""
}

// syntaxProblem turns a TOML syntax error into a Problem on the right line.
func syntaxProblem(path, text string, err error) *Problem {
	line, msg := tomlcheck.Syntax(text, err)
	return &Problem{Path: path, Line: line, Msg: msg, Err: err}
}

// fields checks the keys of one table and reports their problems.
type fields struct {
	tomlcheck.Keys
	ps    *problems
	where string // the section; for a forward, see forward and name
	// A forward is `forward "name"` once its name is known, else `forward #N`.
	forward int // N
	name    string
}

func newFields(ps *problems, lines *tomlpos.Table, where string) *fields {
	fs := &fields{ps: ps, where: where}
	fs.Keys = tomlcheck.Keys{Lines: lines, To: fs}
	return fs
}

// Report adds a problem with key of the table.
func (fs *fields) Report(line int, key, msg string) {
	fs.ps.list = append(fs.ps.list, &Problem{Path: fs.ps.path, Line: line, Where: fs.at(), Field: key, Msg: msg})
}

// at says where the table is, for a problem.
func (fs *fields) at() string {
	switch {
	case fs.name != "":
		return "forward " + quote(fs.name)
	case fs.forward > 0:
		return fmt.Sprintf("forward #%d", fs.forward)
	}
	return fs.where
}

func parseDaemon(ps *problems, t map[string]any, lines *tomlpos.Table) (Daemon, []Problem) {
	fs := newFields(ps, lines, "daemon")
	d := Daemon{
		OnStop:   OnStop(fs.OneOf("on_stop", t["on_stop"], string(OnStopFlush), string(OnStopFlush), string(OnStopKeep))),
		LogLevel: fs.OneOf("log_level", t["log_level"], "info", "debug", "info", "warn", "error"),
		ForwardPolicy: ForwardPolicy(fs.OneOf("forward_policy", t["forward_policy"], string(ForwardAccept),
			string(ForwardAccept), string(ForwardDrop))),
	}
	if s, ok := fs.String("table", t["table"], "fwdd"); ok {
		if tableNameRE.MatchString(s) {
			d.Table = s
		} else {
			fs.Errorf("table", "%s is not a valid table name; must be 1-32 letters, digits, '_' or '-', starting with a letter", quote(s))
		}
	}
	d.CtMark = parseCtMark(fs, t)
	var warnings []Problem
	if m, ok := fs.String("metrics", t["metrics"], ""); ok && m != "" {
		host, err := checkListenAddr(m)
		switch {
		case err != nil:
			fs.Errorf("metrics", "%s: %v; must be \"\" (off) or host:port, e.g. \"127.0.0.1:9641\" or \"[::1]:9641\"", quote(m), err)
		case !host.IsLoopback():
			warnings = append(warnings, Problem{Line: lines.Key("metrics"), Where: "daemon", Field: "metrics",
				Msg: fmt.Sprintf("%s is not a loopback address: /metrics has no authentication, so anyone who can reach it reads every forward's name, backend and traffic; listen on 127.0.0.1 or [::1], or restrict who can connect", quote(m))})
			d.Metrics = m
		default:
			d.Metrics = m
		}
	}
	return d, warnings
}

// parseCtMark reads ct_mark ("VALUE/MASK": the tag of fwdd's connections,
// as iptables' connmark and conntrack -m write it) and ct_mask (every bit
// fwdd owns: the tag's and the forward id's).
func parseCtMark(fs *fields, t map[string]any) ctmark.Layout {
	l := ctmark.Default
	s, ok := fs.String("ct_mark", t["ct_mark"], "")
	if ok && s != "" {
		var err error
		if l.Tag, l.TagMask, err = ctmark.ParseMark(s); err != nil {
			fs.Errorf("ct_mark", "%s: %v; must be VALUE/MASK in hex or decimal, e.g. %q (the default)", quote(s), err, ctmark.Default.Connmark())
			return ctmark.Default
		}
	}
	switch v := t["ct_mask"].(type) {
	case nil:
	case int64:
		if v < 0 || v > 0xffffffff {
			fs.Errorf("ct_mask", "%d is out of range; must be a 32-bit mask, e.g. 0xffff0000", v)
			return ctmark.Default
		}
		l.Mask = uint32(v)
	case string:
		m, err := ctmark.ParseUint32(v)
		if err != nil {
			fs.Errorf("ct_mask", "%v; must be a 32-bit mask, e.g. 0xffff0000", err)
			return ctmark.Default
		}
		l.Mask = m
	default:
		fs.Errorf("ct_mask", "must be a 32-bit mask (an integer such as 0xffff0000), not %s", tomlcheck.TypeName(v))
		return ctmark.Default
	}
	if key, err := l.Validate(); err != nil {
		fs.Errorf(key, "%v; allowed: ct_mark = \"VALUE/MASK\" with a nonzero value inside a contiguous mask, ct_mask holding that mask and one contiguous run of id bits beside it (default %s)", err, ctmark.Default)
		return ctmark.Default
	}
	return l
}

// checkListenAddr checks a host:port to listen on and returns the host's
// address (the unspecified address for ":port").
func checkListenAddr(s string) (netip.Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// net's messages repeat the address; keep just the reason.
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return netip.Addr{}, errors.New(ae.Err)
		}
		return netip.Addr{}, err
	}
	if n, ok := parsePortNumber(port); !ok || n < 1 || n > 65535 {
		return netip.Addr{}, fmt.Errorf("port %s is not a number between 1 and 65535", quote(port))
	}
	switch host {
	case "":
		return netip.IPv6Unspecified(), nil
	case "localhost":
		return netip.IPv6Loopback(), nil
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("host %s is not an IP address (or localhost)", quote(host))
	}
	return a.Unmap(), nil
}

func parseSysctl(ps *problems, t map[string]any, lines *tomlpos.Table) Sysctl {
	fs := newFields(ps, lines, "sysctl")
	return Sysctl{
		IPForward: fs.Bool("ip_forward", t["ip_forward"], true),
		RPFilter: RPFilter(fs.OneOf("rp_filter", t["rp_filter"], string(RPFilterKeep),
			string(RPFilterKeep), string(RPFilterLoose), string(RPFilterOff))),
		// nf_conntrack_max is a C int.
		ConntrackMax: int(fs.Int("conntrack_max", t["conntrack_max"], 0, 0, 1<<31-1)),
		// nf_conntrack_buckets is an unsigned int the kernel caps at 2^30.
		ConntrackBuckets: int(fs.Int("conntrack_buckets", t["conntrack_buckets"], 0, 0, 1<<30)),
	}
}

func parseConntrack(ps *problems, t map[string]any, lines *tomlpos.Table) Conntrack {
	fs := newFields(ps, lines, "conntrack")
	c := Conntrack{
		WarnPercent:     int(fs.Int("warn_percent", t["warn_percent"], 80, 1, 100)),
		CriticalPercent: int(fs.Int("critical_percent", t["critical_percent"], 95, 1, 100)),
	}
	if c.CriticalPercent <= c.WarnPercent {
		fs.Errorf("critical_percent", "%d must be greater than warn_percent (%d)", c.CriticalPercent, c.WarnPercent)
	}
	return c
}

// assemble puts the files of a configuration together and runs the checks
// across forwards. main is the main file.
func assemble(ps *problems, path string, main *fileResult, fl *forwardList) (*Config, error) {
	c := &Config{Path: path, Daemon: main.daemon, Sysctl: main.sysctl, Conntrack: main.conntrack, Warnings: main.warnings, Forwards: fl.fwds}
	switch l := c.Daemon.CtMark; {
	case len(c.Forwards) > MaxForwards:
		ps.addIn(messageName(path), 0, "", "", "%d forwards; the limit is %d (the forward ids a ct mark can carry)", len(c.Forwards), MaxForwards)
	case len(c.Forwards) > int(l.MaxID()):
		need := bits.Len(uint(len(c.Forwards)))
		ps.addIn(messageName(path), main.ctMaskLine, "daemon", "ct_mask", "0x%08x leaves %d bits for forward ids (at most %d forwards), but there are %d forwards; they need at least %d id bits: widen ct_mask (e.g. 0x%08x) or use fewer forwards",
			l.Mask, l.IDBits(), l.MaxID(), len(c.Forwards), need, l.MaskWithIDBits(need))
	}
	checkNames(ps, c.Forwards, fl.nameLines)
	checkOverlaps(ps, c.Forwards, fl.valid)
	checkBudget(ps, c.Forwards, fl.valid, c.Daemon.CtMark)
	if err := ps.err(); err != nil {
		return nil, err
	}
	if len(c.Forwards) == 0 {
		c.Forwards = nil
	}
	return c, nil
}

// checkNames reports forwards whose name another forward already uses.
// nameLines[i] is the line of forward i's name.
func checkNames(ps *problems, fwds []Forward, nameLines []int) {
	first := make(map[string]int, len(fwds))
	for i := range fwds {
		f := &fwds[i]
		if f.Name == "" {
			continue
		}
		j, dup := first[f.Name]
		if !dup {
			first[f.Name] = i
			continue
		}
		where := "forward " + quote(f.Name)
		other := "forward #" + strconv.Itoa(j+1)
		switch g := &fwds[j]; {
		case g.Line > 0 && g.File != f.File:
			other = fmt.Sprintf("the forward at %s:%d", messageName(g.File), g.Line)
		case g.Line > 0:
			other = fmt.Sprintf("the forward on line %d", g.Line)
		}
		ps.addIn(messageName(f.File), nameLines[i], where, "name", "%s is already used by %s; names must be unique", quote(f.Name), other)
	}
}

// checkBudget caps the elements all forwards compile to. The problem is
// reported at the forward that goes over the limit.
func checkBudget(ps *problems, fwds []Forward, valid []bool, l ctmark.Layout) {
	total, over := 0, -1
	for i := range fwds {
		if valid[i] {
			total += fwds[i].Elements(l)
			if total > MaxElements && over < 0 {
				over = i
			}
		}
	}
	if over >= 0 {
		f := &fwds[over]
		ps.addIn(messageName(f.File), f.Line, "forward "+quote(f.Name), "", "forwards compile to %d nftables elements; one batch carries at most %d: use fewer forwards, ports or backends (each port takes a mark and a dnat element per protocol, or with several backends a mark element per protocol and one per backend)", total, MaxElements)
	}
}

// Elements is how many nftables set and map elements pkg/nft compiles the
// forward to in ct mark layout l, with all its backends in: three traffic
// counters; one for snat = ADDRESS or "none"; per port one balance
// interval per backend; and per protocol and port, unless the forward has
// interface or sources, an element in each mark map (l.MarkMaps; with a
// partial ct_mask an id skips the maps of its chunks that are 0, so this
// is the most) and, with one backend, one in the dnat map. A forward with
// interface or sources has its own rules instead, with an anonymous map of
// one element per port and protocol when it maps a range 1:1.
func (f *Forward) Elements(l ctmark.Layout) int {
	ports := f.Port.Len()
	n := 3
	if f.SNAT.Kind == SNATNone || f.SNAT.Kind == SNATFixed {
		n++
	}
	if f.Balanced() {
		n += ports * len(f.Backends)
	}
	keys := len(f.Protos) * ports
	switch {
	case f.Interface != "" || len(f.Sources) > 0:
		if !f.Balanced() && f.ToPort.Len() > 1 {
			n += keys
		}
	case f.Balanced():
		n += keys * l.MarkMaps()
	default:
		n += keys * (l.MarkMaps() + 1)
	}
	return n
}
