package config

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// overlapsBrute is the definition of an overlap, pair by pair.
func overlapsBrute(f, g *Forward) bool {
	if f.IPv6() != g.IPv6() {
		return false
	}
	if !slices.ContainsFunc(f.Protos, func(p Proto) bool { return slices.Contains(g.Protos, p) }) {
		return false
	}
	if f.Port.Hi < g.Port.Lo || g.Port.Hi < f.Port.Lo {
		return false
	}
	if !f.Local() && !g.Local() && f.Address != g.Address {
		return false
	}
	if f.Interface != "" && g.Interface != "" && f.Interface != g.Interface {
		return false
	}
	if len(f.Sources) == 0 || len(g.Sources) == 0 {
		return true
	}
	for _, a := range f.Sources {
		for _, b := range g.Sources {
			if a.Overlaps(b) {
				return true
			}
		}
	}
	return false
}

func overlapProblems(fwds []Forward) []*Problem {
	ps := &problems{path: "fwdd.toml"}
	valid := make([]bool, len(fwds))
	for i := range valid {
		valid[i] = true
	}
	checkOverlaps(ps, fwds, valid)
	return ps.list
}

// The sweep must agree with the definition: every reported pair overlaps,
// and something is reported whenever any pair overlaps.
func TestOverlapsMatchBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	for round := range 2000 {
		n := 2 + rng.IntN(6)
		fwds := make([]Forward, n)
		for i := range fwds {
			f := &fwds[i]
			f.Name = fmt.Sprintf("f%d", i)
			f.Line = i + 1
			f.Protos = [][]Proto{{TCP}, {UDP}, {TCP, UDP}}[rng.IntN(3)]
			lo := uint16(1 + rng.IntN(10))
			f.Port = PortRange{lo, lo + uint16(rng.IntN(3))}
			v6 := rng.IntN(4) == 0
			if v6 {
				f.To = netip.MustParseAddr("2001:db8::1")
				if a := pick("", "2001:db8::a", "2001:db8::b"); a != "" {
					f.Address = netip.MustParseAddr(a)
				}
			} else {
				f.To = netip.MustParseAddr("10.9.9.9")
				if a := pick("", "", "10.0.0.1", "10.0.0.2"); a != "" {
					f.Address = netip.MustParseAddr(a)
				}
				switch rng.IntN(4) {
				case 1:
					f.Sources = []netip.Prefix{netip.MustParsePrefix(pick("10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16"))}
				case 2:
					f.Sources = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/16"), netip.MustParsePrefix(pick("172.16.0.0/12", "192.168.1.0/24"))}
				}
			}
			f.Interface = pick("", "", "eth0", "eth1")
		}
		var want bool
		for i := range fwds {
			for j := i + 1; j < len(fwds); j++ {
				want = want || overlapsBrute(&fwds[i], &fwds[j])
			}
		}
		got := overlapProblems(fwds)
		if want != (len(got) > 0) {
			t.Fatalf("round %d: brute force overlap %v, sweep reported %d: %v\n%+v", round, want, len(got), got, fwds)
		}
		for _, p := range got {
			var a, b int
			if _, err := fmt.Sscanf(strings.TrimPrefix(p.Where, "forward "), "%q", new(string)); err != nil {
				t.Fatal(err)
			}
			fmt.Sscanf(p.Where, "forward \"f%d\"", &b)
			fmt.Sscanf(p.Msg, "overlaps forward \"f%d\"", &a)
			if a >= b || !overlapsBrute(&fwds[a], &fwds[b]) {
				t.Fatalf("round %d: reported %q, which is wrong\n%+v", round, p, fwds)
			}
		}
	}
}

func addrN(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

// 100,000 forwards must not take quadratic time.
func TestOverlaps100k(t *testing.T) {
	const n = 100_000
	cases := map[string]func(i int, f *Forward){
		// The worst realistic case: one port, many addresses.
		"port 80 on distinct addresses": func(i int, f *Forward) {
			f.Port = PortRange{80, 80}
			f.Address = addrN(i)
		},
		"distinct ports and protos": func(i int, f *Forward) {
			p := uint16(1 + i/2)
			f.Port = PortRange{p, p}
			f.Protos = []Proto{[]Proto{TCP, UDP}[i%2]}
		},
		"mixed ranges and addresses": func(i int, f *Forward) {
			p := uint16(1 + (i%600)*100)
			f.Port = PortRange{p, p + 99}
			f.Address = addrN(i)
		},
	}
	for name, set := range cases {
		t.Run(name, func(t *testing.T) {
			fwds := make([]Forward, n)
			for i := range fwds {
				fwds[i] = Forward{Name: fmt.Sprintf("f%d", i), Line: i + 1, Protos: []Proto{TCP}, To: netip.MustParseAddr("192.168.0.1")}
				set(i, &fwds[i])
			}
			start := time.Now()
			if got := overlapProblems(fwds); len(got) > 0 {
				t.Fatalf("%d overlaps, first: %v", len(got), got[0])
			}
			t.Logf("%d forwards checked in %v", n, time.Since(start))
		})
	}
	t.Run("all identical", func(t *testing.T) {
		fwds := make([]Forward, n)
		for i := range fwds {
			fwds[i] = Forward{Name: fmt.Sprintf("f%d", i), Line: i + 1, Protos: []Proto{TCP, UDP}, Port: PortRange{80, 80}, To: netip.MustParseAddr("192.168.0.1")}
		}
		// One message per forward after the first, not one per pair.
		if got := overlapProblems(fwds); len(got) != n-1 {
			t.Errorf("got %d problems, want %d", len(got), n-1)
		}
	})
}

func generateConfig(n int) []byte {
	var b strings.Builder
	b.WriteString("[daemon]\ntable = \"fwdd\"\n\n")
	for i := range n {
		a := addrN(i)
		fmt.Fprintf(&b, "[[forward]]\nname = \"f%d\"\nproto = %s\nport = %d\naddress = \"%s\"\nto = \"192.168.%d.%d:8080\"\nsources = [\"172.16.0.0/12\"]\n\n",
			i, []string{`"tcp"`, `["tcp", "udp"]`}[i%2], 80+i%3, a, i%250, 1+i%250)
	}
	return []byte(b.String())
}

func BenchmarkParse10000(b *testing.B) {
	data := generateConfig(10_000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("fwdd.toml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidate10000 is the part of a reload fwdd controls: everything
// after TOML decoding.
func BenchmarkValidate10000(b *testing.B) {
	c, err := Parse("fwdd.toml", generateConfig(10_000))
	if err != nil {
		b.Fatal(err)
	}
	valid := make([]bool, len(c.Forwards))
	for i := range valid {
		valid[i] = true
	}
	lines := make([]int, len(c.Forwards))
	for b.Loop() {
		ps := &problems{path: "fwdd.toml"}
		checkNames(ps, c.Forwards, lines)
		checkOverlaps(ps, c.Forwards, valid)
		checkBudget(ps, c.Forwards, valid, c.Daemon.CtMark)
	}
}

// TestParseLarge parses a 30,000-forward file the way the daemon does, with a
// Parser; TestOverlaps100k covers fwdd's own checks at 100,000.
func TestParseLarge(t *testing.T) {
	const n = 30_000
	data := generateConfig(n)
	start := time.Now()
	var p Parser
	c, err := p.Parse("fwdd.toml", data)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Forwards) != n || c.Forwards[n-1].Line != 4+8*(n-1) {
		t.Fatalf("got %d forwards, the last on line %d", len(c.Forwards), c.Forwards[len(c.Forwards)-1].Line)
	}
	t.Logf("parsed %d bytes in %v", len(data), time.Since(start))
}
