package config

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
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

// diffWhole compares a result with what decoding the whole file gives.
func diffWhole(path, text string, got *Config, gotErr error) string {
	want, wantErr := parseWhole(path, text)
	if d := cmp.Diff(problemText(wantErr), problemText(gotErr)); d != "" {
		return "errors (-whole +blocks):\n" + d
	}
	if gotErr != nil && wantErr.Error() != gotErr.Error() {
		return fmt.Sprintf("error text differs:\n%s\n---\n%s", wantErr, gotErr)
	}
	if d := cmp.Diff(want, got, cmpOpts); d != "" {
		return "config (-whole +blocks):\n" + d
	}
	return ""
}

// checkParsers parses text with a fresh Parser and with p, and checks both
// against the whole-file decode. It returns why p decoded the whole file.
func checkParsers(t *testing.T, label, text string, p *Parser) string {
	t.Helper()
	c, err := Parse("fwdd.toml", []byte(text))
	if d := diffWhole("fwdd.toml", text, c, err); d != "" {
		t.Fatalf("%s: Parse differs from the whole-file decode: %s\ninput:\n%s", label, d, text)
	}
	if p != nil {
		c, err = p.Parse("fwdd.toml", []byte(text))
		if d := diffWhole("fwdd.toml", text, c, err); d != "" {
			t.Fatalf("%s: Parser.Parse differs from the whole-file decode: %s\ninput:\n%s", label, d, text)
		}
		if len(p.blocks) > strings.Count(text, "[[") {
			t.Fatalf("%s: %d cached blocks for a file of at most %d", label, len(p.blocks), strings.Count(text, "[["))
		}
		return p.lastWhole
	}
	return ""
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

// TestBlockwiseMatchesWhole checks the block-wise decoding against the
// whole-file decode on every file the other tests use and more.
func TestBlockwiseMatchesWhole(t *testing.T) {
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

	// Each file also goes through one Parser in turn, which has the
	// previous file's blocks.
	var p Parser
	blockwise := 0
	for i, in := range inputs {
		if checkParsers(t, fmt.Sprintf("input %d", i), in, &p) == "" {
			blockwise++
		}
	}
	t.Logf("%d of %d files decoded block by block", blockwise, len(inputs))
	if blockwise < len(inputs)/2 {
		t.Errorf("only %d of %d files decoded block by block", blockwise, len(inputs))
	}

	// The shipped example and a generated file must not need the fallback.
	for _, in := range []string{string(example), string(generateConfig(50))} {
		p := &Parser{}
		if _, err := p.Parse("fwdd.toml", []byte(in)); err != nil || p.lastWhole != "" {
			t.Errorf("decoded whole (%q), err %v", p.lastWhole, err)
		}
	}
}

// TestBlockwiseFallback checks which files are decoded whole.
func TestBlockwiseFallback(t *testing.T) {
	web := "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.1\"\n"
	tests := []struct {
		in    string
		whole bool
	}{
		{web, false},
		{"[daemon]\ntable = \"x\"\n" + web + web, false},       // duplicate name: fwdd's own check
		{web + "[[forward]]\nname = \"b\"\nport = 0\n", false}, // bad values
		{web + "[[forward]]\nname = \"b\"\nprot = 1\n", false}, // unknown key
		{web + "[daemon]\n", true},
		{"forward = []\n" + web, true},
		{"forward.x = 1\n" + web, true},
		{web + "[forward.x]\n", true},
		{web + "name = \n", true},                                          // syntax error
		{"x = \n" + web, true},                                             // syntax error in the preamble
		{"daemon = 1\n" + web, true},                                       // not a syntax error, but a decode error
		{web + "note = \"\"\"\n" + web, true},                              // unterminated multi-line string
		{"[[forward]]\nName = \"x\"\nport = 1\nto = \"10.0.0.1\"\n", true}, // decoded case-insensitively, not seen as name
	}
	for _, tt := range tests {
		var p Parser
		p.Parse("fwdd.toml", []byte(tt.in))
		if whole := p.lastWhole != ""; whole != tt.whole {
			t.Errorf("decoded whole = %v (%q), want %v:\n%s", whole, p.lastWhole, tt.whole, tt.in)
		}
		checkParsers(t, "fallback", tt.in, nil)
	}
	// FORWARD and forward both decode into rawFile.Forward, in map order:
	// the whole-file result is not even the same from one run to the next.
	for _, in := range []string{"FORWARD = []\n" + web, "[[Forward]]\n" + web[len("[[forward]]\n"):] + web} {
		var p Parser
		p.Parse("fwdd.toml", []byte(in))
		if p.lastWhole == "" {
			t.Errorf("decoded block by block:\n%s", in)
		}
	}
}

// TestDecodeChunk checks that decoding blocks together gives each block
// what decoding it alone gives, since that is what the cache keeps.
func TestDecodeChunk(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	chunked := 0
	for round := range 300 {
		in := randomConfig(rng, 2+rng.IntN(20), round%2 == 0)
		if checkChunks(t, in) {
			chunked++
		}
	}
	if chunked < 100 {
		t.Errorf("only %d of 300 files decoded in chunks", chunked)
	}
}

// checkChunks decodes all blocks of in as one chunk, if the file can be
// split, and compares with decoding them one by one.
func checkChunks(t *testing.T, in string) bool {
	t.Helper()
	_, blocks, ok := splitForwards(in)
	if !ok || len(blocks) < 2 {
		return false
	}
	got := decodeChunk(in, blocks)
	if got == nil {
		return false
	}
	opts := []cmp.Option{cmp.AllowUnexported(blockResult{}), cmpOpts}
	for i, b := range blocks {
		want := decodeBlock(in[b.start:b.end])
		if d := cmp.Diff(want, got[i], opts...); d != "" {
			t.Fatalf("block %d decoded in a chunk differs (-alone +chunk):\n%s\ninput:\n%s", i, d, in)
		}
	}
	return true
}

// TestSimpleBlocks checks that decoding the values of a block whose lines
// stand alone gives what decoding the block gives.
func TestSimpleBlocks(t *testing.T) {
	inputs := slices.Clone(structureTests)
	for _, tt := range parseBadTests() {
		inputs = append(inputs, tt.in)
	}
	rng := rand.New(rand.NewPCG(11, 12))
	for range 300 {
		inputs = append(inputs, randomConfig(rng, 1+rng.IntN(20), rng.IntN(2) == 0))
	}
	inputs = append(inputs, "[[forward]]\n", "[[forward]]", "[[forward]] # x\n\n# y\n\t\n", "[[forward]]\nname = 'a' # b\n[[forward]]\n")
	simple, blocks := 0, 0
	for _, in := range inputs {
		s, n := checkSimple(t, in)
		simple += s
		blocks += n
	}
	t.Logf("%d of %d blocks decoded value by value", simple, blocks)
	if simple < blocks/3 {
		t.Errorf("only %d of %d blocks decoded value by value", simple, blocks)
	}
}

// checkSimple decodes each block of in that readSimple takes value by value,
// and compares with decodeBlock. It returns how many blocks it compared, of
// how many.
func checkSimple(t *testing.T, in string) (simple, blocks int) {
	t.Helper()
	_, bs, ok := splitForwards(in)
	if !ok {
		return 0, 0
	}
	opts := []cmp.Option{cmp.AllowUnexported(blockResult{}, keyLines{}), cmpOpts, cmpopts.EquateEmpty()}
	for _, b := range bs {
		text := in[b.start:b.end]
		want := decodeBlock(text)
		s := readSimple(text)
		if s == nil {
			continue
		}
		if pos := scanPositions(text); len(pos.forwards) != 1 || !cmp.Equal(pos.forwards[0], s.keyLines(), opts...) {
			t.Fatalf("readSimple's key lines differ from the scanner's:\n%s", cmp.Diff(pos.forwards, s.keyLines(), opts...))
		}
		values := make([]any, s.n)
		bad := make([]bool, s.n)
		decodeValues(s.vals[:s.n], values, bad)
		if slices.Contains(bad, true) {
			continue
		}
		for i := range s.n {
			s.ids[i] = i
		}
		got := s.result(values)
		if d := cmp.Diff(want, got, opts...); d != "" {
			t.Fatalf("block decoded value by value differs (-block +values):\n%s\nblock:\n%s", d, text)
		}
		simple++
	}
	return simple, len(bs)
}

// TestSetRawField checks that setRawField knows every key of a forward, and
// sets the field BurntSushi would.
func TestSetRawField(t *testing.T) {
	if n := len(allowedKeys["forward"]); n != maxForwardKeys {
		t.Fatalf("a forward has %d keys, maxForwardKeys is %d", n, maxForwardKeys)
	}
	for _, key := range allowedKeys["forward"] {
		var raw rawForward
		setRawField(&raw, key, key)
		var want rawForward
		if _, err := toml.Decode(key+" = \""+key+"\"", &want); err != nil {
			t.Fatal(err)
		}
		if !cmp.Equal(raw, want) {
			t.Errorf("%s: %+v, want %+v", key, raw, want)
		}
	}
}

// TestDecodeValues checks that one bad value in a batch only marks itself.
func TestDecodeValues(t *testing.T) {
	vals := []string{` "a"`, ` 1 # one`, ` """x`, ` [1,`, ` ["x", 'y']`, ``, ` 2`, ` "b"` + "\nv99 = 1", ` {a = 1}`}
	out := make([]any, len(vals))
	bad := make([]bool, len(vals))
	decodeValues(vals, out, bad)
	wantBad := []bool{false, false, true, true, false, true, false, true, false}
	if !slices.Equal(bad, wantBad) {
		t.Errorf("bad = %v, want %v", bad, wantBad)
	}
	if out[0] != "a" || out[1] != int64(1) || out[6] != int64(2) {
		t.Errorf("values = %#v", out)
	}
}

// TestScanPositionsUnchanged checks the rewritten scanner against the one
// the line numbers in messages were first defined by.
func TestScanPositionsUnchanged(t *testing.T) {
	inputs := slices.Clone(structureTests)
	for _, tt := range parseBadTests() {
		inputs = append(inputs, tt.in)
	}
	for _, tt := range parseGoodTests() {
		inputs = append(inputs, tt.in)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 50 {
		inputs = append(inputs, randomConfig(rng, 20, true))
	}
	for _, in := range inputs {
		checkScanner(t, in)
	}
}

func checkScanner(t *testing.T, in string) {
	t.Helper()
	want := refScanPositions([]byte(in))
	got := scanPositions(in)
	if d := cmp.Diff(want, got, cmp.AllowUnexported(positions{}, keyLines{}), cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("scanPositions differs from the original (-want +got):\n%s\ninput:\n%q", d, in)
	}
}

// randomForward writes forward i in one of many ways; with inject, it may
// carry one mistake.
func randomForward(rng *rand.Rand, i int, inject bool) string {
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	chance := func(n int) bool { return rng.IntN(n) == 0 }
	v6 := chance(5)
	addr := func(host int) string {
		if v6 {
			return fmt.Sprintf("2001:db8::%x:%x", host>>16, host&0xffff)
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

// TestBlockwiseRandom compares block-wise and whole-file decoding of random
// files, with and without mistakes.
func TestBlockwiseRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	rounds := 400
	if raceEnabled || testing.Short() {
		rounds = 100
	}
	blockwise, failed := 0, 0
	for round := range rounds {
		in := randomConfig(rng, 1+rng.IntN(40), round%4 != 0)
		checkScanner(t, in)
		var p Parser
		if checkParsers(t, fmt.Sprintf("round %d", round), in, &p) == "" {
			blockwise++
		}
		if _, err := Parse("fwdd.toml", []byte(in)); err != nil {
			failed++
		}
	}
	t.Logf("%d files, %d invalid, %d decoded block by block", rounds, failed, blockwise)
	if blockwise < rounds/2 || failed < rounds/4 {
		t.Errorf("poor coverage: %d block by block, %d invalid of %d", blockwise, failed, rounds)
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
// every result of a long-lived Parser against the whole-file decode.
func TestParserIncremental(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	files, steps := 40, 40
	if raceEnabled || testing.Short() {
		files = 10
	}
	for fi := range files {
		inject := fi%2 == 1
		f := newRandomFile(rng, 1+rng.IntN(30), inject)
		var p Parser
		what := "first parse"
		for step := range steps {
			text := f.text()
			if p.last != nil {
				checkSplitAgain(t, p.last, text)
			}
			checkParsers(t, fmt.Sprintf("file %d step %d (%s)", fi, step, what), text, &p)
			what = f.edit(rng, fi*steps+step, inject && rng.IntN(3) == 0)
		}
	}
}

// checkSplitAgain checks that splitting text after old finds the blocks a
// fresh split does.
func checkSplitAgain(t *testing.T, old *splitFile, text string) {
	t.Helper()
	wantPre, want, wantOK := splitForwards(text)
	gotPre, got, known, gotOK := splitAgain(old, text)
	if wantOK != gotOK || wantOK && (wantPre != gotPre || !slices.Equal(want, got) || len(known) != len(got)) {
		t.Fatalf("splitAgain = %d %v %v, splitForwards = %d %v %v\nold:\n%q\nnew:\n%q", gotPre, got, gotOK, wantPre, want, wantOK, old.text, text)
	}
	// A result is only reused for a block whose text is unchanged.
	for i, r := range known {
		if r == nil {
			continue
		}
		j := slices.Index(old.results, r)
		if j < 0 || old.text[old.blocks[j].start:old.blocks[j].end] != text[got[i].start:got[i].end] {
			t.Fatalf("block %d reuses the result of a different text", i)
		}
	}
}

// TestParserReload is the reload of a daemon: one forward changes, is
// added, removed or moved, and only what changed is decoded again.
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
	if _, err := p.Parse("fwdd.toml", []byte(base.text())); err != nil {
		t.Fatal(err)
	}
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
		{"duplicate forward", dup, 0},
		{"back", base, 1},
	} {
		text := tt.f.text()
		checkParsers(t, tt.name, text, &p)
		if p.lastWhole != "" || p.lastDecoded != tt.decoded {
			t.Errorf("%s: decoded %d blocks (whole: %q), want %d", tt.name, p.lastDecoded, p.lastWhole, tt.decoded)
		}
		if distinct := len(slices.Compact(slices.Sorted(slices.Values(tt.f.blocks)))); len(p.blocks) != distinct {
			t.Errorf("%s: %d blocks cached, want %d", tt.name, len(p.blocks), distinct)
		}
	}
}

// TestParserLines checks that a cached forward is moved, not trusted, when
// lines are inserted above it, and that its problems move with it.
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
	} {
		_, err := p.Parse("fwdd.toml", []byte(in))
		if d := diffWhole("fwdd.toml", in, nil, err); d != "" {
			t.Fatalf("%s\ninput:\n%s", d, in)
		}
		if p.lastWhole != "" {
			t.Fatalf("decoded whole: %s", p.lastWhole)
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
	c, err := p.Load(path)
	if os.Getuid() == 0 {
		if err != nil || c.Daemon.Table != "t" {
			t.Fatalf("Load = %+v, %v", c, err)
		}
	} else if err == nil || !strings.Contains(err.Error(), "not root") {
		t.Fatalf("Load as uid %d: %v, want the owner refused", os.Getuid(), err)
	}
	if _, err := p.Load(path + ".missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// oneChanged returns a 10,000-forward file and the same file with one
// forward's port changed.
func oneChanged(n int) (a, b []byte) {
	a = generateConfig(n)
	i := strings.Index(string(a), fmt.Sprintf("name = \"f%d\"\n", n/2))
	j := i + strings.Index(string(a[i:]), "port = ") + len("port = ")
	b = slices.Concat(a[:j], []byte("1"), a[j:])
	return a, b
}

func BenchmarkParseWhole10000(b *testing.B) {
	text := string(generateConfig(10_000))
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		if _, err := parseWhole("fwdd.toml", text); err != nil {
			b.Fatal(err)
		}
	}
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
	for b.Loop() {
		i++
		if _, err := p.Parse("fwdd.toml", files[i%2]); err != nil {
			b.Fatal(err)
		}
		if p.lastDecoded != 1 {
			b.Fatalf("decoded %d blocks", p.lastDecoded)
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
	for range 2 {
		checkParsers(t, "over the limit", base.text(), &p)
		if p.lastDecoded != 50 || len(p.blocks) != 0 || p.last != nil {
			t.Errorf("decoded %d blocks, %d cached; want 50 decoded, none cached", p.lastDecoded, len(p.blocks))
		}
	}
	base.blocks = base.blocks[:30]
	checkParsers(t, "under the limit", base.text(), &p)
	if len(p.blocks) != 30 {
		t.Errorf("%d blocks cached under the limit, want 30", len(p.blocks))
	}
}
