package nft

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/fwdd/fwdd/pkg/config"
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

func mustParse(t *testing.T, text string) *config.Config {
	t.Helper()
	cfg, err := config.Parse("fwdd.toml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func compile(t *testing.T, text string, prev *Model) *Model {
	t.Helper()
	return compileCfg(t, mustParse(t, text), prev)
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
	m := compile(t, changed, old)
	d := diff(old, m)
	if len(d.addChains)+len(d.delChains)+len(d.flushChains) != 0 {
		t.Errorf("chains changed: add %d del %d flush %d", len(d.addChains), len(d.delChains), len(d.flushChains))
	}
	if len(d.sets) != 1 || d.sets[0].set.Name != "dnat4_port" || len(d.sets[0].add) != 1 || len(d.sets[0].del) != 1 {
		t.Fatalf("want one element replaced in dnat4_port, got %+v", d.sets)
	}
	// A restricted forward's change rewrites its chain and the dispatch chain only.
	changed = strings.Replace(goldenConfig, `interface = "eth1"`, `interface = "eth2"`, 1)
	d = diff(old, compile(t, changed, old))
	var flushed []string
	for _, c := range d.flushChains {
		flushed = append(flushed, c.Name)
	}
	if diff := cmp.Diff([]string{"dispatch"}, flushed); diff != "" {
		t.Errorf("flushed chains (-want +got):\n%s", diff)
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
