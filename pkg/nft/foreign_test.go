package nft

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
)

const testTag, testMask = 0xfd000000, 0xff000000

var (
	tcp4 = packet{nfproto: unix.NFPROTO_IPV4, l4proto: unix.IPPROTO_TCP}
	udp4 = packet{nfproto: unix.NFPROTO_IPV4, l4proto: unix.IPPROTO_UDP}
	tcp6 = packet{nfproto: unix.NFPROTO_IPV6, l4proto: unix.IPPROTO_TCP}
)

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// ctMarkIs is nft's "ct mark and MASK == VALUE" (op eq) or "!=".
func ctMarkIs(op expr.CmpOp, mask, value uint32) []expr.Any {
	return []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(mask), Xor: u32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: u32(value)}}
}

func ptr[T any](v T) *T { return &v }

// connmark is iptables' "-m connmark [!] --mark value/mask".
func connmark(value, mask uint32, invert bool) *expr.Match {
	info := xt.Unknown(slices.Concat(u32(value), u32(mask), []byte{0, 0, 0, 0}))
	if invert {
		info[8] = 1
	}
	return &expr.Match{Name: "connmark", Rev: 1, Info: &info}
}

func metaIs(key expr.MetaKey, b byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{b}}}
}

func TestWalkerShape(t *testing.T) {
	accept := &expr.Verdict{Kind: expr.VerdictAccept}
	cat := func(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }
	for _, tc := range []struct {
		name       string
		exprs      []expr.Any
		pkt        packet
		want       int
		wantReject bool
	}{
		{"reject", []expr.Any{&expr.Reject{Type: 2, Code: 1}}, tcp4, matchAll, true},
		{"counter reject", []expr.Any{&expr.Counter{}, &expr.Reject{Type: 0, Code: 13}}, udp4, matchAll, true},
		{"iptables REJECT", []expr.Any{&expr.Counter{}, &expr.Target{Name: "REJECT"}}, tcp6, matchAll, true},
		{"iptables comment", []expr.Any{&expr.Match{Name: "comment", Info: ptr(xt.Comment("010 drop"))}, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}, tcp4, matchAll, false},
		{"iptables comment and connmark", []expr.Any{&expr.Match{Name: "comment", Info: ptr(xt.Comment("fwdd"))}, connmark(testTag, testMask, false), accept}, tcp4, matchFwdd, false},
		{"iptables other match", []expr.Any{&expr.Match{Name: "nfacct", Info: &xt.Unknown{}}, &expr.Verdict{Kind: expr.VerdictDrop}}, tcp4, matchOther, false},
		{"reject with icmp, ipv4", cat(metaIs(expr.MetaKeyNFPROTO, unix.NFPROTO_IPV4), []expr.Any{&expr.Reject{Code: 13}}), udp4, matchFwdd, true},
		{"reject with icmp, ipv6", cat(metaIs(expr.MetaKeyNFPROTO, unix.NFPROTO_IPV4), []expr.Any{&expr.Reject{Code: 13}}), tcp6, matchOther, false},
		{"reject with tcp reset, tcp", cat(metaIs(expr.MetaKeyL4PROTO, unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: 1}}), tcp6, matchFwdd, true},
		{"reject with tcp reset, udp", cat(metaIs(expr.MetaKeyL4PROTO, unix.IPPROTO_TCP), []expr.Any{&expr.Reject{Type: 1}}), udp4, matchOther, false},
		{"ct mark tag accept", cat(ctMarkIs(expr.CmpOpEq, testMask, testTag), []expr.Any{accept}), tcp4, matchFwdd, false},
		{"ct mark fewer tag bits", cat(ctMarkIs(expr.CmpOpEq, 0xfd000000, testTag), []expr.Any{accept}), tcp4, matchFwdd, false},
		{"ct mark whole", cat(ctMarkIs(expr.CmpOpEq, 0xffffffff, testTag), []expr.Any{accept}), tcp4, matchOther, false},
		{"ct mark other tag", cat(ctMarkIs(expr.CmpOpEq, testMask, 0xfe000000), []expr.Any{accept}), tcp4, matchOther, false},
		{"ct mark != 0", []expr.Any{&expr.Ct{Key: expr.CtKeyMARK, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)}, accept}, tcp4, matchFwdd, false},
		{"ct mark and tag != tag", cat(ctMarkIs(expr.CmpOpNeq, testMask, testTag), []expr.Any{accept}), tcp4, matchOther, false},
		{"ct mark set", []expr.Any{&expr.Immediate{Register: 1, Data: u32(1)}, &expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true}, accept}, tcp4, matchOther, false},
		{"ct state", []expr.Any{&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(6), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)}, accept}, tcp4, matchOther, false},
	} {
		// The verdict of a rule that does not match is not looked at.
		w := walker{tag: testTag, mask: testMask, pkt: tc.pkt}
		got, _, reject := w.shape(&nftables.Rule{Exprs: tc.exprs})
		if got != tc.want || reject != tc.wantReject {
			t.Errorf("%s: match %d, reject %v; want %d, %v", tc.name, got, reject, tc.want, tc.wantReject)
		}
	}
}

func TestBlocks(t *testing.T) {
	rule := func(h uint64, exprs ...expr.Any) *nftables.Rule { return &nftables.Rule{Handle: h, Exprs: exprs} }
	tcpReset := append(metaIs(expr.MetaKeyL4PROTO, unix.IPPROTO_TCP), &expr.Reject{Type: 1})
	for _, tc := range []struct {
		name   string
		rules  map[string][]*nftables.Rule
		policy bool
		fam    nftables.TableFamily
		want   string
	}{
		{"reject", map[string][]*nftables.Rule{"forward": {rule(2, &expr.Reject{Type: 2, Code: 1})}}, false, nftables.TableFamilyINet,
			"rule handle 2 in chain forward rejects every packet"},
		{"goto a chain that rejects", map[string][]*nftables.Rule{
			"forward": {rule(2, &expr.Verdict{Kind: expr.VerdictGoto, Chain: "sub"})},
			"sub":     {rule(4, &expr.Counter{}, &expr.Reject{})},
		}, false, nftables.TableFamilyIPv4, "rule handle 4 in chain sub rejects every packet"},
		{"tcp reset, then policy drop", map[string][]*nftables.Rule{"forward": {rule(3, tcpReset...)}}, true, nftables.TableFamilyINet,
			"rule handle 3 in chain forward rejects fwdd's connections (tcp); policy drop (udp)"},
		{"tcp reset, policy accept", map[string][]*nftables.Rule{"forward": {rule(3, tcpReset...)}}, false, nftables.TableFamilyIPv6,
			"rule handle 3 in chain forward rejects fwdd's connections (tcp)"},
		{"ipv4 only", map[string][]*nftables.Rule{"forward": {rule(3, append(metaIs(expr.MetaKeyNFPROTO, unix.NFPROTO_IPV4), &expr.Reject{})...)}}, false, nftables.TableFamilyINet,
			"rule handle 3 in chain forward rejects fwdd's connections (ipv4)"},
		{"accepted first", map[string][]*nftables.Rule{"forward": {
			rule(2, append(ctMarkIs(expr.CmpOpEq, testMask, testTag), &expr.Verdict{Kind: expr.VerdictAccept})...),
			rule(3, &expr.Reject{}),
		}}, true, nftables.TableFamilyINet, ""},
	} {
		if got := blocks(tc.rules, "forward", tc.policy, testTag, testMask, packetsOf(tc.fam)); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
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
table inet rej {
	chain forward {
		type filter hook forward priority 0;
		reject
	}
}
table ip rejicmp {
	chain forward {
		type filter hook forward priority 0;
		counter reject with icmp type admin-prohibited
	}
}
table inet rejicmp6 {
	chain forward {
		type filter hook forward priority 0;
		reject with icmpv6 type admin-prohibited
	}
}
table inet rejgoto {
	chain forward {
		type filter hook forward priority 0;
		goto sub
	}
	chain sub {
		reject with tcp reset
	}
}
`)
	got := blockers()
	want := []string{
		"table inet filter chain forward: policy drop",
		"table inet narrow chain forward: policy drop",
		"table inet rej chain forward: rule handle 2 in chain forward rejects every packet",
		"table inet rejgoto chain forward: rule handle 4 in chain sub rejects fwdd's connections (tcp)",
		"table inet rejicmp6 chain forward: rule handle 2 in chain forward rejects fwdd's connections (ipv6)",
		"table ip rejicmp chain forward: rule handle 2 in chain forward rejects every packet",
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
	// Rules with "-m comment" (puppetlabs-firewall comments every rule):
	// the drop is reported, and the accept with a comment lets fwdd's
	// connections through.
	ip6t := func(args ...string) {
		t.Helper()
		if out, err := gw.Run(ctx, append([]string{"ip6tables-nft"}, args...)...); err != nil {
			t.Fatalf("ip6tables-nft %v: %v\n%s", args, err, out)
		}
	}
	ip6t("-A", "FORWARD", "-m", "comment", "--comment", "999 drop all", "-j", "DROP")
	var commented *Blocker
	for _, b := range blockers() {
		if b.Family == "ip6" && b.Table == "filter" && b.Chain == "FORWARD" {
			commented = &b
		}
	}
	if commented == nil || commented.Reason != "rule handle 2 in chain FORWARD drops every packet" ||
		commented.Allow != "ip6tables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT" {
		t.Fatalf("ip6tables-nft FORWARD -m comment -j DROP: %+v", commented)
	}
	ip6t(append([]string{"-I", "FORWARD", "-m", "comment", "--comment", "100 fwdd"},
		strings.Fields(strings.TrimPrefix(commented.Allow, "ip6tables -I FORWARD "))...)...)
	for _, b := range blockers() {
		if b.Table == "filter" && b.Family == "ip6" {
			t.Fatalf("still reported after %q with a comment: %v", commented.Allow, b)
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
