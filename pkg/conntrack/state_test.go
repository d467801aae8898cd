package conntrack

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func k(id uint32) ctKey { return ctKey{id: id} }

func liveOf(s *state) map[uint32]int {
	out := map[uint32]int{}
	for id, c := range s.snapshot() {
		if c.live != 0 {
			out[id] = c.live
		}
	}
	return out
}

func TestStateEvents(t *testing.T) {
	s := newState()
	s.event(ev{kind: evNew, key: k(1), fwdID: 7})
	s.event(ev{kind: evNew, key: k(2), fwdID: 7})
	s.event(ev{kind: evNew, key: k(3), fwdID: 8})
	s.event(ev{kind: evNew, key: k(4)})           // not fwdd's
	s.event(ev{kind: evNew, key: k(1), fwdID: 7}) // duplicate: a set, no double count of live
	s.event(ev{kind: evDestroy, key: k(2), fwdID: 7})
	s.event(ev{kind: evDestroy, key: k(99), fwdID: 7}) // unknown: no negative count
	if diff := cmp.Diff(map[uint32]int{7: 1, 8: 1}, liveOf(s)); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
	if got := s.snapshot()[7].new; got != 3 {
		t.Errorf("new = %d, want 3 (NEW events received)", got)
	}
}

func TestStateReorderedDestroy(t *testing.T) {
	// Two listener workers may deliver an entry's DESTROY before its NEW.
	now := time.Unix(1000, 0)
	s := newState()
	s.now = func() time.Time { return now }
	s.event(ev{kind: evDestroy, key: k(5), fwdID: 1})
	s.event(ev{kind: evNew, key: k(5), fwdID: 1})
	if diff := cmp.Diff(map[uint32]int{}, liveOf(s)); diff != "" {
		t.Errorf("late NEW resurrected a destroyed entry (-want +got):\n%s", diff)
	}
	// Long after, the same ID is a new entry again.
	now = now.Add(10 * time.Second)
	s.event(ev{kind: evNew, key: k(6), fwdID: 1}) // triggers the purge
	s.event(ev{kind: evNew, key: k(5), fwdID: 1})
	if diff := cmp.Diff(map[uint32]int{1: 2}, liveOf(s)); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
}

func TestStateResync(t *testing.T) {
	s := newState()
	// Before the overflow: 1, 2 live for forward 1.
	s.event(ev{kind: evNew, key: k(1), fwdID: 1})
	s.event(ev{kind: evNew, key: k(2), fwdID: 1})
	// Events were lost: 2 died, 3 and 4 appeared unseen, 1 is still there.
	s.beginResync()
	// During the dump: 5 appears (also in the dump: dump and event race),
	// 6 appears after the dump passed, 4 dies after the dump saw it.
	s.event(ev{kind: evNew, key: k(5), fwdID: 2})
	s.event(ev{kind: evNew, key: k(6), fwdID: 2})
	s.event(ev{kind: evDestroy, key: k(4), fwdID: 1})
	if got := liveOf(s); got[2] != 0 {
		t.Errorf("events applied during resync: %v", got)
	}
	drift := s.finishResync(map[ctKey]uint32{k(1): 1, k(3): 1, k(4): 1, k(5): 2}, false)
	// truth: 1, 3 (fwd 1); 5, 6 (fwd 2)
	if diff := cmp.Diff(map[uint32]int{1: 2, 2: 2}, liveOf(s)); diff != "" {
		t.Errorf("live (-want +got):\n%s", diff)
	}
	// 1 and 2 (events) + 3 and 4 (found unannounced); 5 and 6 (events).
	snap := s.snapshot()
	if snap[1].new != 4 || snap[2].new != 2 {
		t.Errorf("new = %d, %d; want 4, 2", snap[1].new, snap[2].new)
	}
	if drift != 4 { // +3 +4 +5 -2
		t.Errorf("drift = %d, want 4", drift)
	}
}

func TestStateInitialResyncIsNotNew(t *testing.T) {
	s := newState()
	s.beginResync()
	s.finishResync(map[ctKey]uint32{k(1): 1, k(2): 1}, true)
	if c := s.snapshot()[1]; c.live != 2 || c.new != 0 {
		t.Errorf("after initial resync = %+v, want live 2, new 0", c)
	}
}

func TestStateSharedID(t *testing.T) {
	// Conntrack IDs are 32-bit hashes: two live entries can share one.
	a := ctKey{id: 42, proto: 17, src: netip.MustParseAddrPort("10.0.0.1:1000"), dst: netip.MustParseAddrPort("10.0.0.2:53")}
	b := a
	b.src = netip.MustParseAddrPort("10.0.0.1:1001")
	s := newState()
	s.event(ev{kind: evNew, key: a, fwdID: 1})
	s.event(ev{kind: evNew, key: b, fwdID: 1})
	if got := liveOf(s)[1]; got != 2 {
		t.Errorf("live = %d, want 2", got)
	}
	s.event(ev{kind: evDestroy, key: a, fwdID: 1})
	if got := liveOf(s)[1]; got != 1 {
		t.Errorf("live = %d after one destroy, want 1", got)
	}
}
