package conntrack

import (
	"net/netip"
	"sync"
	"time"
)

// tombstoneTTL is how long a destroyed conntrack ID is remembered so that its
// NEW event, delivered late by another listener worker, does not bring it
// back. Workers reorder events by microseconds; the kernel may reuse an ID
// only for a new entry at the same address with the same tuple, so a short
// window costs nothing in practice.
const tombstoneTTL = 2 * time.Second

type evKind uint8

const (
	evNew evKind = iota + 1
	evDestroy
)

// ctKey identifies a conntrack entry. The kernel's conntrack ID alone does
// not: it is a 32-bit hash, and among 20,000 live entries two shared an ID
// in one test run in about twenty (the birthday bound says ~5 %). The
// original tuple is unique among live entries of a zone; the ID is kept so
// that a new entry reusing a tuple is not mistaken for its predecessor.
type ctKey struct {
	id       uint32
	proto    uint8
	zone     uint16
	src, dst netip.AddrPort
}

// ev is the part of a conntrack event the state needs.
type ev struct {
	kind  evKind
	key   ctKey
	fwdID uint32 // the forward from its ct mark; 0 when not fwdd's
}

type fwdCount struct {
	live int
	new  uint64
}

// state is the live set: which conntrack entries exist per forward, keyed by
// conntrack ID so that a resync and the events around it converge on the
// truth instead of drifting like a bare counter.
type state struct {
	mu        sync.Mutex
	live      map[ctKey]uint32 // entry -> fwdID
	counts    map[uint32]*fwdCount
	tomb      map[ctKey]time.Time
	lastPurge time.Time
	now       func() time.Time

	resyncing bool
	pending   []ev
}

func newState() *state {
	return &state{
		live:   map[ctKey]uint32{},
		counts: map[uint32]*fwdCount{},
		tomb:   map[ctKey]time.Time{},
		now:    time.Now,
	}
}

func (s *state) count(fwdID uint32) *fwdCount {
	c := s.counts[fwdID]
	if c == nil {
		c = &fwdCount{}
		s.counts[fwdID] = c
	}
	return c
}

// event records one event. NEW events of fwdd's forwards count as new at
// once; the live set changes now, or after the resync under way.
func (s *state) event(e ev) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.kind == evNew && e.fwdID != 0 {
		s.count(e.fwdID).new++
	}
	if s.resyncing {
		s.pending = append(s.pending, e)
		return
	}
	s.applyLocked(e)
	s.purgeLocked()
}

func (s *state) applyLocked(e ev) {
	switch e.kind {
	case evNew:
		if e.fwdID == 0 {
			return
		}
		if _, dead := s.tomb[e.key]; dead {
			return
		}
		if _, ok := s.live[e.key]; ok {
			return
		}
		s.live[e.key] = e.fwdID
		s.count(e.fwdID).live++
	case evDestroy:
		fwd, ok := s.live[e.key]
		if ok {
			delete(s.live, e.key)
			s.count(fwd).live--
		}
		if ok || e.fwdID != 0 {
			s.tomb[e.key] = s.now()
		}
	}
}

func (s *state) purgeLocked() {
	now := s.now()
	if now.Sub(s.lastPurge) < time.Second {
		return
	}
	s.lastPurge = now
	for k, t := range s.tomb {
		if now.Sub(t) > tombstoneTTL {
			delete(s.tomb, k)
		}
	}
}

// beginResync holds back events until finishResync or abortResync. Call it
// before subscribing to events, so that none falls between the old state and
// the dump.
func (s *state) beginResync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resyncing = true
	s.pending = nil
}

// abortResync applies the held events to the state as it is.
func (s *state) abortResync() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.pending {
		s.applyLocked(e)
	}
	s.resyncing, s.pending = false, nil
}

// finishResync replaces the live set by dumped (entry -> fwdID of fwdd's
// entries), then applies the events that arrived meanwhile, in order: an
// entry created during the dump is added (once: it is a set), one destroyed
// during it is removed. Unless initial, entries in the dump that were
// neither live before nor announced by an event were created while events
// were lost, and count as new. It returns how many live entries changed
// owner or appeared/disappeared compared with before (the drift repaired).
func (s *state) finishResync(dumped map[ctKey]uint32, initial bool) (drift int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	announced := map[ctKey]bool{}
	for _, e := range s.pending {
		if e.kind == evNew {
			announced[e.key] = true
		}
	}
	for ct, fwd := range dumped {
		if old, ok := s.live[ct]; !ok || old != fwd {
			drift++
			if !initial && !ok && !announced[ct] {
				s.count(fwd).new++
			}
		}
	}
	for ct := range s.live {
		if _, ok := dumped[ct]; !ok {
			drift++
		}
	}
	s.live = dumped
	for _, c := range s.counts {
		c.live = 0
	}
	for _, fwd := range dumped {
		s.count(fwd).live++
	}
	for _, e := range s.pending {
		s.applyLocked(e)
	}
	s.resyncing, s.pending = false, nil
	return drift
}

// counts returns a copy of the per-forward counts.
func (s *state) snapshot() map[uint32]fwdCount {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[uint32]fwdCount, len(s.counts))
	for id, c := range s.counts {
		out[id] = *c
	}
	return out
}
