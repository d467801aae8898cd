package nft

import "testing"

func BenchmarkCompile10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(cfg, ids, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecompile10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	old, _ := Compile(cfg, ids, nil)
	cfg = manyForwards(b, 10_000) // configs are immutable: change a copy
	cfg.Forwards[5].Port.Lo, cfg.Forwards[5].Port.Hi = 81, 81
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Compile(cfg, ids, old); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDiff10000(b *testing.B) {
	cfg := manyForwards(b, 10_000)
	ids, _ := AssignIDs(cfg)
	old, _ := Compile(cfg, ids, nil)
	cfg = manyForwards(b, 10_000)
	cfg.Forwards[5].Port.Lo, cfg.Forwards[5].Port.Hi = 81, 81
	m, _ := Compile(cfg, ids, old)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d := diff(old, m); len(d.sets) == 0 {
			b.Fatal("no diff")
		}
	}
}
