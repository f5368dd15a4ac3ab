//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestReadme runs the example sessions of README.md on the real kernel and
// compares what each command prints with what the README shows.
//
// A session is a fenced block preceded by a line `<!-- session: NAME -->`.
// In the block, a line starting with "$ " is a command (text after two or
// more spaces and a '#' is the reader's annotation; a trailing '\' continues
// the command on the next line); every other line is the output of the
// command before it, stdout and stderr together, in the order written.
// Each session runs in a fresh guest, its commands in order in one /bin/sh
// as root, with snapctl on PATH, the state directory in /run, a tmpfs on
// /tmp as the working directory, and its disks and hidden setup taken from
// readmeSessions. A command that exits non-zero fails the test unless the
// next command is `echo $?`, which shows the code. A command `reboot` shuts
// the guest down (file systems unmounted, device-mapper devices removed,
// snapctl not asked) and boots it again on the same disks; the commands
// after it run in the new boot, with the state directory and the working
// directory kept on the host.
//
// Run with SNAPCTL_README_UPDATE=1 to write the real output into README.md
// (a command whose README output still matches, after normalization, is
// left as it is, so the README does not churn); without it, a difference
// fails the test with a diff per command.
//
// Guest disks, per session:
//
//	checkpoint: /dev/ubda 256 MiB, blank.
//	update:     /dev/ubda 64 MiB, system v1 (pseudo-random bytes);
//	            /dev/ubdb 128 MiB, blank (the data partition);
//	            /dev/ubdc 64 MiB, system v2: v1 with readmeV2Blocks
//	            4 KiB blocks (runs of 5) changed in 64 bytes each.
//	ota:        as update (across reboots: `reboot` in a session).
//	bow:        /dev/ubda 256 MiB, blank (served as /dev/nbd0).
func TestReadme(t *testing.T) {
	parallel(t)
	if guest() {
		t.Fatal("TestReadme runs shell scripts, not a Go test body, in the guest")
	}
	root, err := moduleRoot()
	must(t, err)
	readmePath := filepath.Join(root, "README.md")
	raw, err := os.ReadFile(readmePath)
	must(t, err)
	blocks, err := parseSessions(string(raw))
	if err != nil {
		t.Fatalf("README.md: %v", err)
	}
	seen := map[string]bool{}
	for _, b := range blocks {
		seen[b.name] = true
		if _, ok := readmeSessions[b.name]; !ok {
			t.Errorf("README.md line %d: session %q has no entry in readmeSessions", b.marker+1, b.name)
		}
	}
	for name := range readmeSessions {
		if !seen[name] {
			t.Errorf("README.md has no session %q (a line <!-- session: %s --> before a fenced block)", name, name)
		}
	}
	if t.Failed() {
		return
	}

	update := os.Getenv("SNAPCTL_README_UPDATE") == "1"
	lines := strings.Split(string(raw), "\n")
	// Replace blocks from the last so earlier line numbers stay valid.
	replaced := make(map[int][]string)
	for _, b := range blocks {
		t.Run(b.name, func(t *testing.T) {
			s := readmeSessions[b.name]
			got := runSession(t, s, b)
			if got == nil {
				return
			}
			newBlock, diffs := compareSession(b, got, s.norm)
			if len(diffs) == 0 {
				return
			}
			if update {
				replaced[b.marker] = newBlock
				t.Logf("README.md: session %q rewritten from the real output:\n%s", b.name, strings.Join(diffs, "\n"))
				return
			}
			t.Errorf("README.md session %q (line %d) differs from what the commands print "+
				"(rerun with SNAPCTL_README_UPDATE=1 to rewrite it; -README +got):\n%s",
				b.name, b.marker+1, strings.Join(diffs, "\n"))
		})
	}
	if update && len(replaced) > 0 {
		for i := len(blocks) - 1; i >= 0; i-- {
			b := blocks[i]
			nb, ok := replaced[b.marker]
			if !ok {
				continue
			}
			lines = append(lines[:b.start], append(nb, lines[b.end:]...)...)
		}
		must(t, os.WriteFile(readmePath, []byte(strings.Join(lines, "\n")), 0o644))
	}
}

// readmeSession is what a README session needs besides its commands.
type readmeSession struct {
	disks []Disk
	// images writes the disk images on the host before the boot.
	images func(t *testing.T, m *Machine)
	// setup and teardown run in the guest before and after the shown
	// commands (setup before /tmp is replaced by a tmpfs); their output
	// goes to the console, not into the README, and any failure fails
	// the test.
	setup, teardown string
	// norm lists the session's normalizations besides readmeNormProgress.
	norm []func([]string) []string
}

// readmeV2Blocks is how many 4 KiB blocks system v2 changes in the update
// session.
const readmeV2Blocks = 100

var readmeSessions = map[string]readmeSession{
	"checkpoint": {
		disks:    []Disk{{Size: 256 << 20}},
		teardown: "umount /mnt\nsnapctl detach data",
	},
	"update": {
		disks:    []Disk{{Size: 64 << 20}, {Size: 128 << 20}, {Size: 64 << 20}},
		images:   readmeUpdateImages,
		teardown: "umount /mnt\nsnapctl detach userdata",
	},
	"ota": {
		disks:    []Disk{{Size: 64 << 20}, {Size: 128 << 20}, {Size: 64 << 20}},
		images:   readmeUpdateImages,
		teardown: "umount /mnt\nsnapctl detach system\nsnapctl detach userdata",
	},
	"bow": {
		disks:    []Disk{{Size: 256 << 20}},
		teardown: "umount /mnt",
	},
}

// readmeUpdateImages writes system v1 on the first disk and v2 on the third
// (the update and ota sessions).
func readmeUpdateImages(t *testing.T, m *Machine) {
	v1 := pattern(1, 64<<20)
	must(t, os.WriteFile(m.DiskPath(0), v1, 0o644))
	v2 := v1 // v1 is on its disk: reuse the buffer
	change := pattern(2, 64*readmeV2Blocks)
	for i := range readmeV2Blocks {
		// Runs of 5 blocks, 800 blocks apart.
		off := (i/5*800 + i%5) * 4096
		copy(v2[off+512:], change[i*64:(i+1)*64])
	}
	must(t, os.WriteFile(m.DiskPath(2), v2, 0o644))
}

// sessionBlock is one session of the README: the fenced block's content is
// lines [start, end) of the file; marker is the line of the comment.
type sessionBlock struct {
	name               string
	marker, start, end int
	steps              []sessionStep
}

// sessionStep is one command of a session and the output the README shows.
type sessionStep struct {
	lines  []string // the command as written: annotations, continuations
	cmd    string   // the command as run
	output []string
}

var (
	sessionMarker = regexp.MustCompile(`^<!-- session: ([a-z0-9-]+) -->$`)
	annotation    = regexp.MustCompile(`\s{2,}#( .*)?$`)
)

// parseSessions finds the session blocks of a README.
func parseSessions(readme string) ([]sessionBlock, error) {
	lines := strings.Split(readme, "\n")
	var blocks []sessionBlock
	names := map[string]bool{}
	for i := 0; i < len(lines); i++ {
		m := sessionMarker.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		b := sessionBlock{name: m[1], marker: i}
		if names[b.name] {
			return nil, fmt.Errorf("line %d: session %q appears twice", i+1, b.name)
		}
		names[b.name] = true
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
			return nil, fmt.Errorf("line %d: session %q: want a fenced block (```) on the next line", i+1, b.name)
		}
		b.start = i + 2
		b.end = -1
		for j := b.start; j < len(lines); j++ {
			if strings.HasPrefix(lines[j], "```") {
				b.end = j
				break
			}
		}
		if b.end < 0 {
			return nil, fmt.Errorf("line %d: session %q: the fenced block does not end", i+1, b.name)
		}
		for j := b.start; j < b.end; j++ {
			l := lines[j]
			if !strings.HasPrefix(l, "$ ") {
				if len(b.steps) == 0 {
					return nil, fmt.Errorf("line %d: session %q: output before the first command", j+1, b.name)
				}
				st := &b.steps[len(b.steps)-1]
				st.output = append(st.output, l)
				continue
			}
			st := sessionStep{lines: []string{l}}
			cmd := annotation.ReplaceAllString(strings.TrimPrefix(l, "$ "), "")
			for strings.HasSuffix(cmd, `\`) {
				j++
				if j >= b.end {
					return nil, fmt.Errorf("line %d: session %q: a command continues past the block's end", j, b.name)
				}
				st.lines = append(st.lines, lines[j])
				cmd += "\n" + annotation.ReplaceAllString(lines[j], "")
			}
			st.cmd = cmd
			b.steps = append(b.steps, st)
		}
		if len(b.steps) == 0 {
			return nil, fmt.Errorf("line %d: session %q has no command", i+1, b.name)
		}
		blocks = append(blocks, b)
		i = b.end
	}
	return blocks, nil
}

// stepResult is what one command printed and its exit status.
type stepResult struct {
	output []string
	status int
}

// runSession boots a guest, runs the session's commands and returns what
// each printed; nil if the test failed. A command `reboot` ends a boot the
// way a shutdown does (every ext4 and xfs filesystem unmounted, every
// device-mapper device removed, snapctl not asked) and the commands after
// it run in the next boot of the same machine; the state directory and the
// working directory of such a session are kept on the host, as a root
// filesystem would keep them.
func runSession(t *testing.T, s readmeSession, b sessionBlock) []stepResult {
	t.Helper()
	dir := t.TempDir()
	var boots [][]sessionStep
	cur := []sessionStep{}
	for _, st := range b.steps {
		cur = append(cur, st)
		if st.cmd == "reboot" {
			boots = append(boots, cur)
			cur = []sessionStep{}
		}
	}
	boots = append(boots, cur)
	persist := len(boots) > 1
	stateDir, workDir := "/run/readme/state", ""
	if persist {
		stateDir, workDir = filepath.Join(dir, "state"), filepath.Join(dir, "work")
		must(t, os.MkdirAll(workDir, 0o755))
	}
	var scripts, outs []string
	for i, steps := range boots {
		outPath := filepath.Join(dir, fmt.Sprintf("session%d.out", i))
		var sc strings.Builder
		sc.WriteString("exec 3>" + shellQuote(outPath) + "\n")
		sc.WriteString("set -eu\n")
		sc.WriteString("mkdir -p /run/readme/bin " + shellQuote(stateDir) + "\n")
		sc.WriteString(`cp "$SNAPCTL_BIN" /run/readme/bin/snapctl` + "\n")
		sc.WriteString("export PATH=/run/readme/bin:$PATH SNAPCTL_STATE_DIR=" + shellQuote(stateDir) + "\n")
		if s.setup != "" && i == 0 {
			sc.WriteString(s.setup + "\n")
		}
		// The host's /tmp holds this script and the output file (both open
		// now); the session's files go to the guest's own /tmp, or, across
		// reboots, to a directory on the host mounted there.
		if persist {
			sc.WriteString("mount --bind " + shellQuote(workDir) + " /tmp\ncd /tmp\nset +eu\n")
		} else {
			sc.WriteString("mount -t tmpfs tmp /tmp\ncd /tmp\nset +eu\n")
		}
		sc.WriteString("exec 4>&1 5>&2 >&3 2>&1\n")
		for _, st := range steps {
			if st.cmd == "reboot" {
				sc.WriteString(`printf '\036%d\n' 0` + "\n")
				continue
			}
			sc.WriteString(st.cmd + "\n")
			sc.WriteString(`readme_status=$?; printf '\036%d\n' "$readme_status"; (exit "$readme_status")` + "\n")
		}
		sc.WriteString("exec >&4 2>&5 3>&-\nset -eu\ncd /\n")
		if i < len(boots)-1 {
			sc.WriteString("umount -a -t ext4,xfs\ndmsetup remove_all\n")
		} else if s.teardown != "" {
			sc.WriteString(s.teardown + "\n")
		}
		sc.WriteString("umount /tmp\n") // the harness writes the status file there
		sc.WriteString(`left=$(ls /sys/block | grep '^dm-' || true)
if [ -n "$left" ]; then echo "readme: device-mapper devices left behind: $(cat /sys/block/dm-*/dm/name | tr '\n' ' ')"; exit 1; fi
`)
		script := filepath.Join(dir, fmt.Sprintf("session%d.sh", i))
		must(t, os.WriteFile(script, []byte(sc.String()), 0o644))
		scripts, outs = append(scripts, script), append(outs, outPath)
	}

	var out []byte
	m := NewMachine(t, Config{Disks: s.disks, Timeout: 3 * time.Minute})
	if s.images != nil {
		s.images(t, m)
	}
	for i, script := range scripts {
		os.Remove(outs[i])
		r := m.Run(t, RunOptions{Argv: []string{"/bin/sh", script}})
		if r.TimedOut && !persist {
			// The UML idle-loop wedge (see InGuest): boot once more.
			t.Logf("RETRY: the guest did not finish in time; booting the session once more on fresh disks")
			m = NewMachine(t, Config{Disks: s.disks, Timeout: 3 * time.Minute})
			if s.images != nil {
				s.images(t, m)
			}
			os.Remove(outs[i])
			r = m.Run(t, RunOptions{Argv: []string{"/bin/sh", script}})
		}
		t.Logf("session %q: boot %d and its commands took %v", b.name, i, r.Elapsed.Round(time.Millisecond))
		if r.Status != 0 {
			t.Fatalf("session %q: the guest script of boot %d failed (status %d; setup, teardown or a leaked device):\n%s",
				b.name, i, r.Status, tail(r.Output, 60))
		}
		o, err := os.ReadFile(outs[i])
		must(t, err)
		out = append(out, o...)
	}
	got, err := splitSessionOutput(string(out), len(b.steps))
	if err != nil {
		t.Fatalf("session %q: %v\n%s", b.name, err, out)
	}
	for i, st := range b.steps {
		if got[i].status == 0 || (i+1 < len(b.steps) && b.steps[i+1].cmd == "echo $?") {
			continue
		}
		t.Errorf("session %q: `%s` exited %d (show the code with a next command `echo $?` if that is meant):\n%s",
			b.name, st.cmd, got[i].status, strings.Join(got[i].output, "\n"))
	}
	if t.Failed() {
		return nil
	}
	return got
}

// splitSessionOutput cuts the session's output at the status records the
// script writes after each command: "\x1e" STATUS "\n".
func splitSessionOutput(out string, steps int) ([]stepResult, error) {
	var res []stepResult
	for len(res) < steps {
		text, rest, ok := strings.Cut(out, "\x1e")
		if !ok {
			return nil, fmt.Errorf("the output has %d status records, want %d", len(res), steps)
		}
		code, rest, _ := strings.Cut(rest, "\n")
		n, err := strconv.Atoi(code)
		if err != nil {
			return nil, fmt.Errorf("status record %d: %q: %w", len(res)+1, code, err)
		}
		res = append(res, stepResult{output: outputLines(text), status: n})
		out = rest
	}
	if out != "" {
		return nil, errors.New("output after the last command's status record")
	}
	return res, nil
}

// outputLines is a command's output as README lines: no trailing spaces or
// carriage returns, no final newline.
func outputLines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	l := strings.Split(s, "\n")
	for i := range l {
		l[i] = strings.TrimRight(l[i], " \t\r")
	}
	return l
}

// compareSession compares the README's outputs with the real ones after
// normalization. It returns the block as it should read (a step whose
// README output matches keeps it) and a diff per differing step.
func compareSession(b sessionBlock, got []stepResult, norm []func([]string) []string) ([]string, []string) {
	normalize := func(l []string) []string {
		l = readmeNormProgress(l)
		for _, f := range norm {
			l = f(l)
		}
		return l
	}
	var block, diffs []string
	for i, st := range b.steps {
		block = append(block, st.lines...)
		want, have := normalize(st.output), normalize(got[i].output)
		if cmp.Equal(want, have) {
			block = append(block, st.output...)
			continue
		}
		block = append(block, got[i].output...)
		diffs = append(diffs, fmt.Sprintf("$ %s\n%s", st.cmd, cmp.Diff(want, have)))
	}
	return block, diffs
}

// readmeProgressLine is snapctl's progress on a non-terminal (a line at 0 %
// and per 10 % step, sizes in MiB, KiB or bytes; cmd/snapctl/progress.go).
var readmeProgressLine = regexp.MustCompile(`^(.+): (\d+)% \((\d+) of (\d+) (MiB|KiB|bytes), [0-9.]+ MB/s\)$`)

// readmeNormProgress drops progress lines: which 10 % steps get a line
// depends on when the kernel's merge is polled, a small merge can be over
// before snapctl first looks (no line at all), the total is what was left
// to merge when the wait began, and the speed is the machine's.
func readmeNormProgress(l []string) []string {
	var out []string
	for _, s := range l {
		if !readmeProgressLine.MatchString(s) {
			out = append(out, s)
		}
	}
	return out
}

// TestReadmeParse checks the session format on the host (no guest).
func TestReadmeParse(t *testing.T) {
	parallel(t)
	fence := "```"
	tests := []struct {
		name    string
		readme  string
		want    []sessionStep
		wantErr string
	}{
		{
			name: "commands, output, annotation, continuation",
			readme: "text\n<!-- session: a -->\n" + fence + "\n" +
				"$ echo one  # says one\none\n" +
				"$ printf '%s\\n' \\\n    two    # continued\ntwo\n" +
				"$ true\n" + fence + "\nafter\n",
			want: []sessionStep{
				{lines: []string{"$ echo one  # says one"}, cmd: "echo one", output: []string{"one"}},
				{lines: []string{`$ printf '%s\n' \`, "    two    # continued"}, cmd: "printf '%s\\n' \\\n    two", output: []string{"two"}},
				{lines: []string{"$ true"}, cmd: "true"},
			},
		},
		{name: "no fence after the marker", readme: "<!-- session: a -->\ntext\n", wantErr: "want a fenced block"},
		{name: "unterminated", readme: "<!-- session: a -->\n" + fence + "\n$ true\n", wantErr: "does not end"},
		{name: "output first", readme: "<!-- session: a -->\n" + fence + "\nout\n$ true\n" + fence + "\n", wantErr: "output before the first command"},
		{name: "continuation past the end", readme: "<!-- session: a -->\n" + fence + "\n$ echo \\\n" + fence + "\n", wantErr: "continues past"},
		{name: "twice", readme: "<!-- session: a -->\n" + fence + "\n$ true\n" + fence + "\n<!-- session: a -->\n" + fence + "\n$ true\n" + fence + "\n", wantErr: "appears twice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blocks, err := parseSessions(tc.readme)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(blocks) != 1 {
				t.Fatalf("got %d blocks, want 1", len(blocks))
			}
			if diff := cmp.Diff(tc.want, blocks[0].steps, cmp.AllowUnexported(sessionStep{})); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
		})
	}
}

// TestReadmeCompare checks the comparison and the rewritten block.
func TestReadmeCompare(t *testing.T) {
	parallel(t)
	b := sessionBlock{steps: []sessionStep{
		{lines: []string{"$ a  # note"}, cmd: "a", output: []string{"x", "merging v: 50% (1 of 2 MiB, 9.0 MB/s)", "merging v: 100% (400 of 400 KiB, 4.0 MB/s)", "done"}},
		{lines: []string{"$ b"}, cmd: "b", output: []string{"old"}},
	}}
	got := []stepResult{
		{output: []string{"x", "done"}},
		{output: []string{"new"}},
	}
	block, diffs := compareSession(b, got, nil)
	wantBlock := []string{"$ a  # note", "x", "merging v: 50% (1 of 2 MiB, 9.0 MB/s)", "merging v: 100% (400 of 400 KiB, 4.0 MB/s)", "done", "$ b", "new"}
	if diff := cmp.Diff(wantBlock, block); diff != "" {
		t.Errorf("block (-want +got):\n%s", diff)
	}
	if len(diffs) != 1 || !strings.HasPrefix(diffs[0], "$ b\n") {
		t.Errorf("got diffs %q, want one, for $ b", diffs)
	}
	if _, err := splitSessionOutput("a\n\x1e0\nb\x1e3\n", 2); err != nil {
		t.Errorf("splitSessionOutput: %v", err)
	}
	if _, err := splitSessionOutput("a\n\x1e0\n", 2); err == nil {
		t.Error("splitSessionOutput of a cut-short run: got no error, want one")
	}
}
