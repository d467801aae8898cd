package config

import (
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/BurntSushi/toml"
)

// Decoding each distinct value once.
//
// Most [[forward]] blocks are a header and one `key = value` line per key,
// and many values repeat from block to block: protocols, ports, backends,
// sources. When every line of a block stands on its own, the block's table
// is just the union of its lines, so only the values need decoding, and each
// distinct value text needs decoding only once. The distinct values go to
// BurntSushi as `v0 = <value>`, `v1 = <value>`, ... in documents of
// valueBatch lines: a value means the same after any key, and a document in
// which every vN came back cannot have had a value run into the next line.
//
// A block qualifies (simpleBlock) when its first line is exactly
// [[forward]], and every other line is blank, a comment, or one allowed key
// of a forward (not dotted, not repeated) followed by a value the scanner
// sees end on that line. Anything else goes through decodeChunk/decodeBlock,
// and tests check every qualifying block against decodeBlock.

// valueBatch is how many values go to one toml.Decode call.
const valueBatch = 256

// maxForwardKeys is how many keys a simpleBlock can have: each allowed key
// of a forward once.
const maxForwardKeys = 9

// simpleBlock is a block whose lines stand alone.
type simpleBlock struct {
	n     int                    // number of keys
	keys  [maxForwardKeys]string // allowed keys of a forward, each once
	vals  [maxForwardKeys]string // the text after each key's '=', to the end of its line
	ids   [maxForwardKeys]int    // each value's index among the distinct values
	lines [maxForwardKeys]int    // each key's line
}

// readSimple returns text as a simpleBlock, or nil when it is not one.
func readSimple(text string) *simpleBlock {
	allowed := allowedKeys["forward"]
	s := &simpleBlock{}
	for lineNo, rest := 1, text; rest != ""; lineNo++ {
		line := rest
		if i := strings.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = ""
		}
		t := trimBlank(line)
		if lineNo == 1 {
			if !strings.HasPrefix(t, "[[forward]]") || !blankOrComment(trimBlank(t[len("[[forward]]"):])) {
				return nil
			}
			continue
		}
		if blankOrComment(t) {
			continue
		}
		key, value, ok := simpleKey(t)
		if !ok || !slices.Contains(allowed, key) || slices.Contains(s.keys[:s.n], key) {
			return nil
		}
		if depth, open := scanValue(value, 0); depth != 0 || open != "" || strings.IndexByte(value, '\r') >= 0 {
			return nil
		}
		s.keys[s.n], s.vals[s.n], s.lines[s.n] = key, value, lineNo
		s.n++
	}
	return s
}

// keyLines returns the block's key lines, as scanPositions finds them.
func (s *simpleBlock) keyLines() *keyLines {
	kl := &keyLines{header: 1, keys: make(map[string]int, s.n)}
	for i, key := range s.keys[:s.n] {
		kl.keys[key] = s.lines[i]
	}
	return kl
}

// blankOrComment reports whether a line (without leading blanks) is empty or
// a comment of printable ASCII.
func blankOrComment(s string) bool {
	if s == "" {
		return true
	}
	if s[0] != '#' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; c != '\t' && (c < ' ' || c > '~') {
			return false
		}
	}
	return true
}

// simpleKey parses `key =` where key is bare or quoted without escapes, and
// returns the key and the text after '='.
func simpleKey(s string) (key, value string, ok bool) {
	switch {
	case s == "":
		return "", "", false
	case s[0] == '"' || s[0] == '\'':
		end := strings.IndexByte(s[1:], s[0])
		if end < 0 {
			return "", "", false
		}
		key, s = s[1:1+end], s[end+2:]
		if strings.IndexByte(key, '\\') >= 0 {
			return "", "", false
		}
	default:
		i := 0
		for i < len(s) && isBareKeyChar(s[i]) {
			i++
		}
		key, s = s[:i], s[i:]
	}
	s = trimBlank(s)
	if key == "" || !strings.HasPrefix(s, "=") {
		return "", "", false
	}
	return key, s[1:], true
}

// result builds the block's forward from the decoded values.
func (s *simpleBlock) result(values []any) *blockResult {
	var raw rawForward
	for i, key := range s.keys[:s.n] {
		setRawField(&raw, key, values[s.ids[i]])
	}
	return validateBlock(&raw, s.keyLines(), nil)
}

// setRawField sets the field of raw for key, as BurntSushi does for a key
// that is a field's exact name.
func setRawField(raw *rawForward, key string, v any) {
	switch key {
	case "name":
		raw.Name = v
	case "proto":
		raw.Proto = v
	case "port":
		raw.Port = v
	case "address":
		raw.Address = v
	case "to":
		raw.To = v
	case "interface":
		raw.Interface = v
	case "sources":
		raw.Sources = v
	case "snat":
		raw.SNAT = v
	case "log":
		raw.Log = v
	default:
		panic("config: no field for forward key " + key)
	}
}

// decodeValues decodes value texts into out; bad marks those that do not
// decode on their own line. A batch that fails is split in halves, so one
// bad value costs a few more calls, not one per value.
func decodeValues(vals []string, out []any, bad []bool) {
	var b strings.Builder
	for i, v := range vals {
		b.WriteByte('v')
		b.WriteString(strconv.Itoa(i))
		b.WriteString(" =")
		b.WriteString(v)
		b.WriteByte('\n')
	}
	// Into an empty interface, BurntSushi hands over its own map as is.
	var doc any
	_, err := toml.Decode(b.String(), &doc)
	m, ok := doc.(map[string]any)
	ok = ok && err == nil && len(m) == len(vals)
	for i := 0; ok && i < len(vals); i++ {
		out[i], ok = m["v"+strconv.Itoa(i)]
	}
	switch {
	case ok:
	case len(vals) == 1:
		bad[0] = true
	default:
		h := len(vals) / 2
		decodeValues(vals[:h], out[:h], bad[:h])
		decodeValues(vals[h:], out[h:], bad[h:])
	}
}

// parallel calls f on consecutive ranges [lo, hi) of [0, n), up to step
// long, on up to GOMAXPROCS goroutines including the caller's, until all are
// done or stop is set.
func parallel(n, step int, stop *atomic.Bool, f func(lo, hi int)) {
	var next atomic.Int64
	work := func() {
		for !stop.Load() {
			lo := int(next.Add(int64(step))) - step
			if lo >= n {
				return
			}
			f(lo, min(lo+step, n))
		}
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), (n+step-1)/step) - 1 {
		wg.Go(work)
	}
	work()
	wg.Wait()
}
