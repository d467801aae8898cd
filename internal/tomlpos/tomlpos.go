// Package tomlpos finds where the tables and keys of a TOML document are
// written, and cuts a document at the headers of an array of tables.
//
// BurntSushi/toml, the TOML library fwdd uses, does not export where a key
// is: its MetaData keeps one position per dotted key, so every element of an
// array of tables shares the position of the last one. Messages about a
// configuration must point at the right line of the right element, so this
// small hand-written scanner records the line of each table header and of
// the first component of each key. It understands just enough TOML
// (strings, multi-line strings, comments, brackets spanning lines) not to
// mistake a value for a key; anything it misreads only costs a line number,
// never correctness, because decoding is done by the real parser.
package tomlpos

import (
	"strconv"
	"strings"
)

// Table is one table of a document: the line of its header and of each key
// in it, and its sub-tables.
type Table struct {
	// Line is the line of the first header that names the table (1-based;
	// 0 for the document itself and for tables no header names).
	Line   int
	keys   map[string]int
	tables map[string]*Table
	arrays map[string][]*Table
}

// Key returns the line of key name in t (of its first component, for a
// dotted key; of the header, for a sub-table), or t.Line when it is not
// written in t.
func (t *Table) Key(name string) int {
	if l, ok := t.keys[name]; ok {
		return l
	}
	return t.Line
}

// Table returns the sub-table name of t, empty when there is none.
func (t *Table) Table(name string) *Table {
	if s, ok := t.tables[name]; ok {
		return s
	}
	return &Table{}
}

// Array returns the elements of the array of tables name ([[name]]) of t.
func (t *Table) Array(name string) []*Table { return t.arrays[name] }

func (t *Table) set(key string, line int) {
	if t.keys == nil {
		t.keys = make(map[string]int)
	}
	if _, ok := t.keys[key]; !ok {
		t.keys[key] = line
	}
}

// Scan reads text a line at a time, following values that span lines
// (brackets, multi-line strings) so that a '[' or a key inside a value is
// not taken for a header or a key. It returns the document's table.
func Scan(text string) *Table {
	doc := &Table{}
	cur := doc
	depth, multiline := 0, "" // open [ and { of a value; the delimiter of an open multi-line string
	n := 0
	for line := range strings.Lines(text) {
		n++
		value := line
		if multiline != "" {
			i := closeString(value, multiline)
			if i < 0 {
				continue
			}
			value, multiline = value[i:], ""
		} else if depth == 0 {
			trimmed := trimBlank(value)
			if strings.HasPrefix(trimmed, "[") {
				array := strings.HasPrefix(trimmed, "[[")
				cur = doc.header(headerName(trimmed, array), array, n)
				continue
			}
			key, after, isKey := keyPrefix(trimmed)
			if !isKey {
				continue
			}
			cur.set(key, n)
			value = after
		}
		depth, multiline = scanValue(value, depth)
	}
	return doc
}

// header records the header [name] or [[name]] on line and returns the
// table its keys go into. Each component of the name is a key of the table
// before it; a component that is an array of tables stands for its latest
// element, as in TOML.
func (t *Table) header(name []string, array bool, line int) *Table {
	if len(name) == 0 {
		return &Table{}
	}
	cur := t
	for i, c := range name {
		cur.set(c, line)
		last := i == len(name)-1
		if last && array {
			e := &Table{Line: line}
			if cur.arrays == nil {
				cur.arrays = make(map[string][]*Table)
			}
			cur.arrays[c] = append(cur.arrays[c], e)
			return e
		}
		if elems := cur.arrays[c]; !last && len(elems) > 0 {
			cur = elems[len(elems)-1]
			continue
		}
		s, ok := cur.tables[c]
		if !ok {
			s = &Table{Line: line}
			if cur.tables == nil {
				cur.tables = make(map[string]*Table)
			}
			cur.tables[c] = s
		}
		cur = s
	}
	return cur
}

// Block is one element of an array of tables as written: from its header
// to the next header of the array.
type Block struct {
	Text string
	Line int // of the header
}

// Cut cuts text before each line that starts, after blanks, with the header
// [[name]] (also written [[ name ]] or [["name"]]). It returns the text
// before the first such line and the blocks. A cut may be wrong, inside a
// multi-line string or array: callers check that the blocks decode as one
// element each.
func Cut(text, name string) (pre string, blocks []Block) {
	var starts []int
	off, n := 0, 0
	for line := range strings.Lines(text) {
		n++
		if h := trimBlank(line); strings.HasPrefix(h, "[[") && isArrayHeader(h, name) {
			starts = append(starts, off)
			blocks = append(blocks, Block{Line: n})
		}
		off += len(line)
	}
	starts = append(starts, len(text))
	for k := range blocks {
		blocks[k].Text = text[starts[k]:starts[k+1]]
	}
	return text[:starts[0]], blocks
}

// isArrayHeader reports whether the line s is the header [[name]].
func isArrayHeader(s, name string) bool {
	if strings.HasPrefix(s, "[["+name+"]]") {
		return true
	}
	parts := headerName(s, true)
	return len(parts) == 1 && parts[0] == name
}

// headerName splits "[a.b]" or "[[a . "b"]]" into its key components.
func headerName(s string, array bool) []string {
	s = s[1:]
	if array {
		s = s[1:]
	}
	name, rest := dottedKey(s)
	if !strings.HasPrefix(rest, "]") {
		return nil
	}
	return name
}

// keyPrefix parses `key =` or `a.b."c" =` at the start of s and returns the
// first key component and the text after '='.
func keyPrefix(s string) (key, rest string, ok bool) {
	parts, rest := dottedKey(s)
	if len(parts) == 0 || !strings.HasPrefix(rest, "=") {
		return "", "", false
	}
	return parts[0], rest[1:], true
}

// dottedKey parses the dotted key (bare and quoted components, blanks
// around the dots) at the start of s, and returns its components and what
// follows it, or nil.
func dottedKey(s string) (parts []string, rest string) {
	for {
		s = trimBlank(s)
		i := 0
		switch {
		case s == "":
			return nil, ""
		case s[0] == '"' || s[0] == '\'':
			if i = closeString(s[1:], s[:1]) + 1; i == 0 {
				return nil, ""
			}
			parts = append(parts, unquoteKey(s[:i]))
		default:
			for i < len(s) && isBareKeyChar(s[i]) {
				i++
			}
			if i == 0 {
				return nil, ""
			}
			parts = append(parts, s[:i])
		}
		if s = trimBlank(s[i:]); !strings.HasPrefix(s, ".") {
			return parts, s
		}
		s = s[1:]
	}
}

// unquoteKey returns the key a quoted key stands for: a 'literal' as is, a
// "basic" one with its escapes (those TOML shares with Go) resolved.
func unquoteKey(q string) string {
	if q[0] == '"' {
		if k, err := strconv.Unquote(q); err == nil {
			return k
		}
	}
	return q[1 : len(q)-1]
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// scanValue follows a value to the end of the line, tracking brackets and
// strings, and returns the bracket depth and any multi-line string left open.
func scanValue(s string, depth int) (int, string) {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '#':
			return depth, ""
		case '[', '{':
			depth++
		case ']', '}':
			if depth > 0 {
				depth--
			}
		case '"', '\'':
			delim := s[i : i+1]
			if i+2 < len(s) && s[i+1] == c && s[i+2] == c {
				delim = s[i : i+3]
			}
			j := i + len(delim)
			end := closeString(s[j:], delim)
			if end < 0 {
				if len(delim) == 3 {
					return depth, delim
				}
				return depth, "" // unterminated: the parser will say so
			}
			i = j + end - 1
		}
	}
	return depth, ""
}

// closeString returns the index just past the first unescaped delim in s
// (escapes only count in basic "strings"), or -1.
func closeString(s, delim string) int {
	q := delim[0]
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && q == '"':
			i++
		case c != q:
		case len(delim) == 1:
			return i + 1
		case i+2 < len(s) && s[i+1] == q && s[i+2] == q:
			end := i + 3
			// A multi-line string may end with up to two extra quotes: """a""""".
			for k := 0; k < 2 && end < len(s) && s[end] == q; k++ {
				end++
			}
			return end
		}
	}
	return -1
}

// trimBlank removes leading spaces and tabs.
func trimBlank(s string) string {
	i := 0
	for i < len(s) && (s[i] == ' ' || s[i] == '\t') {
		i++
	}
	return s[i:]
}
