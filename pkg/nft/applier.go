package nft

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
)

// Applier keeps fwdd's table equal to the latest model, with one
// transaction per change: the whole table at start, after a failure and
// when the table was changed behind fwdd's back; only the differences
// otherwise.
type Applier struct {
	Kernel *Kernel
	last   *Model // what the kernel holds, as far as fwdd knows; nil = unknown
}

// Last returns the model fwdd last applied successfully, or nil.
func (a *Applier) Last() *Model { return a.last }

// Forget makes the next Apply replace the whole table.
func (a *Applier) Forget() { a.last = nil }

// Apply makes the kernel's table equal to m. Stats.Elapsed covers the
// whole apply: the check of the kernel's table, the batch and any recovery.
func (a *Applier) Apply(m *Model) (st Stats, err error) {
	start := time.Now()
	defer func() { st.Elapsed = time.Since(start) }()
	full := a.last == nil || a.last.Table != m.Table || !sameHooks(a.last, m)
	if !full {
		if err := a.Kernel.Verify(a.last); err != nil {
			full = true
		}
	}
	if full {
		st, err = a.Kernel.Replace(m)
	} else {
		st, err = a.Kernel.Update(a.last, m)
	}
	if errors.Is(err, ErrOutcomeUnknown) {
		// The kernel may or may not have committed the batch (FACTS.md:
		// ENOBUFS after a successful commit). Read the table back: if it
		// holds m, the batch went in; otherwise replace it whole.
		a.last = nil
		st.Recovered = true
		if verr := a.Kernel.VerifyContent(m); verr == nil {
			err = nil
		} else {
			rst, rerr := a.Kernel.Replace(m)
			st.Full = true
			st.Messages += rst.Messages
			if rerr == nil {
				rerr = a.Kernel.VerifyContent(m)
			}
			err = rerr
		}
	}
	if err != nil {
		if !full {
			// A rejected update leaves the table as it was; a later apply
			// still starts from a full replace to be safe.
			a.last = nil
		}
		return st, err
	}
	a.last = m
	return st, nil
}

// Verify checks that the kernel's table still has the chains, rule counts
// and sets of m: a cheap check that nobody edited fwdd's table by hand.
func (k *Kernel) Verify(m *Model) error {
	c, err := k.readConn()
	if err != nil {
		return err
	}
	defer func() { _ = c.CloseLasting() }()
	t := &nftables.Table{Name: m.Table, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table.Name == m.Table {
			have[ch.Name] = ch
		}
	}
	if len(have) != len(m.Chains) {
		return fmt.Errorf("table inet %s has %d chains, want %d", m.Table, len(have), len(m.Chains))
	}
	for _, mc := range m.Chains {
		ch, ok := have[mc.Name]
		if !ok {
			return fmt.Errorf("chain %s is missing", mc.Name)
		}
		rules, err := c.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("list rules of chain %s: %w", mc.Name, err)
		}
		if len(rules) != len(mc.Rules) {
			return fmt.Errorf("chain %s has %d rules, want %d", mc.Name, len(rules), len(mc.Rules))
		}
	}
	sets, err := c.GetSets(t)
	if err != nil {
		return fmt.Errorf("list sets: %w", err)
	}
	named := 0
	for _, s := range sets {
		if s.Anonymous {
			continue
		}
		if m.Set(s.Name) == nil {
			return fmt.Errorf("unexpected set %s", s.Name)
		}
		named++
	}
	if named != len(m.Sets) {
		return fmt.Errorf("table inet %s has %d sets, want %d", m.Table, named, len(m.Sets))
	}
	return nil
}

// VerifyContent reads the whole table back and compares it with m: chains,
// rule counts, and every element of every set (key and data). Dumps are
// flow-controlled by the reader, so this works where a batch's acks did not.
func (k *Kernel) VerifyContent(m *Model) error {
	if err := k.Verify(m); err != nil {
		return err
	}
	c, err := k.readConn()
	if err != nil {
		return err
	}
	defer func() { _ = c.CloseLasting() }()
	t := &nftables.Table{Name: m.Table, Family: nftables.TableFamilyINet}
	all := m.elements()
	for i, s := range m.Sets {
		ks, err := kernelSet(t, s)
		if err != nil {
			return err
		}
		elems, err := c.GetSetElements(ks)
		if err != nil {
			return fmt.Errorf("read set %s: %w", s.Name, err)
		}
		want := make(map[string]bool, len(all[i]))
		for _, e := range kernelElems(s, all[i]) {
			want[string(e.Key)+"/"+string(e.Val)] = true
		}
		if len(elems) != len(want) {
			return fmt.Errorf("set %s has %d elements, want %d", s.Name, len(elems), len(want))
		}
		for _, e := range elems {
			if !want[string(e.Key)+"/"+string(e.Val)] {
				return fmt.Errorf("set %s has an element fwdd did not add", s.Name)
			}
		}
	}
	return nil
}

// sameHooks reports whether two models have the same base chains with the
// same policies: a diff only changes rules and elements, so anything else
// is applied by replacing the table.
func sameHooks(a, b *Model) bool {
	hooks := func(m *Model) string {
		var s string
		for _, c := range m.Chains {
			if c.Hook != nil {
				s += fmt.Sprintf("%s:%+v;", c.Name, *c.Hook)
			}
		}
		return s
	}
	return hooks(a) == hooks(b)
}
