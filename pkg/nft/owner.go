package nft

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// OwnerMark is the comment of the first rule of fwdd's prerouting chain: it
// marks a table as created by fwdd. google/nftables cannot set a table's
// own comment, and of the objects it reads back only rules keep theirs.
const OwnerMark = "managed by fwdd"

// Ownership says whether table inet <name> exists and whether fwdd created it.
type Ownership struct {
	Exists bool
	Owned  bool
	Chains []string // the table's chains, to name them when it is not fwdd's
}

// NotOwnedError is returned when a table of fwdd's configured name exists
// but was created by another program: fwdd neither adopts, replaces nor
// deletes it.
type NotOwnedError struct {
	Table  string
	Chains []string
}

func (e *NotOwnedError) Error() string {
	chains := "no chains"
	if len(e.Chains) > 0 {
		chains = "chains " + strings.Join(e.Chains, ", ")
	}
	return fmt.Sprintf("table inet %s exists and was not created by fwdd (%s); fwdd leaves it as it is: set [daemon] table to another name", e.Table, chains)
}

// CheckOwner returns a *NotOwnedError when table inet <name> exists and is
// not fwdd's; nil when it is fwdd's or absent.
func (k *Netlink) CheckOwner(table string) error {
	o, err := k.Ownership(table)
	if err != nil {
		return fmt.Errorf("read table inet %s: %w", table, err)
	}
	if o.Exists && !o.Owned {
		return &NotOwnedError{Table: table, Chains: o.Chains}
	}
	return nil
}

// Ownership reads who created table inet <name>. A table is fwdd's when the
// first rule of its prerouting chain carries OwnerMark, or, for tables of
// fwdd versions before the mark, when it has fwdd's prerouting, dispatch
// and postrouting chains and its traffic_orig counters.
func (k *Netlink) Ownership(table string) (Ownership, error) {
	c, err := k.readConn()
	if err != nil {
		return Ownership{}, err
	}
	defer func() { _ = c.CloseLasting() }()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return Ownership{}, fmt.Errorf("list tables: %w", err)
	}
	var t *nftables.Table
	for _, x := range tables {
		if x.Name == table {
			t = x
		}
	}
	if t == nil {
		return Ownership{}, nil
	}
	o := Ownership{Exists: true}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return o, fmt.Errorf("list chains: %w", err)
	}
	var pre *nftables.Chain
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		o.Chains = append(o.Chains, ch.Name)
		if ch.Name == "prerouting" {
			pre = ch
		}
	}
	if pre != nil {
		rules, err := c.GetRules(t, pre)
		if err != nil {
			return o, fmt.Errorf("list rules of chain prerouting: %w", err)
		}
		if len(rules) > 0 {
			if s, ok := userdata.GetString(rules[0].UserData, userdata.TypeComment); ok && s == OwnerMark {
				o.Owned = true
				return o, nil
			}
		}
	}
	if slices.Contains(o.Chains, "prerouting") && slices.Contains(o.Chains, chainDispatch) && slices.Contains(o.Chains, "postrouting") {
		sets, err := c.GetSets(t)
		if err != nil {
			return o, fmt.Errorf("list sets: %w", err)
		}
		for _, s := range sets {
			if s.Name == SetTrafficOrig {
				o.Owned = true
			}
		}
	}
	return o, nil
}
