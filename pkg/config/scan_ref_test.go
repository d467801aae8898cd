package config

// The key scanner as it was before block-wise decoding (commit 4af9740),
// kept to check that scan.go, rewritten to share its line reader with
// splitForwards and to allocate less, still reads every file the same way.

import "strings"

func refScanPositions(data []byte) *positions {
	p := &positions{sections: make(map[string]*keyLines)}
	cur := &p.top
	var (
		depth     int    // open [ and { of values spanning lines
		multiline string // closing delimiter of an open multi-line string
	)
	text := string(data)
	for lineNo := 1; len(text) > 0; lineNo++ {
		var line string
		if i := strings.IndexByte(text, '\n'); i >= 0 {
			line, text = text[:i], text[i+1:]
		} else {
			line, text = text, ""
		}
		rest := line
		if multiline != "" {
			i := refCloseString(rest, multiline)
			if i < 0 {
				continue
			}
			rest, multiline = rest[i:], ""
		} else if depth == 0 {
			trimmed := strings.TrimLeft(rest, " \t")
			switch {
			case strings.HasPrefix(trimmed, "["):
				array := strings.HasPrefix(trimmed, "[[")
				name := refHeaderName(trimmed, array)
				cur = refHeader(p, name, array, lineNo)
				continue
			default:
				key, after, ok := refKeyPrefix(trimmed)
				if !ok {
					continue
				}
				cur.set(key, lineNo)
				rest = after
			}
		}
		depth, multiline = refScanValue(rest, depth)
	}
	return p
}

// header records a table header and returns where its keys go.
func refHeader(p *positions, name []string, array bool, line int) *keyLines {
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
			return &keyLines{}
		}
	}
	s, ok := p.sections[name[0]]
	if !ok {
		s = &keyLines{header: line}
		p.sections[name[0]] = s
	}
	if len(name) > 1 {
		s.set(name[1], line)
		return &keyLines{}
	}
	return s
}

// headerName splits "[a.b]" or "[[a . "b"]]" into its key components.
func refHeaderName(s string, array bool) []string {
	s = s[1:]
	if array {
		s = s[1:]
	}
	var (
		parts []string
		b     strings.Builder
	)
	for len(s) > 0 {
		c := s[0]
		switch {
		case c == '"' || c == '\'':
			end := strings.IndexByte(s[1:], c)
			if end < 0 {
				return nil
			}
			b.WriteString(s[1 : 1+end])
			s = s[end+2:]
			continue
		case c == '.':
			parts = append(parts, b.String())
			b.Reset()
		case c == ']':
			return append(parts, b.String())
		case c != ' ' && c != '\t':
			b.WriteByte(c)
		}
		s = s[1:]
	}
	return nil
}

// keyPrefix parses `key =` or `a.b."c" =` at the start of s and returns the
// first key component and the text after '='.
func refKeyPrefix(s string) (key, rest string, ok bool) {
	first := true
	for {
		var part string
		switch {
		case s == "":
			return "", "", false
		case s[0] == '"' || s[0] == '\'':
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return "", "", false
			}
			part, s = s[1:1+end], s[end+2:]
		default:
			i := 0
			for i < len(s) && refIsBareKeyChar(s[i]) {
				i++
			}
			if i == 0 {
				return "", "", false
			}
			part, s = s[:i], s[i:]
		}
		if first {
			key, first = part, false
		}
		s = strings.TrimLeft(s, " \t")
		switch {
		case strings.HasPrefix(s, "="):
			return key, s[1:], true
		case strings.HasPrefix(s, "."):
			s = strings.TrimLeft(s[1:], " \t")
		default:
			return "", "", false
		}
	}
}

func refIsBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// scanValue follows a value to the end of the line, tracking brackets and
// strings, and returns the bracket depth and any multi-line string left open.
func refScanValue(s string, depth int) (int, string) {
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
			delim := string(c)
			if strings.HasPrefix(s[i:], delim+delim+delim) {
				delim = delim + delim + delim
			}
			j := i + len(delim)
			end := refCloseString(s[j:], delim)
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
func refCloseString(s, delim string) int {
	for i := 0; i < len(s); i++ {
		if delim[0] == '"' && s[i] == '\\' {
			i++
			continue
		}
		if strings.HasPrefix(s[i:], delim) {
			end := i + len(delim)
			// A multi-line string may end with up to two extra quotes: """a""""".
			for k := 0; k < 2 && len(delim) == 3 && end < len(s) && s[end] == delim[0]; k++ {
				end++
			}
			return end
		}
	}
	return -1
}
