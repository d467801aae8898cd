package nft

// modelDiff is what changes between two models of the same table.
type modelDiff struct {
	addChains   []*Chain // new chains, with their rules
	delChains   []*Chain // chains to delete (after flushing referrers)
	flushChains []*Chain // chains in both whose rules change: flush, re-add
	sets        []setDiff
}

type setDiff struct {
	set      *Set
	add, del []Element
}

func chainText(c *Chain) string {
	var s string
	for _, r := range c.Rules {
		s += r.text() + "\n"
	}
	return s
}

// diff compares two models of the same table. Fixed parts (base chains,
// set declarations) are the same in every model fwdd compiles; rules are
// compared by their text, elements by key, data and comment.
func diff(old, m *Model) modelDiff {
	var d modelDiff
	for _, c := range m.Chains {
		oc := old.Chain(c.Name)
		switch {
		case oc == nil:
			d.addChains = append(d.addChains, c)
		case chainText(oc) != chainText(c):
			d.flushChains = append(d.flushChains, c)
		}
	}
	for _, oc := range old.Chains {
		if m.Chain(oc.Name) == nil {
			// Flush before delete: the chain's own anonymous sets go with
			// its rules.
			d.flushChains = append(d.flushChains, &Chain{Name: oc.Name})
			d.delChains = append(d.delChains, oc)
		}
	}
	// Elements: only forwards whose part changed are looked at.
	var add, del [numSets][]Element
	sameBase := m.base != 0 && m.base == old.serial
	for name, p := range m.parts {
		op := old.parts[name]
		if sameBase && p.same {
			continue
		}
		if op != nil && op.id == p.id && op.fwd.Equal(p.fwd) {
			continue
		}
		var cur, prev [numSets][]Element
		p.elements(&cur)
		if op != nil {
			op.elements(&prev)
		}
		for si := range cur {
			a, r := diffElems(prev[si], cur[si])
			add[si] = append(add[si], a...)
			del[si] = append(del[si], r...)
		}
	}
	for name, op := range old.parts {
		if m.parts[name] == nil {
			op.elements(&del)
		}
	}
	for si, s := range m.Sets {
		if len(add[si])+len(del[si]) > 0 {
			d.sets = append(d.sets, setDiff{set: s, add: add[si], del: del[si]})
		}
	}
	return d
}

// diffElems compares one forward's old and new elements of one set.
func diffElems(old, cur []Element) (add, del []Element) {
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
