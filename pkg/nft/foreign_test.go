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

	"github.com/google/go-cmp/cmp"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"

	"github.com/fwdd/fwdd/internal/sandbox"
	"github.com/fwdd/fwdd/internal/testutil"
)

const testTag, testMask = 0xfd000000, 0xff000000

// forwardsAll is fwdd forwarding tcp and udp over IPv4 and IPv6.
var forwardsAll = Forwarded{Tag: testTag, Mask: testMask, packets: []packet{tcp4, udp4, tcp6, udp6}}

var (
	tcp4 = packet{nfproto: unix.NFPROTO_IPV4, l4proto: unix.IPPROTO_TCP}
	udp4 = packet{nfproto: unix.NFPROTO_IPV4, l4proto: unix.IPPROTO_UDP}
	tcp6 = packet{nfproto: unix.NFPROTO_IPV6, l4proto: unix.IPPROTO_TCP}
	udp6 = packet{nfproto: unix.NFPROTO_IPV6, l4proto: unix.IPPROTO_UDP}
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

func ctStatus(op expr.CmpOp, mask, value uint32) []expr.Any {
	return []expr.Any{&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32(mask), Xor: u32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: u32(value)}}
}

// xtConntrack is iptables' "-m conntrack" of a revision with match flags,
// inverted flags and a --ctstate mask.
func xtConntrack(rev uint32, flags, invert xt.ConntrackFlags, state uint16) *expr.Match {
	base := xt.ConntrackMtinfoBase{MatchFlags: uint16(flags), InvertFlags: uint16(invert)}
	m := &expr.Match{Name: "conntrack", Rev: rev}
	switch rev {
	case 1:
		m.Info = &xt.ConntrackMtinfo1{ConntrackMtinfoBase: base, StateMask: uint8(state)}
	case 2:
		m.Info = &xt.ConntrackMtinfo2{ConntrackMtinfoBase: base, StateMask: state}
	default:
		m.Info = &xt.ConntrackMtinfo3{ConntrackMtinfo2: xt.ConntrackMtinfo2{ConntrackMtinfoBase: base, StateMask: state}}
	}
	return m
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
		{"ct status dnat", cat(ctStatus(expr.CmpOpNeq, ctStatusDNAT, 0), []expr.Any{accept}), udp4, matchFwdd, false},
		{"ct status & dnat == dnat", cat(ctStatus(expr.CmpOpEq, ctStatusDNAT, ctStatusDNAT), []expr.Any{accept}), tcp6, matchFwdd, false},
		{"ct status snat,dnat", cat(ctStatus(expr.CmpOpNeq, 0x30, 0), []expr.Any{accept}), tcp4, matchFwdd, false},
		{"ct status snat", cat(ctStatus(expr.CmpOpNeq, 0x10, 0), []expr.Any{accept}), tcp4, matchOther, false},
		{"ct status != dnat", []expr.Any{&expr.Ct{Key: expr.CtKeySTATUS, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(ctStatusDNAT)}, accept}, tcp4, matchOther, false},
		{"ct status dnat, ct mark tag", cat(ctStatus(expr.CmpOpNeq, ctStatusDNAT, 0), ctMarkIs(expr.CmpOpEq, testMask, testTag), []expr.Any{accept}), tcp4, matchFwdd, false},
		{"ct status dnat, other tag", cat(ctStatus(expr.CmpOpNeq, ctStatusDNAT, 0), ctMarkIs(expr.CmpOpEq, testMask, 0x01000000), []expr.Any{accept}), tcp4, matchOther, false},
		{"-m conntrack --ctstate DNAT", []expr.Any{xtConntrack(3, xt.ConntrackState, 0, xtStateDNAT), accept}, tcp4, matchFwdd, false},
		{"-m conntrack --ctstate RELATED,ESTABLISHED,DNAT (rev 1)", []expr.Any{xtConntrack(1, xt.ConntrackState, 0, 0x86), accept}, tcp4, matchFwdd, false},
		{"-m conntrack --ctstate RELATED,ESTABLISHED", []expr.Any{xtConntrack(3, xt.ConntrackState, 0, 0x06), accept}, tcp4, matchOther, false},
		{"-m conntrack ! --ctstate DNAT", []expr.Any{xtConntrack(3, xt.ConntrackState, xt.ConntrackState, xtStateDNAT), accept}, tcp4, matchOther, false},
		{"-m conntrack --ctstate DNAT --ctorigdstport 80", []expr.Any{xtConntrack(3, xt.ConntrackState|xt.ConntrackOrigDstPort, 0, xtStateDNAT), accept}, tcp4, matchOther, false},
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

func TestForwardedBy(t *testing.T) {
	cfg := testutil.Config(t, `
[daemon]
ct_mark = "0x00fd0000/0x00ff0000"
ct_mask = 0xffff0000

[[forward]]
name = "web"
port = 80
to = "10.0.0.2"

[[forward]]
name = "dns6"
proto = ["udp", "tcp"]
port = 53
to = "[fd00::2]"
`)
	fw := ForwardedBy(cfg)
	if fw.Tag != 0x00fd0000 || fw.Mask != 0x00ff0000 {
		t.Errorf("tag %#x/%#x", fw.Tag, fw.Mask)
	}
	if d := cmp.Diff([]packet{tcp4, tcp6, udp6}, fw.packetsIn(nftables.TableFamilyINet), cmp.AllowUnexported(packet{})); d != "" {
		t.Errorf("inet (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]packet{tcp4}, fw.packetsIn(nftables.TableFamilyIPv4), cmp.AllowUnexported(packet{})); d != "" {
		t.Errorf("ip (-want +got):\n%s", d)
	}
	for fam, want := range map[string]bool{"ip": true, "ip6": true, "inet": true, "bridge": false, "netdev": false} {
		if fw.Sees(fam) != want {
			t.Errorf("Sees(%s) = %v", fam, !want)
		}
	}
	v4 := ForwardedBy(testutil.Config(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2\"\n"))
	if !v4.Sees("ip") || v4.Sees("ip6") || !v4.Sees("inet") {
		t.Errorf("IPv4 only: ip %v, ip6 %v, inet %v", v4.Sees("ip"), v4.Sees("ip6"), v4.Sees("inet"))
	}
	if none := ForwardedBy(testutil.Config(t, "")); none.Sees("inet") {
		t.Error("no forwards: inet tables see fwdd's traffic")
	}
}

func TestAllowRule(t *testing.T) {
	for _, tc := range []struct{ owner, family, table, chain, want string }{
		{"nft", "inet", "filter", "forward", "nft insert rule inet filter forward ct mark and 0xff000000 == 0xfd000000 accept"},
		{"iptables", "ip", "filter", "FORWARD", "iptables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
		{"docker", "ip", "filter", "FORWARD", "iptables -I DOCKER-USER -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
		{"iptables", "ip6", "filter", "FORWARD", "ip6tables -I FORWARD -m connmark --mark 0xfd000000/0xff000000 -j ACCEPT"},
		// Not an iptables rule (firewall-cmd --direct): with firewalld's
		// nftables backend its own chain would still reject the packet.
		{"firewalld", "inet", "firewalld", "filter_FORWARD", "set StrictForwardPorts=no in /etc/firewalld/firewalld.conf, then run firewall-cmd --reload " +
			"(firewalld's forward chain then accepts DNATed connections, all of fwdd's among them, before its zones and policies)"},
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
		bs, err := k.ForeignBlockers("fwdd", forwardsAll)
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
table inet dnatok {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		ct status dnat accept
	}
}
table ip dnatfirst {
	chain forward {
		type filter hook forward priority 0;
		ct status dnat counter accept
		reject with icmp type admin-prohibited
	}
}
table inet marked {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct mark != 0 accept
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
	// fwdd forwarding IPv4 tcp only: no ip6 chain, and the reasons of the
	// inet ones for that traffic.
	v4, err := k.ForeignBlockers("fwdd", ForwardedBy(testutil.Config(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.0.0.2\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	names = nil
	for _, b := range v4 {
		names = append(names, b.String())
	}
	want = []string{
		"table inet filter chain forward: policy drop",
		"table inet narrow chain forward: policy drop",
		"table inet rej chain forward: rule handle 2 in chain forward rejects every packet",
		"table inet rejgoto chain forward: rule handle 4 in chain sub rejects fwdd's connections",
		"table ip rejicmp chain forward: rule handle 2 in chain forward rejects every packet",
	}
	if strings.Join(names, "\n") != strings.Join(want, "\n") {
		t.Fatalf("blockers of IPv4 tcp:\n%s\nwant:\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
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
	// A drop policy and the conntrack match of DNATed connections (what
	// firewalld's iptables backend writes): fwdd's connections pass.
	ip6t("-F", "FORWARD")
	ip6t("-P", "FORWARD", "DROP")
	ip6t("-A", "FORWARD", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "ACCEPT")
	for _, b := range blockers() {
		if b.Table == "filter" && b.Family == "ip6" {
			t.Fatalf("reported despite -m conntrack --ctstate DNAT -j ACCEPT: %v", b)
		}
	}
	ip6t("-R", "FORWARD", "1", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	var ip6filter []string
	for _, b := range blockers() {
		if b.Table == "filter" && b.Family == "ip6" {
			ip6filter = append(ip6filter, b.String())
		}
	}
	if !slices.Equal(ip6filter, []string{"table ip6 filter chain FORWARD: policy drop"}) {
		t.Fatalf("ip6 filter: %v, want its policy drop", ip6filter)
	}
	ip6t("-F", "FORWARD")
	ip6t("-P", "FORWARD", "ACCEPT")
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

// TestKernelForeignAcceptsDNAT: a forward chain of another table with a
// drop policy that accepts DNATed connections (ct status dnat, as
// firewalld writes it) lets fwdd's connections through and is not
// reported; without that rule it is reported, and the connection fails.
func TestKernelForeignAcceptsDNAT(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	gw := topo.Gateway
	if err := gw.SetSysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	k := &Netlink{NetNS: gw.Fd()}
	m := compile(t, "[[forward]]\nname = \"web\"\nport = 80\nto = \"10.22.0.2:8080\"\n", nil)
	if _, err := (&Applier{Backend: k}).Apply(m); err != nil {
		t.Fatal(err)
	}
	if _, err := topo.Backend.ListenTCP("10.22.0.2:8080"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := filepath.Join(t.TempDir(), "r.nft")
	if err := os.WriteFile(p, []byte(`table inet other {
	chain forward {
		type filter hook forward priority 0; policy drop;
		ct state established,related accept
		ct status dnat accept
	}
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := gw.Run(ctx, "nft", "-f", p); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	greet := func() (string, error) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return topo.Client.Greet(ctx, "tcp", "10.11.0.1:80")
	}
	bs, err := k.ForeignBlockers(m.Table, ForwardedBy(m.Config))
	if err != nil || len(bs) != 0 {
		t.Fatalf("blockers %v (%v), want none", bs, err)
	}
	if g, err := greet(); err != nil || !strings.HasPrefix(g, "backend ") {
		t.Fatalf("through fwdd with ct status dnat accepted: %q, %v", g, err)
	}
	if out, err := gw.Run(ctx, "nft", "delete", "rule", "inet", "other", "forward", "handle", "3"); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	bs, err = k.ForeignBlockers(m.Table, ForwardedBy(m.Config))
	if err != nil || len(bs) != 1 || bs[0].String() != "table inet other chain forward: policy drop" {
		t.Fatalf("blockers %v (%v), want the policy drop of inet other", bs, err)
	}
	if g, err := greet(); err == nil {
		t.Fatalf("through fwdd with the drop policy alone: %q, want a failure", g)
	}
}

// firewalldTable is the forward part of firewalld's table (nftables
// backend, as src/firewall/core/nftables.py writes it): DNATed connections
// are accepted (dnat "accept") or, with StrictForwardPorts=yes, sent to a
// chain that accepts firewalld's own forward ports only (dnat "jump
// filter_FORWARD_dnat").
func firewalldTable(dnat, dnatChain string) string {
	return `table inet firewalld {
	chain filter_FORWARD {
		type filter hook forward priority filter + 10; policy accept;
		ct state { established, related } accept
		ct status dnat ` + dnat + `
		iifname "lo" accept
		ct state { invalid } drop
		ip6 daddr { ::/96, ::ffff:0.0.0.0/96, 2002::/24 } reject with icmpv6 type addr-unreachable
		jump filter_FORWARD_dispatch
		reject with icmpx type admin-prohibited
	}
	chain filter_FORWARD_dnat {
` + dnatChain + `
	}
	chain filter_FORWARD_dispatch {
		iifname "eth0" jump filter_FWD_public
	}
	chain filter_FWD_public {
		reject with icmpx type admin-prohibited
	}
}
`
}

// TestKernelForeignFirewalld: firewalld's forward chain lets fwdd's
// connections through by default; with StrictForwardPorts=yes it rejects
// them, and the advice is that setting, not an iptables rule.
func TestKernelForeignFirewalld(t *testing.T) {
	topo := sandbox.New(t, sandbox.Options{NoClient2: true, NoOther: true})
	gw := topo.Gateway
	k := &Netlink{NetNS: gw.Fd()}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	load := func(script string) {
		t.Helper()
		p := filepath.Join(t.TempDir(), "r.nft")
		if err := os.WriteFile(p, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := gw.Run(ctx, "nft", "-f", p); err != nil {
			t.Fatalf("nft: %v\n%s", err, out)
		}
	}
	const forwardPort = "\t\tmeta l4proto tcp ct original proto-dst 8080 accept\n"
	const rejectRest = "\t\treject with icmpx type admin-prohibited\n"
	load(firewalldTable("accept", forwardPort+rejectRest))
	if bs, err := k.ForeignBlockers("fwdd", forwardsAll); err != nil || len(bs) != 0 {
		t.Fatalf("firewalld's default: blockers %v (%v), want none", bs, err)
	}
	allow := AllowRule("firewalld", "inet", "firewalld", "filter_FORWARD", testTag, testMask)
	for _, tc := range []struct{ name, dnatChain, reason string }{
		{"no forward ports", rejectRest, "rule handle 14 in chain filter_FORWARD_dnat rejects every packet"},
		// google/nftables cannot decode the forward port's rule: the
		// chain is passed over, and the final reject found.
		{"a forward port", forwardPort + rejectRest, "rule handle 13 in chain filter_FORWARD rejects every packet"},
	} {
		load("delete table inet firewalld\n" + firewalldTable("jump filter_FORWARD_dnat", tc.dnatChain))
		bs, err := k.ForeignBlockers("fwdd", forwardsAll)
		if err != nil {
			t.Fatalf("StrictForwardPorts=yes, %s: %v", tc.name, err)
		}
		want := Blocker{Family: "inet", Table: "firewalld", Chain: "filter_FORWARD", Reason: tc.reason, Allow: allow}
		if len(bs) != 1 || bs[0] != want {
			t.Fatalf("StrictForwardPorts=yes, %s: blockers %+v, want %+v", tc.name, bs, want)
		}
	}
}
