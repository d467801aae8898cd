package main

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
)

func TestForwardAtDistinct(t *testing.T) {
	type dst struct {
		addr netip.Addr
		port uint16
	}
	seen := map[dst]int{}
	for i := range 100_000 {
		a, p := forwardAt(i)
		if j, ok := seen[dst{a, p}]; ok {
			t.Fatalf("forwards %d and %d both match %s:%d", j, i, a, p)
		}
		seen[dst{a, p}] = i
	}
	if a, p := forwardAt(changedForward(100_000)); a.String() != gatewayAddr || p == measuredPort {
		t.Errorf("changed forward of 100,000 is %s:%d, want another port of %s", a, p, gatewayAddr)
	}
}

// The generated configs must pass fwdd's own validation (no overlaps), in
// both forms the reload switches between.
func TestConfigsValid(t *testing.T) {
	sizes := []int{1, 1000}
	if !testing.Short() {
		sizes = append(sizes, 100_000)
	}
	for _, n := range sizes {
		for _, moved := range []bool{false, true} {
			cfg, err := config.Parse("gen.toml", fwddConfig(n, moved))
			if err != nil {
				t.Fatalf("n=%d moved=%v: %v", n, moved, err)
			}
			if len(cfg.Forwards) != n {
				t.Fatalf("n=%d: parsed %d forwards", n, len(cfg.Forwards))
			}
		}
	}
	if _, err := config.Parse("tput.toml", throughputConfig()); err != nil {
		t.Fatal(err)
	}
}

func TestLinearRulesetMeasuredLast(t *testing.T) {
	lines := strings.Split(string(linearRuleset(1000)), "\n")
	var rules []string
	for _, l := range lines {
		if strings.Contains(l, "dnat to") {
			rules = append(rules, strings.TrimSpace(l))
		}
	}
	if len(rules) != 1000 {
		t.Fatalf("%d rules, want 1000", len(rules))
	}
	if want := "ip daddr 10.11.0.1 tcp dport 7000 dnat to 10.22.0.2:5000"; rules[len(rules)-1] != want {
		t.Errorf("last rule %q, want %q", rules[len(rules)-1], want)
	}
}
