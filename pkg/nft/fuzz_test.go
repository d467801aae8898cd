package nft

import (
	"errors"
	"os"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
)

// fuzzBase is the config a fuzzed one is reloaded from.
const fuzzBase = goldenConfig

// FuzzCompile feeds arbitrary files through parse, id assignment, compile,
// the plan of a reload from another config, and rendering: no panic; a
// rejected file gives only *config.Problem errors, each with a position (a
// line, or the forward and field); an accepted one always compiles.
func FuzzCompile(f *testing.F) {
	for _, path := range []string{"../../deploy/fwdd.toml", "../../deploy/ha/fwdd.toml"} {
		if data, err := os.ReadFile(path); err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte(goldenConfig))
	f.Add([]byte(forwardsConfig("a", "b", "c")))
	base, err := config.Parse("base.toml", []byte(fuzzBase))
	if err != nil {
		f.Fatal(err)
	}
	baseIDs, err := AssignIDs(base)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse("fuzz.toml", data)
		if err != nil {
			var errs *config.Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error %T is not a non-empty *config.Errors: %v", err, err)
			}
			for _, e := range *errs {
				var p *config.Problem
				if !errors.As(e, &p) {
					t.Fatalf("error %T is not a *config.Problem: %v", e, e)
				}
				if p.Line <= 0 && p.Where == "" && p.Field == "" {
					t.Fatalf("problem without a position: %q", p)
				}
			}
			return
		}
		ids, err := AssignIDs(cfg)
		if err != nil {
			t.Fatalf("assign ids of a valid config: %v", err)
		}
		fresh, err := Compile(cfg, ids)
		if err != nil {
			t.Fatalf("compile a valid config: %v", err)
		}
		if fresh.NumElements() > 10_000 {
			// Wide port ranges: compiling is linear in the ports (tested at
			// scale elsewhere); rendering and comparing them would make
			// each run take seconds.
			return
		}
		prev, err := Compile(base, baseIDs)
		if err != nil {
			t.Fatal(err)
		}
		_ = Diff(prev, fresh).String()
		_ = fresh.String()
		n := 0
		for _, es := range fresh.elements() {
			n += len(es)
		}
		if n != fresh.NumElements() {
			t.Fatalf("NumElements %d, made %d", fresh.NumElements(), n)
		}
	})
}
