package nft

import (
	"fmt"
	"hash/fnv"
	"io"
	"strings"

	"github.com/google/nftables/expr"
)

// OpKind is one kind of operation in a batch.
type OpKind uint8

const (
	OpAddTable OpKind = iota + 1
	OpDeleteTable
	OpAddSet
	OpAddElements
	OpDeleteElements
	OpAddChain
	OpFlushChain
	OpDeleteChain
	OpAddRule
)

// Op is one operation of a batch: one netlink message, plus for each
// anonymous set of an OpAddRule one to add it and one per chunk of its
// elements (splitElems).
type Op struct {
	Kind OpKind
	// Chain is the chain of a chain operation (OpAddChain: with its hook)
	// and the chain an OpAddRule appends to.
	Chain *Chain
	// Set is the set of OpAddSet, OpAddElements and OpDeleteElements.
	Set *Set
	// Elements are the elements added or deleted, as many as fit one
	// message (splitElems): the kernel truncates an element list's length
	// to 16 bits (FACTS.md), so large sets take several operations.
	Elements []Element
	// Rule is the rule of OpAddRule, Exprs its kernel expressions, Anon the
	// anonymous sets they use (added in the same batch, just before the
	// rule), and Tag the rule's tag (see ruleTag).
	Rule  *Rule
	Exprs []expr.Any
	Anon  []AnonSet
	Tag   uint64
}

// AnonSet is an anonymous constant set or map that one rule uses.
type AnonSet struct {
	ID       uint32 // unique within the plan; the rule's lookup refers to it
	Key      []Field
	Data     []Field // nil for a set
	Elements []Element
}

// set describes the anonymous set as a Set, named as the kernel is asked to
// name it (it fills in a number).
func (a *AnonSet) set() *Set {
	if len(a.Data) > 0 {
		return &Set{Name: "__map%d", Key: a.Key, Data: a.Data}
	}
	return &Set{Name: "__set%d", Key: a.Key}
}

// Changes names the forwards a plan adds, removes and changes.
type Changes struct {
	Added, Removed, Changed []string
}

// Empty reports whether no forward changes.
func (c Changes) Empty() bool { return len(c.Added)+len(c.Removed)+len(c.Changed) == 0 }

// Plan is one batch: the operations that take fwdd's table from what the
// kernel holds to Want, in order. The kernel applies a batch whole or not at
// all. A plan is pure data; a Backend runs it.
type Plan struct {
	Table string
	// Full: the plan replaces the whole table (add, delete, add table, then
	// everything), which resets every counter.
	Full bool
	Ops  []Op
	// Want is the model the table holds once the plan ran.
	Want *Model
	// Changes are the forwards changed against the model the plan starts
	// from (empty when that is not known, e.g. for a table read back).
	Changes Changes
}

// Empty reports whether the plan has nothing to send.
func (p *Plan) Empty() bool { return len(p.Ops) == 0 }

// Messages counts the netlink messages of the batch, including its begin
// and end (0 for an empty plan: nothing is sent).
func (p *Plan) Messages() int {
	if p.Empty() {
		return 0
	}
	n := 2
	for _, op := range p.Ops {
		n++
		for _, a := range op.Anon {
			n += 1 + len(splitElems(a.set(), a.Elements))
		}
	}
	return n
}

// NumElements counts the elements the plan adds or deletes in named sets.
func (p *Plan) NumElements() int {
	n := 0
	for _, op := range p.Ops {
		n += len(op.Elements)
	}
	return n
}

// Render writes the plan as an nft script (`nft -f` runs it as one
// transaction too). Strings nft cannot express are an error.
func (p *Plan) Render(out io.Writer) error {
	var w nftText
	for _, op := range p.Ops {
		p.renderOp(&w, &op)
		w.WriteByte('\n')
	}
	if w.err != nil {
		return fmt.Errorf("render plan for table inet %s: %w", p.Table, w.err)
	}
	_, err := io.WriteString(out, w.String())
	return err
}

// String renders the plan for logs and tests; an unrenderable plan gives a
// comment line with the reason.
func (p *Plan) String() string {
	var b strings.Builder
	if err := p.Render(&b); err != nil {
		return "# " + err.Error() + "\n"
	}
	return b.String()
}

func (p *Plan) renderOp(w *nftText, op *Op) {
	obj := func(kind, name string) {
		fmt.Fprintf(w, "%s inet ", kind)
		w.ident(p.Table)
		if name != "" {
			w.WriteByte(' ')
			w.ident(name)
		}
	}
	switch op.Kind {
	case OpAddTable:
		obj("add table", "")
	case OpDeleteTable:
		obj("delete table", "")
	case OpAddSet:
		kind := "add set"
		if op.Set.IsMap() {
			kind = "add map"
		}
		obj(kind, op.Set.Name)
		w.WriteString(" { ")
		renderSetDecl(w, op.Set, "", "; ")
		w.WriteString("}")
	case OpAddElements, OpDeleteElements:
		kind := "add element"
		if op.Kind == OpDeleteElements {
			kind = "delete element"
		}
		obj(kind, op.Set.Name)
		w.WriteString(" { ")
		for i, e := range op.Elements {
			if i > 0 {
				w.WriteString(", ")
			}
			if op.Kind == OpDeleteElements {
				w.WriteString(renderKey(op.Set, e))
			} else {
				renderElem(w, op.Set, e)
			}
		}
		w.WriteString(" }")
	case OpAddChain:
		obj("add chain", op.Chain.Name)
		if h := op.Chain.Hook; h != nil {
			w.WriteString(" { ")
			renderHook(w, h)
			w.WriteString(" }")
		}
	case OpFlushChain:
		obj("flush chain", op.Chain.Name)
	case OpDeleteChain:
		obj("delete chain", op.Chain.Name)
	case OpAddRule:
		obj("add rule", op.Chain.Name)
		w.WriteByte(' ')
		op.Rule.render(w)
	default:
		w.fail(fmt.Errorf("operation %d has no nft syntax", op.Kind))
	}
}

// ruleTag identifies a rule's content: fwdd writes it into the rule's user
// data (beside the comment; nft ignores it), so that a table read back can
// be compared rule by rule with the model. 0 means "not fwdd's".
func ruleTag(r *Rule) uint64 {
	var w nftText
	r.render(&w)
	h := fnv.New64a()
	_, _ = io.WriteString(h, w.String())
	if t := h.Sum64(); t != 0 {
		return t
	}
	return 1
}

func ruleOp(l *lowering, c *Chain, r *Rule) Op {
	op := Op{Kind: OpAddRule, Chain: c, Rule: r, Tag: ruleTag(r)}
	l.anon = nil
	for _, st := range r.Stmts {
		op.Exprs = append(op.Exprs, st.lower(l)...)
	}
	op.Anon = l.anon
	return op
}

func (p *Plan) add(kind OpKind, set *Set, es []Element) {
	for _, chunk := range splitElems(set, es) {
		p.Ops = append(p.Ops, Op{Kind: kind, Set: set, Elements: chunk})
	}
}

// splitElems cuts the elements of set s into the chunks sent one netlink
// message each, by their encoded size: the kernel truncates an element
// list's length to 16 bits (FACTS.md), so large sets and anonymous maps
// take several messages, all in the same batch.
func splitElems(s *Set, es []Element) [][]Element {
	var out [][]Element
	for len(es) > 0 {
		n, size := 0, 0
		for n < len(es) {
			size += elemSize(s, &es[n])
			if size > elementListBytes && n > 0 {
				break
			}
			n++
		}
		out = append(out, es[:n:n])
		es = es[n:]
	}
	return out
}

func (p *Plan) addRules(l *lowering, c *Chain) {
	for i := range c.Rules {
		p.Ops = append(p.Ops, ruleOp(l, c, &c.Rules[i]))
	}
}

// Replace is the plan that replaces fwdd's table with m whether it exists
// or not: add, delete, add table, then sets with their elements, chains and
// rules, all in one batch (the old table and its counters go, the new one
// appears atomically).
func Replace(m *Model) *Plan {
	p := &Plan{Table: m.Table, Full: true, Want: m}
	p.Ops = append(p.Ops, Op{Kind: OpAddTable}, Op{Kind: OpDeleteTable}, Op{Kind: OpAddTable})
	all := m.elements()
	if !m.Layout.Whole() {
		// Verdict map elements jump to chains, which must exist first.
		for _, c := range m.Chains {
			p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
		}
	}
	for _, s := range m.Sets {
		p.Ops = append(p.Ops, Op{Kind: OpAddSet, Set: s})
		p.add(OpAddElements, s, setElems(&all, s))
	}
	if m.Layout.Whole() {
		for _, c := range m.Chains {
			p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
		}
	}
	var l lowering
	for _, c := range m.Chains {
		p.addRules(&l, c)
	}
	return p
}

// Diff is the plan that takes the table from old (what fwdd last applied)
// to m with only the differences: the elements of forwards that changed,
// and the rules of chains whose rules changed. It is also where the change
// of each forward is decided, once (Plan.Changes). When the two models do
// not differ in elements and rules only (another table name, other base
// chains or policies), or the differences are more elements than m has, it
// replaces the table.
func Diff(old, m *Model) *Plan {
	p := &Plan{Table: m.Table, Want: m}
	// Elements: only forwards whose part changed are made.
	var add, del [numSets][]Element
	var cur, prev [numSets][]Element
	for _, pt := range m.order {
		op := old.parts[pt.fwd.Name]
		if pt.unchanged(op) {
			continue
		}
		if op == nil {
			p.Changes.Added = append(p.Changes.Added, pt.fwd.Name)
		} else {
			p.Changes.Changed = append(p.Changes.Changed, pt.fwd.Name)
		}
		clear(cur[:])
		clear(prev[:])
		pt.elements(m.Layout, &cur)
		if op != nil {
			op.elements(old.Layout, &prev)
		}
		for si := range cur {
			a, r := diffElems(prev[si], cur[si])
			add[si] = append(add[si], a...)
			del[si] = append(del[si], r...)
		}
	}
	for _, op := range old.order {
		if m.parts[op.fwd.Name] == nil {
			p.Changes.Removed = append(p.Changes.Removed, op.fwd.Name)
			op.elements(old.Layout, &del)
		}
	}
	// A diff that deletes and adds more elements than the whole table has
	// (most forwards changed) is replaced too: the batch stays within what
	// the config's element budget lets a table be, where the old elements
	// beside the new ones could be twice that (EMSGSIZE).
	sent := 0
	for si := range add {
		sent += len(add[si]) + len(del[si])
	}
	if old.Table != m.Table || hooksChanged(old, m) || old.Layout != m.Layout || sent > m.NumElements() {
		r := Replace(m)
		r.Changes = p.Changes
		return r
	}

	var flush, dels, adds []*Chain
	for _, c := range m.Chains {
		oc := old.Chain(c.Name)
		switch {
		case oc == nil:
			adds = append(adds, c)
		case chainText(oc) != chainText(c):
			flush = append(flush, c)
		}
	}
	for _, oc := range old.Chains {
		if m.Chain(oc.Name) == nil {
			dels = append(dels, oc)
		}
	}
	p.chainOps(flush, dels, adds, func(si int) (a, d []Element) { return add[si], del[si] })
	return p
}

// chainOps appends, in an order the kernel accepts in one batch: flushes
// (of changed chains and of chains to delete) and element deletions, so
// that no rule or verdict element refers to a chain to delete any more
// (else EBUSY), chain deletions, new chains, element additions (a verdict
// element may jump to a new chain), then the rules of flushed and new
// chains.
func (p *Plan) chainOps(flush, dels, adds []*Chain, elems func(si int) (add, del []Element)) {
	for _, c := range flush {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c})
	}
	for _, c := range dels {
		p.Ops = append(p.Ops, Op{Kind: OpFlushChain, Chain: c})
	}
	for _, s := range p.Want.Sets {
		_, d := elems(setIndex[s.Name])
		p.add(OpDeleteElements, s, d)
	}
	for _, c := range dels {
		p.Ops = append(p.Ops, Op{Kind: OpDeleteChain, Chain: c})
	}
	for _, c := range adds {
		p.Ops = append(p.Ops, Op{Kind: OpAddChain, Chain: c})
	}
	for _, s := range p.Want.Sets {
		a, _ := elems(setIndex[s.Name])
		p.add(OpAddElements, s, a)
	}
	var l lowering
	for _, c := range append(flush, adds...) {
		p.addRules(&l, c)
	}
}

func chainText(c *Chain) string {
	var w nftText
	for _, r := range c.Rules {
		r.render(&w)
		w.WriteByte('\n')
	}
	return w.String()
}

// hooksChanged reports whether a chain of both models changed its type,
// hook, priority or policy, which replaces the table (a diff adds, flushes
// and deletes chains, rules and elements only). A base chain in only one of
// them (snat_guard) is added or deleted like any chain.
func hooksChanged(old, m *Model) bool {
	for _, c := range m.Chains {
		oc := old.Chain(c.Name)
		if oc != nil && ((oc.Hook == nil) != (c.Hook == nil) || oc.Hook != nil && *oc.Hook != *c.Hook) {
			return true
		}
	}
	return false
}

// diffElems compares one forward's old and new elements of one set.
func diffElems(old, cur []Element) (add, del []Element) {
	if len(old) == 0 {
		return cur, nil
	}
	oldIDs := make(map[string]bool, len(old))
	for _, e := range old {
		oldIDs[e.id()] = true
	}
	curIDs := make(map[string]bool, len(cur))
	for _, e := range cur {
		id := e.id()
		curIDs[id] = true
		if !oldIDs[id] {
			add = append(add, e)
		}
	}
	for _, e := range old {
		if !curIDs[e.id()] {
			del = append(del, e)
		}
	}
	return add, del
}
