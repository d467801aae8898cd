// Package docs holds the man pages' sources (Markdown for go-md2man); its
// tests keep them in step with the config parser.
package docs

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/fwdd/fwdd/pkg/config"
)

// TestManPageHasEveryKey: every key the parser accepts is described in
// fwdd.toml(5), in its section, so the page cannot rot.
func TestManPageHasEveryKey(t *testing.T) {
	b, err := os.ReadFile("fwdd.toml.5.md")
	if err != nil {
		t.Fatal(err)
	}
	// Split the page into its "# [section]" / "# [[section]]" parts.
	sections := map[string]string{}
	parts := regexp.MustCompile(`(?m)^# \[\[?([a-z_]+)\]\]?$`).FindAllStringSubmatchIndex(string(b), -1)
	for i, p := range parts {
		end := len(b)
		if i+1 < len(parts) {
			end = parts[i+1][0]
		}
		sections[string(b[p[2]:p[3]])] = string(b[p[1]:end])
	}
	keys := config.Keys()
	if len(keys) == 0 {
		t.Fatal("config.Keys() is empty")
	}
	for _, k := range keys {
		sec, key, ok := strings.Cut(k, ".")
		if !ok {
			t.Fatalf("config.Keys() returned %q, not section.key", k)
		}
		text, ok := sections[sec]
		if !ok {
			t.Errorf("fwdd.toml.5.md has no section for [%s]", sec)
			continue
		}
		if !regexp.MustCompile(`(?m)^\*\*` + regexp.QuoteMeta(key) + `\*\* `).MatchString(text) {
			t.Errorf("fwdd.toml.5.md: [%s] does not describe the key %q (a line starting **%s**)", sec, key, key)
		}
	}
}
