// Package docs holds the man pages' sources (Markdown for go-md2man); its
// tests keep them in step with the config parser.
package docs

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// configKeys returns every key the config parser accepts, by section
// ("" for top-level tables), read from the toml tags of pkg/config's raw
// structs: the structs the file is decoded into.
func configKeys(t *testing.T) map[string][]string {
	t.Helper()
	fset := token.NewFileSet()
	files, err := filepath.Glob("../pkg/config/*.go")
	if err != nil {
		t.Fatal(err)
	}
	structs := map[string]*ast.StructType{}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if ts, ok := n.(*ast.TypeSpec); ok {
				if st, ok := ts.Type.(*ast.StructType); ok && strings.HasPrefix(ts.Name.Name, "raw") {
					structs[ts.Name.Name] = st
				}
			}
			return true
		})
	}
	tag := func(f *ast.Field) string {
		if f.Tag == nil {
			return ""
		}
		s, _ := strconv.Unquote(f.Tag.Value)
		name, _, _ := strings.Cut(reflect.StructTag(s).Get("toml"), ",")
		return name
	}
	// The top-level struct is the one whose fields are other raw structs.
	keys := map[string][]string{}
	for _, st := range structs {
		for _, f := range st.Fields.List {
			typ := strings.TrimLeft(types(f.Type), "*[]")
			sub, ok := structs[typ]
			if !ok || tag(f) == "" {
				continue
			}
			keys[""] = append(keys[""], tag(f))
			for _, sf := range sub.Fields.List {
				if k := tag(sf); k != "" {
					keys[tag(f)] = append(keys[tag(f)], k)
				}
			}
		}
	}
	if len(keys[""]) == 0 {
		t.Fatal("found no raw config structs in pkg/config")
	}
	return keys
}

func types(e ast.Expr) string {
	switch e := e.(type) {
	case *ast.Ident:
		return e.Name
	case *ast.StarExpr:
		return "*" + types(e.X)
	case *ast.ArrayType:
		return "[]" + types(e.Elt)
	}
	return ""
}

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
	keys := configKeys(t)
	sort.Strings(keys[""])
	for _, sec := range keys[""] {
		text, ok := sections[sec]
		if !ok {
			t.Errorf("fwdd.toml.5.md has no section for [%s]", sec)
			continue
		}
		for _, k := range keys[sec] {
			if !regexp.MustCompile(`(?m)^\*\*` + regexp.QuoteMeta(k) + `\*\* `).MatchString(text) {
				t.Errorf("fwdd.toml.5.md: [%s] does not describe the key %q (a line starting **%s**)", sec, k, k)
			}
		}
	}
}
