package nft

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/fwdd/fwdd/pkg/ctmark"
	"maps"
	"slices"
	"sort"
	"sync"

	"golang.org/x/sys/unix"
)

// Fake is an in-memory Backend for tests that behaves like the kernel where
// it matters to fwdd: a plan is applied whole or not at all, and what the
// kernel rejects is rejected (an element added again with other data, an
// element, set or chain that is missing, a chain deleted while a rule or a
// verdict map element still jumps to it). Tests can make the next batch fail or end in "outcome
// unknown", and edit the table behind fwdd's back.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	plans  []*Plan
	// failNext is returned by the next Run, which applies nothing.
	failNext error
	// unknownNext: the next Run ends in ErrOutcomeUnknown, after applying
	// its plan if unknownCommits.
	unknownNext, unknownCommits bool
	// Blockers is what ForeignBlockers reports; NotOwned what CheckOwner
	// returns (fake_guard.go).
	Blockers []Blocker
	NotOwned error
}

type fakeTable struct {
	flags  uint32       // Table.Flags
	chains []*fakeChain // in creation order, like the kernel lists them
	sets   []*fakeSet
}

type fakeChain struct {
	decl  Chain // without rules
	rules []fakeRule
}

type fakeRule struct {
	rule *Rule
	tag  uint64 // 0 for a rule added behind fwdd's back
}

type fakeSet struct {
	decl  *Set
	elems map[string]Element // by key
}

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{tables: map[string]*fakeTable{}} }

// FailNext makes the next Run fail with err and apply nothing, as when the
// kernel rejects a batch.
func (f *Fake) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failNext = err
}

// LoseAckNext makes the next Run end in ErrOutcomeUnknown (ENOBUFS), as when
// the acks of a batch overflow the socket; the batch is applied if commit.
func (f *Fake) LoseAckNext(commit bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unknownNext, f.unknownCommits = true, commit
}

// Plans returns the plans Run was given, applied or not.
func (f *Fake) Plans() []*Plan {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.plans)
}

// Behind applies p as another program would (not recorded in Plans): an
// edit of fwdd's table behind its back. Its rules carry no fwdd tag.
func (f *Fake) Behind(p *Plan) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.apply(p, false)
}

// SetFlags sets the table's flags as another program would, behind fwdd's
// back: TableDormant is `nft add table inet NAME { flags dormant; }`.
func (f *Fake) SetFlags(table string, flags uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.tables[table]
	if t == nil {
		return fmt.Errorf("table inet %s: %w", table, errNoTable)
	}
	t.flags = flags
	return nil
}

// Run implements Backend.
func (f *Fake) Run(p *Plan) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.plans = append(f.plans, p)
	if err := f.failNext; err != nil {
		f.failNext = nil
		return fmt.Errorf("table inet %s: %w", p.Table, err)
	}
	if f.unknownNext {
		f.unknownNext = false
		if f.unknownCommits {
			if err := f.apply(p, true); err != nil {
				return err
			}
		}
		return fmt.Errorf("table inet %s: %w: %w", p.Table, ErrOutcomeUnknown, unix.ENOBUFS)
	}
	return f.apply(p, true)
}

// apply runs p on a copy of the table and keeps the copy only if every
// operation succeeded.
func (f *Fake) apply(p *Plan, ours bool) error {
	t := f.tables[p.Table].clone()
	for i := range p.Ops {
		var err error
		t, err = t.apply(&p.Ops[i], ours)
		if err != nil {
			return fmt.Errorf("table inet %s: operation %d: %w", p.Table, i+1, err)
		}
	}
	if t == nil {
		delete(f.tables, p.Table)
	} else {
		f.tables[p.Table] = t
	}
	return nil
}

func (t *fakeTable) clone() *fakeTable {
	if t == nil {
		return nil
	}
	c := &fakeTable{flags: t.flags}
	for _, ch := range t.chains {
		c.chains = append(c.chains, &fakeChain{decl: ch.decl, rules: slices.Clone(ch.rules)})
	}
	for _, s := range t.sets {
		c.sets = append(c.sets, &fakeSet{decl: s.decl, elems: maps.Clone(s.elems)})
	}
	return c
}

func (t *fakeTable) chain(name string) *fakeChain {
	for _, c := range t.chains {
		if c.decl.Name == name {
			return c
		}
	}
	return nil
}

func (t *fakeTable) set(name string) *fakeSet {
	for _, s := range t.sets {
		if s.decl.Name == name {
			return s
		}
	}
	return nil
}

var errNoTable = fmt.Errorf("no such table: %w", unix.ENOENT)

func (t *fakeTable) apply(op *Op, ours bool) (*fakeTable, error) {
	if op.Kind == OpAddTable {
		if t == nil {
			t = &fakeTable{}
		}
		t.flags = 0 // as the kernel: an add of an existing table updates its flags
		return t, nil
	}
	if t == nil {
		return nil, errNoTable
	}
	switch op.Kind {
	case OpDeleteTable:
		return nil, nil
	case OpAddSet:
		if s := t.set(op.Set.Name); s != nil {
			if !sameSet(s.decl, op.Set) {
				return nil, fmt.Errorf("set %s exists with another type: %w", op.Set.Name, unix.EEXIST)
			}
			return t, nil
		}
		t.sets = append(t.sets, &fakeSet{decl: op.Set, elems: map[string]Element{}})
	case OpAddElements, OpDeleteElements:
		s := t.set(op.Set.Name)
		if s == nil {
			return nil, fmt.Errorf("no set %s: %w", op.Set.Name, unix.ENOENT)
		}
		for _, e := range op.Elements {
			k := string(e.Key) + "\x00" + string(e.KeyEnd)
			old, ok := s.elems[k]
			switch {
			case op.Kind == OpDeleteElements && !ok:
				return nil, fmt.Errorf("set %s has no element %s: %w", op.Set.Name, renderBytes(s.decl.Key, e.Key), unix.ENOENT)
			case op.Kind == OpDeleteElements:
				delete(s.elems, k)
			case ok && (!bytes.Equal(old.Data, e.Data) || old.Comment != e.Comment):
				// Like the kernel: adding an element again is a no-op only
				// if it is identical.
				return nil, fmt.Errorf("set %s already has element %s: %w", op.Set.Name, renderBytes(s.decl.Key, e.Key), unix.EEXIST)
			default:
				s.elems[k] = e
			}
		}
	case OpAddChain:
		if c := t.chain(op.Chain.Name); c != nil {
			if (c.decl.Hook == nil) != (op.Chain.Hook == nil) || c.decl.Hook != nil && *c.decl.Hook != *op.Chain.Hook {
				return nil, fmt.Errorf("chain %s exists with another hook: %w", op.Chain.Name, unix.EEXIST)
			}
			return t, nil
		}
		t.chains = append(t.chains, &fakeChain{decl: Chain{Name: op.Chain.Name, Hook: op.Chain.Hook, Comment: op.Chain.Comment}})
	case OpFlushChain:
		c := t.chain(op.Chain.Name)
		if c == nil {
			return nil, fmt.Errorf("no chain %s: %w", op.Chain.Name, unix.ENOENT)
		}
		c.rules = nil
	case OpDeleteChain:
		c := t.chain(op.Chain.Name)
		if c == nil {
			return nil, fmt.Errorf("no chain %s: %w", op.Chain.Name, unix.ENOENT)
		}
		for _, o := range t.chains {
			for _, r := range o.rules {
				if slices.Contains(ruleChains(r.rule), c.decl.Name) {
					return nil, fmt.Errorf("chain %s is still referenced by chain %s: %w", c.decl.Name, o.decl.Name, unix.EBUSY)
				}
			}
		}
		for _, s := range t.sets {
			for _, e := range s.elems {
				if s.decl.IsVerdictMap() && string(e.Data) == c.decl.Name {
					return nil, fmt.Errorf("chain %s is still referenced by an element of map %s: %w", c.decl.Name, s.decl.Name, unix.EBUSY)
				}
			}
		}
		t.chains = slices.DeleteFunc(t.chains, func(o *fakeChain) bool { return o == c })
	case OpAddRule:
		c := t.chain(op.Chain.Name)
		if c == nil {
			return nil, fmt.Errorf("no chain %s: %w", op.Chain.Name, unix.ENOENT)
		}
		for _, name := range ruleChains(op.Rule) {
			if t.chain(name) == nil {
				return nil, fmt.Errorf("rule jumps to missing chain %s: %w", name, unix.ENOENT)
			}
		}
		for _, name := range ruleSets(op.Rule) {
			if t.set(name) == nil {
				return nil, fmt.Errorf("rule uses missing set %s: %w", name, unix.ENOENT)
			}
		}
		r := fakeRule{rule: op.Rule}
		if ours {
			r.tag = op.Tag
		}
		c.rules = append(c.rules, r)
	default:
		return nil, fmt.Errorf("unknown operation %d: %w", op.Kind, unix.EINVAL)
	}
	return t, nil
}

func sameSet(a, b *Set) bool {
	return slices.Equal(a.Key, b.Key) && slices.Equal(a.Data, b.Data) && a.Counter == b.Counter
}

// ruleChains lists the chains a rule jumps or goes to.
func ruleChains(r *Rule) []string {
	var out []string
	for _, s := range r.Stmts {
		if v, ok := s.(verdict); ok && v.chain != "" {
			out = append(out, v.chain)
		}
	}
	return out
}

// ruleSets lists the named sets a rule uses.
func ruleSets(r *Rule) []string {
	var out []string
	for _, s := range r.Stmts {
		switch s := s.(type) {
		case matchSet:
			out = append(out, s.set)
		case setCtMarkMap:
			out = append(out, s.set)
		case natMap:
			out = append(out, s.set)
		}
	}
	return out
}

// Read implements Backend.
func (f *Fake) Read(table string, elements bool) (*Table, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ft := f.tables[table]
	if ft == nil {
		return nil, nil
	}
	t := &Table{Name: table, Flags: ft.flags, Elements: elements}
	for _, c := range ft.chains {
		tc := TableChain{Name: c.decl.Name, Hook: c.decl.Hook}
		for _, r := range c.rules {
			tc.Rules = append(tc.Rules, r.tag)
		}
		t.Chains = append(t.Chains, tc)
	}
	for _, s := range ft.sets {
		ts := TableSet{Name: s.decl.Name, Verdict: s.decl.IsVerdictMap()}
		if elements {
			ts.Elements = s.sorted()
		}
		t.Sets = append(t.Sets, ts)
	}
	return t, nil
}

func (s *fakeSet) sorted() []Element {
	out := make([]Element, 0, len(s.elems))
	for _, e := range s.elems {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

// ReadTraffic reports every forward of the table's counters with zero
// packets: the fake forwards nothing.
func (f *Fake) ReadTraffic(table string, l ctmark.Layout) (map[string]*Traffic, error) {
	t, err := f.Read(table, true)
	if err != nil || t == nil {
		return nil, err
	}
	out := map[string]*Traffic{}
	for name, id := range t.IDs(l) {
		out[name] = &Traffic{Name: name, ID: id}
	}
	return out, nil
}

// ReadTrafficOf is ReadTraffic limited to the forwards in ids whose ids
// match the table's.
func (f *Fake) ReadTrafficOf(table string, l ctmark.Layout, ids map[string]uint32) (map[string]*Traffic, error) {
	all, err := f.ReadTraffic(table, l)
	if err != nil {
		return nil, err
	}
	out := map[string]*Traffic{}
	for name, id := range ids {
		if t := all[name]; t != nil && t.ID == id {
			out[name] = t
		}
	}
	return out, nil
}

// ReadTotals reports zero: the fake forwards nothing.
func (f *Fake) ReadTotals(string) (Totals, error) { return Totals{}, nil }

// ErrFakeNoTable is returned by Dump for a table that does not exist.
var ErrFakeNoTable = errors.New("no such table")

// Dump renders the table as nft text, like `nft list table inet NAME`
// (elements sorted, no counters values), for assertions.
func (f *Fake) Dump(table string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ft := f.tables[table]
	if ft == nil {
		return "", fmt.Errorf("dump table inet %s: %w", table, ErrFakeNoTable)
	}
	var w nftText
	w.WriteString("table inet ")
	w.ident(table)
	w.WriteString(" {\n")
	if ft.flags&TableDormant != 0 {
		w.WriteString("\tflags dormant\n")
	}
	for _, s := range ft.sets {
		renderSet(&w, s.decl, s.sorted())
	}
	for _, c := range ft.chains {
		ch := c.decl
		for _, r := range c.rules {
			ch.Rules = append(ch.Rules, *r.rule)
		}
		renderChain(&w, &ch)
	}
	w.WriteString("}\n")
	if w.err != nil {
		return "", w.err
	}
	return w.String(), nil
}
