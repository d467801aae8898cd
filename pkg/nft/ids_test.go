package nft

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/ctmark"
)

func forwardsConfig(names ...string) string {
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "[[forward]]\nname = %q\nport = %d\nto = \"192.168.1.50:8080\"\n\n", n, 1000+i)
	}
	return b.String()
}

// Two nodes whose reload histories differ end with the same file: they must
// agree on every forward's id, and so on every ct mark and on the table.
func TestAssignIDsSameFileSameIDs(t *testing.T) {
	final := forwardsConfig("web", "dns", "ssh", "mail")
	histories := [][]string{
		{final},
		{forwardsConfig("old", "web"), forwardsConfig("web", "dns", "old", "x"), final},
		{forwardsConfig("mail", "ssh"), forwardsConfig("z", "y", "mail"), forwardsConfig("mail", "ssh", "dns", "web")},
	}
	var want map[string]uint32
	var wantTable string
	for i, h := range histories {
		var m *Model
		for _, text := range h {
			m = compile(t, text, m) // each step compiled from the previous model, as a reload does
		}
		ids := m.IDs
		if i == 0 {
			want, wantTable = ids, compile(t, final, nil).String()
			continue
		}
		if diff := cmp.Diff(want, ids); diff != "" {
			t.Errorf("history %d: ids differ from a fresh start (-want +got):\n%s", i, diff)
		}
		// The last history lists the forwards in another order: the marks
		// in the table are the same, only element order may differ.
		if i == 1 && m.String() != wantTable {
			t.Errorf("history %d: table differs from a fresh start:\n%s\nwant:\n%s", i, m.String(), wantTable)
		}
	}
	seen := map[uint32]string{}
	for name, id := range want {
		if id == 0 || id > maxID {
			t.Errorf("%s: id %d out of 1..%d", name, id, maxID)
		}
		if other, dup := seen[id]; dup {
			t.Errorf("id %d given to %s and %s", id, name, other)
		}
		seen[id] = name
	}
}

// Collisions are resolved in sorted-name order, whatever the order of the
// file: the first name keeps the slot, the others take the next free ids,
// wrapping after MaxID.
func TestAssignIDsCollisions(t *testing.T) {
	slot := func(name string) uint32 {
		switch name[0] {
		case 'a', 'b', 'c':
			return 7
		case 'w':
			return maxID
		}
		return 8
	}
	want := map[string]uint32{"a": 7, "b": 8, "c": 9, "d": 10, "w1": maxID, "w2": 1}
	for _, order := range [][]string{
		{"a", "b", "c", "d", "w1", "w2"},
		{"w2", "d", "c", "w1", "b", "a"},
		{"c", "a", "w2", "b", "w1", "d"},
	} {
		got, err := assignIDs(order, maxID, slot)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("order %v (-want +got):\n%s", order, diff)
		}
	}
	if _, err := assignIDs([]string{"a", "a"}, maxID, slot); err == nil {
		t.Error("a name given twice was accepted")
	}
}

// Real hashes: 100,000 forwards get distinct ids in range, and adding or
// removing a forward moves no other forward's id unless they collide.
func TestAssignIDsStable(t *testing.T) {
	names := make([]string, 100_000)
	for i := range names {
		names[i] = fmt.Sprintf("fwd-%d", i)
	}
	slot := func(n string) uint32 { return nameSlot(n, maxID) }
	ids, err := assignIDs(names, maxID, slot)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint32]bool, len(ids))
	moved := 0
	for _, n := range names {
		id := ids[n]
		if id == 0 || id > maxID || seen[id] {
			t.Fatalf("%s: id %d out of range or taken twice", n, id)
		}
		seen[id] = true
		if id != slot(n) {
			moved++
		}
	}
	// Birthday bound: about n²/2m = 300 collisions expected in 2^24 ids.
	if moved > 1000 {
		t.Errorf("%d of %d forwards off their hash slot", moved, len(names))
	}
	fewer, err := assignIDs(names[1:], maxID, slot)
	if err != nil {
		t.Fatal(err)
	}
	changed := 0
	for _, n := range names[1:] {
		if fewer[n] != ids[n] {
			changed++
		}
	}
	if changed > 1 {
		t.Errorf("removing one forward moved %d others' ids", changed)
	}
	t.Logf("%d of %d forwards off their hash slot; removing one moved %d", moved, len(names), changed)
}

// maxID is the default layout's.
var maxID = ctmark.Default.MaxID()
