package nft

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Names of the table's fixed sets and maps. Per family f (4 or 6):
//
//	mark<f>_addr, dnat<f>_addr  daddr . l4proto . dport -> ct mark / backend addr . port
//	mark<f>_port, dnat<f>_port  l4proto . dport (any local address) -> likewise
//	snat<f>                     ct mark -> fixed SNAT address
//	nosnat                      ct marks of forwards with snat = "none"
//	traffic_orig, traffic_reply ct marks with a counter each, per direction
//	traffic_new                 ct marks with a counter of new connections
const (
	SetNoSNAT       = "nosnat"
	SetTrafficOrig  = "traffic_orig"
	SetTrafficReply = "traffic_reply"
	SetTrafficNew   = "traffic_new"
	chainDispatch   = "dispatch"
	forwardChainPfx = "fwd_"
)

func setName(kind string, fam Family, suffix string) string {
	if suffix == "" {
		return fmt.Sprintf("%s%d", kind, fam)
	}
	return fmt.Sprintf("%s%d_%s", kind, fam, suffix)
}

// AssignIDs gives every forward of cfg the id its ct mark carries. The ids
// are a pure function of the forward names in the file: the same file gives
// the same ids on every node, whatever each node's reload history, so that
// connections conntrackd replicates to another gateway stay attributed to
// the right forward there.
//
// A forward's id is its name's FNV-1a hash folded into 1..MaxID. When two
// names hash to the same id, the name that sorts first keeps it and the
// other takes the next free id (wrapping), in sorted-name order. A renamed
// forward therefore gets a new id: its established connections keep the old
// mark, keep flowing (their NAT is in conntrack) but are no longer counted
// or attributed. A removed forward's id is taken again only by a later
// forward whose name hashes to it (about one chance in 16 million).
//
// MaxID is that of the configured ct mark layout ([daemon] ct_mask): 24 bits
// by default; a narrower id field folds the same hash into fewer ids.
func AssignIDs(cfg *config.Config) (map[string]uint32, error) {
	names := make([]string, len(cfg.Forwards))
	for i := range cfg.Forwards {
		names[i] = cfg.Forwards[i].Name
	}
	maxID := cfg.Daemon.CtMark.MaxID()
	return assignIDs(names, maxID, func(name string) uint32 { return nameSlot(name, maxID) })
}

// nameSlot is a forward name's preferred id in 1..maxID.
func nameSlot(name string, maxID uint32) uint32 {
	h := fnv.New32a()
	h.Write([]byte(name))
	return h.Sum32()%maxID + 1
}

// assignIDs gives each name slot(name), or on a collision the next free id
// after it (up to maxID, then from 1); names are taken in sorted order, so
// the result does not depend on the order of the file.
func assignIDs(names []string, maxID uint32, slot func(string) uint32) (map[string]uint32, error) {
	if len(names) > int(maxID) {
		return nil, fmt.Errorf("assign forward ids: %d forwards, but the ct mark's id bits carry at most %d", len(names), maxID)
	}
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	ids := make(map[string]uint32, len(names))
	used := make(map[uint32]bool, len(names))
	for _, name := range sorted {
		if _, dup := ids[name]; dup {
			return nil, fmt.Errorf("assign forward ids: forward %q named twice", name)
		}
		id := slot(name)
		for used[id] {
			if id++; id > maxID {
				id = 1
			}
		}
		ids[name] = id
		used[id] = true
	}
	return ids, nil
}

// restricted reports whether a forward needs its own rules rather than map
// elements: matches on interface or source address are not part of the
// O(1) map keys.
func restricted(f *config.Forward) bool { return f.Interface != "" || len(f.Sources) > 0 }

// part is what one forward contributes to the table: its elements per set
// and, for a restricted forward, its dispatch rules and chain.
//
// A part keeps no elements: they are a function of the forward and its id,
// made when a batch or a diff needs them, so the daemon's memory does not
// grow with them (a 100,000-forward table has 400,000 elements).
type part struct {
	fwd *config.Forward // points into the config compiled; configs are immutable
	id  uint32
	// up says which backends of a balanced forward are in the kernel
	// (nil: all); see Model.WithUp.
	up    []bool
	rules []Rule
	chain *Chain
}

// unchanged reports whether q (of an older model) contributes the same to
// the table as p.
func (p *part) unchanged(q *part) bool {
	return q != nil && q.id == p.id && q.fwd.Equal(p.fwd) && slices.Equal(q.up, p.up)
}

// setsOf lists the table's sets and maps for a ct mark layout; every model
// of that layout has them all, in this order. With a partial ct_mask the
// mark maps are verdict maps, one per chunk of the id (see ctmark.go).
func setsOf(l ctmark.Layout) []*Set {
	markData, chunks := []Field{FieldMark}, 1
	if !l.Whole() {
		markData, chunks = []Field{FieldVerdict}, l.MarkMaps()
	}
	var out []*Set
	for _, fam := range []Family{IPv4, IPv6} {
		af := fam.addrField()
		for _, suffix := range []string{"addr", "port"} {
			k := []Field{FieldProto, FieldPort}
			if suffix == "addr" {
				k = []Field{af, FieldProto, FieldPort}
			}
			for i := range chunks {
				out = append(out, &Set{Name: chunkSetName(setName("mark", fam, suffix), i), Key: k, Data: markData})
			}
			out = append(out, &Set{Name: setName("dnat", fam, suffix), Key: k, Data: []Field{af, FieldPort}})
		}
		out = append(out, &Set{Name: setName("snat", fam, ""), Key: []Field{FieldMark}, Data: []Field{af}})
	}
	return append(append(out,
		&Set{Name: SetNoSNAT, Key: []Field{FieldMark}},
		&Set{Name: SetTrafficOrig, Key: []Field{FieldMark}, Counter: true, Comment: "packets client -> backend"},
		&Set{Name: SetTrafficReply, Key: []Field{FieldMark}, Counter: true, Comment: "packets backend -> client"},
		&Set{Name: SetTrafficNew, Key: []Field{FieldMark}, Counter: true, Comment: "new connections (first packets)"},
	), balanceSets()...)
}

// allSets is every set any layout has: the default layout's, then the
// mark maps of chunks 1 and up. Elements are made into arrays indexed like
// it (setIndex), whichever sets a model has.
var allSets = func() []*Set {
	out := setsOf(ctmark.Default)
	for _, fam := range []Family{IPv4, IPv6} {
		for _, suffix := range []string{"addr", "port"} {
			for i := 1; i < maxChunks; i++ {
				k := []Field{FieldProto, FieldPort}
				if suffix == "addr" {
					k = []Field{fam.addrField(), FieldProto, FieldPort}
				}
				out = append(out, &Set{Name: chunkSetName(setName("mark", fam, suffix), i), Key: k, Data: []Field{FieldVerdict}})
			}
		}
	}
	return out
}()

const numSets = 18 + 4*(maxChunks-1)

var setIndex = func() map[string]int {
	if len(allSets) != numSets {
		panic("nft: numSets does not match allSets")
	}
	m := map[string]int{}
	for i, s := range allSets {
		m[s.Name] = i
	}
	return m
}()

func newPart(l ctmark.Layout, f *config.Forward, id uint32) *part {
	p := &part{fwd: f, id: id}
	if restricted(f) {
		p.rules, p.chain = restrictedForward(l, f, familyOf(f.To), l.ForID(id))
	}
	return p
}

// partSets are the indexes (in allSets) of the sets a forward's elements
// go to, by family and by whether it listens on every local address: made
// once, as the compile of 100,000 forwards would otherwise format these
// names 100,000 times.
type partSets struct{ snat, balanceRandom, balanceSource, mark, dnat int }

var partSetIndex = func() (out [2][2]partSets) {
	for i, fam := range []Family{IPv4, IPv6} {
		for j, suffix := range []string{"addr", "port"} {
			out[i][j] = partSets{snat: setIndex[setName("snat", fam, "")],
				balanceRandom: setIndex[balanceSetName(fam, false)], balanceSource: setIndex[balanceSetName(fam, true)],
				mark: setIndex[setName("mark", fam, suffix)], dnat: setIndex[setName("dnat", fam, suffix)]}
		}
	}
	return out
}()

var (
	idxTrafficOrig  = setIndex[SetTrafficOrig]
	idxTrafficReply = setIndex[SetTrafficReply]
	idxTrafficNew   = setIndex[SetTrafficNew]
	idxNoSNAT       = setIndex[SetNoSNAT]
)

func (p *part) sets() *partSets {
	i, j := 0, 0
	if familyOf(p.fwd.To) == IPv6 {
		i = 1
	}
	if p.fwd.Local() {
		j = 1
	}
	return &partSetIndex[i][j]
}

// count adds the number of the part's elements in each set (by index in
// allSets) to n, without making them; elements makes exactly these.
func (p *part) count(l ctmark.Layout, n *[numSets]int) {
	f := p.fwd
	ps := p.sets()
	n[idxTrafficOrig]++ // traffic counters, both directions, and new connections
	n[idxTrafficReply]++
	n[idxTrafficNew]++
	switch f.SNAT.Kind {
	case config.SNATNone:
		n[idxNoSNAT]++
	case config.SNATFixed:
		n[ps.snat]++
	}
	if f.Balanced() {
		ranges, _ := Slots(weights(f), p.up)
		n[p.balanceSet(ps)] += f.Port.Len() * len(ranges)
	}
	if restricted(f) {
		return
	}
	keys := len(f.Protos) * f.Port.Len()
	if l.Whole() {
		n[ps.mark] += keys
	} else {
		for _, t := range chunkTargets(l, l.ForID(p.id), allSets[ps.mark].Name) {
			n[t.set] += keys
		}
	}
	if !f.Balanced() {
		n[ps.dnat] += keys
	}
}

func (p *part) balanceSet(ps *partSets) int {
	if p.fwd.Balance == config.BalanceSource {
		return ps.balanceSource
	}
	return ps.balanceRandom
}

// numElems counts the part's elements without making them.
func (p *part) numElems(l ctmark.Layout) int {
	var n [numSets]int
	p.count(l, &n)
	total := 0
	for _, c := range n {
		total += c
	}
	return total
}

// elements appends the part's elements to out, by set index.
func (p *part) elements(l ctmark.Layout, out *[numSets][]Element) {
	f := p.fwd
	ps := p.sets()
	mark := l.ForID(p.id)
	// One copy of the mark serves as the key of the counter elements and
	// the data of the mark map element (elements are never modified).
	markB := binary.NativeEndian.AppendUint32(make([]byte, 0, 4), mark)
	for _, i := range [...]int{idxTrafficOrig, idxTrafficReply, idxTrafficNew} {
		out[i] = append(out[i], Element{Key: markB, Comment: f.Name})
	}
	// Masquerade is the default and needs no element: only the exceptions
	// are listed, which keeps a plain forward at five elements.
	switch f.SNAT.Kind {
	case config.SNATNone:
		out[idxNoSNAT] = append(out[idxNoSNAT], Element{Key: markB, Comment: f.Name})
	case config.SNATFixed:
		out[ps.snat] = append(out[ps.snat], elem([]Value{Mark(mark)}, []Value{Addr(f.SNAT.Addr)}, f.Name))
	}
	if f.Balanced() {
		i := p.balanceSet(ps)
		out[i] = append(out[i], balanceElems(f, mark, p.up)...)
	}
	if restricted(f) {
		return
	}
	// Keys and data are written straight into one buffer per forward: a
	// range forward has one element per port.
	var addr []byte
	if !f.Local() {
		addr = f.Address.AsSlice()
	}
	to := f.To.AsSlice()
	var targets []chunkTarget
	if !l.Whole() {
		targets = chunkTargets(l, mark, allSets[ps.mark].Name)
	}
	kl := len(addr) + 8
	dl := len(to) + 4
	n := len(f.Protos) * f.Port.Len()
	buf := make([]byte, n*(kl+dl))
	for _, pr := range f.Protos {
		for port := int(f.Port.Lo); port <= int(f.Port.Hi); port++ {
			k := buf[:kl:kl]
			copy(k, addr)
			k[len(addr)] = byte(pr)
			binary.BigEndian.PutUint16(k[len(addr)+4:], uint16(port))
			d := buf[kl : kl+dl : kl+dl]
			copy(d, to)
			binary.BigEndian.PutUint16(d[len(to):], f.TargetPort(uint16(port)))
			buf = buf[kl+dl:]
			if targets == nil {
				out[ps.mark] = append(out[ps.mark], Element{Key: k, Data: markB})
			}
			for _, t := range targets {
				out[t.set] = append(out[t.set], Element{Key: k, Data: t.chain})
			}
			if !f.Balanced() {
				out[ps.dnat] = append(out[ps.dnat], Element{Key: k, Data: d})
			}
		}
	}
}

// Compile turns a validated config into the model of fwdd's table. It is
// pure: the same config and ids always give the same model.
func Compile(cfg *config.Config, ids map[string]uint32) (*Model, error) {
	l := cfg.Daemon.CtMark
	if _, err := l.Validate(); err != nil {
		return nil, fmt.Errorf("ct mark layout: %w", err)
	}
	m := &Model{Table: cfg.Daemon.Table, Config: cfg, IDs: ids, Layout: l, parts: make(map[string]*part, len(cfg.Forwards)),
		order: make([]*part, 0, len(cfg.Forwards))}
	m.Sets = setsOf(l)
	var restrictedRules []Rule
	var forwardChains []*Chain
	for i := range cfg.Forwards {
		f := &cfg.Forwards[i]
		id, ok := ids[f.Name]
		if !ok {
			return nil, fmt.Errorf("forward %q has no id", f.Name)
		}
		if id == 0 || id > l.MaxID() {
			return nil, fmt.Errorf("forward %q: id %d does not fit the ct mark's id bits (1..%d)", f.Name, id, l.MaxID())
		}
		p := newPart(l, f, id)
		m.parts[f.Name] = p
		m.order = append(m.order, p)
		restrictedRules = append(restrictedRules, p.rules...)
		if p.chain != nil {
			forwardChains = append(forwardChains, p.chain)
		}
	}
	for _, bc := range baseChains {
		c := bc.chain(cfg.Daemon.ForwardPolicy, l)
		m.Chains = append(m.Chains, c)
		if c.Name == "output" {
			// The regular chains sit between the DNAT and the SNAT chains.
			// Only with fixed snat addresses: an empty base chain would
			// still be called for every packet the host receives.
			if g := snatGuard(cfg); len(g.Rules) > 0 {
				m.Chains = append(m.Chains, g)
			}
			m.Chains = append(m.Chains, dispatchChain(l, restrictedRules))
			if !l.Whole() {
				m.Chains = append(m.Chains, markChain(l, IPv4), markChain(l, IPv6))
				m.Chains = append(m.Chains, chunkChains(l)...)
			}
			m.Chains = append(m.Chains, forwardChains...)
		}
	}
	return m, nil
}

// chainSNATGuard is the one base chain fwdd leaves out when it has no rules.
const chainSNATGuard = "snat_guard"

// snatGuard drops TCP segments that conntrack does not know and that do
// not open a connection (anything but a SYN without ACK), addressed to a
// fixed snat address (an HA pair's backend-side VIP). After a
// failover keepalived takes the VIP over before its notify hook commits the
// connections conntrackd synced: a backend's retransmission reaching the new
// master in between would match no entry, be delivered to the local stack
// (the VIP is local) and be answered with a reset, killing the connection.
// Dropped instead, the backend retransmits again after the commit and the
// connection survives. A SYN-ACK of a connection the other node saw open
// just before the switch is dropped too: the client's retransmitted SYN
// then opens it here. New connections (SYN) and known ones are untouched.
// The chain runs before fwdd's DNAT (priority -150, after conntrack), so
// such a segment cannot match a forward either.
func snatGuard(cfg *config.Config) *Chain {
	c := &Chain{Name: chainSNATGuard, Hook: &Hook{Type: "filter", Hook: "prerouting", Priority: -150},
		Comment: "untracked TCP other than a SYN to a fixed snat address: drop, not reset (HA failover)"}
	var addrs []netip.Addr
	for i := range cfg.Forwards {
		if sn := cfg.Forwards[i].SNAT; sn.Kind == config.SNATFixed && !slices.Contains(addrs, sn.Addr) {
			addrs = append(addrs, sn.Addr)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, a := range addrs {
		fam := familyOf(a)
		c.Rules = append(c.Rules, Rule{Stmts: []Stmt{matchNFProto{fam}, matchAddr{dst: true, prefix: netip.PrefixFrom(a, a.BitLen())},
			matchL4Proto{config.TCP}, matchCtStateNewOrInvalid{}, matchTCPNotSyn{}, drop}})
	}
	return c
}

// dispatchChain finds a new connection's forward: the restricted forwards'
// rules first, then one map lookup per family.
func dispatchChain(l ctmark.Layout, restrictedRules []Rule) *Chain {
	dispatch := &Chain{Name: chainDispatch, Comment: "forwards with interface or source matches first, then one map lookup per family"}
	dispatch.Rules = append(dispatch.Rules, restrictedRules...)
	for _, fam := range []Family{IPv4, IPv6} {
		byAddr := key{loadDaddr(fam), loadL4Proto, loadDport}
		byPort := key{loadL4Proto, loadDport}
		if !l.Whole() {
			// Only fwdd's bits are set, by verdict maps (see ctmark.go).
			dispatch.Rules = append(dispatch.Rules,
				Rule{Stmts: []Stmt{matchNFProto{fam}, unmarked(l), jump(markChainName(fam))}},
				Rule{Stmts: []Stmt{matchNFProto{fam}, natMap{fam: fam, key: byAddr, set: setName("dnat", fam, "addr"), withPort: true}}},
				Rule{Stmts: []Stmt{matchNFProto{fam}, matchFibLocal{}, natMap{fam: fam, key: byPort, set: setName("dnat", fam, "port"), withPort: true}}},
			)
			continue
		}
		dispatch.Rules = append(dispatch.Rules,
			Rule{Stmts: []Stmt{matchNFProto{fam}, matchCtMark{0}, setCtMarkMap{byAddr, setName("mark", fam, "addr")}}},
			Rule{Stmts: []Stmt{matchNFProto{fam}, natMap{fam: fam, key: byAddr, set: setName("dnat", fam, "addr"), withPort: true}}},
			Rule{Stmts: []Stmt{matchNFProto{fam}, matchFibLocal{}, matchCtMark{0}, setCtMarkMap{byPort, setName("mark", fam, "port")}}},
			Rule{Stmts: []Stmt{matchNFProto{fam}, matchFibLocal{}, natMap{fam: fam, key: byPort, set: setName("dnat", fam, "port"), withPort: true}}},
		)
	}
	dispatch.Rules = append(dispatch.Rules, balanceRules(l)...)
	return dispatch
}

// restrictedForward returns the dispatch rules and the chain of a forward
// that matches on interface or sources.
func restrictedForward(l ctmark.Layout, f *config.Forward, fam Family, mark uint32) ([]Rule, *Chain) {
	chain := &Chain{Name: forwardChainPfx + f.Name, Comment: "forward " + f.Name}
	var dnat Stmt
	switch {
	case f.Balanced():
		dnat = balanceDNAT{fam: fam, source: f.Balance == config.BalanceSource, mark: loadCtMark(l)}
	case f.ToPort.Len() > 1:
		pm := dnatPortMap{fam: fam}
		for p := int(f.Port.Lo); p <= int(f.Port.Hi); p++ {
			pm.elems = append(pm.elems, elem([]Value{Port(uint16(p))}, []Value{Addr(f.To), Port(f.TargetPort(uint16(p)))}, ""))
		}
		dnat = pm
	case f.ToPort.Len() == 1:
		dnat = dnatTo{to: f.To, port: f.ToPort.Lo}
	default:
		dnat = dnatTo{to: f.To}
	}
	// nft refuses a DNAT to a port without a protocol match in the same
	// rule, so the DNAT is repeated per protocol.
	chain.Rules = []Rule{{Stmts: []Stmt{unmarked(l), setMark(l, mark)}}}
	for _, p := range f.Protos {
		chain.Rules = append(chain.Rules, Rule{Stmts: []Stmt{matchL4Proto{p}, dnat}})
	}
	sources := f.Sources
	if len(sources) == 0 {
		sources = []netip.Prefix{{}}
	}
	var rules []Rule
	for _, p := range f.Protos {
		for _, src := range sources {
			st := []Stmt{matchNFProto{fam}}
			if f.Interface != "" {
				st = append(st, matchIifname{f.Interface})
			}
			if src.IsValid() {
				st = append(st, matchAddr{prefix: src})
			}
			if f.Local() {
				st = append(st, matchFibLocal{})
			} else {
				st = append(st, matchAddr{dst: true, prefix: netip.PrefixFrom(f.Address, f.Address.BitLen())})
			}
			st = append(st, matchL4Proto{p}, matchDport{f.Port}, goTo(chain.Name))
			rules = append(rules, Rule{Comment: f.Name, Stmts: st})
		}
	}
	return rules, chain
}

func sortElems(s *Set, es []Element) {
	sort.Slice(es, func(i, j int) bool { return lessValues(decode(s.Key, es[i].Key), decode(s.Key, es[j].Key)) })
}

func lessValues(a, b []Value) bool {
	for i := range a {
		if i >= len(b) {
			return false
		}
		x, y := a[i].raw, b[i].raw
		if a[i].Field == FieldMark { // host byte order: compare as numbers
			x = binary.BigEndian.AppendUint32(nil, a[i].Uint())
			y = binary.BigEndian.AppendUint32(nil, b[i].Uint())
		}
		if c := compareBytes(x, y); c != 0 {
			return c < 0
		}
	}
	return len(a) < len(b)
}

func compareBytes(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return len(a) - len(b)
}
