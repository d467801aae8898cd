package nft

import (
	"fmt"
	"io"
	"strings"
)

// Render writes the model as an nft script that replaces fwdd's table in one
// transaction: `fwdd print | nft -f -` programs the same table fwdd would.
func (m *Model) Render(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# fwdd's table: generated, do not edit. See `fwdd print`.\n")
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", m.Table, m.Table)
	fmt.Fprintf(&b, "table inet %s {\n", m.Table)
	all := m.elements()
	for i, s := range m.Sets {
		renderSet(&b, s, all[i])
	}
	for _, c := range m.Chains {
		renderChain(&b, c)
	}
	b.WriteString("}\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// String renders the model as nft text.
func (m *Model) String() string {
	var b strings.Builder
	_ = m.Render(&b)
	return b.String()
}

func typeText(fs []Field) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = f.nftName()
	}
	return strings.Join(parts, " . ")
}

func renderSet(b *strings.Builder, s *Set, elems []Element) {
	kind := "set"
	if s.IsMap() {
		kind = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\ttype %s", kind, s.Name, typeText(s.Key))
	if s.IsMap() {
		fmt.Fprintf(b, " : %s", typeText(s.Data))
	}
	b.WriteString("\n")
	if s.Counter {
		b.WriteString("\t\tcounter\n")
	}
	if s.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", s.Comment)
	}
	if len(elems) > 0 {
		sortElems(s, elems)
		b.WriteString("\t\telements = {\n")
		for i, e := range elems {
			b.WriteString("\t\t\t")
			b.WriteString(renderBytes(s.Key, e.Key))
			if s.Counter {
				b.WriteString(" counter packets 0 bytes 0")
			}
			if e.Comment != "" {
				fmt.Fprintf(b, " comment %q", e.Comment)
			}
			if s.IsMap() {
				b.WriteString(" : ")
				b.WriteString(renderBytes(s.Data, e.Data))
			}
			if i < len(elems)-1 {
				b.WriteString(",")
			}
			b.WriteString("\n")
		}
		b.WriteString("\t\t}\n")
	}
	b.WriteString("\t}\n")
}

func renderChain(b *strings.Builder, c *Chain) {
	fmt.Fprintf(b, "\tchain %s {\n", c.Name)
	if c.Comment != "" {
		fmt.Fprintf(b, "\t\tcomment %q\n", c.Comment)
	}
	if c.Hook != nil {
		policy := "accept"
		if c.Hook.Drop {
			policy = "drop"
		}
		fmt.Fprintf(b, "\t\ttype %s hook %s priority %d; policy %s;\n", c.Hook.Type, c.Hook.Hook, c.Hook.Priority, policy)
	}
	for _, r := range c.Rules {
		b.WriteString("\t\t")
		b.WriteString(r.text())
		b.WriteString("\n")
	}
	b.WriteString("\t}\n")
}

func (r Rule) text() string {
	parts := make([]string, len(r.Stmts))
	for i, s := range r.Stmts {
		parts[i] = s.text()
	}
	t := strings.Join(parts, " ")
	if r.Comment != "" {
		t += fmt.Sprintf(" comment %q", r.Comment)
	}
	return t
}
