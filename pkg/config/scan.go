package config

import (
	"strconv"
	"strings"
)

// Key positions.
//
// BurntSushi/toml does not export where a key is (its MetaData keeps one
// position per dotted key, so every [[forward]] shares the position of the
// last one). Messages must point at the right line of the right forward, so
// this small hand-written scanner records the line of each table header and
// of the first component of each key inside it. It understands just enough
// TOML (strings, multi-line strings, comments, brackets spanning lines) not
// to mistake a value for a key; anything it misreads only costs a line number,
// never correctness, because decoding is done by the real parser.

// keyLines is one table: the line of its header and of each key in it.
type keyLines struct {
	header int
	keys   map[string]int
	// backends holds the keys of each [[forward.backend]] of a forward.
	backends []*keyLines
}

func (k *keyLines) set(key string, line int) {
	if k.keys == nil {
		k.keys = make(map[string]int)
	}
	if _, ok := k.keys[key]; !ok {
		k.keys[key] = line
	}
}

// line returns the line of key, or of the header when key is not known.
func (k *keyLines) line(key string) int {
	if l, ok := k.keys[key]; ok {
		return l
	}
	return k.header
}

type positions struct {
	top      keyLines             // keys before the first header
	sections map[string]*keyLines // [daemon], [sysctl], ... by first component
	forwards []*keyLines          // one per [[forward]], in file order
}

func (p *positions) section(name string) *keyLines {
	if s, ok := p.sections[name]; ok {
		return s
	}
	return &keyLines{}
}

// scanPositions reads text a line at a time, following values that span
// lines (brackets, multi-line strings) so that a '[' or a key inside a value
// is not taken for a header or a key.
func scanPositions(text string) *positions {
	p := &positions{}
	cur := &p.top
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
				cur = p.header(headerName(trimmed, array), array, n)
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
	return p
}

// header records a table header and returns where its keys go.
func (p *positions) header(name []string, array bool, line int) *keyLines {
	if len(name) == 0 {
		return &keyLines{}
	}
	if name[0] == "forward" {
		if len(name) == 1 && array {
			f := &keyLines{header: line}
			p.forwards = append(p.forwards, f)
			return f
		}
		if len(name) > 1 && len(p.forwards) > 0 {
			// [forward.x] or [[forward.x]]: a key of the current forward.
			f := p.forwards[len(p.forwards)-1]
			f.set(name[1], line)
			if len(name) == 2 && array && name[1] == "backend" { // its keys have lines of their own
				kl := &keyLines{header: line}
				f.backends = append(f.backends, kl)
				return kl
			}
			return &keyLines{}
		}
	}
	s, ok := p.sections[name[0]]
	if !ok {
		s = &keyLines{header: line}
		if p.sections == nil {
			p.sections = make(map[string]*keyLines)
		}
		p.sections[name[0]] = s
	}
	if len(name) > 1 {
		s.set(name[1], line)
		return &keyLines{}
	}
	return s
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
