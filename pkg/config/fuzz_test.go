package config

import (
	"errors"
	"os"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and returns either a config or a
// *Errors of Problems that each fit on one line and say where they are; and
// that a Parser, afresh or after other files, gives what decoding the file
// whole gives.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../../deploy/fwdd.toml"); err == nil {
		f.Add(data)
	}
	for _, s := range []string{
		"",
		"[daemon]\non_stop = \"maybe\"\n",
		"[[forward]]\nname = \"a\"\nport = \"1-2\"\nto = \"[fd00::1]:3-4\"\nsources = [\"::/0\"]\n",
		"[[forward]]\nname = \"a\"\nport = 80\nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\nport = 80\nto = \"10.0.0.2\"\n",
		"forward = [{name = \"a\", port = 1, to = \"1.2.3.4:5\", proto = [\"udp\", \"tcp\"]}]\n",
		"x = \"\"\"\n[[forward]]\n\"\"\"\n[forward.a]\n",
		"[[forward]]\nname = {a = 1}\nport = [1]\nto = 1.5\nsnat = 2020-01-01\n",
		"[[forward]]\nname = \"a\"\nport = 1\nto = \"10.0.0.1\"\n[[forward]]\nport = 0\nx = 1\n[[ forward ]]\nname = \"a\"\nport = 1\nto = \"10.0.0.2\"\n",
		"[daemon]\ntable = \"t\"\n[[forward]]\nname = \"a\"\nport = \"1-9\"\nto = \"10.0.0.1:5\"\n[daemon]\n",
		"[[forward]]\nname = \"a\"\nport = 1\nnote = '''\n[[forward]]\n'''\nto = \"10.0.0.1\"\n[[forward]]\nname = \"b\"\n",
		"[[Forward]]\nName = \"a\"\nPORT = 1\nto = \"10.0.0.1\"\n",
		"forward.name = \"a\"\n",
		"[[forward]\nname = \"a\"\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("fuzz.toml", data)
		switch {
		case err == nil && c == nil:
			t.Fatal("nil config without error")
		case err != nil && c != nil:
			t.Fatal("config with error")
		case err != nil:
			var errs *Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error %T is not a non-empty *Errors: %v", err, err)
			}
			for _, e := range *errs {
				p, ok := e.(*Problem)
				if !ok {
					t.Fatalf("%T is not a *Problem: %v", e, e)
				}
				if p.Path != "fuzz.toml" || p.Line == 0 && p.Where == "" || strings.Contains(p.Error(), "\n") {
					t.Fatalf("problem without a position, or on several lines: %q", p)
				}
				if strings.Contains(p.Msg, "map[") || strings.Contains(p.Msg, "toml:") || strings.Contains(p.Msg, "interface {}") {
					t.Fatalf("library text in a message: %q", p)
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
			// The record of the config in force (WriteTOML) reads back.
			back, err := Parse("back.toml", renderTOML(t, c))
			if err != nil {
				t.Fatalf("WriteTOML's text does not parse: %v\n%s", err, renderTOML(t, c))
			}
			for i := range c.Forwards {
				if !c.Forwards[i].Equal(&back.Forwards[i]) {
					t.Fatalf("forward %s differs after WriteTOML and Parse", c.Forwards[i].Name)
				}
			}
		}
		text := string(data)
		var p Parser
		for i, in := range []string{
			text,
			"# moved down\n\n" + text,
			text + "\n[[forward]]\nname = \"zz\"\nport = 1\nto = \"10.9.9.9\"\n",
			text,
		} {
			c, err := p.Parse("fuzz.toml", []byte(in))
			if d := diffParse("fuzz.toml", in, c, err); d != "" {
				t.Fatalf("Parser, file %d: %s", i, d)
			}
		}
	})
}
