package platform

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestGate keeps the kernel behind the gate: in the packages that also
// build on other systems, only files built for Linux alone import unsafe or
// golang.org/x/sys/unix.
func TestGate(t *testing.T) {
	for _, dir := range []string{"cowsize", "dmtable", "merge", "bow", "bow/nbd", "fiemap", "freespace"} {
		files, err := filepath.Glob(filepath.Join("..", "..", dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		if len(files) == 0 {
			t.Fatalf("%s: no Go files", dir)
		}
		for _, path := range files {
			if strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, "_linux.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range f.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				if p == "unsafe" || p == "golang.org/x/sys/unix" {
					t.Errorf("%s imports %s: only a *_linux.go file may", filepath.Join(dir, filepath.Base(path)), p)
				}
			}
		}
	}
}
