package nft

import "testing"

func BenchmarkCompile10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(cfg, ids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecompile10000 compiles a config with one forward changed (a
// compile does not depend on the previous model).
func BenchmarkRecompile10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	cfg = manyForwards(b, 10_000) // configs are immutable: change a copy
	cfg.Forwards[5].Port.Lo, cfg.Forwards[5].Port.Hi = 81, 81
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(cfg, ids); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiff10000 plans the reload of one changed forward among 10,000.
func BenchmarkDiff10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	old, _ := Compile(cfg, ids)
	cfg = manyForwards(b, 10_000)
	cfg.Forwards[5].Port.Lo, cfg.Forwards[5].Port.Hi = 81, 81
	m, _ := Compile(cfg, ids)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p := Diff(old, m); p.Empty() {
			b.Fatal("no diff")
		}
	}
}

// BenchmarkReplace10000 builds the batch of a start with 10,000 forwards:
// every element and rule.
func BenchmarkReplace10000(b *testing.B) { benchmarkReplace(b, 10_000) }

// BenchmarkReplace100000 builds the batch of a start with 100,000 forwards
// (the bench's apply target): 500,000 elements.
func BenchmarkReplace100000(b *testing.B) { benchmarkReplace(b, 100_000) }

func benchmarkReplace(b *testing.B, n int) {
	cfg := manyForwards(b, n)
	ids, _ := AssignIDs(cfg)
	m, _ := Compile(cfg, ids)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if p := Replace(m); p.NumElements() == 0 {
			b.Fatal("no elements")
		}
	}
}
