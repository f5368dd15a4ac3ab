//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// parallel lets a functional test run beside the others: every top-level
// e2e test calls it first thing, except the benchmarks (a test whose
// result is a time or a ratio of times), which must not share the CPU with
// another guest. `make e2e` runs the functional tests two guests at a time
// (-parallel 2) and then the benchmarks alone, one at a time: they are
// listed in the Makefile's E2E_BENCH, and TestSchedule fails when a test
// is in neither group or in both. Inside a guest a test runs alone and
// parallel does nothing.
//
// A test that calls parallel must not use t.Setenv or os.Chdir on the
// host, nor write to a fixed host path.
func parallel(t *testing.T) {
	t.Helper()
	if !guest() {
		t.Parallel()
	}
}

// ubd is the guest path of the i-th disk of the machine.
func ubd(i int) string { return "/dev/ubd" + string(rune('a'+i)) }

// run runs a program in the guest and fails the test if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// snapctl runs the snapctl binary under test; it returns stdout, stderr and
// the exit code.
func snapctl(t testing.TB, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(snapctlBin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run snapctl %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	t.Logf("$ snapctl %s  (exit %d)\n%s%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
	return stdout.String(), stderr.String(), code
}

// mustSnapctl runs snapctl and fails the test unless it exits 0.
func mustSnapctl(t testing.TB, args ...string) string {
	t.Helper()
	out, errOut, code := snapctl(t, args...)
	if code != 0 {
		t.Fatalf("snapctl %s: exit %d\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// The crash hook's lines on stderr (internal/crashhook): each step a
// tagged snapctl reaches while SNAPCTL_TEST_CRASH_AFTER or _AT is set, and
// the step it kills itself at.
var (
	hookStepLine   = regexp.MustCompile(`(?m)^snapctl: test hook: step (\d+): (.*)$`)
	hookKilledLine = regexp.MustCompile(`(?m)^snapctl: test hook: killed at step (\d+) \((.*)\)$`)
)

// hookSteps lists the steps a snapctl run announced, in order.
func hookSteps(out string) []string {
	var steps []string
	for _, m := range hookStepLine.FindAllStringSubmatch(out, -1) {
		steps = append(steps, m[2])
	}
	return steps
}

// writeAt writes data to a device at a byte offset and syncs it.
func writeAt(t testing.TB, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatalf("write %s at %d: %v", dev, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("sync %s: %v", dev, err)
	}
}

// readAt reads n bytes of a device at a byte offset, bypassing nothing but
// reading after the writer's fsync.
func readAt(t testing.TB, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return b
}

// pattern is n deterministic bytes distinct for each seed.
func pattern(seed, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var _ = fmt.Sprintf
