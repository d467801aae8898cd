package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/fwdd/fwdd/internal/tomlcheck"
)

// Problem is one thing wrong with a configuration file.
type Problem struct {
	Path  string // the file, as given to Parse or Load
	Line  int    // 1-based; 0 when unknown
	Where string // `daemon`, `forward "web"`, `forward #3`, or "" for the whole file
	Field string // the key, e.g. "port"; "" when the problem is not about one key
	Msg   string // what is wrong and what is allowed
	Err   error  // underlying error, if any (e.g. a toml.ParseError)
}

func (p *Problem) Error() string {
	var b strings.Builder
	b.WriteString(p.Path)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	b.WriteString(": ")
	if p.Where != "" {
		b.WriteString(p.Where)
		b.WriteString(": ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

func (p *Problem) Unwrap() error { return p.Err }

// Errors is every problem found in a configuration, in file and line order.
// Parse and Load return a *Errors whenever the configuration is invalid; each
// element is a *Problem.
type Errors []error

// Error returns one problem per line.
func (e *Errors) Error() string {
	lines := make([]string, len(*e))
	for i, err := range *e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (e *Errors) Unwrap() []error { return *e }

// problems collects the Problems of one configuration: its file and the
// files of its config directory, in that order.
type problems struct {
	path  string         // the file add reports in
	order map[string]int // files in the order problems are listed
	list  []*Problem
}

func (ps *problems) add(line int, where, field, format string, args ...any) {
	ps.addIn(ps.path, line, where, field, format, args...)
}

// addIn reports a problem in another file than ps.path.
func (ps *problems) addIn(path string, line int, where, field, format string, args ...any) {
	ps.list = append(ps.list, &Problem{
		Path:  path,
		Line:  line,
		Where: where,
		Field: field,
		Msg:   fmt.Sprintf(format, args...),
	})
}

// err returns nil when nothing was found, else a *Errors sorted by file and
// line.
func (ps *problems) err() error {
	if len(ps.list) == 0 {
		return nil
	}
	sort.SliceStable(ps.list, func(i, j int) bool {
		a, b := ps.list[i], ps.list[j]
		if fa, fb := ps.order[a.Path], ps.order[b.Path]; fa != fb {
			return fa < fb
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Error() < b.Error()
	})
	errs := make(Errors, len(ps.list))
	for i, p := range ps.list {
		errs[i] = p
	}
	return &errs
}

// quote quotes a value from the file, shortened when long.
var quote = tomlcheck.Quote
