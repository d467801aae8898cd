package daemon

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/config"
)

func parse(t *testing.T, text string) *config.Config {
	t.Helper()
	c, err := config.Parse("fwdd.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDiffForwards(t *testing.T) {
	a := parse(t, `
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
`)
	b := parse(t, `
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
`)
	added, removed, changed := diffForwards(a, b)
	got := [][]string{added, removed, changed}
	want := [][]string{{"new"}, {"gone"}, {"moved"}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("added/removed/changed (-want +got):\n%s", d)
	}
}
