package nft

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSlots(t *testing.T) {
	for _, tc := range []struct {
		name     string
		weights  []int
		up       []bool
		want     []SlotRange
		failOpen bool
	}{
		{"one", []int{1}, nil, []SlotRange{{0, 0, SlotSpace - 1}}, false},
		{"equal", []int{1, 1}, nil, []SlotRange{{0, 0, SlotSpace/2 - 1}, {1, SlotSpace / 2, SlotSpace - 1}}, false},
		{"3:1", []int{3, 1}, nil, []SlotRange{{0, 0, SlotSpace*3/4 - 1}, {1, SlotSpace * 3 / 4, SlotSpace - 1}}, false},
		{"one down", []int{1, 1, 1}, []bool{true, false, true},
			[]SlotRange{{0, 0, SlotSpace/2 - 1}, {2, SlotSpace / 2, SlotSpace - 1}}, false},
		{"all down: fail open", []int{1, 1}, []bool{false, false},
			[]SlotRange{{0, 0, SlotSpace/2 - 1}, {1, SlotSpace / 2, SlotSpace - 1}}, true},
		{"none", nil, nil, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, failOpen := Slots(tc.weights, tc.up)
			if d := cmp.Diff(tc.want, got); d != "" || failOpen != tc.failOpen {
				t.Errorf("Slots = %v (failOpen %v), want failOpen %v; diff (-want +got):\n%s", got, failOpen, tc.failOpen, d)
			}
		})
	}
}

// TestSlotsCover: whatever the weights, the ranges tile the whole space
// in order and each share is within 1/SlotSpace of its weight's.
func TestSlotsCover(t *testing.T) {
	weights := []int{100, 1, 37, 1, 99, 3, 50}
	total := 0
	for _, w := range weights {
		total += w
	}
	got, _ := Slots(weights, nil)
	if len(got) != len(weights) {
		t.Fatalf("%d ranges for %d backends", len(got), len(weights))
	}
	next := uint32(0)
	for i, r := range got {
		if r.Lo != next || r.Hi < r.Lo {
			t.Fatalf("range %d = %+v, want it to start at %d", i, r, next)
		}
		next = r.Hi + 1
		share := float64(r.Hi-r.Lo+1) / SlotSpace
		if want := float64(weights[r.Backend]) / float64(total); share-want > 1.0/SlotSpace || want-share > 1.0/SlotSpace {
			t.Errorf("backend %d: share %.7f, want %.7f", r.Backend, share, want)
		}
	}
	if next != SlotSpace {
		t.Errorf("ranges end at %d, want %d", next, SlotSpace)
	}
}
