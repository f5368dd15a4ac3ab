//go:build e2e

package e2e

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestHarness boots the guest once and checks what every other test relies
// on: root, the device-mapper control node, the snapshot targets, a disk.
// Guest disks: /dev/ubda = 16 MiB blank.
func TestHarness(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 16 << 20}}}) {
		return
	}
	if os.Geteuid() != 0 {
		t.Fatalf("guest runs as uid %d, want root", os.Geteuid())
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Fatalf("device-mapper control node: %v", err)
	}
	if _, err := os.Stat(ubd(0)); err != nil {
		t.Fatalf("disk: %v", err)
	}
	mods, err := os.ReadFile("/proc/modules")
	must(t, err)
	for _, m := range []string{"dm_snapshot", "nbd", "dm_flakey"} {
		if !strings.Contains(string(mods), m+" ") {
			t.Errorf("module %s not loaded", m)
		}
	}
	t.Logf("kernel: %s", strings.TrimSpace(run(t, "uname", "-r")))
}

// TestSchedule checks the split `make e2e` relies on (see parallel): every
// top-level test calls parallel(t) as its first statement, except those the
// Makefile's E2E_BENCH names, which must not call it at all, and every name
// in E2E_BENCH is a test. It reads the sources; no guest boots.
func TestSchedule(t *testing.T) {
	parallel(t)
	if guest() {
		t.Fatal("TestSchedule runs on the host only")
	}
	root, err := moduleRoot()
	must(t, err)
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	must(t, err)
	m := regexp.MustCompile(`(?m)^E2E_BENCH\s*:?=\s*(\S+)\s*$`).FindSubmatch(mk)
	if m == nil {
		t.Fatal("the Makefile has no E2E_BENCH := REGEXP line")
	}
	bench, err := regexp.Compile(strings.ReplaceAll(string(m[1]), "$$", "$"))
	must(t, err)
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "e2e", "*_test.go"))
	must(t, err)
	benchSeen := 0
	for _, p := range files {
		f, err := parser.ParseFile(fset, p, nil, 0)
		must(t, err)
		for _, d := range f.Decls {
			fn, ok := d.(*ast.FuncDecl)
			if !ok || fn.Recv != nil || !strings.HasPrefix(fn.Name.Name, "Test") || fn.Name.Name == "TestMain" {
				continue
			}
			name := fn.Name.Name
			first := len(fn.Body.List) > 0 && isParallelCall(fn.Body.List[0])
			calls := false
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				if c, ok := n.(*ast.CallExpr); ok {
					if id, ok := c.Fun.(*ast.Ident); ok && id.Name == "parallel" {
						calls = true
					}
				}
				return true
			})
			switch {
			case bench.MatchString(name):
				benchSeen++
				if calls {
					t.Errorf("%s (%s): a benchmark (E2E_BENCH in the Makefile) calls parallel(t): it would share the CPU with another guest", name, filepath.Base(p))
				}
			case !first:
				t.Errorf("%s (%s): a functional test must call parallel(t) first; a benchmark must be named in the Makefile's E2E_BENCH", name, filepath.Base(p))
			}
		}
	}
	for _, alt := range strings.Split(strings.Trim(bench.String(), "^$()"), "|") {
		if !regexp.MustCompile(`^Test\w+$`).MatchString(alt) {
			t.Errorf("E2E_BENCH alternative %q is not a test name", alt)
		}
	}
	if n := strings.Count(bench.String(), "|") + 1; benchSeen != n {
		t.Errorf("E2E_BENCH names %d tests, %d of them found in e2e/", n, benchSeen)
	}
	t.Logf("%d benchmarks run alone: %s", benchSeen, bench)
}

// isParallelCall reports whether st is the statement parallel(t).
func isParallelCall(st ast.Stmt) bool {
	es, ok := st.(*ast.ExprStmt)
	if !ok {
		return false
	}
	c, ok := es.X.(*ast.CallExpr)
	if !ok {
		return false
	}
	id, ok := c.Fun.(*ast.Ident)
	return ok && id.Name == "parallel" && len(c.Args) == 1
}
