// Package nft is fwdd's model of its one nftables table: a pure compile step
// from a validated config to a Model, rendering of a Model as nft text, and
// the one place that talks to the kernel through google/nftables.
//
// See README.md in this directory for the table's chains, hooks and maps.
package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/fwdd/fwdd/pkg/config"
	"github.com/fwdd/fwdd/pkg/ctmark"
)

// Field is the type of one field of a set key or map value.
type Field uint8

const (
	FieldIPv4  Field = iota + 1 // ipv4_addr
	FieldIPv6                   // ipv6_addr
	FieldProto                  // inet_proto
	FieldPort                   // inet_service
	FieldMark                   // mark (host byte order)
	// FieldMarkBE is a mark in network byte order, as interval keys need
	// (they compare bytewise); FieldSlot is a number drawn per connection
	// (numgen or jhash), likewise. See balance.go.
	FieldMarkBE
	FieldSlot
	// FieldVerdict is a verdict map's data: a jump to the chain its bytes
	// name (see ctmark.go).
	FieldVerdict
)

// nftName is the nft type name of the field.
func (f Field) nftName() string {
	switch f {
	case FieldIPv4:
		return "ipv4_addr"
	case FieldIPv6:
		return "ipv6_addr"
	case FieldProto:
		return "inet_proto"
	case FieldPort:
		return "inet_service"
	case FieldMark, FieldMarkBE:
		return "mark"
	case FieldSlot:
		return "integer"
	case FieldVerdict:
		return "verdict"
	}
	return "invalid"
}

// size is the field's length in bytes before padding.
func (f Field) size() int {
	switch f {
	case FieldIPv4, FieldMark, FieldMarkBE, FieldSlot:
		return 4
	case FieldIPv6:
		return 16
	case FieldProto:
		return 1
	case FieldPort:
		return 2
	}
	return 0
}

// Value is one typed field value of an element.
type Value struct {
	Field Field
	raw   []byte // unpadded, in the byte order the kernel uses for the field
}

// Addr returns an address value of the address's family.
func Addr(a netip.Addr) Value {
	if a.Is4() {
		b := a.As4()
		return Value{FieldIPv4, b[:]}
	}
	b := a.As16()
	return Value{FieldIPv6, b[:]}
}

// Proto returns an inet_proto value.
func Proto(p config.Proto) Value { return Value{FieldProto, []byte{byte(p)}} }

// Port returns an inet_service value (network byte order).
func Port(p uint16) Value { return Value{FieldPort, binary.BigEndian.AppendUint16(nil, p)} }

// Mark returns a mark value (host byte order, as the kernel keeps marks).
func Mark(m uint32) Value { return Value{FieldMark, binary.NativeEndian.AppendUint32(nil, m)} }

// String renders the value in nft syntax.
func (v Value) String() string {
	switch v.Field {
	case FieldIPv4, FieldIPv6:
		a, _ := netip.AddrFromSlice(v.raw)
		return a.String()
	case FieldProto:
		return config.Proto(v.raw[0]).String()
	case FieldPort:
		return fmt.Sprint(binary.BigEndian.Uint16(v.raw))
	case FieldMark:
		return fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(v.raw))
	case FieldMarkBE:
		return fmt.Sprintf("0x%08x", binary.BigEndian.Uint32(v.raw))
	case FieldSlot:
		return fmt.Sprint(binary.BigEndian.Uint32(v.raw))
	case FieldVerdict:
		return "jump " + string(v.raw)
	}
	return "?"
}

// Uint returns a mark or port value as a number.
func (v Value) Uint() uint32 {
	switch v.Field {
	case FieldMark:
		return binary.NativeEndian.Uint32(v.raw)
	case FieldPort:
		return uint32(binary.BigEndian.Uint16(v.raw))
	}
	return 0
}

// concatBytes lays values out as the kernel expects: a single field as is,
// concatenated fields each padded to a 4-byte register.
func concatBytes(vals []Value) []byte {
	if len(vals) == 1 {
		return append([]byte(nil), vals[0].raw...)
	}
	var out []byte
	for _, v := range vals {
		out = append(out, v.raw...)
		for len(out)%4 != 0 {
			out = append(out, 0)
		}
	}
	return out
}

func renderValues(vals []Value) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = v.String()
	}
	return strings.Join(parts, " . ")
}

// Element is one element of a set or map, its key and data laid out as the
// kernel takes them (see concatBytes): elements are made in bulk (400,000
// for 100,000 forwards), so they carry bytes, not typed values.
type Element struct {
	Key []byte
	// KeyEnd is the last key of an interval element (sets with Interval).
	KeyEnd  []byte
	Data    []byte // nil in a plain set
	Comment string
}

func elem(key, data []Value, comment string) Element {
	e := Element{Key: concatBytes(key), Comment: comment}
	if data != nil {
		e.Data = concatBytes(data)
	}
	return e
}

// id identifies an element for diffing: key, data and comment.
func (e Element) id() string {
	return string(e.Key) + "\x00" + string(e.KeyEnd) + "\x00" + string(e.Data) + "\x00" + e.Comment
}

// decode splits key or data bytes back into typed values.
func decode(fields []Field, b []byte) []Value {
	vals := make([]Value, 0, len(fields))
	off := 0
	for _, f := range fields {
		n := f.size()
		if f == FieldVerdict {
			n = len(b) - off
		}
		if off+n > len(b) {
			break
		}
		vals = append(vals, Value{f, b[off : off+n]})
		off += n
		if len(fields) > 1 {
			off = (off + 3) &^ 3
		}
	}
	return vals
}

func renderBytes(fields []Field, b []byte) string { return renderValues(decode(fields, b)) }

// Set is a named set (Data == nil) or map of fwdd's table.
type Set struct {
	Name    string
	Key     []Field
	Data    []Field
	Counter bool // every element carries a packet/byte counter
	Comment string
	// Interval: elements are ranges (Element.KeyEnd) on the last key field.
	Interval bool
	// Typeof, when set, declares the key and data in nft's typeof syntax
	// (needed for the integer slot of the balance maps).
	Typeof, DataTypeof string
}

// IsMap reports whether the set maps keys to data.
func (s *Set) IsMap() bool { return len(s.Data) > 0 }

// IsVerdictMap reports whether the set maps keys to verdicts.
func (s *Set) IsVerdictMap() bool { return len(s.Data) == 1 && s.Data[0] == FieldVerdict }

// Hook makes a chain a base chain.
type Hook struct {
	Type     string // nat | filter
	Hook     string // prerouting | output | postrouting | forward | input
	Priority int
	Drop     bool // policy drop (else accept)
}

// Chain is a chain of fwdd's table; its rules are lists of statements.
type Chain struct {
	Name    string
	Hook    *Hook // nil for a regular chain
	Comment string
	Rules   []Rule
}

// Rule is one rule: statements evaluated left to right.
type Rule struct {
	Comment string
	Stmts   []Stmt
}

// Model is the whole desired content of fwdd's table.
type Model struct {
	Table  string
	Chains []*Chain
	Sets   []*Set
	// Config is the configuration the model was compiled from.
	Config *config.Config
	// IDs maps forward names to the ids their ct marks carry.
	IDs map[string]uint32
	// Layout is where fwdd's bits are in the ct mark (the config's).
	Layout ctmark.Layout
	// parts holds each forward's share of the table, by forward name, and
	// order the same in config order.
	parts map[string]*part
	order []*part
}

// elements makes the elements of every set, by set index, in forward order.
func (m *Model) elements() [numSets][]Element {
	// Sized first: 100,000 forwards make 500,000 elements, and growing the
	// slices by appending cost more than making them (copies and page
	// faults of the abandoned arrays).
	var n [numSets]int
	for _, p := range m.order {
		p.count(m.Layout, &n)
	}
	var out [numSets][]Element
	for i, c := range n {
		if c > 0 {
			out[i] = make([]Element, 0, c)
		}
	}
	for _, p := range m.order {
		p.elements(m.Layout, &out)
	}
	return out
}

// setElems is the elements of s among all (as made by elements): they are
// kept by the index of the set's name in allSets, not of s in m.Sets.
func setElems(all *[numSets][]Element, s *Set) []Element { return all[setIndex[s.Name]] }

// Elements returns the elements of the named set, in forward order.
func (m *Model) Elements(set string) []Element {
	i, ok := setIndex[set]
	if !ok {
		return nil
	}
	return m.elements()[i]
}

// Set returns the named set, or nil.
func (m *Model) Set(name string) *Set {
	for _, s := range m.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the named chain, or nil.
func (m *Model) Chain(name string) *Chain {
	for _, c := range m.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// NumElements counts the elements of all sets.
func (m *Model) NumElements() int {
	n := 0
	for _, p := range m.order {
		n += p.numElems(m.Layout)
	}
	return n
}
