package tomlpos

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestScan(t *testing.T) {
	doc := Scan(`top = 1
a.b = 2
[daemon]
table = "x"   # [not] = "a header"
s = """
[[forward]]
fake = 1
"""
[daemon.sub]
[[forward]]
name = "one"
to = [
  "x",
  { port = 3 },
]
[forward.health]
check = "tcp"
[[ forward ]]
'name' = "two"
"to" = 'a'
[[forward.backend]]
to = "b"
[[forward.backend]]
weight = 2
[[forward.backend.x]]
`)
	line := func(tb *Table, key string) int { return tb.Key(key) }
	d := doc.Table("daemon")
	fwds := doc.Array("forward")
	if len(fwds) != 2 {
		t.Fatalf("forwards: %d, want 2", len(fwds))
	}
	bs := fwds[1].Array("backend")
	got := map[string]int{
		"top":             line(doc, "top"),
		"a":               line(doc, "a"),
		"daemon":          line(doc, "daemon"),
		"forward":         line(doc, "forward"),
		"daemon header":   d.Line,
		"daemon.table":    line(d, "table"),
		"daemon.s":        line(d, "s"),
		"daemon.sub":      line(d, "sub"),
		"daemon.fake":     line(d, "fake"),
		"fwd1 header":     fwds[0].Line,
		"fwd1.name":       line(fwds[0], "name"),
		"fwd1.port":       line(fwds[0], "port"),
		"fwd1.health":     line(fwds[0], "health"),
		"fwd1.check":      line(fwds[0], "check"),
		"fwd2.name":       line(fwds[1], "name"),
		"fwd2.to":         line(fwds[1], "to"),
		"fwd2.backend":    line(fwds[1], "backend"),
		"backend1.to":     line(bs[0], "to"),
		"backend2.weight": line(bs[1], "weight"),
		"backend2.to":     line(bs[1], "to"),
		"backends":        len(bs),
		"missing table":   doc.Table("sysctl").Key("x"),
	}
	want := map[string]int{
		"top": 1, "a": 2, "daemon": 3, "forward": 10,
		"daemon header": 3, "daemon.table": 4, "daemon.s": 5, "daemon.sub": 9,
		"daemon.fake": 3,                                    // inside a multi-line string: not a key
		"fwd1 header": 10, "fwd1.name": 11, "fwd1.port": 10, // inside the array
		"fwd1.health": 16, "fwd1.check": 10, // a key of [forward.health]
		"fwd2.name": 19, "fwd2.to": 20, "fwd2.backend": 21,
		"backend1.to": 22, "backend2.weight": 24, "backend2.to": 23,
		"backends": 2, "missing table": 0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	if l := fwds[0].Table("health").Key("check"); l != 17 {
		t.Errorf("health.check on line %d, want 17", l)
	}
}

func TestCut(t *testing.T) {
	text := "[daemon]\n" +
		"[[forward]]\nname = \"a\"\n" +
		"  [[ forward ]]\nname = \"b\"\n" +
		"[[\"forward\"]]\n[[forward.backend]]\n" +
		"[[forwarder]]\n" +
		"[[forward]]"
	pre, blocks := Cut(text, "forward")
	if pre != "[daemon]\n" {
		t.Errorf("pre = %q", pre)
	}
	var got [][2]any
	for _, b := range blocks {
		got = append(got, [2]any{b.Line, b.Text})
	}
	want := [][2]any{
		{2, "[[forward]]\nname = \"a\"\n"},
		{4, "  [[ forward ]]\nname = \"b\"\n"},
		{6, "[[\"forward\"]]\n[[forward.backend]]\n[[forwarder]]\n"},
		{9, "[[forward]]"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("blocks (-want +got):\n%s", diff)
	}
	if pre, blocks := Cut("a = 1\n", "forward"); pre != "a = 1\n" || blocks != nil {
		t.Errorf("no header: pre %q, blocks %v", pre, blocks)
	}
}
