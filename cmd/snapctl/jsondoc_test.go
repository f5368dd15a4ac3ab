package main

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/group"
	"github.com/snapctl/snapctl/snapshot"
)

// jsonDocuments lists every type --json prints, with the section of
// docs/json.md that documents it. TestJSONSchemaVersion checks that it
// names every document type of the package.
func jsonDocuments() []struct {
	section string
	v       document
} {
	return []struct {
		section string
		v       document
	}{
		{"status", statusDoc{&snapshot.VolumeStatus{}}},
		{"status", statusListDoc{&snapshot.VolumeStatus{}}},
		{"status GROUP", groupDoc{&group.Status{}}},
		{"detach", &detachedDoc{}},
		{"prepare", &prepareDoc{Plan: &snapshot.Plan{}}},
		{"write", &writeDoc{WriteResult: &snapshot.WriteResult{}}},
		{"cow-size", &cowSizeResult{}},
		{"inspect-cow", &inspectCOWReport{}},
		{"targets", &targetsReport{}},
		{"map-file", &mapFileReport{}},
		{"version", &versionDoc{}},
		{"merge --offline", &offlineMergeDoc{}},
		{"bow status", &bowStatusDoc{serveStatus: &serveStatus{}}},
		{"bow commit --offline", &bowOfflineCommitDoc{}},
		{"bow restore", &bowRestoreDoc{}},
		{"bow inspect", &bowInspectDoc{}},
	}
}

// jsonCommands maps every command that prints JSON to the sections of
// docs/json.md that describe what it prints. Commands that print none are
// listed in docs/json.md itself, under "Commands without JSON output".
var jsonCommands = map[string][]string{
	"status":         {"status", "status GROUP"},
	"seal":           {"status GROUP"},
	"mark-good":      {"status GROUP"},
	"mark-bad":       {"status GROUP"},
	"attach":         {"status"},
	"commit":         {"status"},
	"rollback":       {"status"},
	"merge":          {"status", "merge --offline"},
	"drop":           {"status"},
	"deactivate":     {"status"},
	"grow":           {"status"},
	"detach":         {"detach"},
	"prepare":        {"prepare"},
	"write":          {"write"},
	"cow-size":       {"cow-size"},
	"inspect-cow":    {"inspect-cow"},
	"targets":        {"targets"},
	"map-file":       {"map-file"},
	"version":        {"version"},
	"bow status":     {"bow status"},
	"bow checkpoint": {"bow status"},
	"bow commit":     {"bow status", "bow commit --offline"},
	"bow restore":    {"bow restore"},
	"bow inspect":    {"bow inspect"},
}

// TestJSONSchemaVersion checks that every document --json prints starts
// with schema_version: the package prints JSON only through printDoc;
// every type that can go to printDoc is in jsonDocuments and prints
// schema_version first, set to schemaVersion; and so does every golden
// file under testdata/.
func TestJSONSchemaVersion(t *testing.T) {
	fset := token.NewFileSet()
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	docTypes := map[string]bool{} // types embedding schema or with their own setSchemaVersion
	for _, f := range files {
		for _, d := range f.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if ok && fd.Name.Name == "setSchemaVersion" && fd.Recv != nil {
				if id := recvType(fd.Recv.List[0].Type); id != "schema" {
					docTypes[id] = true
				}
			}
			if ok && fd.Body != nil && fd.Name.Name != "printDoc" {
				ast.Inspect(fd.Body, func(n ast.Node) bool {
					if c, ok := n.(*ast.CallExpr); ok {
						if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "printJSON" {
							t.Errorf("%s: %s calls printJSON: print --json documents with printDoc, which sets schema_version", fset.Position(c.Pos()), fd.Name.Name)
						}
					}
					return true
				})
			}
			gd, ok := d.(*ast.GenDecl)
			if !ok {
				continue
			}
			for _, sp := range gd.Specs {
				ts, ok := sp.(*ast.TypeSpec)
				if !ok {
					continue
				}
				if st, ok := ts.Type.(*ast.StructType); ok {
					for _, fl := range st.Fields.List {
						if id, ok := fl.Type.(*ast.Ident); ok && id.Name == "schema" && len(fl.Names) == 0 {
							docTypes[ts.Name.Name] = true
						}
					}
				}
			}
		}
	}
	if len(docTypes) == 0 {
		t.Fatal("found no document types: is the test looking at the right files?")
	}
	listed := map[string]bool{}
	for _, d := range jsonDocuments() {
		ty := reflect.TypeOf(d.v)
		if ty.Kind() == reflect.Pointer {
			ty = ty.Elem()
		}
		listed[ty.Name()] = true
		t.Run(ty.Name(), func(t *testing.T) {
			d.v.setSchemaVersion()
			b, err := json.Marshal(d.v)
			if err != nil {
				t.Fatal(err)
			}
			n, err := parseOrdered(b)
			if err != nil {
				t.Fatal(err)
			}
			checkSchemaVersion(t, n, strconv.Itoa(schemaVersion))
		})
	}
	for name := range docTypes {
		if !listed[name] {
			t.Errorf("document type %s is not in jsonDocuments: add it with its section of docs/json.md", name)
		}
	}

	goldens, err := filepath.Glob(filepath.Join("testdata", "*.golden"))
	if err != nil || len(goldens) == 0 {
		t.Fatalf("no golden files under testdata/ (%v)", err)
	}
	for _, g := range goldens {
		t.Run(filepath.Base(g), func(t *testing.T) {
			b, err := os.ReadFile(g)
			if err != nil {
				t.Fatal(err)
			}
			n, err := parseOrdered(b)
			if err != nil {
				t.Fatal(err)
			}
			// The status goldens hold the shape only: values are masked.
			masked, _ := json.Marshal("<number>")
			checkSchemaVersion(t, n, strconv.Itoa(schemaVersion), string(masked))
		})
	}
}

// recvType is the type name of a method receiver.
func recvType(e ast.Expr) string {
	if s, ok := e.(*ast.StarExpr); ok {
		e = s.X
	}
	if id, ok := e.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// checkSchemaVersion checks that n, or each element of n if it is an
// array, is an object whose first field is schema_version with one of the
// values want (as JSON text).
func checkSchemaVersion(t *testing.T, n *jsonNode, want ...string) {
	t.Helper()
	objs := []*jsonNode{n}
	if n.kind == 'a' {
		objs = n.vals
	}
	for _, o := range objs {
		switch {
		case o.kind != 'o':
			t.Errorf("got a JSON %c, want an object", o.kind)
		case len(o.keys) == 0 || o.keys[0] != "schema_version":
			t.Errorf("got fields %v, want schema_version first", o.keys)
		case !slices.Contains(want, o.vals[0].text):
			t.Errorf("got schema_version %s, want %s", o.vals[0].text, strings.Join(want, " or "))
		}
	}
}

// TestJSONSections walks the command tree: every command prints JSON (and
// is in jsonCommands, with sections that exist in docs/json.md and that
// jsonDocuments checks field by field) or is listed in docs/json.md as a
// command without JSON output.
func TestJSONSections(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "json.md"))
	if err != nil {
		t.Fatal(err)
	}
	var headings []string
	noJSON := map[string]bool{}
	inNone := false
	item := regexp.MustCompile("^- `snapctl ([a-z -]+)`")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "## ") {
			headings = append(headings, l)
			inNone = l == "## Commands without JSON output"
			continue
		}
		if m := item.FindStringSubmatch(l); inNone && m != nil {
			noJSON[m[1]] = true
		}
	}
	if len(noJSON) == 0 {
		t.Error(`docs/json.md has no "## Commands without JSON output" section listing "- ` + "`snapctl NAME`" + `" items`)
	}

	var cmds []string
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, s := range c.Commands() {
			if s.Hidden || s.Name() == "help" || s.Name() == "completion" {
				continue
			}
			if s.HasSubCommands() {
				walk(s)
				continue
			}
			cmds = append(cmds, strings.TrimPrefix(s.CommandPath(), "snapctl "))
		}
	}
	walk(newApp(io.Discard, io.Discard).rootCmd())
	sort.Strings(cmds)
	for _, c := range cmds {
		secs, hasJSON := jsonCommands[c]
		switch {
		case hasJSON && noJSON[c]:
			t.Errorf("%s: in jsonCommands and in docs/json.md's list of commands without JSON output", c)
		case !hasJSON && !noJSON[c]:
			t.Errorf("%s: say in docs/json.md what its --json prints (a section, and an entry in jsonCommands), or list it under \"Commands without JSON output\"", c)
		}
		for _, s := range secs {
			if !slices.ContainsFunc(headings, func(h string) bool { return headingIs(h, s) }) {
				t.Errorf("%s prints JSON, but docs/json.md has no section for `snapctl %s`", c, s)
			}
		}
	}
	for c := range jsonCommands {
		if !slices.Contains(cmds, c) {
			t.Errorf("jsonCommands names %q, which is not a command", c)
		}
	}
	for c := range noJSON {
		if !slices.Contains(cmds, c) {
			t.Errorf("docs/json.md lists %q without JSON output, but it is not a command", c)
		}
	}
	// Each section is checked against a type, and each type's section is
	// printed by some command.
	typed := map[string]bool{}
	for _, d := range jsonDocuments() {
		typed[d.section] = true
	}
	used := map[string]bool{}
	for _, secs := range jsonCommands {
		for _, s := range secs {
			used[s] = true
			if !typed[s] {
				t.Errorf("section %q has no type in jsonDocuments", s)
			}
		}
	}
	for s := range typed {
		if !used[s] {
			t.Errorf("jsonDocuments has section %q, which no command in jsonCommands prints", s)
		}
	}
}
