package nft

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const testTag, testMask = 0xfd000000, 0xff000000

func TestCoversFwdd(t *testing.T) {
	for _, tc := range []struct {
		value, bits uint32
		want        bool
	}{
		{0xfd000000, 0xff000000, true},
		{0xfd000000, 0xfd000000, true},  // looks at fewer tag bits: still every fwdd mark
		{0xfd000000, 0xffffffff, false}, // only id 0
		{0xfe000000, 0xff000000, false},
		{0, 0, false},
	} {
		if got := coversFwdd(tc.value, tc.bits, testTag, testMask); got != tc.want {
			t.Errorf("coversFwdd(%#x, %#x) = %v, want %v", tc.value, tc.bits, got, tc.want)
		}
	}
}

func TestAllowRule(t *testing.T) {
	for _, tc := range []struct{ owner, family, table, chain, want string }{
		{"nft", "inet", "filter", "forward", "nft insert rule inet filter forward ct mark and 0xff000000 == 0xfd000000 accept"},
		{"iptables", "ip", "filter", "FORWARD", "iptables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
		{"docker", "ip", "filter", "FORWARD", "iptables -I DOCKER-USER -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
		{"iptables", "ip6", "filter", "FORWARD", "ip6tables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
	} {
		if got := AllowRule(tc.owner, tc.family, tc.table, tc.chain, testTag, testMask); got != tc.want {
			t.Errorf("AllowRule(%s) = %q, want %q", tc.owner, got, tc.want)
		}
	}
}

// TestKernelForeignBlockers writes other tools' tables with nft and
// iptables-nft in a namespace and checks which chains are reported, and
// that the suggested rule, once added, clears the report.
func TestKernelForeignBlockers(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	gw := topo.Gateway
	k := &Netlink{NetNS: gw.Fd()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nft := func(script string) {
		t.Helper()
		p := filepath.Join(t.TempDir(), "r.nft")
		if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := gw.Run(ctx, "nft", "-f", p); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
	}
	blockers := func() []Blocker {
		t.Helper()
		bs, err := k.ForeignBlockers("fwdd", testTag, testMask)
		if err != nil {
			t.Fatal(err)
		}
		return bs
	}
	// Not blockers: an accepting forward chain, a drop policy with fwdd's
	// marks accepted first, an input chain with policy drop, fwdd's own table.
	nft(`table inet fwdd {
	chain f {
		type filter hook forward priority 0; policy drop;
	}
}
table inet open {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state invalid drop
	}
}
table inet allowed {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct mark and 0xff000000 == 0xfd000000 accept
	}
}
table inet input {
	chain input {
		type filter hook input priority 0; policy drop;
	}
}
table ip viajump {
	chain forward {
		type filter hook forward priority 0; policy drop;
		jump user
	}
	chain user {
		ct mark and 0xff000000 == 0xfd000000 counter accept
		return
	}
}
`)
	if bs := blockers(); len(bs) != 0 {
		t.Fatalf("blockers %v, want none", bs)
	}
	nft(`table inet filter {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
	}
}
table ip6 strict {
	chain forward {
		type filter hook forward priority 10;
		counter drop
	}
}
table inet narrow {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct mark 0xfd000000 accept
	}
}
`)
	got := blockers()
	want := []string{
		"table inet filter chain forward: policy drop",
		"table inet narrow chain forward: policy drop",
		"table ip6 strict chain forward: rule handle 2 in chain forward drops every packet",
	}
	var names []string
	for _, b := range got {
		names = append(names, b.String())
	}
	if strings.Join(names, "\n") != strings.Join(want, "\n") {
		t.Fatalf("blockers:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	// iptables-nft's FORWARD DROP (Docker's set-up), then the suggested fix.
	if out, err := gw.Run(ctx, "iptables-nft", "-P", "FORWARD", "DROP"); err != nil {
		t.Fatalf("iptables-nft: %v\n%s", err, out)
	}
	if out, err := gw.Run(ctx, "iptables-nft", "-N", "DOCKER-USER"); err != nil {
		t.Fatalf("iptables-nft: %v\n%s", err, out)
	}
	if out, err := gw.Run(ctx, "iptables-nft", "-A", "FORWARD", "-j", "DOCKER-USER"); err != nil {
		t.Fatalf("iptables-nft: %v\n%s", err, out)
	}
	var docker *Blocker
	for _, b := range blockers() {
		if b.Family == "ip" && b.Table == "filter" && b.Chain == "FORWARD" {
			docker = &b
		}
	}
	if docker == nil || docker.Reason != "policy drop" ||
		docker.Allow != "iptables -I DOCKER-USER -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT" {
		t.Fatalf("iptables-nft FORWARD: %+v", docker)
	}
	args := append([]string{"iptables-nft"}, strings.Fields(strings.TrimPrefix(docker.Allow, "iptables "))...)
	if out, err := gw.Run(ctx, args...); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	for _, b := range blockers() {
		if b.Table == "filter" && b.Family == "ip" {
			t.Fatalf("still reported after %q: %v", docker.Allow, b)
		}
	}
	// Each nft suggestion fixes its chain.
	for _, b := range blockers() {
		if _, err := gw.Run(ctx, strings.Fields(b.Allow)...); err != nil {
			t.Fatalf("%s: %v", b.Allow, err)
		}
	}
	if bs := blockers(); len(bs) != 0 {
		t.Fatalf("after the suggested rules: %v", bs)
	}
}
