package nft

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
)

// Blocker is a forward-hook chain of another table that drops fwdd's
// forwarded connections: every table's base chains see every packet, so an
// accept in fwdd's table does not override a drop elsewhere.
type Blocker struct {
	Family string `json:"family"` // ip, ip6, inet
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	// Reason says what drops: "policy drop" or "rule handle N drops every packet".
	Reason string `json:"reason"`
	// Allow is the exact command that lets fwdd's connections through, in
	// the syntax of the tool that owns the table (nft, iptables, firewalld, ufw).
	Allow string `json:"allow"`
}

func (b Blocker) String() string {
	return fmt.Sprintf("table %s %s chain %s: %s", b.Family, b.Table, b.Chain, b.Reason)
}

// Owner guesses which tool wrote a table, from the names those tools use:
// "firewalld", "ufw" (its chains in iptables' filter table), "docker",
// "iptables" (iptables-nft's tables) or "nft".
func Owner(family, table string, chains []string) string {
	if table == "firewalld" {
		return "firewalld"
	}
	iptables := (family == "ip" || family == "ip6") &&
		(table == "filter" || table == "nat" || table == "mangle" || table == "raw" || table == "security")
	if iptables {
		for _, c := range chains {
			if strings.HasPrefix(c, "ufw-") || strings.HasPrefix(c, "ufw6-") {
				return "ufw"
			}
		}
		for _, c := range chains {
			if c == "DOCKER-USER" {
				return "docker"
			}
		}
		for _, c := range chains {
			if c == "FORWARD" || c == "INPUT" || c == "OUTPUT" || c == "PREROUTING" || c == "POSTROUTING" {
				return "iptables"
			}
		}
	}
	return "nft"
}

// AllowRule returns the command that makes chain of a table accept fwdd's
// connections (ct mark tag under mask), for the tool that owns the table.
func AllowRule(owner, family, table, chain string, tag, mask uint32) string {
	switch owner {
	case "docker", "iptables", "ufw":
		cmd := "iptables"
		if family == "ip6" {
			cmd = "ip6tables"
		}
		match := fmt.Sprintf("-m connmark --mark %#08x/%#08x -j ACCEPT", tag, mask)
		switch owner {
		case "docker":
			// Docker rewrites FORWARD but leaves DOCKER-USER to the operator.
			return fmt.Sprintf("%s -I DOCKER-USER %s", cmd, match)
		case "ufw":
			return fmt.Sprintf("add \"-A ufw-before-forward %s\" to /etc/ufw/before.rules (before6.rules for IPv6), then ufw reload", match)
		}
		return fmt.Sprintf("%s -I %s %s", cmd, chain, match)
	case "firewalld":
		return fmt.Sprintf("firewall-cmd --permanent --direct --add-rule ipv4 filter FORWARD 0 -m connmark --mark %#08x/%#08x -j ACCEPT && firewall-cmd --reload", tag, mask)
	}
	return fmt.Sprintf("nft insert rule %s %s %s ct mark and %#08x == %#08x accept", family, table, chain, mask, tag)
}

// ForeignBlockers lists the forward-hook chains of tables other than fwdd's
// own (inet own) that drop fwdd's connections, marked tag under mask. It
// only reads.
func (k *Netlink) ForeignBlockers(own string, tag, mask uint32) ([]Blocker, error) {
	c, err := k.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	type tkey struct {
		fam  nftables.TableFamily
		name string
	}
	byTable := map[tkey][]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table == nil {
			continue
		}
		f := ch.Table.Family
		if f != nftables.TableFamilyINet && f != nftables.TableFamilyIPv4 && f != nftables.TableFamilyIPv6 {
			continue
		}
		if f == nftables.TableFamilyINet && ch.Table.Name == own {
			continue
		}
		k := tkey{f, ch.Table.Name}
		byTable[k] = append(byTable[k], ch)
	}
	var out []Blocker
	for tk, chs := range byTable {
		var hasForward bool
		names := make([]string, len(chs))
		for i, ch := range chs {
			names[i] = ch.Name
			hasForward = hasForward || (ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward)
		}
		if !hasForward {
			continue
		}
		rules := map[string][]*nftables.Rule{}
		for _, ch := range chs {
			rs, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return nil, fmt.Errorf("list rules of table %s %s chain %s: %w", familyName(tk.fam), tk.name, ch.Name, err)
			}
			rules[ch.Name] = rs
		}
		owner := Owner(familyName(tk.fam), tk.name, names)
		for _, ch := range chs {
			if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward {
				continue
			}
			if ch.Type != "" && ch.Type != nftables.ChainTypeFilter {
				continue
			}
			policyDrop := ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop
			reason := blocks(rules, ch.Name, policyDrop, tag, mask)
			if reason == "" {
				continue
			}
			out = append(out, Blocker{Family: familyName(tk.fam), Table: tk.name, Chain: ch.Name, Reason: reason,
				Allow: AllowRule(owner, familyName(tk.fam), tk.name, ch.Name, tag, mask)})
		}
	}
	slices.SortFunc(out, func(a, b Blocker) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// verdicts of a walk through a chain, for one of fwdd's new connections.
const (
	walkContinue = iota // fell off the end (or returned)
	walkAccept          // a rule accepts fwdd's marks
	walkDrop            // an unconditional drop or reject
)

// blocks walks a base chain as one of fwdd's new connections would (its ct
// mark set, anything else unknown) and says why it is dropped, or "" when
// it is accepted or may pass. Only rules that match every packet, or
// exactly fwdd's marks, are decided; unconditional jumps are followed.
func blocks(rules map[string][]*nftables.Rule, chain string, policyDrop bool, tag, mask uint32) string {
	v, why := walk(rules, chain, tag, mask, 0)
	switch {
	case v == walkDrop:
		return why
	case v == walkContinue && policyDrop:
		return "policy drop"
	}
	return ""
}

func walk(rules map[string][]*nftables.Rule, chain string, tag, mask uint32, depth int) (int, string) {
	if depth > 16 {
		return walkContinue, ""
	}
	for _, r := range rules[chain] {
		matches, verdict, target := ruleShape(r, tag, mask)
		switch {
		case matches == matchFwdd && verdict != nil && verdict.Kind == expr.VerdictAccept:
			return walkAccept, ""
		case matches != matchAll:
			continue
		case target == "REJECT", verdict != nil && verdict.Kind == expr.VerdictDrop:
			return walkDrop, fmt.Sprintf("rule handle %d in chain %s drops every packet", r.Handle, chain)
		case verdict == nil:
			continue
		case verdict.Kind == expr.VerdictAccept:
			return walkAccept, ""
		case verdict.Kind == expr.VerdictReturn:
			return walkContinue, ""
		case verdict.Kind == expr.VerdictJump, verdict.Kind == expr.VerdictGoto:
			v, why := walk(rules, verdict.Chain, tag, mask, depth+1)
			if v != walkContinue || verdict.Kind == expr.VerdictGoto {
				return v, why
			}
		}
	}
	return walkContinue, ""
}

const (
	matchAll   = iota // the rule matches every packet
	matchFwdd         // it matches exactly fwdd's ct marks (and nothing else)
	matchOther        // any other condition
)

// ruleShape classifies a rule's conditions and returns its verdict (nil if
// none) and the name of an iptables target (REJECT) if it has one.
func ruleShape(r *nftables.Rule, tag, mask uint32) (match int, verdict *expr.Verdict, target string) {
	match = matchAll
	var ctMark bool
	var bits uint32 = 0xffffffff
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Counter, *expr.Log:
		case *expr.Verdict:
			verdict = e
		case *expr.Target:
			target = e.Name
		case *expr.Ct:
			if e.Key != expr.CtKeyMARK || e.SourceRegister {
				return matchOther, verdict, target
			}
			ctMark = true
		case *expr.Bitwise:
			if !ctMark || len(e.Mask) != 4 {
				return matchOther, verdict, target
			}
			bits = binary.NativeEndian.Uint32(e.Mask)
		case *expr.Cmp:
			if !ctMark || e.Op != expr.CmpOpEq || len(e.Data) != 4 {
				return matchOther, verdict, target
			}
			if !coversFwdd(binary.NativeEndian.Uint32(e.Data), bits, tag, mask) {
				return matchOther, verdict, target
			}
			match = matchFwdd
		case *expr.Match:
			if e.Name != "connmark" || !connmarkCoversFwdd(e, tag, mask) {
				return matchOther, verdict, target
			}
			match = matchFwdd
		default:
			return matchOther, verdict, target
		}
	}
	if ctMark && match != matchFwdd {
		return matchOther, verdict, target
	}
	return match, verdict, target
}

// coversFwdd reports whether "ct mark & bits == value" holds for every mark
// fwdd sets (tag | id for any id): the test may look only at tag bits.
func coversFwdd(value, bits, tag, mask uint32) bool {
	return bits != 0 && bits&^mask == 0 && value == tag&bits
}

// connmarkCoversFwdd decodes iptables' "-m connmark --mark V/M" (struct
// xt_connmark_mtinfo1: mark, mask, invert; host byte order). xt has no
// decoder of its own for it.
func connmarkCoversFwdd(m *expr.Match, tag, mask uint32) bool {
	u, ok := m.Info.(*xt.Unknown)
	if !ok || len(*u) < 9 {
		return false
	}
	b := []byte(*u)
	value, bits, invert := binary.NativeEndian.Uint32(b[0:4]), binary.NativeEndian.Uint32(b[4:8]), b[8]
	return invert == 0 && coversFwdd(value, bits, tag, mask)
}

// TableInfo names a table of another component and guesses its owner.
type TableInfo struct {
	Family string
	Name   string
	Chains []string
	Owner  string // see Owner
}

// Tables lists the tables of the namespace with their chains, fwdd's own
// (inet own) included.
func (k *Netlink) Tables() ([]TableInfo, error) {
	c, err := k.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list chains: %w", err)
	}
	out := make([]TableInfo, 0, len(tables))
	for _, t := range tables {
		ti := TableInfo{Family: familyName(t.Family), Name: t.Name}
		for _, ch := range chains {
			if ch.Table != nil && ch.Table.Family == t.Family && ch.Table.Name == t.Name {
				ti.Chains = append(ti.Chains, ch.Name)
			}
		}
		ti.Owner = Owner(ti.Family, ti.Name, ti.Chains)
		out = append(out, ti)
	}
	return out, nil
}
