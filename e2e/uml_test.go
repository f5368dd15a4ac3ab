//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Environment variables that cross from the host into the guest.
const (
	envGuest      = "SNAPCTL_E2E_GUEST"   // "1" inside the guest
	envBin        = "SNAPCTL_BIN"         // the snapctl binary built for this run
	envReleaseBin = "SNAPCTL_RELEASE_BIN" // the same, built as a release
	envPhase      = "SNAPCTL_E2E_PHASE"   // which boot of a multi-boot test this is
)

// snapctlBin is the CGO_ENABLED=0 snapctl binary built by TestMain with the
// build tag crashhook, so the crash matrices can kill it at its steps
// (internal/crashhook); every test runs it.
var snapctlBin string

// releaseBin is snapctl built exactly as `make build` builds it (no tag):
// TestCrashHookRelease checks that the crash hook's variables do nothing
// to it.
var releaseBin string

// shimPath is the LD_PRELOAD shim that lets UML 6.1 run on hosts with large
// XSAVE areas (see umlfpu/umlfpu.c).
var shimPath string

func guest() bool { return os.Getenv(envGuest) == "1" }

func TestMain(m *testing.M) {
	if guest() {
		snapctlBin = os.Getenv(envBin)
		releaseBin = os.Getenv(envReleaseBin)
		code := m.Run()
		if leaked := leakedDevices(); len(leaked) > 0 {
			fmt.Printf("e2e: FAIL: device-mapper devices left behind: %s\n", strings.Join(leaked, ", "))
			code = 1
		}
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "snapctl-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	if err := hostSetup(dir); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: FAIL: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// hostSetup checks the prerequisites and builds snapctl (with the crash
// hook, and as a release), and the shim. Missing prerequisites are a
// failure, never a skip.
func hostSetup(dir string) error {
	if _, err := exec.LookPath("linux.uml"); err != nil {
		return fmt.Errorf("linux.uml not found: install Debian's user-mode-linux package (apt-get install -y user-mode-linux kmod e2fsprogs): %w", err)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	snapctlBin = filepath.Join(dir, "snapctl")
	releaseBin = filepath.Join(dir, "snapctl-release")
	for _, b := range []struct {
		what string
		args []string
	}{
		{"snapctl with the crash hook", []string{"build", "-tags", "crashhook", "-o", snapctlBin, "./cmd/snapctl"}},
		// The Makefile's build target, word for word.
		{"snapctl as a release", []string{"build", "-trimpath", "-o", releaseBin, "./cmd/snapctl"}},
	} {
		build := exec.Command("go", b.args...)
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b.what, err, out)
		}
	}
	shimPath = filepath.Join(dir, "umlfpu.so")
	cc := exec.Command("cc", "-O2", "-shared", "-fPIC", "-o", shimPath, filepath.Join(root, "e2e", "umlfpu", "umlfpu.c"))
	if out, err := cc.CombinedOutput(); err != nil {
		return fmt.Errorf("build the UML ptrace shim (needs a C compiler: apt-get install -y gcc): %v\n%s", err, out)
	}
	return nil
}

func moduleRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("no go.mod above %s", wd)
}

// leakedDevices lists the device-mapper devices that exist in the guest.
func leakedDevices() []string {
	var names []string
	paths, _ := filepath.Glob("/sys/block/dm-*/dm/name")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil {
			names = append(names, strings.TrimSpace(string(b)))
		}
	}
	return names
}

// Disk is one block device of the guest, /dev/ubdX in the order given.
type Disk struct {
	Size int64  // bytes; a sparse image of this size is created
	Path string // or: an existing image file, used in place
}

// Config describes a guest machine.
type Config struct {
	Disks   []Disk
	MemMiB  int           // guest memory; default 512
	Timeout time.Duration // per boot; default 10 minutes (two guests share the two cores)
	// KernelArgs are added to the guest kernel's command line, e.g.
	// "slab_nomerge" to give each slab cache its own line in /proc/slabinfo.
	KernelArgs []string
}

// Machine is a set of disk images booted one or more times.
type Machine struct {
	cfg   Config
	dir   string
	disks []string
}

// NewMachine creates the machine's disk images in a test temp directory.
func NewMachine(t testing.TB, cfg Config) *Machine {
	t.Helper()
	if cfg.MemMiB == 0 {
		cfg.MemMiB = 512
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Minute
	}
	m := &Machine{cfg: cfg, dir: t.TempDir()}
	for i, d := range cfg.Disks {
		p := d.Path
		if p == "" {
			p = filepath.Join(m.dir, fmt.Sprintf("disk%d.img", i))
			f, err := os.Create(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(d.Size); err != nil {
				t.Fatal(err)
			}
			f.Close()
		}
		m.disks = append(m.disks, p)
	}
	return m
}

// DiskPath is the host path of the image behind /dev/ubd<a+i>.
func (m *Machine) DiskPath(i int) string { return m.disks[i] }

// RunOptions says what one boot runs.
type RunOptions struct {
	// Argv is the program to run as root in the guest. Empty: this test
	// binary, running the calling test.
	Argv []string
	// Env is added to the guest program's environment.
	Env []string
	// PowerCutOn kills the whole machine (SIGKILL, no shutdown, the guest's
	// caches lost) as soon as a console line contains this text.
	PowerCutOn string
}

// Result is what came back from one boot.
type Result struct {
	Output   string        // the console: kernel messages and the program's output
	Status   int           // the program's exit status; -1 if it did not finish
	Cut      bool          // the machine was killed by PowerCutOn
	TimedOut bool          // the guest did not finish within Config.Timeout
	Elapsed  time.Duration // wall time of the boot
}

var testRunPart = regexp.MustCompile(`[^/]+`)

// Run boots the machine once and runs opts.Argv (or the calling test) in it.
func (m *Machine) Run(t testing.TB, opts RunOptions) Result {
	t.Helper()
	argv := opts.Argv
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		run := testRunPart.ReplaceAllStringFunc(t.Name(), func(s string) string { return "^" + regexp.QuoteMeta(s) + "$" })
		argv = []string{exe, "-test.run=" + run, "-test.v", "-test.count=1", "-test.timeout=" + m.cfg.Timeout.String()}
	}
	run, err := os.MkdirTemp(m.dir, "boot-")
	if err != nil {
		t.Fatal(err)
	}
	statusFile := filepath.Join(run, "status")
	var script strings.Builder
	script.WriteString("#!/bin/sh\n")
	script.WriteString("export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n")
	script.WriteString(guestInit)
	env := append([]string{envGuest + "=1", envBin + "=" + snapctlBin, envReleaseBin + "=" + releaseBin}, opts.Env...)
	// The host's test switches (SNAPCTL_E2E_*, e.g. an on-demand case) hold
	// in the guest too.
	for _, e := range os.Environ() {
		if k, _, _ := strings.Cut(e, "="); strings.HasPrefix(k, "SNAPCTL_E2E_") && k != envGuest && k != envPhase {
			env = append([]string{e}, env...)
		}
	}
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&script, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(&script, "cd %s\n", shellQuote(run))
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = shellQuote(a)
	}
	fmt.Fprintf(&script, "%s </dev/null 2>&1\n", strings.Join(quoted, " "))
	fmt.Fprintf(&script, "echo $? > %s\nsync\npoweroff -f\n", shellQuote(statusFile))
	initPath := filepath.Join(run, "init.sh")
	if err := os.WriteFile(initPath, []byte(script.String()), 0o755); err != nil {
		t.Fatal(err)
	}

	args := []string{
		fmt.Sprintf("mem=%dM", m.cfg.MemMiB), "rootfstype=hostfs", "rootflags=/", "rw",
		"init=" + initPath, "quiet", "con=null", "con0=fd:0,fd:1",
	}
	args = append(args, m.cfg.KernelArgs...)
	for i, d := range m.disks {
		args = append(args, fmt.Sprintf("ubd%d=%s", i, d))
	}
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.Timeout)
	defer cancel()
	cmd := exec.Command("linux.uml", args...)
	cmd.Env = append(os.Environ(), "LD_PRELOAD="+shimPath, "TMPDIR="+umlTmp(run))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdin = nil
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start linux.uml: %v", err)
	}
	var (
		out  bytes.Buffer
		cut  bool
		once sync.Once
		done = make(chan struct{})
	)
	kill := func() { once.Do(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }) }
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			out.WriteString(line)
			out.WriteByte('\n')
			if testing.Verbose() {
				// Two guests may run at once: each line names its test.
				fmt.Printf("    guest %s| %s\n", t.Name(), line)
			}
			if opts.PowerCutOn != "" && strings.Contains(line, opts.PowerCutOn) {
				cut = true
				kill()
			}
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		<-ctx.Done()
		kill()
	}()
	werr := cmd.Wait()
	// UML's helper processes may outlive the main one; reap the group.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	pw.Close()
	<-done
	r := Result{Output: out.String(), Status: -1, Cut: cut, Elapsed: time.Since(start)}
	if b, err := os.ReadFile(statusFile); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			r.Status = n
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		r.TimedOut = true
		t.Logf("guest timed out after %v\n%s", m.cfg.Timeout, tail(r.Output, 60))
	} else if r.Status == -1 && !cut {
		t.Logf("linux.uml exited (%v) without a status from the guest program", werr)
	}
	return r
}

// umlTmp is where UML keeps the file behind the guest's memory: a tmpfs if
// the host has one (otherwise every guest page is written back to disk),
// else the boot's own directory.
func umlTmp(fallback string) string {
	var st syscall.Statfs_t
	if err := syscall.Statfs("/dev/shm", &st); err == nil && st.Type == 0x01021994 { // TMPFS_MAGIC
		return "/dev/shm"
	}
	return fallback
}

// guestInit prepares the guest: pseudo file systems, a private /run, and the
// kernel modules snapctl needs (modprobe resolves their dependencies from
// the user-mode-linux package's module tree).
const guestInit = `
mount -t proc proc /proc
mount -t sysfs sys /sys
mountpoint -q /dev || mount -t devtmpfs dev /dev
mount -t tmpfs run /run
mkdir -p /dev/shm /run/kmod/lib && mount -t tmpfs shm /dev/shm
ln -s /usr/lib/uml/modules /run/kmod/lib/modules
for mod in dm-mod dm-bufio dm-snapshot dm-zero dm-flakey dm-dust dm-log-writes dm-delay nbd loop f2fs; do
	modprobe -d /run/kmod "$mod" || echo "e2e: modprobe $mod failed"
done
echo "e2e: guest kernel $(uname -r)"
`

// InGuest runs the calling test inside a fresh guest. On the host it boots
// the machine, runs the test there, reports its output and returns false;
// inside the guest it returns true and the test body runs.
func InGuest(t *testing.T, cfg Config) bool {
	t.Helper()
	if guest() {
		return true
	}
	m := NewMachine(t, cfg)
	r := m.Run(t, RunOptions{})
	if r.TimedOut {
		// A safety net: UML 6.1 used to wedge in its idle loop after losing
		// a timer interrupt (umlfpu.c now re-arms the timer; 0 wedges in 22
		// runs since, 5 in 8 before). Boot the test once more on fresh
		// disks; scripts/e2e-summary.sh lists every retry, since an
		// intermittent hang of snapctl's own would show up there.
		t.Logf("RETRY: the guest did not finish within %v; booting the test once more on fresh disks", m.cfg.Timeout)
		m = NewMachine(t, cfg)
		r = m.Run(t, RunOptions{})
	}
	t.Logf("guest boot took %v", r.Elapsed.Round(time.Millisecond))
	if r.TimedOut {
		t.Fatalf("guest timed out twice (after %v each)", m.cfg.Timeout)
	}
	if r.Status != 0 {
		t.Fatalf("guest test failed (status %d):\n%s", r.Status, tail(r.Output, 200))
	}
	if !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
		t.Fatalf("guest ran no passing test named %s:\n%s", t.Name(), tail(r.Output, 100))
	}
	return false
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
