package config

import (
	"bufio"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// FieldChange is one field that differs between two versions of a forward
// or section, in the file's syntax.
type FieldChange struct {
	Field    string
	Old, New string
}

// ForwardChange is a forward added, removed or changed between two configs.
type ForwardChange struct {
	Name string
	// Kind is "added", "removed" or "changed".
	Kind   string
	Fields []FieldChange // for "changed"
}

// Diff lists the forwards of b that are not in a (added), those of a not
// in b (removed), and those in both that differ, field by field; then the
// [daemon], [sysctl] and [conntrack] keys that differ. Forwards come in b's
// order, removed ones last in a's order.
func Diff(a, b *Config) (forwards []ForwardChange, settings []FieldChange) {
	old := a.ForwardsByName()
	seen := map[string]bool{}
	for i := range b.Forwards {
		f := &b.Forwards[i]
		seen[f.Name] = true
		o, ok := old[f.Name]
		switch {
		case !ok:
			forwards = append(forwards, ForwardChange{Name: f.Name, Kind: "added"})
		case !o.Equal(f):
			forwards = append(forwards, ForwardChange{Name: f.Name, Kind: "changed", Fields: forwardFields(o, f)})
		}
	}
	for i := range a.Forwards {
		if !seen[a.Forwards[i].Name] {
			forwards = append(forwards, ForwardChange{Name: a.Forwards[i].Name, Kind: "removed"})
		}
	}
	settings = append(settings, sectionFields("daemon", a.Daemon, b.Daemon)...)
	settings = append(settings, sectionFields("sysctl", a.Sysctl, b.Sysctl)...)
	settings = append(settings, sectionFields("conntrack", a.Conntrack, b.Conntrack)...)
	return forwards, settings
}

// ForwardFields renders each field of a forward in the file's syntax.
func ForwardFields(f *Forward) [][2]string {
	q := strconv.Quote
	protos := make([]string, len(f.Protos))
	for i, p := range f.Protos {
		protos[i] = q(p.String())
	}
	proto := protos[0]
	if len(protos) > 1 {
		proto = "[" + strings.Join(protos, ", ") + "]"
	}
	addr := `""`
	if !f.Local() {
		addr = q(f.Address.String())
	}
	to := q(Backend{To: f.To, ToPort: f.ToPort}.String())
	if f.Balanced() {
		tos := make([]string, len(f.Backends))
		w := weighted(f)
		for i, b := range f.Backends {
			tos[i] = q(b.String())
			if w {
				tos[i] = fmt.Sprintf("{to = %s, weight = %d}", tos[i], b.Weight)
			}
		}
		to = "[" + strings.Join(tos, ", ") + "]"
	}
	sources := make([]string, len(f.Sources))
	for i, s := range f.Sources {
		sources[i] = q(s.String())
	}
	snat := `"masquerade"`
	switch f.SNAT.Kind {
	case SNATNone:
		snat = `"none"`
	case SNATFixed:
		snat = q(f.SNAT.Addr.String())
	}
	h := f.Health
	health := "{check = " + q(string(h.Kind)) + ", interval = " + q(h.Interval.String()) + ", timeout = " + q(h.Timeout.String()) +
		", fall = " + strconv.Itoa(h.Fall) + ", rise = " + strconv.Itoa(h.Rise)
	if h.Path != "" {
		health += ", path = " + q(h.Path)
	}
	health += "}"
	return [][2]string{
		{"proto", proto},
		{"port", q(f.Port.String())},
		{"address", addr},
		{"to", to},
		{"interface", q(f.Interface)},
		{"sources", "[" + strings.Join(sources, ", ") + "]"},
		{"snat", snat},
		{"log", strconv.FormatBool(f.Log)},
		{"balance", q(string(f.Balance))},
		{"health", health},
		{"on_change", q(string(f.OnChange))},
	}
}

// weighted reports whether the forward's backends have weights other than
// 1, which only [[forward.backend]] tables can say.
func weighted(f *Forward) bool {
	return slices.ContainsFunc(f.Backends, func(b Backend) bool { return b.Weight != 1 })
}

func forwardFields(a, b *Forward) []FieldChange {
	fa, fb := ForwardFields(a), ForwardFields(b)
	var out []FieldChange
	for i := range fa {
		if fa[i][1] != fb[i][1] {
			out = append(out, FieldChange{Field: fa[i][0], Old: fa[i][1], New: fb[i][1]})
		}
	}
	return out
}

// sectionFields compares two values of a section struct field by field; the
// keys are the fields' key tags.
func sectionFields(section string, a, b any) []FieldChange {
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	var out []FieldChange
	for i := 0; i < va.NumField(); i++ {
		x, y := va.Field(i).Interface(), vb.Field(i).Interface()
		if reflect.DeepEqual(x, y) {
			continue
		}
		out = append(out, FieldChange{Field: section + "." + va.Type().Field(i).Tag.Get("key"),
			Old: fmt.Sprintf("%v", x), New: fmt.Sprintf("%v", y)})
	}
	return out
}

// WriteTOML writes the configuration as a file that parses back to it
// (every key spelled out), e.g. to keep a record of the configuration in
// force that a later process can compare with. It streams: 100,000 forwards
// are some 30 MB of text, which need not all be in memory at once (building
// it whole took three times as long, most of it faulting in fresh pages).
func (c *Config) WriteTOML(w io.Writer) error {
	b := bufio.NewWriterSize(w, 64<<10)
	for _, sec := range []struct {
		name string
		v    any
	}{{"daemon", c.Daemon}, {"sysctl", c.Sysctl}, {"conntrack", c.Conntrack}} {
		fmt.Fprintf(b, "[%s]\n", sec.name)
		v := reflect.ValueOf(sec.v)
		for i := 0; i < v.NumField(); i++ {
			f := v.Field(i)
			if l, ok := f.Interface().(ctmark.Layout); ok {
				fmt.Fprintf(b, "ct_mark = %q\nct_mask = 0x%08x\n", l.Connmark(), l.Mask)
				continue
			}
			val := fmt.Sprint(f.Interface())
			if f.Kind() == reflect.String {
				val = fmt.Sprintf("%q", f.String())
			}
			fmt.Fprintf(b, "%s = %s\n", v.Type().Field(i).Tag.Get("key"), val)
		}
		b.WriteString("\n")
	}
	for i := range c.Forwards {
		f := &c.Forwards[i]
		b.WriteString("[[forward]]\nname = " + strconv.Quote(f.Name) + "\n")
		w := weighted(f)
		for _, kv := range ForwardFields(f) {
			if kv[0] != "to" || !w {
				b.WriteString(kv[0] + " = " + kv[1] + "\n")
			}
		}
		if w {
			for _, be := range f.Backends {
				fmt.Fprintf(b, "[[forward.backend]]\nto = %q\nweight = %d\n", be, be.Weight)
			}
		}
		b.WriteString("\n")
	}
	return b.Flush()
}
