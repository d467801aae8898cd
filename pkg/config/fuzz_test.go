package config

import (
	"os"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that it returns either a
// config or a *Errors whose problems each fit on one line.
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
