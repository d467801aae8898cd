package nft

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/internal/testutil"
)

var update = flag.Bool("update", false, "rewrite golden files")

const goldenConfig = `
[daemon]
table = "fwdd"

[[forward]]
name = "web"
port = 80
to = "192.168.1.50:8080"

[[forward]]
name = "dns"
proto = ["tcp", "udp"]
port = 53
address = "10.0.0.1"
to = "192.168.1.53"
snat = "192.168.1.1"

[[forward]]
name = "range"
port = "10000-10002"
to = "192.168.1.60:20000-20002"

[[forward]]
name = "lab"
port = "2200-2201"
to = "192.168.1.70:22"
interface = "eth1"
sources = ["10.1.0.0/16", "10.2.0.1"]

[[forward]]
name = "v6"
port = 443
to = "[fd00::50]:8443"
snat = "none"
`

func compile(t *testing.T, text string, prev *Model) *Model {
	t.Helper()
	return compileCfg(t, testutil.Config(t, text), prev)
}

func TestCompileGolden(t *testing.T) {
	got := compile(t, goldenConfig, nil).String()
	path := filepath.Join("testdata", "golden.nft")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("compiled table differs from %s (-want +got); run go test -update if intended:\n%s", path, diff)
	}
}

func TestDiffOnlyChanges(t *testing.T) {
	old := compile(t, goldenConfig, nil)
	changed := strings.Replace(goldenConfig, `to = "192.168.1.50:8080"`, `to = "192.168.1.51:8080"`, 1)
	p := Diff(old, compile(t, changed, old))
	want := "delete element inet fwdd dnat4_port { tcp . 80 }\n" +
		"add element inet fwdd dnat4_port { tcp . 80 : 192.168.1.51 . 8080 }\n"
	if diff := cmp.Diff(want, p.String()); diff != "" {
		t.Errorf("plan (-want +got):\n%s", diff)
	}
	if d := cmp.Diff(Changes{Changed: []string{"web"}}, p.Changes); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
	if p.Full || p.Messages() != 4 || p.NumElements() != 2 {
		t.Errorf("full=%v messages=%d elements=%d, want a diff of 2 elements in 4 messages", p.Full, p.Messages(), p.NumElements())
	}
	// A restricted forward's change rewrites the dispatch chain only.
	changed = strings.Replace(goldenConfig, `interface = "eth1"`, `interface = "eth2"`, 1)
	p = Diff(old, compile(t, changed, old))
	var flushed []string
	for _, op := range p.Ops {
		if op.Kind == OpFlushChain {
			flushed = append(flushed, op.Chain.Name)
		}
	}
	if diff := cmp.Diff([]string{"dispatch"}, flushed); diff != "" {
		t.Errorf("flushed chains (-want +got):\n%s", diff)
	}
	// Nothing changed: nothing to send.
	if p := Diff(old, compile(t, goldenConfig, old)); !p.Empty() || !p.Changes.Empty() {
		t.Errorf("a diff of the same config: %v\n%s", p.Changes, p)
	}
}

// A diff that would send more elements than the whole table has (every
// forward removed and another added in its place) replaces the table:
// deleting the old elements beside adding the new could need a batch of
// twice what the config's element budget allows.
func TestDiffLargerThanTheTableReplaces(t *testing.T) {
	forwards := func(prefix, to string) string {
		var b strings.Builder
		for i := range 10 {
			fmt.Fprintf(&b, "[[forward]]\nname = \"%s%d\"\nport = %d\nto = \"%s\"\n", prefix, i, 1000+i, to)
		}
		return b.String()
	}
	old := compile(t, forwards("f", "10.0.0.2"), nil)
	if p := Diff(old, compile(t, forwards("f", "10.0.0.3"), old)); p.Full || p.NumElements() != 20 {
		t.Errorf("every backend changed: full=%v, %d elements; want a diff of the 20 dnat elements\n%s", p.Full, p.NumElements(), p)
	}
	p := Diff(old, compile(t, forwards("g", "10.0.0.2"), old))
	if !p.Full || len(p.Changes.Added) != 10 || len(p.Changes.Removed) != 10 {
		t.Errorf("every forward renamed: full=%v, changes %+v; want a full replace that says what changed\n%s", p.Full, p.Changes, p)
	}
}

func TestDiffChanges(t *testing.T) {
	a := compile(t, `
[[forward]]
name = "same"
port = 80
to = "10.0.0.1"
[[forward]]
name = "moved"
port = 81
to = "10.0.0.1"
[[forward]]
name = "gone"
port = 82
to = "10.0.0.1"
[[forward]]
name = "also-gone"
port = 84
to = "10.0.0.1"
`, nil)
	b := compile(t, `
[[forward]]
name = "same"
port = 80
to = "10.0.0.1"

[[forward]]
name = "moved"
port = 81
to = "10.0.0.2"
[[forward]]
name = "new"
port = 83
to = "10.0.0.1"
`, a)
	want := Changes{Added: []string{"new"}, Removed: []string{"gone", "also-gone"}, Changed: []string{"moved"}}
	if d := cmp.Diff(want, Diff(a, b).Changes); d != "" {
		t.Errorf("changes (-want +got):\n%s", d)
	}
}

func TestRangeMapsOneToOne(t *testing.T) {
	m := compile(t, goldenConfig, nil)
	got := map[string]string{}
	s := m.Set("dnat4_port")
	for _, e := range m.Elements("dnat4_port") {
		got[renderBytes(s.Key, e.Key)] = renderBytes(s.Data, e.Data)
	}
	for k, want := range map[string]string{
		"tcp . 10000": "192.168.1.60 . 20000",
		"tcp . 10001": "192.168.1.60 . 20001",
		"tcp . 10002": "192.168.1.60 . 20002",
		"tcp . 80":    "192.168.1.50 . 8080",
	} {
		if got[k] != want {
			t.Errorf("%s maps to %q, want %q", k, got[k], want)
		}
	}
}

// balancedConfig adds forwards over several backends, one balanced by
// source, to a test config.
const balancedConfig = `
[[forward]]
name = "bal"
port = "8000-8001"
to = ["10.0.2.10:8080", "10.0.2.11:8080", "10.0.2.12:8080"]

[[forward]]
name = "bal6"
proto = ["tcp", "udp"]
port = 9000
balance = "source"
to = ["[fd00::1]:80", "[fd00::2]:80"]
`

// TestElementCounts: part.count, which sizes the element slices of a
// full replace, counts exactly the elements part.elements makes, set by
// set, in the default and a partial ct mark layout, with balanced and
// source-balanced forwards.
func TestElementCounts(t *testing.T) {
	for name, text := range map[string]string{"default": goldenConfig + balancedConfig, "partial": partialConfig + balancedConfig} {
		m := compile(t, text, nil)
		var n [numSets]int
		for _, p := range m.order {
			p.count(m.Layout, &n)
		}
		all := m.elements()
		total := 0
		for i := range all {
			if len(all[i]) != n[i] {
				t.Errorf("%s: set %s: %d elements, counted %d", name, allSets[i].Name, len(all[i]), n[i])
			}
			total += len(all[i])
		}
		if total != m.NumElements() {
			t.Errorf("%s: %d elements, NumElements %d", name, total, m.NumElements())
		}
		if n[setIndex["balance6_source"]] == 0 || n[setIndex["balance4_random"]] == 0 {
			t.Errorf("%s: the balanced forwards have no balance elements", name)
		}
	}
}

// countedForwards has a forward of every shape config.Forward.Elements
// counts: ports mapped one by one, a range to one port, balanced over
// ports, with interface or sources (a 1:1 range there is an anonymous map),
// snat fixed and none, IPv4 and IPv6, one and two protocols.
const countedForwards = `
[[forward]]
name = "one"
port = 80
to = "10.0.2.1:8080"

[[forward]]
name = "to-one-port"
proto = ["tcp", "udp"]
port = "5000-5099"
address = "10.0.0.1"
to = "10.0.2.2:80"
snat = "10.0.2.254"

[[forward]]
name = "one-to-one"
port = "6000-6009"
address = "fd00::1"
to = "[fd00::2]:7000-7009"
snat = "none"

[[forward]]
name = "balanced"
proto = ["tcp", "udp"]
port = "8000-8004"
to = ["10.0.2.10:8080", "10.0.2.11:8080", "10.0.2.12:8080"]

[[forward]]
name = "lab"
proto = ["tcp", "udp"]
port = "2000-2049"
to = "10.0.2.20:3000-3049"
interface = "eth1"

[[forward]]
name = "lab6"
port = "2100-2109"
to = "[fd00::20]"
sources = ["fd11::/64"]
snat = "fd00::254"

[[forward]]
name = "sticky"
port = "444-445"
balance = "source"
interface = "eth1"
to = ["[fd00::60]:443", "[fd00::61]:443"]
`

// TestConfigElementsAreCompiled: config.Forward.Elements, which the
// config's element budget adds up, counts what Compile makes of each
// forward (named sets and anonymous maps), in the default layout and two
// partial ones; with a partial ct_mask it is the most, reached by an id
// with no chunk 0.
func TestConfigElementsAreCompiled(t *testing.T) {
	for _, daemon := range []string{
		"",
		"[daemon]\nct_mark = \"0x0d000000/0x0f000000\"\nct_mask = 0x0ffffff0\n",
		"[daemon]\nct_mark = \"0x80000000/0x80000000\"\nct_mask = 0xfffffffe\n", // 30 id bits: four chunks
	} {
		m := compile(t, daemon+countedForwards, nil)
		exactly := 0
		for _, p := range m.order {
			compiled := p.numElems(m.Layout)
			if p.chain != nil {
				var l lowering
				for i := range p.chain.Rules {
					for _, a := range ruleOp(&l, p.chain, &p.chain.Rules[i]).Anon {
						compiled += len(a.Elements)
					}
				}
			}
			counted := p.fwd.Elements(m.Layout)
			exact := m.Layout.Whole() || len(chunkTargets(m.Layout, m.Layout.ForID(p.id), "mark4_addr")) == m.Layout.MarkMaps()
			if counted != compiled && (exact || counted < compiled) {
				t.Errorf("%s: forward %s: config counts %d elements, compiled to %d", m.Layout, p.fwd.Name, counted, compiled)
			}
			if exact {
				exactly++
			}
		}
		if exactly < 4 {
			t.Errorf("%s: only %d forwards counted exactly", m.Layout, exactly)
		}
	}
}
