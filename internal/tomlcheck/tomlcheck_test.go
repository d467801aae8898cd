package tomlcheck

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/fwdd/fwdd/internal/tomlpos"
)

// problems records what Keys reports, as "line key: msg".
type problems []string

func (p *problems) Report(line int, key, msg string) {
	*p = append(*p, fmt.Sprintf("%d %s: %s", line, key, msg))
}

func TestKeys(t *testing.T) {
	text := "[t]\ns = \"x\"\nb = 1\nn = 300\no = \"maybe\"\nf = 1.5\n"
	var doc map[string]map[string]any
	if _, err := toml.Decode(text, &doc); err != nil {
		t.Fatal(err)
	}
	v := doc["t"]
	var got problems
	k := &Keys{Lines: tomlpos.Scan(text).Table("t"), To: &got}

	if s, ok := k.String("s", v["s"], "d"); s != "x" || !ok {
		t.Errorf("String(s) = %q, %v", s, ok)
	}
	if s, ok := k.String("unset", v["unset"], "d"); s != "d" || !ok {
		t.Errorf("String(unset) = %q, %v; want the default", s, ok)
	}
	if s, ok := k.String("b", v["b"], "d"); s != "d" || ok {
		t.Errorf("String(b) = %q, %v; want the default, not ok", s, ok)
	}
	if b := k.Bool("b", v["b"], true); !b {
		t.Error("Bool of an integer did not return the default")
	}
	if n := k.Int("n", v["n"], 7, 1, 100); n != 7 {
		t.Errorf("Int out of range = %d, want the default", n)
	}
	if n := k.Int("b", v["b"], 7, 1, 100); n != 1 {
		t.Errorf("Int(b) = %d, want 1", n)
	}
	if n := k.Int("f", v["f"], 7, 1, 100); n != 7 {
		t.Errorf("Int of a float = %d, want the default", n)
	}
	if o := k.OneOf("o", v["o"], "no", "yes", "no"); o != "no" {
		t.Errorf("OneOf = %q, want the default", o)
	}
	if o := k.OneOf("s", v["s"], "no", "x", "y"); o != "x" {
		t.Errorf("OneOf = %q, want x", o)
	}
	want := problems{
		"3 b: must be a string, not an integer",
		"3 b: must be true or false, not an integer",
		"4 n: 300 is out of range; must be between 1 and 100",
		"6 f: must be an integer between 1 and 100, not a float",
		`5 o: "maybe" is not allowed; must be "yes" or "no"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("reported:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestTypeName(t *testing.T) {
	for v, want := range map[any]string{
		"s": "a string", int64(1): "an integer", 1.5: "a float", true: "a boolean",
		time.Time{}: "a date or time", uint8(1): "a value of another type",
	} {
		if got := TypeName(v); got != want {
			t.Errorf("TypeName(%#v) = %q, want %q", v, got, want)
		}
	}
	for _, c := range []struct {
		v    any
		want string
	}{{[]any{}, "an array"}, {[]map[string]any{}, "an array of tables"}, {map[string]any{}, "a table"}} {
		if got := TypeName(c.v); got != c.want {
			t.Errorf("TypeName(%#v) = %q, want %q", c.v, got, c.want)
		}
	}
}

func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"web":                         `"web"`,
		"a\nb":                        `"a\nb"`,
		strings.Repeat("x", 64):       `"` + strings.Repeat("x", 64) + `"`,
		strings.Repeat("x", 100):      `"` + strings.Repeat("x", 64) + `"... (100 bytes)`,
		strings.Repeat("x", 62) + "é": `"` + strings.Repeat("x", 62) + `é"`,
		// The cut never splits a UTF-8 sequence.
		strings.Repeat("x", 63) + "éé": `"` + strings.Repeat("x", 63) + `"... (67 bytes)`,
	} {
		if got := Quote(in); got != want {
			t.Errorf("Quote(%.20q...) = %s, want %s", in, got, want)
		}
	}
	if got := QuotedList([]string{"a"}); got != `"a"` {
		t.Errorf("QuotedList(a) = %s", got)
	}
	if got := QuotedList([]string{"a", "b", "c"}); got != `"a", "b" or "c"` {
		t.Errorf("QuotedList(a, b, c) = %s", got)
	}
}

func TestSyntax(t *testing.T) {
	for _, c := range []struct {
		text string
		line int
		msg  string
	}{
		{"a = 1\na = 2\n", 2, "invalid TOML: a is defined twice; each key may appear once in a table"},
		{"[t]\nx = 1\n[t]\n", 3, "invalid TOML: t is defined twice; each key may appear once in a table"},
		// The library puts the newline it complains about on the next line.
		{"[[forward]\n", 1, "invalid TOML: the header is not closed: write [[name]], e.g. [[forward]]"},
		{"[daemon\n", 1, "invalid TOML: the header is not closed: write [name], e.g. [daemon]"},
		// The library quotes the newline: it stays on one line, escaped.
		{"a = 0b\n", 1, `invalid TOML: not a binary number: '0b\n'`},
		{"a = \"x\nb = 1\n", 1, "invalid TOML: strings cannot contain newlines"},
	} {
		var v map[string]any
		_, err := toml.Decode(c.text, &v)
		if err == nil {
			t.Fatalf("%q decoded", c.text)
		}
		line, msg := Syntax(c.text, err)
		if line != c.line || msg != c.msg || strings.ContainsAny(msg, "\n\r") {
			t.Errorf("Syntax(%q) = %d, %q; want %d, %q", c.text, line, msg, c.line, c.msg)
		}
	}
	if line, msg := Syntax("", errors.New("other")); line != 0 || msg != "invalid TOML" {
		t.Errorf("Syntax(not a ParseError) = %d, %q", line, msg)
	}
}
