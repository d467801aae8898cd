package nft

import (
	"net/netip"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// baseChain declares one of the table's base chains: where it hooks into
// the kernel's packet path, and its fixed rules. The table is data so that
// the hooks and priorities can be read (and documented, README.md) in one
// place; the regular chains (dispatch, fwd_<name>) follow "output".
type baseChain struct {
	name     string
	typ      string // nat | filter
	hook     string // prerouting | input | forward | output | postrouting
	priority int
	// forwardPolicy: the policy is [daemon] forward_policy (else accept).
	forwardPolicy bool
	comment       string
	rules         func(policy config.ForwardPolicy, l ctmark.Layout) []Rule
}

var baseChains = []baseChain{
	{name: "prerouting", typ: "nat", hook: "prerouting", priority: -100,
		comment: "DNAT of connections arriving from the network",
		// The first rule's comment marks the table as fwdd's (see Ownership).
		rules: func(config.ForwardPolicy, ctmark.Layout) []Rule {
			return []Rule{{Comment: OwnerMark, Stmts: []Stmt{jump(chainDispatch)}}}
		}},
	{name: "output", typ: "nat", hook: "output", priority: -100,
		comment: "DNAT of the host's own connections to its forwarded addresses",
		rules: func(config.ForwardPolicy, ctmark.Layout) []Rule {
			return []Rule{
				{Stmts: []Stmt{matchNFProto{IPv4}, matchAddr{dst: true, prefix: netip.MustParsePrefix("127.0.0.0/8")}, ret}},
				{Stmts: []Stmt{matchNFProto{IPv6}, matchAddr{dst: true, prefix: netip.MustParsePrefix("::1/128")}, ret}},
				{Stmts: []Stmt{jump(chainDispatch)}},
			}
		}},
	{name: "postrouting", typ: "nat", hook: "postrouting", priority: 100,
		comment: "source NAT only for connections fwdd forwarded",
		rules: func(_ config.ForwardPolicy, l ctmark.Layout) []Rule {
			ctMark := key{loadCtMark(l)}
			return []Rule{
				// NAT chains see only the first packet of a connection:
				// this counts new connections per forward, exactly once
				// each, without any work in user space.
				{Stmts: []Stmt{matchSet{ctMark, SetTrafficNew}, counter{}}},
				{Stmts: []Stmt{matchNFProto{IPv4}, natMap{snat: true, fam: IPv4, key: ctMark, set: setName("snat", IPv4, "")}}},
				{Stmts: []Stmt{matchNFProto{IPv6}, natMap{snat: true, fam: IPv6, key: ctMark, set: setName("snat", IPv6, "")}}},
				{Stmts: []Stmt{matchSet{ctMark, SetNoSNAT}, ret}},
				{Stmts: []Stmt{matchCtMarkMasked{mask: l.TagMask, value: l.Tag}, masquerade{}}},
			}
		}},
	{name: "count_forward", typ: "filter", hook: "forward", priority: 10, forwardPolicy: true,
		comment: "per-forward packet and byte counters, both directions",
		rules: func(policy config.ForwardPolicy, l ctmark.Layout) []Rule {
			r := countRules(l, true, true)
			if policy == config.ForwardDrop {
				// Drop by default: only fwdd's connections pass.
				r = append(r, Rule{Stmts: []Stmt{matchCtMarkMasked{mask: l.TagMask, value: l.Tag}, accept}})
			}
			return r
		}},
	{name: "count_input", typ: "filter", hook: "input", priority: 10,
		comment: "replies to the host's own forwarded connections",
		rules:   func(_ config.ForwardPolicy, l ctmark.Layout) []Rule { return countRules(l, false, true) }},
	{name: "count_output", typ: "filter", hook: "output", priority: 10,
		comment: "the host's own forwarded connections",
		rules:   func(_ config.ForwardPolicy, l ctmark.Layout) []Rule { return countRules(l, true, false) }},
}

func (bc baseChain) chain(policy config.ForwardPolicy, l ctmark.Layout) *Chain {
	c := &Chain{Name: bc.name, Comment: bc.comment, Rules: bc.rules(policy, l),
		Hook: &Hook{Type: bc.typ, Hook: bc.hook, Priority: bc.priority}}
	if bc.forwardPolicy && policy == config.ForwardDrop {
		c.Hook.Drop = true
		c.Comment += "; drop by default: only fwdd's connections pass"
	}
	return c
}

func countRules(l ctmark.Layout, orig, reply bool) []Rule {
	var r []Rule
	if orig {
		r = append(r, Rule{Stmts: []Stmt{matchCtDirection{false}, matchSet{key{loadCtMark(l)}, SetTrafficOrig}, counter{}}})
	}
	if reply {
		r = append(r, Rule{Stmts: []Stmt{matchCtDirection{true}, matchSet{key{loadCtMark(l)}, SetTrafficReply}, counter{}}})
	}
	return r
}
