package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// problemText is what a caller can see of an error: every problem's fields.
func problemText(err error) []string {
	if err == nil {
		return nil
	}
	errs, ok := err.(*Errors)
	if !ok {
		return []string{fmt.Sprintf("%T %v", err, err)}
	}
	var out []string
	for _, e := range *errs {
		p := e.(*Problem)
		out = append(out, fmt.Sprintf("%s|%d|%s|%s|%s", p.Path, p.Line, p.Where, p.Field, p.Msg))
	}
	return out
}

// parseWholeText decodes text whole, as the block path falls back to: the
// block path must give the same, error messages included.
func parseWholeText(path, text string) (*Config, error) {
	srcs := []source{{path: path, text: text}}
	ps := newProblems(srcs)
	if _, ok := checkLimits(ps, srcs, MaxFileSize, MaxForwards); !ok {
		return nil, ps.err()
	}
	return parseWhole(ps, srcs)
}

// diffParse compares a Parser's result with what the whole-file decode gives.
func diffParse(path, text string, got *Config, gotErr error) string {
	want, wantErr := parseWholeText(path, text)
	if d := cmp.Diff(problemText(wantErr), problemText(gotErr)); d != "" {
		return "errors (-whole +Parser):\n" + d
	}
	if gotErr != nil && wantErr.Error() != gotErr.Error() {
		return fmt.Sprintf("error text differs:\n%s\n---\n%s", wantErr, gotErr)
	}
	if d := cmp.Diff(want, got, cmpOpts); d != "" {
		return "config (-whole +Parser):\n" + d
	}
	return ""
}

// checkParser parses text with a fresh Parser (which is Parse) and with p,
// and checks both against the whole-file decode.
func checkParser(t *testing.T, label, text string, p *Parser) {
	t.Helper()
	for _, p := range []*Parser{{}, p} {
		c, err := p.Parse("fwdd.toml", []byte(text))
		if d := diffParse("fwdd.toml", text, c, err); d != "" {
			t.Fatalf("%s: Parser.Parse differs from the whole-file decode: %s\ninput:\n%s", label, d, text)
		}
	}
}

// shared reports whether forward i of a and b is the same cached value: they
// share the backing array of Protos.
func shared(a, b *Config, i, j int) bool {
	return &a.Forwards[i].Protos[0] == &b.Forwards[j].Protos[0]
}

// structureTests are files that exercise the fallback to the whole-file
// decode and the scanner's corner cases.
var structureTests = []string{
	// Not block-wise: another table after [[forward]], forward defined in
	// the preamble, sub-tables of a forward.
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[daemon]\ntable = \"x\"\n",
	"forward = [{name = \"a\", port = 1, to = \"10.0.0.1\"}]\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	"forward.x = 1\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[forward]\nname = \"a\"\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[forward.x]\ny = 1\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[[forward.x]]\ny = 1\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[[daemon]]\n",
	"[\"forward\"]\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	// Syntax errors in a block, in the preamble, across blocks.
	"[[forward]]\nname = \"a\"\nport = \nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[daemon\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\n",
	"[[forward]]\nname = \"a\"\nsources = [\n\"10.0.0.0/8\",\n[[forward]]\nname = \"b\"\n",
	"[[forward]]\nnote = \"\"\"\n[[forward]]\nname = \"b\"\n",
	"[[forward]]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"[[forward]] x = 1\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"\x00[[forward]]\nname = \"a\"\n",
	"\xef\xbb\xbf[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"\xef\xbb\xbfa=1\n[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	// Headers inside values: multi-line strings and arrays.
	"x = \"\"\"\n[[forward]]\n\"\"\"\n[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"x = '''\n[daemon]\n'''\n[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nnote = \"\"\"\n[[forward]]\nname = \"b\"\n\"\"\"\n[[forward]]\nname = \"c\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nsources = [\n[\"x\"],\n]\n[[forward]]\nname = \"c\"\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nnote = '''a\n[daemon]\n'''\n",
	// Keys the scanner and the decoder see differently.
	"[[forward]]\nName = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nPort = 1\nto = \"10.0.0.1\"\n",
	"[[forward]]\nName = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nName = {a = 1}\nport = 2\nto = \"10.0.0.1\"\n",
	"[[forward]]\n\"na\\u006de\" = \"a\"\nport = 1\nto = \"10.0.0.1\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nx.y = 1\n[[forward]]\nname = \"b\"\nport = 2\nto = \"10.0.0.1\"\nx = 1\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nname.x = 1\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nforward = 1\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\ndaemon.table = 1\n",
	// The scanner gives up on a key with an escaped quote, so it does not
	// see the value start; here it then misses a header TOML sees, or a key.
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n\"x\\\"y\" = '''\na = \"\"\"\n'''\n[daemon]\ntable = \"x\"\nb = \"\"\"\"\"\"\n",
	"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n\"x\\\"y\" = [\n\"[[forward]]\",\n]\n",
	"\"x\\\"y\" = '''\na = \"\"\"\n'''\n[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\nb = \"\"\"\"\"\"\n",
	// TestParseScannerLines' file.
	"x = 1 # pretend [[forward]]\n[[forward]]\nname = \"a\" # [[forward]]\nsources = [\n  \"10.0.0.0/8\", # name = \"b\"\n  '192.168.0.0/16',\n]\nport = 1\nto = \"\"\"10.0.0.1\"\"\"\nnote = \"\"\"\nbogus = 1\n[[forward]]\n\"\"\"\n[[forward]]\n'name' = 'b'\nport = 2\nto = \"10.0.0.2:x\"\n",
	// Block-wise, with problems in several forwards.
	"[[ forward ]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n  [[\"forward\"]] # b\n'name' = 'b'\nport = 1\nto = \"10.0.0.1\"\n",
	"[[forward]]\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nname = 7\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nport = 1\nbogus = 1\n",
	"[[forward]]\r\nname = \"a\"\r\nport = 1\r\nto = \"10.0.0.1\"\r\n[[forward]]\r\nname = \"a\"\r\nport = 2\r\nto = \"10.0.0.1\"",
}

// TestParserMatchesParse checks a Parser against Parse on every file the
// other tests use and more, each file going through one Parser in turn.
func TestParserMatchesParse(t *testing.T) {
	var inputs []string
	for _, tt := range parseGoodTests() {
		inputs = append(inputs, tt.in)
	}
	for _, tt := range parseBadTests() {
		inputs = append(inputs, tt.in)
	}
	inputs = append(inputs, structureTests...)
	example, err := os.ReadFile("../../deploy/fwdd.toml")
	if err != nil {
		t.Fatal(err)
	}
	inputs = append(inputs, string(example), string(generateConfig(300)))
	var p Parser
	for i, in := range inputs {
		checkParser(t, fmt.Sprintf("input %d", i), in, &p)
	}
}

// carry one mistake.
func randomForward(rng *rand.Rand, i int, inject bool) string {
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	chance := func(n int) bool { return rng.IntN(n) == 0 }
	v6 := chance(5)
	addr := func(host int) string {
		if v6 {
			return fmt.Sprintf("2001:db8:%x:%x::1", host>>16, host&0xffff)
		}
		return fmt.Sprintf("10.%d.%d.%d", host>>16&255, host>>8&255, host&255)
	}
	to := addr(i + 1)
	if v6 && chance(2) {
		to = "[" + to + "]:" + pick("80", "8080-8081")
	} else if !v6 && chance(2) {
		to += ":" + pick("80", "443")
	}
	port := fmt.Sprint(1000 + 2*i)
	if !strings.Contains(to, "-") && chance(3) {
		port = fmt.Sprintf("\"%d-%d\"", 1000+2*i, 1001+2*i)
	} else if strings.Contains(to, "-") {
		port = fmt.Sprintf("\"%d-%d\"", 1000+2*i, 1001+2*i)
	}
	lines := []string{
		pick(`name = "f%d"`, `'name' = 'f%d'`, `"name"="f%d"`, `name = "f%d" # the name`),
		"port = " + port,
		`to = "` + to + `"`,
	}
	lines[0] = fmt.Sprintf(lines[0], i)
	if chance(2) {
		lines = append(lines, pick(`proto = "tcp"`, `proto = "udp"`, `proto = ["udp", "tcp"]`, "proto = [\n  \"tcp\",\n  \"udp\", # both\n]"))
	}
	if chance(4) {
		lines = append(lines, `address = "`+addr(1<<20+i)+`"`)
	}
	if chance(4) {
		src := "10.0.0.0/8"
		if v6 {
			src = "fd00::/8"
		}
		lines = append(lines, pick(`sources = ["`+src+`"]`, "sources = [\n  # office\n  '"+src+"',\n]"))
	}
	if chance(5) {
		lines = append(lines, pick(`snat = "none"`, `snat = "masquerade"`, `snat = "`+addr(99)+`"`))
	}
	if chance(5) {
		lines = append(lines, pick(`log = true`, `interface = "eth0"`, `interface = 'wan'`))
	}
	if chance(6) {
		lines = append(lines, pick("# a comment", "", "  # [[forward]] in a comment"))
	}
	if inject && chance(6) {
		switch rng.IntN(16) {
		case 0:
			lines[1] = pick("port = 0", "port = 70000", `port = "9-1"`, "port = 1.5")
		case 1:
			lines = append(lines, pick(`prot = "tcp"`, "x.y = 1", "note = \"\"\"\n[[forward]]\nname = \"zz\"\n\"\"\"", `bogus = {a = 1}`))
		case 2:
			lines[0] = `name = "f0"`
		case 3:
			lines[1] = "port = 1000"
		case 4:
			lines = append(lines, pick("port = ", `name = "x`, "to = [", "[[forward]] x", "= 1", "port = 2"))
		case 5:
			lines[0] = pick("", "name = 5", `name = ""`, `name = "Bad"`)
		case 6:
			// BurntSushi matches keys to fields case-insensitively. (Both
			// port and Port in one table decode in map order, differently
			// from run to run, so that is not generated.)
			lines[1] = strings.Replace(lines[1], "port", "Port", 1)
		case 7:
			lines[2] = pick("to = 5", `to = "host:80"`, `to = ""`)
		case 8:
			lines[0] = "name = {a = 1}"
		case 9:
			lines = append(lines, `sources = ["10.0.0.0/8", "10.1.0.0/16"]`)
		case 10:
			lines = append(lines, "sub.x = 1", "sub.y = 2")
		case 11:
			lines = append(lines, "note = '''\n[daemon]\n'''")
		case 12:
			lines = append(lines, `"quoted key" = 1`)
		}
	}
	rng.Shuffle(len(lines), func(a, b int) { lines[a], lines[b] = lines[b], lines[a] })
	header := pick("[[forward]]", "[[forward]]", "[[forward]]", "[[ forward ]]", `[["forward"]]`, "  [[forward]] # next")
	s := header + "\n" + strings.Join(lines, "\n") + "\n"
	if chance(3) {
		s += "\n"
	}
	return s
}

// randomPreamble writes the sections before the forwards.
func randomPreamble(rng *rand.Rand, inject bool) string {
	var b strings.Builder
	if rng.IntN(2) == 0 {
		b.WriteString("# fwdd\n\n")
	}
	if rng.IntN(2) == 0 {
		b.WriteString("[daemon]\ntable = \"fwdd\"\n")
		if inject && rng.IntN(4) == 0 {
			b.WriteString("log_level = \"loud\"\n")
		}
	}
	if rng.IntN(3) == 0 {
		b.WriteString("[sysctl]\nip_forward = true\n\n")
	}
	if rng.IntN(3) == 0 {
		b.WriteString("[conntrack]\nwarn_percent = 70\n")
	}
	if inject && rng.IntN(8) == 0 {
		b.WriteString([]string{"x = \"\"\"\n[[forward]]\n\"\"\"\n", "bogus = 1\n", "forward.x = 1\n", "[forward]\n", "[daemon\n"}[rng.IntN(5)])
	}
	return b.String()
}

// randomFile is a preamble and blocks; its text is their concatenation.
type randomFile struct {
	pre    string
	blocks []string
}

func (f *randomFile) text() string { return f.pre + strings.Join(f.blocks, "") }

func newRandomFile(rng *rand.Rand, n int, inject bool) *randomFile {
	f := &randomFile{pre: randomPreamble(rng, inject)}
	for i := range n {
		f.blocks = append(f.blocks, randomForward(rng, i, inject))
	}
	if inject && rng.IntN(10) == 0 {
		f.blocks = append(f.blocks, []string{"[daemon]\nlog_level = \"debug\"\n", "[forward.x]\n", "[[forward.x]]\n"}[rng.IntN(3)])
	}
	return f
}

func randomConfig(rng *rand.Rand, n int, inject bool) string {
	return newRandomFile(rng, n, inject).text()
}

// TestParserRandom compares a Parser with Parse on random files, with and
// without mistakes.
func TestParserRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	rounds := 200
	if testing.Short() {
		rounds = 50
	}
	failed := 0
	var p Parser
	for round := range rounds {
		in := randomConfig(rng, 1+rng.IntN(40), round%4 != 0)
		checkParser(t, fmt.Sprintf("round %d", round), in, &p)
		if _, err := Parse("fwdd.toml", []byte(in)); err != nil {
			failed++
		}
	}
	if failed < rounds/4 || failed > rounds*3/4 {
		t.Errorf("poor coverage: %d invalid of %d", failed, rounds)
	}
}

// edit changes f in one of the ways a file is edited between reloads and
// says how.
func (f *randomFile) edit(rng *rand.Rand, serial int, inject bool) string {
	n := len(f.blocks)
	k := rng.IntN(max(n, 1))
	switch op := rng.IntN(9); {
	case op == 0 && n > 0:
		f.blocks[k] = strings.Replace(f.blocks[k], "port = ", "port = 1", 1)
		return "change a port"
	case op == 1:
		f.blocks = slices.Insert(f.blocks, rng.IntN(n+1), randomForward(rng, 5000+serial, inject))
		return "add a forward"
	case op == 2 && n > 0:
		f.blocks = slices.Delete(f.blocks, k, k+1)
		return "remove a forward"
	case op == 3 && n > 1:
		b := f.blocks[k]
		f.blocks = slices.Delete(f.blocks, k, k+1)
		f.blocks = slices.Insert(f.blocks, rng.IntN(n), b)
		return "move a forward"
	case op == 4:
		f.pre = "# moved down\n\n" + f.pre
		return "insert lines above"
	case op == 5 && n > 0:
		f.blocks[k] += "\n# more\n"
		return "lines at the end of a block"
	case op == 6 && n > 0:
		f.blocks[k] = randomForward(rng, k, inject)
		return "rewrite a forward"
	case op == 7:
		f.pre = randomPreamble(rng, inject)
		return "rewrite the preamble"
	case op == 8 && n > 0:
		// Whole file unchanged, or a change within one line of a header.
		f.blocks[k] = strings.Replace(f.blocks[k], "[[forward]]", []string{"[[forward]]", "[[forwardx]]", "[[forward]] ", "[daemon]"}[rng.IntN(4)], 1)
		return "touch a header"
	}
	return "nothing"
}

// TestParserIncremental edits files the way reloads see them and checks
// every result of a long-lived Parser against Parse.
func TestParserIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	files, steps := 20, 40
	if testing.Short() {
		files = 5
	}
	for fi := range files {
		inject := fi%2 == 1
		f := newRandomFile(rng, 1+rng.IntN(30), inject)
		var p Parser
		what := "first parse"
		for step := range steps {
			checkParser(t, fmt.Sprintf("file %d step %d (%s)", fi, step, what), f.text(), &p)
			what = f.edit(rng, fi*steps+step, inject && rng.IntN(3) == 0)
		}
	}
}

// TestParserReload is the reload of a daemon: one forward changes, is
// added, removed or moved, and only what changed is decoded again: the
// forwards of unchanged blocks are the cached values of the previous parse.
func TestParserReload(t *testing.T) {
	const n = 200
	base := &randomFile{pre: "[daemon]\ntable = \"fwdd\"\n\n"}
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range n {
		base.blocks = append(base.blocks, randomForward(rng, i, false))
	}
	clone := func() *randomFile { return &randomFile{pre: base.pre, blocks: slices.Clone(base.blocks)} }
	changed := clone()
	changed.blocks[100] = strings.NewReplacer("1200", "40000", "1201", "40001").Replace(changed.blocks[100])
	added := clone()
	added.blocks = slices.Insert(added.blocks, 50, randomForward(rng, 9999, false))
	removed := clone()
	removed.blocks = slices.Delete(removed.blocks, 150, 151)
	moved := clone()
	moved.blocks = append(slices.Delete(moved.blocks, 0, 1), base.blocks[0])
	shifted := clone()
	shifted.pre += "# a comment\n\n\n"
	dup := clone()
	dup.blocks[7] = dup.blocks[8]

	var p Parser
	prev, err := p.Parse("fwdd.toml", []byte(base.text()))
	if err != nil {
		t.Fatal(err)
	}
	prevFile := base
	for _, tt := range []struct {
		name    string
		f       *randomFile
		decoded int
	}{
		{"one changed", changed, 1},
		{"back", base, 1},
		{"one added", added, 1},
		{"back", base, 0},
		{"one removed", removed, 0},
		{"back", base, 1},
		{"first moved to the end", moved, 0},
		{"back", base, 0},
		{"lines inserted above", shifted, 0},
		{"back", base, 0},
		{"duplicate forward", dup, -1},
		{"back", base, 0},
	} {
		text := tt.f.text()
		c, err := p.Parse("fwdd.toml", []byte(text))
		checkParser(t, tt.name, text, &p)
		if tt.decoded < 0 {
			if err == nil {
				t.Fatalf("%s: no error", tt.name)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		old := prev.ForwardsByName()
		decoded := 0
		for i := range c.Forwards {
			f := &c.Forwards[i]
			reused := old[f.Name] != nil && &old[f.Name].Protos[0] == &f.Protos[0]
			if !reused {
				decoded++
			}
			if wantReused := slices.Contains(prevFile.blocks, tt.f.blocks[i]); reused != wantReused {
				t.Errorf("%s: forward %s reused = %v, want %v", tt.name, f.Name, reused, wantReused)
			}
		}
		if decoded != tt.decoded {
			t.Errorf("%s: decoded %d forwards, want %d", tt.name, decoded, tt.decoded)
		}
		prev, prevFile = c, tt.f
	}
}

// TestParserLines checks that a cached forward is moved, not trusted, when
// lines are inserted above it, and that problems are the same as Parse's.
func TestParserLines(t *testing.T) {
	a := "[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n"
	bad := "[[forward]]\nport = 0\nto = \"10.0.0.2\"\nbogus = 1\n"
	var p Parser
	for _, in := range []string{
		a + bad,
		"\n\n" + a + bad,
		bad + a,
		"# x\n" + bad + "\n" + a,
		a + a + bad,
		a,
	} {
		c, err := p.Parse("fwdd.toml", []byte(in))
		if d := diffParse("fwdd.toml", in, c, err); d != "" {
			t.Fatalf("%s\ninput:\n%s", d, in)
		}
	}
	c, err := p.Parse("fwdd.toml", []byte("\n\n\n"+a))
	if err != nil || c.Forwards[0].Line != 4 {
		t.Fatalf("got %+v, %v; want the forward on line 4", c, err)
	}
}

// TestParserLoad checks that Parser.Load makes Load's checks.
func TestParserLoad(t *testing.T) {
	path := writeConfig(t, 0o644)
	var p Parser
	c, err := p.load(path, testRules(path))
	if err != nil || c.Daemon.Table != "t" {
		t.Fatalf("load = %+v, %v", c, err)
	}
	want, wantErr := Load(path)
	got, err := p.Load(path)
	if fmt.Sprint(err) != fmt.Sprint(wantErr) || cmp.Diff(want, got, cmpOpts) != "" {
		t.Errorf("Parser.Load: %v, %v; Load: %v, %v", got, err, want, wantErr)
	}
	if _, err := p.Load(path + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// oneChanged returns an n-forward file and the same file with one
// forward's port changed.
func oneChanged(n int) (a, b []byte) {
	a = generateConfig(n)
	i := strings.Index(string(a), fmt.Sprintf("name = \"f%d\"\n", n/2))
	j := i + strings.Index(string(a[i:]), "port = ") + len("port = ")
	b = slices.Concat(a[:j], []byte("1"), a[j:])
	return a, b
}

// BenchmarkParse10000OneChanged is a reload without a cache: Parse of a
// 10,000-forward file with one forward changed.
func BenchmarkParse10000OneChanged(b *testing.B) {
	_, text := oneChanged(10_000)
	b.SetBytes(int64(len(text)))
	defer reportCPU(b)()
	for b.Loop() {
		if _, err := Parse("fwdd.toml", text); err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU reports the process's CPU time per op: on a shared machine, wall
// time says more about the neighbours. Call it as defer reportCPU(b)().
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() { b.ReportMetric(float64(cpu()-start)/float64(b.N)/1e6, "cpu-ms/op") }
}

// BenchmarkReparse10000OneChanged is a reload: a Parser that has the
// previous file parses it again with one forward's port changed.
func BenchmarkReparse10000OneChanged(b *testing.B) {
	benchmarkReparse(b, 10_000)
}

func BenchmarkReparse100000OneChanged(b *testing.B) {
	benchmarkReparse(b, 100_000)
}

func benchmarkReparse(b *testing.B, n int) {
	files := make([][]byte, 2)
	files[0], files[1] = oneChanged(n)
	var p Parser
	if _, err := p.Parse("fwdd.toml", files[0]); err != nil {
		b.Fatal(err)
	}
	i := 0
	defer reportCPU(b)()
	for b.Loop() {
		i++
		if _, err := p.Parse("fwdd.toml", files[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParser10000Cold is a daemon's start: a fresh Parser.
func BenchmarkParser10000Cold(b *testing.B) {
	data := generateConfig(10_000)
	b.SetBytes(int64(len(data)))
	defer reportCPU(b)()
	for b.Loop() {
		var p Parser
		if _, err := p.Parse("fwdd.toml", data); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParse100000(b *testing.B) {
	data := generateConfig(100_000)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		if _, err := Parse("fwdd.toml", data); err != nil {
			b.Fatal(err)
		}
	}
}

// TestParserCacheLimit checks that a file over the limit is parsed afresh,
// correctly, and leaves nothing cached.
func TestParserCacheLimit(t *testing.T) {
	base := &randomFile{pre: "[daemon]\ntable = \"fwdd\"\n\n"}
	rng := rand.New(rand.NewPCG(9, 10))
	for i := range 50 {
		base.blocks = append(base.blocks, randomForward(rng, i, false))
	}
	p := Parser{CacheLimit: 40}
	var prev *Config
	for range 2 {
		checkParser(t, "over the limit", base.text(), &p)
		c, err := p.Parse("fwdd.toml", []byte(base.text()))
		if err != nil {
			t.Fatal(err)
		}
		if prev != nil && shared(prev, c, 0, 0) {
			t.Errorf("a forward was cached over the limit")
		}
		prev = c
	}
	base.blocks = base.blocks[:30]
	a, _ := p.Parse("fwdd.toml", []byte(base.text()))
	b, _ := p.Parse("fwdd.toml", []byte(base.text()))
	if !shared(a, b, 29, 29) {
		t.Errorf("nothing cached under the limit")
	}
}

// TestParserFilesMatchWhole checks the block path against the whole-file
// decode on configurations of a main file and a file of its config
// directory, random ones with and without mistakes, through one Parser.
func TestParserFilesMatchWhole(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	var p Parser
	failed := 0
	for round := range 60 {
		f := newRandomFile(rng, 2+rng.IntN(20), round%3 != 0)
		k := rng.IntN(len(f.blocks) + 1)
		dropIn := strings.Join(f.blocks[k:], "")
		if round%10 == 0 {
			dropIn = "[daemon]\n" + dropIn
		}
		srcs := []source{{path: "lab.toml", text: f.pre + strings.Join(f.blocks[:k], "")}, {path: "lab.d/10-x.toml", text: dropIn}}
		ps := newProblems(srcs)
		if _, ok := checkLimits(ps, srcs, MaxFileSize, MaxForwards); !ok {
			t.Fatal(ps.err())
		}
		want, wantErr := parseWhole(ps, srcs)
		if wantErr != nil {
			failed++
		}
		for _, parse := range []func([]source) (*Config, error){parseFiles, p.parse} {
			got, err := parse(srcs)
			if d := cmp.Diff(problemText(wantErr), problemText(err)); d != "" {
				t.Fatalf("round %d: errors (-whole +blocks):\n%s", round, d)
			}
			if d := cmp.Diff(want, got, cmpOpts); d != "" {
				t.Fatalf("round %d: config (-whole +blocks):\n%s", round, d)
			}
		}
	}
	if failed < 15 || failed > 45 {
		t.Errorf("poor coverage: %d invalid of 60", failed)
	}
}
