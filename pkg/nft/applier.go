package nft

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Backend runs plans against fwdd's table and reads the table back: the
// netlink implementation (Netlink) or an in-memory one for tests (Fake).
type Backend interface {
	// Run sends the plan as one batch: the kernel applies it whole or not
	// at all. An error wrapping ErrOutcomeUnknown means it may have.
	Run(p *Plan) error
	// Read reads the table back, nil when it does not exist; with elements
	// false it skips the set elements (cheap).
	Read(table string, elements bool) (*Table, error)
}

// Applier keeps fwdd's table equal to the latest model with one batch per
// change, and is the one place that records what is in force.
type Applier struct {
	Backend Backend
	// Observe, if set, sees every plan just before it is sent.
	Observe func(*Plan)
	// last is the model last applied successfully: what is in force. It is
	// read by other goroutines (metrics), hence atomic.
	last atomic.Pointer[Model]
	// unsure: the kernel may not hold last (a failed or unknown batch), so
	// the next plan replaces the whole table.
	unsure bool
}

// Last returns the model in force (last applied successfully), or nil. It
// is safe to call from any goroutine.
func (a *Applier) Last() *Model { return a.last.Load() }

// Plan returns the batch that Apply(m) would send now: only the
// differences from the model in force (Diff), or a full replace when
// nothing was applied yet, after a failure, or when the table was changed
// behind fwdd's back (checked by a cheap read of chains, rules and sets).
// A table whose chains, rules and sets are as fwdd left them but that was
// made dormant keeps the diff, which then begins by adding the table: that
// clears its flags. It only reads.
func (a *Applier) Plan(m *Model) (*Plan, error) {
	return planFrom(a.Backend, a.Last(), m, a.unsure)
}

// PlanFrom returns the batch that Applier.Plan sends when last (nil: none)
// is in force and the apply before went in: what fwdd diff shows a reload
// would send.
func PlanFrom(b Backend, last, m *Model) (*Plan, error) { return planFrom(b, last, m, false) }

func planFrom(b Backend, last, m *Model, unsure bool) (*Plan, error) {
	if last == nil {
		return Replace(m), nil
	}
	p := Diff(last, m)
	if p.Full {
		return p, nil
	}
	replace := unsure
	if !replace {
		t, err := b.Read(last.Table, false)
		if err != nil {
			return nil, fmt.Errorf("read table inet %s: %w", last.Table, err)
		}
		replace = t == nil || t.shapeDiffers(last) != ""
		if !replace {
			p.clearFlags(t) // a dormant table wakes up in the same batch
		}
	}
	if replace {
		r := Replace(m)
		r.Changes = p.Changes
		return r, nil
	}
	return p, nil
}

// Apply makes the kernel's table equal to m: Plan, then Run.
func (a *Applier) Apply(m *Model) (Stats, error) {
	start := time.Now()
	p, err := a.Plan(m)
	if err != nil {
		return Stats{Elapsed: time.Since(start)}, err
	}
	st, err := a.Run(p)
	st.Elapsed = time.Since(start)
	return st, err
}

// Run sends p and records p.Want as in force when it went in. If the
// outcome is unknown (ENOBUFS: FACTS.md) it reads the table back: if it
// holds p.Want the batch went in; otherwise it replaces the table whole.
func (a *Applier) Run(p *Plan) (Stats, error) {
	start := time.Now()
	st := Stats{Full: p.Full, Messages: p.Messages(), Elements: p.NumElements()}
	err := a.run(p)
	if errors.Is(err, ErrOutcomeUnknown) {
		st.Recovered = true
		err = a.recover(p.Want, &st)
	}
	st.Elapsed = time.Since(start)
	if err != nil {
		a.unsure = true
		return st, err
	}
	a.unsure = false
	a.last.Store(p.Want)
	return st, nil
}

func (a *Applier) run(p *Plan) error {
	if p.Empty() {
		return nil
	}
	if a.Observe != nil {
		a.Observe(p)
	}
	return a.Backend.Run(p)
}

func (a *Applier) recover(m *Model, st *Stats) error {
	t, err := a.Backend.Read(m.Table, true)
	if err != nil {
		return fmt.Errorf("read table inet %s back after an unknown outcome: %w", m.Table, err)
	}
	if t.Differs(m) == nil {
		return nil
	}
	r := Replace(m)
	st.Full = true
	st.Messages += r.Messages()
	if err := a.run(r); err != nil {
		return err
	}
	t, err = a.Backend.Read(m.Table, true)
	if err != nil {
		return fmt.Errorf("read table inet %s back: %w", m.Table, err)
	}
	return t.Differs(m)
}

// Repair makes the kernel's table equal to the model in force again, in one
// batch planned from the table read back: what is still right (with its
// counters) is kept and the rest fixed; a table deleted, or with other base
// chains or sets, is replaced. It is for self-healing after an edit behind
// fwdd's back.
func (a *Applier) Repair() (Stats, error) {
	m := a.Last()
	if m == nil {
		return Stats{}, errors.New("repair table: nothing applied yet")
	}
	t, err := a.Backend.Read(m.Table, true)
	if err != nil {
		return Stats{}, fmt.Errorf("read table inet %s: %w", m.Table, err)
	}
	return a.Run(Reconcile(t, m))
}

// Delete removes fwdd's table if it exists, in one batch.
func (a *Applier) Delete(table string) error {
	t, err := a.Backend.Read(table, false)
	if err != nil || t == nil {
		return err
	}
	a.unsure = true
	return a.run(&Plan{Table: table, Ops: []Op{{Kind: OpDeleteTable}}})
}
