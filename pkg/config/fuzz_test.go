package config

import (
	"os"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse checks that Parse never panics and that it returns either a
// config or a *Errors whose problems each fit on one line; and that decoding
// block by block, afresh or after other files, gives what decoding the whole
// file gives.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../../deploy/fwdd.toml"); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"[daemon]\non_stop = \"maybe\"\n",
		"[[forward]]\nname = \"a\"\nport = \"1-2\"\nto = \"[::1]:3-4\"\nsources = [\"::/0\"]\n",
		"[[forward]]\nname = \"a\"\nport = 80\nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\nport = 80\nto = \"10.0.0.2\"\n",
		"forward = [{name = \"a\", port = 1, to = \"1.2.3.4:5\", proto = [\"udp\", \"tcp\"]}]\n",
		"x = \"\"\"\n[[forward]]\n\"\"\"\n[forward.a]\n",
		"[[forward]]\nname = {a = 1}\nport = [1]\nto = 1.5\nsnat = 2020-01-01\n",
		"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nport = 0\nx = 1\n[[ forward ]]\nname = \"a\"\nport = 1\nto = \"10.0.0.2\"\n",
		"[daemon]\ntable = \"t\"\n[[forward]]\nname = \"a\"\nport = \"1-9\"\nto = \"10.0.0.1:5\"\n[daemon]\n",
		"[[forward]]\nname = \"a\"\nport = 1\nnote = '''\n[[forward]]\n'''\nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		checkScanner(t, string(data))
		checkChunks(t, string(data))
		checkSimple(t, string(data))
		compareWithWhole(t, data, c, err)
		switch {
		case err == nil && c == nil:
			t.Fatal("nil config without error")
		case err != nil && c != nil:
			t.Fatal("config with error")
		case err != nil:
			errs, ok := err.(*Errors)
			if !ok || len(*errs) == 0 {
				t.Fatalf("error %T is not a non-empty *Errors: %v", err, err)
			}
			for _, e := range *errs {
				if !strings.HasPrefix(e.Error(), "fuzz.toml") {
					t.Fatalf("problem does not name the file: %q", e)
				}
			}
		default:
			for i := range c.Forwards {
				f := &c.Forwards[i]
				if f.Port.IsZero() || !f.To.IsValid() || len(f.Protos) == 0 || f.Name == "" {
					t.Fatalf("invalid forward accepted: %+v", f)
				}
				if !f.Equal(f) {
					t.Fatalf("forward not Equal to itself: %+v", f)
				}
			}
		}
	})
}

// compareWithWhole checks Parse's result for data, and a Parser's after it
// parsed other files first, against the whole-file decode.
func compareWithWhole(t *testing.T, data []byte, c *Config, err error) {
	t.Helper()
	text := string(data)
	if caseAmbiguous(text) {
		return
	}
	if d := diffWhole("fuzz.toml", text, c, err); d != "" {
		t.Fatalf("Parse: %s", d)
	}
	var p Parser
	for i, in := range []string{
		"# moved down\n\n" + text,
		text,
		text + "\n[[forward]]\nname = \"zz\"\nport = 1\nto = \"10.9.9.9\"\n",
		text,
	} {
		if p.last != nil {
			checkSplitAgain(t, p.last, in)
		}
		c, err := p.Parse("fuzz.toml", []byte(in))
		if caseAmbiguous(in) {
			continue
		}
		if d := diffWhole("fuzz.toml", in, c, err); d != "" {
			t.Fatalf("Parser, file %d: %s", i, d)
		}
	}
}

// caseAmbiguous reports whether a table has two keys that differ only in
// case. BurntSushi matches keys to struct fields case-insensitively, in map
// order, so such a file does not even decode the same way twice.
func caseAmbiguous(text string) bool {
	var m map[string]any
	md, err := toml.Decode(text, &m)
	if err != nil {
		return false
	}
	byParent := make(map[string][]string)
	for _, k := range md.Keys() {
		parent := k[:len(k)-1].String()
		last := k[len(k)-1]
		for _, other := range byParent[parent] {
			if other != last && strings.EqualFold(other, last) {
				return true
			}
		}
		byParent[parent] = append(byParent[parent], last)
	}
	return false
}
