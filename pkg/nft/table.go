package nft

import (
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Table is fwdd's table as read back from the kernel (or a Fake).
type Table struct {
	Name string
	// Flags are the table's flags (NFTA_TABLE_FLAGS); fwdd's table has
	// none. Another program can set dormant on it (`nft add table inet
	// fwdd { flags dormant; }`): its chains then see no packet at all.
	Flags  uint32
	Chains []TableChain
	Sets   []TableSet
	// Elements: the sets' elements were read too.
	Elements bool
}

// TableChain is one chain read back.
type TableChain struct {
	Name string
	Hook *Hook // nil for a regular chain
	// Rules holds each rule's tag (ruleTag), 0 for a rule fwdd did not write.
	Rules []uint64
}

// TableSet is one named set read back.
type TableSet struct {
	Name     string
	Verdict  bool      // a verdict map
	Elements []Element // only when read with elements; counters are not compared
}

func (t *Table) chain(name string) *TableChain {
	for i := range t.Chains {
		if t.Chains[i].Name == name {
			return &t.Chains[i]
		}
	}
	return nil
}

func (t *Table) set(name string) *TableSet {
	for i := range t.Sets {
		if t.Sets[i].Name == name {
			return &t.Sets[i]
		}
	}
	return nil
}

// IDs returns the forward ids the table's counters record (element comment:
// forward name, key: its ct mark), so that a restarted daemon keeps them.
func (t *Table) IDs(l ctmark.Layout) map[string]uint32 {
	ids := map[string]uint32{}
	if t == nil {
		return ids
	}
	if s := t.set(SetTrafficOrig); s != nil {
		for _, e := range s.Elements {
			if len(e.Key) != 4 || e.Comment == "" {
				continue
			}
			if id, ok := l.ID(binary.NativeEndian.Uint32(e.Key)); ok {
				ids[e.Comment] = id
			}
		}
	}
	return ids
}

// Table flags (linux/netfilter/nf_tables.h, enum nft_table_flags).
const (
	TableDormant uint32 = 1 << iota
	TableOwner
	TablePersist
)

// flagsDiffer says how the table's flags differ from fwdd's (none), ""
// when they do not. A batch that adds the table (OpAddTable, which sends
// flags 0) clears dormant and keeps the rest of the table.
func (t *Table) flagsDiffer() string {
	if t.Flags == 0 {
		return ""
	}
	var names []string
	for _, f := range []struct {
		bit  uint32
		name string
	}{{TableDormant, "dormant"}, {TableOwner, "owner"}, {TablePersist, "persist"}} {
		if t.Flags&f.bit != 0 {
			names = append(names, f.name)
		}
	}
	if rest := t.Flags &^ (TableDormant | TableOwner | TablePersist); rest != 0 {
		names = append(names, fmt.Sprintf("%#x", rest))
	}
	if t.Flags == TableDormant {
		return fmt.Sprintf("table inet %s is dormant (flags dormant): its chains see no packet", t.Name)
	}
	return fmt.Sprintf("table inet %s has flags %s, fwdd sets none", t.Name, strings.Join(names, ","))
}

// shapeDiffers says how the table's chains, hooks, rules and sets differ
// from m's ("" when they do not): what a diff against fwdd's last model
// assumes still holds.
func (t *Table) shapeDiffers(m *Model) string {
	if len(t.Chains) != len(m.Chains) {
		return fmt.Sprintf("table inet %s has %d chains, want %d", m.Table, len(t.Chains), len(m.Chains))
	}
	for _, c := range m.Chains {
		tc := t.chain(c.Name)
		if tc == nil {
			return fmt.Sprintf("chain %s is missing", c.Name)
		}
		if why := tc.differs(c); why != "" {
			return why
		}
	}
	if len(t.Sets) != len(m.Sets) {
		return fmt.Sprintf("table inet %s has %d sets, want %d", m.Table, len(t.Sets), len(m.Sets))
	}
	for _, s := range m.Sets {
		if t.set(s.Name) == nil {
			return fmt.Sprintf("set %s is missing", s.Name)
		}
	}
	return ""
}

func (tc *TableChain) differs(c *Chain) string {
	if (tc.Hook == nil) != (c.Hook == nil) || tc.Hook != nil && *tc.Hook != *c.Hook {
		return fmt.Sprintf("chain %s has another type, hook, priority or policy", c.Name)
	}
	if len(tc.Rules) != len(c.Rules) {
		return fmt.Sprintf("chain %s has %d rules, want %d", c.Name, len(tc.Rules), len(c.Rules))
	}
	for i := range c.Rules {
		if tc.Rules[i] != ruleTag(&c.Rules[i]) {
			return fmt.Sprintf("chain %s rule %d is not the one fwdd wrote", c.Name, i+1)
		}
	}
	return ""
}

// Differs says how the table differs from m, nil when it holds exactly m:
// its flags (none), chains, hooks and rules, sets, and (when they were
// read) every element.
func (t *Table) Differs(m *Model) error {
	if t == nil {
		return fmt.Errorf("table inet %s is not in the kernel", m.Table)
	}
	if why := t.flagsDiffer(); why != "" {
		return fmt.Errorf("%s", why)
	}
	if why := t.shapeDiffers(m); why != "" {
		return fmt.Errorf("%s", why)
	}
	if !t.Elements {
		return nil
	}
	all := m.elements()
	for _, s := range m.Sets {
		have, want := t.set(s.Name).Elements, setElems(&all, s)
		if len(have) != len(want) {
			return fmt.Errorf("set %s has %d elements, want %d", s.Name, len(have), len(want))
		}
		add, _ := diffElems(have, want)
		if len(add) > 0 {
			return fmt.Errorf("set %s lacks %d of fwdd's elements", s.Name, len(add))
		}
	}
	return nil
}

// Reconcile is the plan that takes the table read back (t, nil when absent)
// to m in one batch without replacing it where it can: it keeps chains
// whose rules are fwdd's and as wanted, and set elements (with their
// counters) that are wanted, and adds, flushes and deletes the rest (a
// missing base chain is added, an extra snat_guard deleted). A table with
// other base chains, hooks, policies or sets than m, or with the chains of
// another ct mark layout, is replaced. A table with flags (dormant) is
// added again first, which clears them. t must have been read with its
// elements.
func Reconcile(t *Table, m *Model) *Plan {
	if t == nil || !t.Elements || t.Name != m.Table {
		return Replace(m)
	}
	if len(t.Sets) != len(m.Sets) {
		return Replace(m)
	}
	// A missing base chain is added; an extra one is deleted only if it is
	// snat_guard, which fwdd leaves out without fixed snat addresses.
	for _, c := range m.Chains {
		if tc := t.chain(c.Name); tc != nil && ((tc.Hook == nil) != (c.Hook == nil) || tc.Hook != nil && *tc.Hook != *c.Hook) {
			return Replace(m)
		}
	}
	for _, tc := range t.Chains {
		if tc.Hook != nil && tc.Name != chainSNATGuard && m.Chain(tc.Name) == nil {
			return Replace(m)
		}
	}
	for _, s := range m.Sets {
		// A mark map of another layout (its data of another type) cannot
		// take this layout's elements.
		if ts := t.set(s.Name); ts == nil || ts.Verdict != s.IsVerdictMap() {
			return Replace(m)
		}
	}
	// Neither can the chains of another partial ct_mask, which are fixed
	// for a layout: a change of layout replaces the table, as on reload.
	for _, tc := range t.Chains {
		if c := m.Chain(tc.Name); isLayoutChain(tc.Name) && (c == nil || tc.differs(c) != "") {
			return Replace(m)
		}
	}
	p := &Plan{Table: m.Table, Want: m}
	p.clearFlags(t)
	var flush, dels, adds []*Chain
	for _, c := range m.Chains {
		switch tc := t.chain(c.Name); {
		case tc == nil:
			adds = append(adds, c)
		case tc.differs(c) != "":
			flush = append(flush, c)
		}
	}
	for _, tc := range t.Chains {
		if m.Chain(tc.Name) == nil {
			dels = append(dels, &Chain{Name: tc.Name})
		}
	}
	all := m.elements()
	var add, del [numSets][]Element
	for _, s := range m.Sets {
		si := setIndex[s.Name]
		add[si], del[si] = diffElems(t.set(s.Name).Elements, all[si])
	}
	p.chainOps(flush, dels, adds, func(si int) (a, d []Element) { return add[si], del[si] })
	return p
}

// clearFlags starts p with adding the table when t has flags: the kernel
// takes an add of an existing table as an update of its flags, to 0 (what
// google/nftables' AddTable sends, and nft's `add table`), and a dormant
// table wakes up with its chains, rules, sets and counters as they are.
func (p *Plan) clearFlags(t *Table) {
	if t != nil && t.Flags != 0 {
		p.Ops = append([]Op{{Kind: OpAddTable}}, p.Ops...)
	}
}
