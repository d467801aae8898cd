// Package tomlcheck checks the values of a TOML document decoded by
// BurntSushi/toml into its own maps (map[string]any), and words the problems
// for the person who wrote the file: the type found and the type or range
// allowed, on the key's line, and the library's syntax errors on the line
// of the byte at fault, in fewer words about the library's internals.
//
// fwdd decodes into maps rather than structs because struct fields match
// keys case-insensitively (Port or [Daemon] would be taken), and because a
// value of the wrong type must be a message naming the key and what it may
// be, not a decode error for the whole file. What a key means is not
// known here: pkg/config says which keys a table has and what they allow.
package tomlcheck

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"
	"github.com/fwdd/fwdd/internal/tomlpos"
)

// Reporter takes the problems found in one table.
type Reporter interface {
	// Report is a problem with key (written on line) of the table.
	Report(line int, key, msg string)
}

// Keys checks the values of one table's keys.
type Keys struct {
	Lines *tomlpos.Table // where the table's keys are written
	To    Reporter
}

// Errorf reports a problem with key.
func (k *Keys) Errorf(key, format string, args ...any) {
	k.To.Report(k.Lines.Key(key), key, fmt.Sprintf(format, args...))
}

// String returns v (def when nil) if it is a string; ok is false when it is
// not, which is reported.
func (k *Keys) String(key string, v any, def string) (s string, ok bool) {
	switch v := v.(type) {
	case nil:
		return def, true
	case string:
		return v, true
	}
	k.Errorf(key, "must be a string, not %s", TypeName(v))
	return def, false
}

// Bool returns v (def when nil, or not a boolean, which is reported).
func (k *Keys) Bool(key string, v any, def bool) bool {
	switch v := v.(type) {
	case nil:
		return def
	case bool:
		return v
	}
	k.Errorf(key, "must be true or false, not %s", TypeName(v))
	return def
}

// Int returns v if it is an integer within lo-hi; else def (when nil, or
// reported).
func (k *Keys) Int(key string, v any, def, lo, hi int64) int64 {
	switch v := v.(type) {
	case nil:
		return def
	case int64:
		if v < lo || v > hi {
			k.Errorf(key, "%d is out of range; must be between %d and %d", v, lo, hi)
			return def
		}
		return v
	}
	k.Errorf(key, "must be an integer between %d and %d, not %s", lo, hi, TypeName(v))
	return def
}

// OneOf returns v if it is one of the allowed strings; else def (when nil,
// or reported).
func (k *Keys) OneOf(key string, v any, def string, allowed ...string) string {
	s, ok := k.String(key, v, def)
	if !ok {
		return def
	}
	if slices.Contains(allowed, s) {
		return s
	}
	k.Errorf(key, "%s is not allowed; must be %s", Quote(s), QuotedList(allowed))
	return def
}

// TypeName names the TOML type of a decoded value: "a string", "an
// integer", "an array of tables", ...
func TypeName(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	case time.Time:
		return "a date or time"
	}
	return "a value of another type"
}

// QuotedList renders ["a", "b", "c"] as `"a", "b" or "c"`.
func QuotedList(items []string) string {
	q := make([]string, len(items))
	for i, s := range items {
		q[i] = strconv.Quote(s)
	}
	if len(q) == 1 {
		return q[0]
	}
	return strings.Join(q[:len(q)-1], ", ") + " or " + q[len(q)-1]
}

// maxQuoted is how much of a value a message quotes.
const maxQuoted = 64

// Quote is strconv.Quote for values from the file, shortened when long: a
// 20 MB name must not make 40 MB of messages.
func Quote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := maxQuoted
	for cut > 0 && s[cut]&0xc0 == 0x80 { // not inside a UTF-8 sequence
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

var redefinedRE = regexp.MustCompile(`^Key '(.*)' (has already been defined|was already created as a hash|was already created and cannot be used as an array)\.$`)

// Syntax turns an error of toml.Decode on text into the line at fault (0
// when unknown) and a one-line message starting "invalid TOML".
func Syntax(text string, err error) (line int, msg string) {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return 0, "invalid TOML"
	}
	line, msg = pe.Position.Line, pe.Message
	if start := pe.Position.Start; start >= 0 && start < len(text) {
		// The line of the byte at fault: the library counts a newline it
		// complains about as the start of the next line.
		line = 1 + strings.Count(text[:start], "\n")
	}
	switch m := redefinedRE.FindStringSubmatch(msg); {
	case m != nil:
		msg = fmt.Sprintf("%s is defined twice; each key may appear once in a table", m[1])
	case strings.HasPrefix(msg, "expected end of table array name delimiter"):
		msg = "the header is not closed: write [[name]], e.g. [[forward]]"
	case strings.HasPrefix(msg, "expected '.' or ']' to end table name"):
		msg = "the header is not closed: write [name], e.g. [daemon]"
	}
	return line, "invalid TOML: " + oneLine(msg)
}

// oneLine escapes the control characters the library quotes from the file
// (`not a binary number: '0b\n'`), so a message stays on one journal line.
func oneLine(s string) string {
	if !strings.ContainsFunc(s, unicode.IsControl) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsControl(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
