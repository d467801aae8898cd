package nft

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// TestWithUpDiff: a backend going down and coming back is one small batch
// of the balance elements of its forward alone.
func TestWithUpDiff(t *testing.T) {
	m := compile(t, `
[[forward]]
name = "web"
port = 80
to = ["10.0.2.10:8080", "10.0.2.11:8080", "10.0.2.12:8080"]

[[forward]]
name = "api"
port = 443
to = ["10.0.2.20:443", "10.0.2.21:443"]

[[forward]]
name = "one"
port = 22
to = "10.0.2.30"
`, nil)
	web := binary.BigEndian.AppendUint32(nil, m.IDs["web"]|0xfd000000)
	check := func(step string, p *Plan, add, del int) {
		t.Helper()
		if p.Full {
			t.Fatalf("%s: a full replace:\n%s", step, p)
		}
		adds, dels := 0, 0
		for _, op := range p.Ops {
			switch {
			case op.Kind == OpAddElements && op.Set.Name == "balance4_random":
				adds += len(op.Elements)
			case op.Kind == OpDeleteElements && op.Set.Name == "balance4_random":
				dels += len(op.Elements)
			default:
				t.Errorf("%s: operation %v on %v, want only balance4_random elements:\n%s", step, op.Kind, op.Set, p)
			}
			for _, e := range op.Elements {
				if !bytes.HasPrefix(e.Key, web) {
					t.Errorf("%s: element %x is not web's", step, e.Key)
				}
			}
		}
		if adds != add || dels != del {
			t.Errorf("%s: %d elements added, %d deleted; want %d and %d:\n%s", step, adds, dels, add, del, p)
		}
	}
	down := m.WithUp("web", []bool{true, false, true})
	check("10.0.2.11 down", Diff(m, down), 2, 3)
	check("10.0.2.11 back", Diff(down, m), 3, 2)
	if p := Diff(m, m.WithUp("web", []bool{true, true, true})); !p.Empty() {
		t.Errorf("all up again: %s", p)
	}
}
