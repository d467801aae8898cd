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
	for _, s := range m.Sets {
		sd := setDiff{set: s}
		os := old.Set(s.Name)
		oldIDs := map[string]bool{}
		if os != nil {
			for _, e := range os.Elems {
				oldIDs[e.id()] = true
			}
		}
		newIDs := make(map[string]bool, len(s.Elems))
		for _, e := range s.Elems {
			id := e.id()
			newIDs[id] = true
			if !oldIDs[id] {
				sd.add = append(sd.add, e)
			}
		}
		if os != nil {
			for _, e := range os.Elems {
				if !newIDs[e.id()] {
					sd.del = append(sd.del, e)
				}
			}
		}
		if len(sd.add)+len(sd.del) > 0 {
			d.sets = append(d.sets, sd)
		}
	}
	return d
}
