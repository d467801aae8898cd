package nft

import (
	"fmt"
	"io"
	"strings"
)

// Render writes the model as an nft script that replaces fwdd's table in one
// transaction: `fwdd print | nft -f -` programs the same table fwdd would.
// A string nft cannot express exactly is an error and nothing is written.
func (m *Model) Render(out io.Writer) error {
	var w nftText
	w.WriteString("# fwdd's table: generated, do not edit. See `fwdd print`.\n")
	for _, kw := range []string{"table", "delete table"} {
		w.WriteString(kw + " inet ")
		w.ident(m.Table)
		w.WriteString("\n")
	}
	w.WriteString("table inet ")
	w.ident(m.Table)
	w.WriteString(" {\n")
	all := m.elements()
	for _, s := range m.Sets {
		renderSet(&w, s, setElems(&all, s))
	}
	for _, c := range m.Chains {
		renderChain(&w, c)
	}
	w.WriteString("}\n")
	if w.err != nil {
		return fmt.Errorf("render table inet %s: %w", m.Table, w.err)
	}
	_, err := io.WriteString(out, w.String())
	return err
}

// String renders the model as nft text (for tests and logs); an
// unrenderable model gives a comment line with the reason.
func (m *Model) String() string {
	var b strings.Builder
	if err := m.Render(&b); err != nil {
		return "# " + err.Error() + "\n"
	}
	return b.String()
}

func typeText(fs []Field) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = f.nftName()
	}
	return strings.Join(parts, " . ")
}

// renderSetDecl writes a set's type, flags and comment, each between pre
// and post.
func renderSetDecl(w *nftText, s *Set, pre, post string) {
	switch {
	case s.Typeof != "":
		w.WriteString(pre + "typeof " + s.Typeof)
		if s.IsMap() {
			w.WriteString(" : " + s.DataTypeof)
		}
	default:
		w.WriteString(pre + "type " + typeText(s.Key))
		if s.IsMap() {
			w.WriteString(" : " + typeText(s.Data))
		}
	}
	w.WriteString(post)
	if s.Interval {
		w.WriteString(pre + "flags interval" + post)
	}
	if s.Counter {
		w.WriteString(pre + "counter" + post)
	}
	if s.Comment != "" {
		w.WriteString(pre + "comment ")
		w.quote(s.Comment)
		w.WriteString(post)
	}
}

// renderKey renders an element's key; an interval element's last field is
// written lo-hi.
func renderKey(s *Set, e Element) string {
	k := renderBytes(s.Key, e.Key)
	if len(e.KeyEnd) == 0 {
		return k
	}
	end := decode(s.Key, e.KeyEnd)
	if len(end) == 0 {
		return k
	}
	return k + "-" + end[len(end)-1].String()
}

func renderElem(w *nftText, s *Set, e Element) {
	w.WriteString(renderKey(s, e))
	if s.Counter {
		w.WriteString(" counter packets 0 bytes 0")
	}
	if e.Comment != "" {
		w.WriteString(" comment ")
		w.quote(e.Comment)
	}
	if s.IsMap() {
		w.WriteString(" : ")
		w.WriteString(renderBytes(s.Data, e.Data))
	}
}

func renderSet(w *nftText, s *Set, elems []Element) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	fmt.Fprintf(w, "\t%s ", kind)
	w.ident(s.Name)
	w.WriteString(" {\n")
	renderSetDecl(w, s, "\t\t", "\n")
	if len(elems) > 0 {
		sortElems(s, elems)
		w.WriteString("\t\telements = {\n")
		for i, e := range elems {
			w.WriteString("\t\t\t")
			renderElem(w, s, e)
			if i < len(elems)-1 {
				w.WriteString(",")
			}
			w.WriteString("\n")
		}
		w.WriteString("\t\t}\n")
	}
	w.WriteString("\t}\n")
}

func renderHook(w *nftText, h *Hook) {
	policy := "accept"
	if h.Drop {
		policy = "drop"
	}
	fmt.Fprintf(w, "type %s hook %s priority %d; policy %s;", h.Type, h.Hook, h.Priority, policy)
}

func renderChain(w *nftText, c *Chain) {
	w.WriteString("\tchain ")
	w.ident(c.Name)
	w.WriteString(" {\n")
	if c.Comment != "" {
		// A comment line, not nft's chain comment: fwdd cannot set that
		// over netlink, and the script must program what fwdd programs.
		w.WriteString("\t\t# ")
		w.commentLine(c.Comment)
		w.WriteString("\n")
	}
	if c.Hook != nil {
		w.WriteString("\t\t")
		renderHook(w, c.Hook)
		w.WriteString("\n")
	}
	for _, r := range c.Rules {
		w.WriteString("\t\t")
		r.render(w)
		w.WriteString("\n")
	}
	w.WriteString("\t}\n")
}

func (r *Rule) render(w *nftText) {
	if w.err == nil && r.Comment != "" {
		// A forward's rules carry its name: say which forward failed.
		defer func() {
			if w.err != nil {
				w.err = fmt.Errorf("forward %s: %w", shorten(r.Comment), w.err)
			}
		}()
	}
	for i, s := range r.Stmts {
		if i > 0 {
			w.WriteByte(' ')
		}
		s.render(w)
	}
	if r.Comment != "" {
		w.WriteString(" comment ")
		w.quote(r.Comment)
	}
}
