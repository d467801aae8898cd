package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/nft"
)

// TestMain lets a test run this test binary as fwdd itself (inside a
// namespace, with FWDD_TEST_AS_FWDD=1), or as a stand-in for a running
// daemon (FWDD_TEST_FAKE_DAEMON, see fakeDaemon).
func TestMain(m *testing.M) {
	if os.Getenv("FWDD_TEST_AS_FWDD") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	if dir := os.Getenv("FWDD_TEST_FAKE_DAEMON"); dir != "" {
		os.Exit(fakeDaemon(dir, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// printAndLoad runs `fwdd print -c path`, then nft -f of its output, inside h's namespace.
func printAndLoad(ctx context.Context, h *sandbox.Host, path string) ([]byte, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return h.Run(ctx, "sh", "-c", `FWDD_TEST_AS_FWDD=1 "$0" print -c "$1" > "$1.nft" && nft -f "$1.nft"`, exe, path)
}

// Values the config accepts and nft can express, hostile ones included:
// names that are nft keywords, an interface name of punctuation.
const hostileButValid = `
[daemon]
forward_policy = "drop"

[[forward]]
name = "0-drop_accept"
port = 80
to = "10.0.2.10:8080"
interface = "-a..B_0"

[[forward]]
name = "jump"
port = "1000-1002"
to = "10.0.2.11:2000-2002"
sources = ["10.1.0.0/16", "10.9.9.9"]

[[forward]]
name = "counter"
proto = ["tcp", "udp"]
port = 53
address = "10.0.1.1"
to = "10.0.2.53"
snat = "10.0.2.1"

[[forward]]
name = "v6"
port = 443
to = "[fd00::50]:8443"
snat = "none"
interface = "eth0.100"

[[forward]]
name = "masq"
port = "8000-8099"
to = "10.0.2.12:9000"

[[forward]]
name = "balanced"
port = "7000-7001"
to = ["10.0.2.20:7100-7101", "10.0.2.21:7200-7201"]

[[forward]]
name = "sticky"
proto = ["tcp", "udp"]
port = 444
balance = "source"
interface = "eth1"
[[forward.backend]]
to = "[fd00::60]:443"
weight = 3
[[forward.backend]]
to = "[fd00::61]:443"
`

// What fwdd programs over netlink and what `fwdd print | nft -f -` programs
// are the same table: `nft list table` of both, normalised, is equal, and
// so is every element's bytes read back.
func TestKernelPrintMatchesNetlink(t *testing.T) {
	for _, tc := range []struct{ name, config string }{
		{"default ct mark", hostileButValid},
		// fwdd owns only the high 16 bits: verdict maps per chunk of the
		// id, masked keys everywhere (pkg/nft/ctmark.go).
		{"partial ct_mask", strings.Replace(hostileButValid, "[daemon]\n", "[daemon]\nct_mark = \"0x00fd0000/0x00ff0000\"\nct_mask = 0xffff0000\n", 1)},
		// 20 id bits in three chunks, below the tag.
		{"three chunks", strings.Replace(hostileButValid, "[daemon]\n", "[daemon]\nct_mark = \"0x0d000000/0x0f000000\"\nct_mask = 0x0ffffff0\n", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) { testPrintMatchesNetlink(t, tc.config) })
	}
}

func testPrintMatchesNetlink(t *testing.T, text string) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	ctx := context.Background()
	path := writeFile(t, text)
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := nft.AssignIDs(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := nft.Compile(cfg, ids)
	if err != nil {
		t.Fatal(err)
	}
	programmed := &nft.Netlink{NetNS: topo.Gateway.Fd()}
	if _, err := (&nft.Applier{Backend: programmed}).Apply(m); err != nil {
		t.Fatal(err)
	}
	if out, err := printAndLoad(ctx, topo.Backend, path); err != nil {
		t.Fatalf("fwdd print | nft -f -: %v\n%s", err, out)
	}
	list := func(h *sandbox.Host) string {
		out, err := h.Run(ctx, "nft", "list", "table", "inet", "fwdd")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return normalise(string(out))
	}
	want, got := list(topo.Gateway), list(topo.Backend)
	if want != got {
		t.Errorf("nft list of the printed table differs from the programmed one (-netlink +printed):\n%s", lineDiff(want, got))
	}
	for _, s := range []string{`iifname "-a..B_0"`, `comment "0-drop_accept"`, "policy drop"} {
		if !strings.Contains(want, s) {
			t.Errorf("programmed table lacks %q:\n%s", s, want)
		}
	}
	// The normalisation above hides a display difference only: the bytes
	// are the same.
	printed := &nft.Netlink{NetNS: topo.Backend.Fd()}
	a, err := programmed.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	b, err := printed.Read("fwdd", true)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range a.Sets {
		if !sameElements(s.Elements, b.Sets[i].Elements) {
			t.Errorf("set %s: the elements' bytes differ", s.Name)
		}
	}
	if err := a.Differs(m); err != nil {
		t.Errorf("programmed table: %v", err)
	}
	// Read back (verdict maps included), it needs no repair.
	if p := nft.Reconcile(a, m); !p.Empty() {
		t.Errorf("reconcile of the programmed table is not empty:\n%s", p)
	}
}

// What nft cannot express is refused by fwdd print (by the config's checks
// or, failing those, by the renderer: pkg/nft's TestRenderRefuses...), which
// then writes nothing, rather than printed as a script with another meaning.
func TestKernelPrintRefusesInexpressible(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	ctx := context.Background()
	for _, iface := range []string{`x";drop#`, `eth*`, `a\b`} {
		path := writeFile(t, fmt.Sprintf("[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.2.10\"\ninterface = %q\n", iface))
		out, err := printAndLoad(ctx, topo.Backend, path)
		if err == nil {
			t.Errorf("interface %q: fwdd print | nft -f - succeeded:\n%s", iface, out)
		}
		if script, _ := os.ReadFile(path + ".nft"); len(script) != 0 {
			t.Errorf("interface %q: fwdd print wrote a script:\n%s", iface, script)
		}
		if !strings.Contains(string(out), "interface") {
			t.Errorf("interface %q: the refusal does not name the interface: %s", iface, out)
		}
	}
	if out, err := topo.Backend.Run(ctx, "nft", "list", "ruleset"); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("a refused print programmed something: %v\n%s", err, out)
	}
}

var markData = regexp.MustCompile(`: 0x([0-9a-f]{8})\b`)

// normalise makes two listings of one table comparable: elements sorted
// (their order is the kernel's hash order), and the ct marks in the
// mark<f>_* maps' data shown in one byte order. google/nftables cannot record
// a map's data byte order (pkg/nft/README.md), so nft shows the marks fwdd
// programs byte-swapped; the bytes are compared separately.
var slotRange = regexp.MustCompile(`( \. \d+ \. )\d+(-\d+)? :`)

var typeofBalance = strings.NewReplacer(
	"typeof ct mark . th dport . numgen random mod 1048576 : ip daddr . th dport", "type mark . inet_service . integer : ipv4_addr . inet_service",
	"typeof ct mark . th dport . numgen random mod 1048576 : ip6 daddr . th dport", "type mark . inet_service . integer : ipv6_addr . inet_service",
	"jhash @nh,64,128", "jhash ip6 saddr")

func normalise(s string) string {
	var out []string
	var elems []string
	in := false
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		// A set made over netlink carries no typeof: nft shows its types,
		// and only the start of each interval (the bytes are compared
		// below, interval ends included).
		l = typeofBalance.Replace(l)
		if strings.HasPrefix(l, "elements = {") {
			in = true
			l = strings.TrimPrefix(l, "elements = {")
			out = append(out, "elements = {")
		}
		if !in {
			out = append(out, l)
			continue
		}
		for _, e := range strings.Split(strings.TrimSuffix(l, "}"), ",") {
			if e = strings.TrimSpace(e); e != "" {
				e = slotRange.ReplaceAllString(e, "${1}SLOT :")
				elems = append(elems, markData.ReplaceAllStringFunc(e, hostOrderMark))
			}
		}
		if strings.HasSuffix(l, "}") {
			slices.Sort(elems)
			out = append(out, elems...)
			out = append(out, "}")
			elems, in = nil, false
		}
	}
	return strings.Join(out, "\n")
}

func hostOrderMark(s string) string {
	v, _ := strconv.ParseUint(markData.FindStringSubmatch(s)[1], 16, 32)
	if v>>24 != 0xfd && v&0xff == 0xfd {
		v = uint64(binary.BigEndian.Uint32(binary.LittleEndian.AppendUint32(nil, uint32(v))))
	}
	return fmt.Sprintf(": 0x%08x", v)
}

func sameElements(a, b []nft.Element) bool {
	key := func(es []nft.Element) []string {
		var out []string
		for _, e := range es {
			out = append(out, string(e.Key)+"\x00"+string(e.KeyEnd)+"\x00"+string(e.Data)+"\x00"+e.Comment)
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range al {
		if !slices.Contains(bl, l) {
			out = append(out, "-"+l)
		}
	}
	for _, l := range bl {
		if !slices.Contains(al, l) {
			out = append(out, "+"+l)
		}
	}
	return strings.Join(out, "\n")
}
