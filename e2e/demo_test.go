//go:build e2e

package e2e

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var demoFlag = flag.Bool("demo", false, "print the demo session (make demo)")

// TestDemo runs demo/demo.sh in a guest with a blank 256 MiB /dev/ubda and
// checks it ends with DEMO OK. `make demo` runs it with -demo, which prints
// the session. Guest disks: /dev/ubda 256 MiB, blank.
func TestDemo(t *testing.T) {
	parallel(t)
	if guest() {
		t.Fatal("TestDemo runs demo/demo.sh, not a Go test body, in the guest")
	}
	root, err := moduleRoot()
	must(t, err)
	m := NewMachine(t, Config{Disks: []Disk{{Size: 256 << 20}}})
	r := m.Run(t, RunOptions{Argv: []string{"/bin/sh", filepath.Join(root, "demo", "demo.sh")}})
	session := demoSession(r.Output)
	if *demoFlag {
		fmt.Print(session)
	}
	if r.Status != 0 || !strings.Contains(r.Output, "DEMO OK") {
		t.Fatalf("demo failed (status %d):\n%s", r.Status, tail(r.Output, 80))
	}
	t.Logf("demo took %v", r.Elapsed)
}

// demoSession is the console without the kernel's boot messages.
func demoSession(out string) string {
	var b strings.Builder
	started := false
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "e2e: guest kernel") {
			started = true
			continue
		}
		if !started || strings.HasPrefix(l, "Powering off") || strings.HasPrefix(l, "reboot:") {
			continue
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

var _ = os.Getenv
