package nft

import (
	"fmt"
	"strings"
)

// nftText builds nft syntax. nft's strings have no escape sequences (a `"`
// always ends the string) and `\` and `*` mean something inside them, so a
// string that nft cannot express exactly is refused, never printed: printed,
// it could end the string early and inject statements. The first refusal is
// kept in err; whatever was written after it must not be used.
type nftText struct {
	strings.Builder
	err error
}

func (w *nftText) fail(err error) {
	if w.err == nil {
		w.err = err
	}
}

// quote writes s as an nft string ("..."): printable ASCII without `"` and
// `\`. nft limits comments to 128 characters; forward names are shorter.
func (w *nftText) quote(s string) {
	if why := unquotable(s); why != "" {
		w.fail(fmt.Errorf("cannot write %s as an nft string: %s", shorten(s), why))
		w.WriteString(`""`)
		return
	}
	w.WriteByte('"')
	w.WriteString(s)
	w.WriteByte('"')
}

// commentLine writes s after a '#': it must not contain what would end the
// line.
func (w *nftText) commentLine(s string) {
	if why := unquotable(s); why != "" {
		w.fail(fmt.Errorf("cannot write %s as an nft comment: %s", shorten(s), why))
		return
	}
	w.WriteString(s)
}

// ifname writes an interface name. nft reads a trailing `*` as a wildcard
// (netlink sends it as a literal character) and `\*` as a literal one, so
// neither may appear; the kernel's names have at most 15 bytes.
func (w *nftText) ifname(s string) {
	why := unquotable(s)
	switch {
	case len(s) == 0 || len(s) > 15:
		why = "must be 1-15 bytes"
	case strings.ContainsAny(s, "*"):
		why = "nft would read '*' as a wildcard"
	}
	if why != "" {
		w.fail(fmt.Errorf("cannot write interface name %s: %s", shorten(s), why))
		w.WriteString(`""`)
		return
	}
	w.quote(s)
}

// ident writes a table, chain or set name, which nft takes unquoted.
func (w *nftText) ident(s string) {
	if !isIdent(s) {
		w.fail(fmt.Errorf("cannot write %s as an nft name: must be a letter followed by letters, digits, '_' or '-'", shorten(s)))
	}
	w.WriteString(s)
}

func isIdent(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case i > 0 && (c >= '0' && c <= '9' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

func unquotable(s string) string {
	for _, c := range []byte(s) {
		switch {
		case c == '"':
			return `it contains '"', which would end the string`
		case c == '\\':
			return `it contains '\', which nft reads as an escape`
		case c < 0x20 || c > 0x7e:
			return fmt.Sprintf("it contains byte 0x%02x; only printable ASCII can be written", c)
		}
	}
	return ""
}

// shorten quotes s for an error message, cut to a sane length.
func shorten(s string) string {
	const max = 40
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}
