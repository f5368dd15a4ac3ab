//go:build e2e

package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/snapctl/snapctl/dmtable"
)

// The reliability suite extends TestCrashPoints: snapctl is killed with
// SIGKILL at every step boundary of drop, grow, merge (kernel and offline)
// and of an activate that runs a rollback scheduled with
// --at-next-activate; the offline merge is also killed from outside at
// random moments while it copies; and the guest's power is cut at random
// moments during prepare, commit, rollback, drop and a bow restore. Each
// case ends with the documented recovery command and checks that the
// volume is in a valid phase with exactly that phase's data.
//
// Every case is a row of a table. With SNAPCTL_RELIABILITY_OUT set (to a
// host path: the guest's root is the host's), the rows are appended to
// that file, and scripts/reliability-doc.sh turns them into
// docs/reliability.md. Lines of the file, tab-separated:
//
//	H  table-id  title  column...   a table's header (repeated by each test that adds rows)
//	R  table-id  cell...            a row
//	T  test      seconds            the wall time of a test's guest boots (host side)

const envRelOut = "SNAPCTL_RELIABILITY_OUT"

var relOutMu sync.Mutex

// relAppend appends one tab-separated line to SNAPCTL_RELIABILITY_OUT.
func relAppend(t testing.TB, fields ...string) {
	p := os.Getenv(envRelOut)
	if p == "" {
		return
	}
	for i, f := range fields {
		f = strings.NewReplacer("\t", " ", "\n", " ", "\r", " ").Replace(f)
		fields[i] = f
	}
	relOutMu.Lock()
	defer relOutMu.Unlock()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Errorf("reliability table %s: %v", p, err)
		return
	}
	defer f.Close()
	if _, err := f.WriteString(strings.Join(fields, "\t") + "\n"); err != nil {
		t.Errorf("reliability table %s: %v", p, err)
	}
	f.Sync() // a guest may lose its power next

}

// relTable is one table of docs/reliability.md.
type relTable struct {
	t    testing.TB
	id   string
	cols []string
	rows [][]string
}

func newRelTable(t testing.TB, id, title string, cols ...string) *relTable {
	relAppend(t, append([]string{"H", id, title}, cols...)...)
	return &relTable{t: t, id: id, cols: cols}
}

// row records a case; it is logged as well, so a failing run shows the
// table so far.
func (r *relTable) row(cells ...string) {
	r.t.Helper()
	if len(cells) != len(r.cols) {
		r.t.Fatalf("table %s: row %q has %d cells, want %d", r.id, cells, len(cells), len(r.cols))
	}
	r.rows = append(r.rows, cells)
	r.t.Logf("%s row: | %s |", r.id, strings.Join(cells, " | "))
	relAppend(r.t, append([]string{"R", r.id}, cells...)...)
}

// relInGuest is InGuest that also hands SNAPCTL_RELIABILITY_OUT to the
// guest and records the guest's wall time.
func relInGuest(t *testing.T, cfg Config) bool {
	t.Helper()
	if guest() {
		return true
	}
	m := NewMachine(t, cfg)
	r := m.Run(t, RunOptions{Env: relEnv()})
	t.Logf("guest boot took %v", r.Elapsed.Round(time.Millisecond))
	relAppend(t, "T", t.Name(), fmt.Sprintf("%.1f", r.Elapsed.Seconds()))
	if r.Status != 0 {
		t.Fatalf("guest test failed (status %d):\n%s", r.Status, tail(r.Output, 200))
	}
	if !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
		t.Fatalf("guest ran no passing test named %s:\n%s", t.Name(), tail(r.Output, 100))
	}
	return false
}

// relEnv is the environment the host passes to the guest for the tables.
func relEnv() []string {
	p := os.Getenv(envRelOut)
	if p == "" {
		return nil
	}
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	return []string{envRelOut + "=" + p}
}

// relStatus is the part of `snapctl status --json` the suite reads.
type relStatus struct {
	Phase     string `json:"phase"`
	Step      string `json:"step"`
	Mode      string `json:"mode"`
	Scheduled string `json:"scheduled"`
	Store     *struct {
		Path  string `json:"path"`
		Bytes uint64 `json:"bytes"`
	} `json:"store"`
	Usage *struct {
		State      string `json:"state"`
		DataChunks uint64 `json:"data_chunks"`
	} `json:"usage"`
	Devices []struct {
		Name  string `json:"name"`
		Table string `json:"table"`
	} `json:"devices"`
	Cleanup []string `json:"cleanup"`
}

func relStatusOf(t testing.TB, v *volume) relStatus {
	t.Helper()
	out, errOut, code := snapctl(t, "status", v.name, "--json", "--state-dir", v.state)
	if code != 0 {
		t.Fatalf("snapctl status %s: exit %d\n%s", v.name, code, errOut)
	}
	var s relStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return s
}

func (s relStatus) record() string {
	if s.Step == "" {
		return s.Phase
	}
	return s.Phase + " / " + s.Step
}

// relRun runs snapctl with extra environment and reports the step the
// crash hook killed it at ("" if it was not killed).
func relRun(t testing.TB, env []string, args ...string) (out, step string, code int) {
	t.Helper()
	out, killed, code := snapctlEnv(t, env, args...)
	if killed {
		m := hookKilledLine.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("snapctl %s died of a signal, not at a crash point:\n%s", strings.Join(args, " "), out)
		}
		return out, m[2], -1
	}
	return out, "", code
}

// relData names which image a device holds.
func relData(got, orig, changed string) string {
	switch got {
	case orig:
		return "prepare-time image"
	case changed:
		return "changed image"
	}
	return "NEITHER image"
}

// relKill is one operation of the kill matrix.
type relKill struct {
	mode, op string
	size     string     // --size of prepare (16M when empty)
	writes   int        // chunks written after prepare (300 when 0)
	before   [][]string // uninterrupted commands after the writes ("vol" and the state dir are added)
	killed   []string   // the command killed at step k
	recovery []string   // the recovery command (activate --wait vol when nil)
	finish   []string   // run after an uninterrupted run that leaves the kernel merging
	phase    string     // the phase wanted after recovery
	want     string     // "orig" or "changed": what /dev/mapper/vol must hold after recovery
	// after, if set, checks more once the data is right, and says what it
	// found for the table.
	after func(t *testing.T, v *volume, orig, changed string) string
}

func relSC(v *volume, args ...string) []string {
	return append(append([]string{}, args...), "--state-dir", v.state)
}

// relKillMatrix runs each case with SNAPCTL_TEST_CRASH_AFTER=k for k = 1, 2,
// ... until the command completes without reaching step k. One volume
// serves all the k of a case: each cell starts from the image the last one
// left. A cell that ends in a wrong state fails the test, is marked DEFECT
// in the table, and its devices are torn down so the next cells still run.
// Each case must have been killed at every step its completing run
// announced, and at one at least: a hook that no longer kills fails here.
func relKillMatrix(t *testing.T, tab *relTable, mnt string, cases []relKill) {
	total := 0
	for ci, c := range cases {
		var v *volume
		var cur string
		kills := 0
		for k := 1; ; k++ {
			if k > 25 {
				t.Fatalf("%s %s: still killed at step 25; the loop does not end", c.mode, c.op)
			}
			if v == nil {
				v = newVolume(t, "vol")
				v.must("attach", "vol", "--origin", ubd(0))
				fill(t, "/dev/mapper/vol", 100*ci+k)
				cur = deviceSum(t, "/dev/mapper/vol")
			}
			killed, steps, next, ok := relKillOnce(t, tab, mnt, v, cur, c, k, 100*ci+k)
			if !ok {
				removeDevices(t, "vol")
				v = nil
			}
			cur = next
			if killed {
				kills++
				continue
			}
			if steps == 0 || kills != steps {
				t.Fatalf("%s %s: %d kill points covered, but the completing run announced %d steps (want as many, and at least 1)", c.mode, c.op, kills, steps)
			}
			t.Logf("%s %s: %d kill points covered", c.mode, c.op, kills)
			total += kills
			break
		}
		if v != nil {
			v.must("detach", "vol")
		}
	}
	t.Logf("%d kill points covered", total)
}

// relRecord reads a volume's state record directly (cheaper than a
// snapctl run in the guest).
func relRecord(t testing.TB, v *volume) relStatus {
	t.Helper()
	var s relStatus
	b, err := os.ReadFile(filepath.Join(v.state, v.name+".json"))
	if err == nil {
		err = json.Unmarshal(b, &s)
	}
	if err != nil {
		t.Fatalf("state record of %s: %v", v.name, err)
	}
	return s
}

// relKillOnce runs one cell of the matrix on the attached volume v, whose
// device holds the image with checksum orig. It reports whether the
// command was killed, how many steps it announced, the checksum of the
// image the volume is left with (attached), and ok = false after a defect.
func relKillOnce(t *testing.T, tab *relTable, mnt string, v *volume, orig string, c relKill, k, seed int) (killed bool, steps int, next string, ok bool) {
	t.Helper()
	store := filepath.Join(mnt, fmt.Sprintf("store-%d", seed))
	size := c.size
	if size == "" {
		size = "16M"
	}
	v.must("prepare", "vol", "--mode", c.mode, "--store", store, "--size", size)
	writes := c.writes
	if writes == 0 {
		writes = 300
	}
	scatter(t, "/dev/mapper/vol", writes, int64(seed))
	changed := deviceSum(t, "/dev/mapper/vol")
	for _, b := range c.before {
		v.must(b...)
	}
	what := fmt.Sprintf("%s %s, SNAPCTL_TEST_CRASH_AFTER=%d", c.mode, c.op, k)
	out, step, code := relRun(t, []string{"SNAPCTL_TEST_CRASH_AFTER=" + strconv.Itoa(k)}, relSC(v, c.killed...)...)
	killed = step != ""
	if !killed && code != 0 {
		t.Fatalf("%s: not killed, exit %d:\n%s", what, code, out)
	}
	steps = len(hookSteps(out))
	if killed && steps != k {
		t.Fatalf("%s: killed after announcing %d steps, want %d:\n%s", what, steps, k, out)
	}
	at := fmt.Sprintf("%d (%s)", k, step)
	rec := relRecord(t, v)
	recovery := "none needed"
	// defect marks the cell: the test fails, the table says why.
	defect := func(format string, a ...any) (bool, int, string, bool) {
		msg := fmt.Sprintf(format, a...)
		t.Errorf("%s: DEFECT: %s", what, msg)
		tab.row(c.mode, c.op, at, rec.record(), "**DEFECT**: "+msg, "-", "-")
		return killed, steps, "", false
	}
	if killed {
		// The interrupted state is reported, and other commands are
		// refused with the recovery command in the hint (checked at the
		// first step of each operation).
		if k == 1 && rec.Step != "" {
			if txt := v.must("status", "vol"); !strings.Contains(txt, "snapctl activate vol") {
				t.Errorf("%s: status of the interrupted volume does not name `snapctl activate vol`:\n%s", what, txt)
			}
		}
		if k == 1 && strings.HasSuffix(rec.Phase, "ing") {
			_, errOut, code := v.snapctl("prepare", "vol", "--store", store+"-x", "--size", "1M")
			if code != 6 || !strings.Contains(errOut, "snapctl activate vol") {
				t.Errorf("%s: prepare on the interrupted volume: exit %d, want 6 with a hint naming `snapctl activate vol`\n%s", what, code, errOut)
			}
		}
		rcmd := c.recovery
		if rcmd == nil {
			rcmd = []string{"activate", "--wait", "vol"}
		}
		recovery = "`snapctl " + strings.Join(rcmd, " ") + "`"
		if _, errOut, code := v.snapctl(rcmd...); code != 0 {
			msg := fmt.Sprintf("recovery %s failed with exit %d: %s", recovery, code, ieMsg(errOut))
			// Does tearing the stack down and activating again rescue it?
			if _, _, c1 := v.snapctl("deactivate", "vol"); c1 == 0 {
				if _, _, c2 := v.snapctl(rcmd...); c2 == 0 && deviceSum(t, "/dev/mapper/vol") == map[bool]string{true: changed, false: orig}[c.want == "changed"] {
					msg += "; `snapctl deactivate vol` then " + recovery + " recovered the volume with the right data"
				}
			}
			return defect("%s", msg)
		}
	} else {
		at = fmt.Sprintf("%d (never reached)", k)
		if c.finish != nil {
			v.must(c.finish...)
			recovery = "`snapctl " + strings.Join(c.finish, " ") + "` (which finishes a merge the kernel is still doing)"
		}
	}
	var soft []string // defects that do not stop the checks
	if _, err := os.Stat("/dev/mapper/vol"); os.IsNotExist(err) {
		if killed && c.recovery == nil {
			// activate is the boot-time command: the volume must be
			// usable after it.
			msg := fmt.Sprintf("`snapctl activate --wait vol` reported the volume %s, but /dev/mapper/vol does not exist (a second `snapctl activate vol` creates it)", relRecord(t, v).Phase)
			t.Errorf("%s: DEFECT: %s", what, msg)
			soft = append(soft, msg)
		}
		// an offline merge ends attached but deactivated
		v.must("activate", "vol")
	}
	s := relStatusOf(t, v)
	if s.Phase != c.phase || s.Step != "" {
		return defect("phase %q step %q after recovery, want %s", s.Phase, s.Step, c.phase)
	}
	got := deviceSum(t, "/dev/mapper/vol")
	want := orig
	if c.want == "changed" {
		want = changed
	}
	if got != want {
		return defect("/dev/mapper/vol holds the %s, want the %s", relData(got, orig, changed), relData(want, orig, changed))
	}
	switch s.Phase {
	case "attached":
		if d := devicesOf(t, "vol"); len(d) != 1 {
			return defect("devices %v left after recovery, want only vol", d)
		}
		if _, err := os.Stat(store); !os.IsNotExist(err) {
			return defect("store file left behind (%v)", err)
		}
		if _, err := os.Stat(filepath.Join(v.state, "vol.merge-progress.json")); !os.IsNotExist(err) {
			return defect("offline merge progress record left behind (%v)", err)
		}
	case "prepared":
		if s.Usage == nil || s.Usage.State != "active" {
			return defect("store usage %+v after recovery, want active", s.Usage)
		}
	}
	data := relData(got, orig, changed) + " (as expected)"
	next = got
	if c.after != nil {
		// after leaves the volume attached
		data += "; " + c.after(t, v, orig, changed)
		next = deviceSum(t, "/dev/mapper/vol")
	} else if s.Phase == "prepared" {
		v.must("drop", "vol")
		next = deviceSum(t, "/dev/mapper/vol")
	}
	result := "completed"
	if !killed && c.finish != nil {
		result = "completed; finished by " + recovery
	}
	if killed {
		result = "killed; recovered by " + recovery
	}
	if len(soft) > 0 {
		result = "**DEFECT**: " + strings.Join(soft, "; ") + "; " + result
	}
	tab.row(c.mode, c.op, at, rec.record(), result, s.Phase, data)
	return killed, steps, next, true
}

// relKillCols are the columns of the kill tables.
var relKillCols = []string{"mode", "operation", "killed at step", "record after the kill", "result", "phase after", "data after"}

// relGrowCheck writes more after a recovered grow and rolls back: the
// store must still work and bring back the prepare-time image.
func relGrowCheck(t *testing.T, v *volume, orig, changed string) string {
	s := relStatusOf(t, v)
	scatter(t, "/dev/mapper/vol", 150, 77)
	if u := relStatusOf(t, v).Usage; u == nil || u.State != "active" {
		t.Fatalf("after more writes into the recovered store: usage %+v, want active", u)
	}
	v.must("rollback", "vol")
	if got := deviceSum(t, "/dev/mapper/vol"); got != orig {
		t.Fatalf("rollback after the recovered grow: /dev/mapper/vol holds the %s, want the prepare-time image", relData(got, orig, changed))
	}
	return fmt.Sprintf("store %d bytes; more writes fit, rollback gives the prepare-time image", s.Store.Bytes)
}

// Guest disks of the kill matrix tests:
//   /dev/ubda  16 MiB  the origin (a raw pattern)
//   /dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files

func relKillDisks() []Disk { return []Disk{{Size: 16 << 20}, {Size: 128 << 20}} }

// TestReliabilityKillDrop: drop in both modes (commit in checkpoint mode,
// rollback in update mode).
func TestReliabilityKillDrop(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	relKillMatrix(t, tab, mnt, []relKill{
		{mode: "checkpoint", op: "drop", killed: []string{"drop", "vol"}, phase: "attached", want: "changed"},
		{mode: "update", op: "drop", killed: []string{"drop", "vol"}, phase: "attached", want: "orig"},
	})
}

// TestReliabilityKillGrow: grow in both modes; after the recovery the
// store must take more writes and roll back exactly.
func TestReliabilityKillGrow(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	relKillMatrix(t, tab, mnt, []relKill{
		{mode: "checkpoint", op: "grow --by 4M", size: "2M", writes: 200, killed: []string{"grow", "vol", "--by", "4M"},
			phase: "prepared", want: "changed", after: relGrowCheck},
		{mode: "update", op: "grow --by 4M", size: "2M", writes: 200, killed: []string{"grow", "vol", "--by", "4M"},
			phase: "prepared", want: "changed", after: relGrowCheck},
	})
}

// TestReliabilityKillMerge: `merge --no-wait` killed at each step, and
// `merge` (after an uninterrupted --no-wait) killed at each step; both
// modes (a merge is a rollback in checkpoint mode, a commit in update mode).
func TestReliabilityKillMerge(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	var cases []relKill
	for _, m := range []struct{ mode, want string }{{"checkpoint", "orig"}, {"update", "changed"}} {
		cases = append(cases,
			relKill{mode: m.mode, op: "merge --no-wait", writes: 2000, killed: []string{"merge", "vol", "--no-wait"},
				finish: []string{"merge", "vol"}, phase: "attached", want: m.want},
			relKill{mode: m.mode, op: "merge (after merge --no-wait)", writes: 2000, before: [][]string{{"merge", "vol", "--no-wait"}},
				killed: []string{"merge", "vol"}, phase: "attached", want: m.want})
	}
	relKillMatrix(t, tab, mnt, cases)
}

// TestReliabilityKillScheduledRollback: `rollback --at-next-activate`, the
// devices torn down as at shutdown, then the boot-time `snapctl activate`
// killed at each step (it rebuilds the stack and runs the rollback).
func TestReliabilityKillScheduledRollback(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	var cases []relKill
	for _, mode := range []string{"checkpoint", "update"} {
		cases = append(cases, relKill{mode: mode, op: "activate (rollback --at-next-activate, after deactivate)",
			before: [][]string{{"rollback", "vol", "--at-next-activate"}, {"deactivate", "vol"}},
			killed: []string{"activate", "vol"}, finish: []string{"activate", "--wait", "vol"}, phase: "attached", want: "orig"})
	}
	relKillMatrix(t, tab, mnt, cases)
}

// TestReliabilityKillLeftoverStack: activate rebuilds a prepared
// checkpoint volume's stack without recording steps (it is meant to be
// idempotent), so the crash hook cannot stop it between two kernel calls.
// The test builds by hand the stack a SIGKILL between the load of NAME-snap
// and its resume leaves (NAME created and suspended, NAME-snap with an
// inactive snapshot table, NAME with or without an inactive
// snapshot-origin table), as the boot-time activate would leave it if
// killed there (a systemd timeout, the OOM killer), and runs
// `snapctl activate --wait vol`: with a scheduled rollback and without.
func TestReliabilityKillLeftoverStack(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	for i, c := range []struct {
		mode                    string
		scheduled, originLoaded bool
	}{{"checkpoint", true, false}, {"checkpoint", true, true}, {"checkpoint", false, false}, {"checkpoint", false, true}, {"update", true, false}, {"update", false, false}} {
		v := newVolume(t, "vol")
		v.must("attach", "vol", "--origin", ubd(0))
		fill(t, "/dev/mapper/vol", 300+i)
		orig := deviceSum(t, "/dev/mapper/vol")
		v.must("prepare", "vol", "--mode", c.mode, "--store", filepath.Join(mnt, fmt.Sprintf("leftover-%d", i)), "--size", "16M")
		scatter(t, "/dev/mapper/vol", 300, int64(i))
		changed := deviceSum(t, "/dev/mapper/vol")
		op, phase, want := "activate", "prepared", changed
		if c.scheduled {
			v.must("rollback", "vol", "--at-next-activate")
			op, phase, want = "activate (rollback --at-next-activate)", "attached", orig
		}
		v.must("deactivate", "vol")
		relLeftover(t, v, c.mode, c.originLoaded)
		at := "between the load of vol-snap and its resume (stack built by hand: activate records no step there)"
		switch {
		case c.mode == "update":
			at = "between the load of vol's snapshot table and its resume (stack built by hand)"
		case c.originLoaded:
			at = "after the load of vol's snapshot-origin table, before the resumes (stack built by hand)"
		}
		what := fmt.Sprintf("%s %s, %s", c.mode, op, at)
		result := "recovered by `snapctl activate --wait vol`"
		if _, errOut, code := v.snapctl("activate", "--wait", "vol"); code != 0 {
			msg := ieMsg(errOut)
			t.Errorf("%s: DEFECT: `snapctl activate --wait vol` failed with exit %d: %s", what, code, msg)
			result = fmt.Sprintf("**DEFECT**: `snapctl activate --wait vol` failed with exit %d: %s", code, msg)
			v.must("deactivate", "vol")
			v.must("activate", "--wait", "vol")
			result += "; `snapctl deactivate vol` then `snapctl activate --wait vol` recovered it"
		}
		s := relStatusOf(t, v)
		got := deviceSum(t, "/dev/mapper/vol")
		if s.Phase != phase || got != want {
			t.Fatalf("%s: phase %s with the %s after recovery, want %s with the %s", what, s.Phase, relData(got, orig, changed), phase, relData(want, orig, changed))
		}
		tab.row(c.mode, op, at, "prepared", result, s.Phase, relData(got, orig, changed)+" (as expected)")
		if s.Phase == "prepared" {
			v.must("drop", "vol")
		}
		v.must("detach", "vol")
	}
}

// relLeftover builds, for the deactivated volume v, the stack a kill
// inside the rebuild leaves after the snapshot table is loaded: in
// checkpoint mode NAME-snap's (and, with originLoaded, NAME's
// snapshot-origin table too), in update mode NAME's.
func relLeftover(t *testing.T, v *volume, mode string, originLoaded bool) {
	t.Helper()
	var rec struct {
		Origin struct {
			Dev     string `json:"dev"`
			Sectors uint64 `json:"sectors"`
		} `json:"origin"`
		Store struct {
			ChunkSectors uint32 `json:"chunk_sectors"`
			Segments     []struct {
				Dev    string `json:"dev"`
				Offset uint64 `json:"offset"`
				Length uint64 `json:"length"`
			} `json:"segments"`
		} `json:"store"`
	}
	b, err := os.ReadFile(filepath.Join(v.state, "vol.json"))
	must(t, err)
	must(t, json.Unmarshal(b, &rec))
	var cow dmtable.Table
	var at uint64
	for _, sg := range rec.Store.Segments {
		cow = append(cow, dmtable.Linear(at, sg.Length, sg.Dev, sg.Offset))
		at += sg.Length
	}
	live := func(name string, tb dmtable.Table) string {
		_, err := dmtable.Create(name, "")
		must(t, err)
		must(t, dmtable.Load(name, tb))
		must(t, dmtable.Resume(name))
		inf, err := dmtable.Info(name)
		must(t, err)
		return inf.Dev.String()
	}
	cowDev := live("vol-cow", cow)
	if mode == "update" {
		baseDev := live("vol-base", dmtable.Table{dmtable.Linear(0, rec.Origin.Sectors, rec.Origin.Dev, 0)})
		_, err = dmtable.Create("vol", "")
		must(t, err)
		must(t, dmtable.Load("vol", dmtable.Table{{Start: 0, Length: rec.Origin.Sectors, Type: "snapshot",
			Params: fmt.Sprintf("%s %s P %d", baseDev, cowDev, rec.Store.ChunkSectors)}}))
		return
	}
	realDev := live("vol-real", dmtable.Table{dmtable.Linear(0, rec.Origin.Sectors, rec.Origin.Dev, 0)})
	_, err = dmtable.Create("vol", "")
	must(t, err)
	must(t, dmtable.Suspend("vol", dmtable.SuspendOptions{}))
	_, err = dmtable.Create("vol-snap", "")
	must(t, err)
	must(t, dmtable.Load("vol-snap", dmtable.Table{{Start: 0, Length: rec.Origin.Sectors, Type: "snapshot",
		Params: fmt.Sprintf("%s %s P %d", realDev, cowDev, rec.Store.ChunkSectors)}}))
	if originLoaded {
		must(t, dmtable.Load("vol", dmtable.Table{dmtable.SnapshotOrigin(0, rec.Origin.Sectors, realDev)}))
	}
}

// Guest disks of the offline merge tests:
//   /dev/ubda  16 MiB  the origin (a raw pattern)
//   /dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files

// TestReliabilityKillOffline: `merge --offline` of a deactivated volume,
// killed at each step by the hook, then at random moments from outside
// (SIGKILL, and SIGTERM, which stops it with the progress recorded) while
// it copies; recovered by rerunning the command or by activate --wait.
func TestReliabilityKillOffline(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: relKillDisks()}) {
		return
	}
	mnt := storeFS(t, "ext4")
	tab := newRelTable(t, "kill", "SIGKILL at every step boundary (SNAPCTL_TEST_CRASH_AFTER=k)", relKillCols...)
	var cases []relKill
	for _, m := range []struct{ mode, want string }{{"checkpoint", "orig"}, {"update", "changed"}} {
		cases = append(cases, relKill{mode: m.mode, op: "merge --offline", writes: 2000, before: [][]string{{"deactivate", "vol"}},
			killed: []string{"merge", "vol", "--offline"}, phase: "attached", want: m.want})
	}
	relKillMatrix(t, tab, mnt, cases)

	rt := newRelTable(t, "offline-random", "merge --offline killed from outside at random moments while it copies",
		"mode", "signal", "delay after the merge's first step", "exit / record after the signal", "recovery", "phase after", "data after")
	seed := time.Now().UnixNano()
	t.Logf("kill delays from seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	landed := 0
	var span time.Duration
	for round := 0; landed < 8; round++ {
		if round >= 16 {
			t.Fatalf("only %d of the kills landed while snapctl ran in %d rounds", landed, round)
		}
		mode, want := "checkpoint", "orig"
		if round%2 == 1 {
			mode, want = "update", "changed"
		}
		v := newVolume(t, "vol")
		store := filepath.Join(mnt, fmt.Sprintf("offline-%d", round))
		v.must("attach", "vol", "--origin", ubd(0))
		fill(t, "/dev/mapper/vol", 1000+round)
		orig := deviceSum(t, "/dev/mapper/vol")
		v.must("prepare", "vol", "--mode", mode, "--store", store, "--size", "16M")
		scatter(t, "/dev/mapper/vol", 3000, int64(round))
		changed := deviceSum(t, "/dev/mapper/vol")
		wantSum := orig
		if want == "changed" {
			wantSum = changed
		}
		v.must("deactivate", "vol")
		args := relSC(v, "merge", "vol", "--offline")
		// The clock starts when the merge records its first step (the
		// copy begins then), not at the start of the process.
		copying := func() bool {
			b, err := os.ReadFile(filepath.Join(v.state, "vol.json"))
			return err == nil && bytes.Contains(b, []byte(`"step": "merge:offline"`))
		}
		if round == 0 {
			// An uninterrupted run gives the time scale.
			_, _, _, span = relSignalAfter(t, args, 0, 0, copying)
			t.Logf("uninterrupted merge --offline: %v from its first step to its end", span)
			v.must("activate", "vol")
			if got := deviceSum(t, "/dev/mapper/vol"); got != wantSum {
				t.Fatalf("uninterrupted merge --offline: the %s, want the %s", relData(got, orig, changed), relData(wantSum, orig, changed))
			}
			rt.row(mode, "none (time scale)", "-", fmt.Sprintf("completed %v after its first step", span.Round(time.Millisecond)), "none needed", "attached", relData(wantSum, orig, changed)+" (as expected)")
			v.must("detach", "vol")
			continue
		}
		sig, sigName := syscall.SIGKILL, "SIGKILL"
		if round%4 == 3 {
			sig, sigName = syscall.SIGTERM, "SIGTERM"
		}
		delay := time.Duration(rng.Int63n(int64(span) + 1))
		killed, code, out, _ := relSignalAfter(t, args, sig, delay, copying)
		rec := relRecord(t, v)
		after := fmt.Sprintf("exit %d, record %s", code, rec.record())
		if killed {
			landed++
			if _, err := os.Stat(filepath.Join(v.state, "vol.merge-progress.json")); err == nil {
				after += ", progress record present"
			}
		}
		if sig == syscall.SIGTERM && killed && code > 0 && !strings.Contains(out, "snapctl merge vol --offline") {
			t.Errorf("merge --offline stopped by SIGTERM (exit %d) does not say how to resume:\n%s", code, out)
		}
		recovery := "none needed"
		switch {
		case rec.Phase == "attached":
		case rec.Phase == "prepared":
			// the signal landed before the merge recorded its first step:
			// the merge never started; run it now
			v.must("merge", "vol", "--offline")
			recovery = "the merge had not started: `snapctl merge vol --offline`"
		case round%4 < 2:
			v.must("merge", "vol", "--offline")
			recovery = "`snapctl merge vol --offline` (rerun)"
		default:
			v.must("activate", "--wait", "vol")
			recovery = "`snapctl activate --wait vol`"
			if _, err := os.Stat("/dev/mapper/vol"); err != nil {
				t.Errorf("DEFECT: round %d: `snapctl activate --wait vol` finished the offline merge but left no /dev/mapper/vol", round)
				recovery += " (**DEFECT**: it leaves no /dev/mapper/vol; a second `snapctl activate vol` creates it)"
			}
		}
		if _, err := os.Stat("/dev/mapper/vol"); os.IsNotExist(err) {
			v.must("activate", "vol")
		}
		s := relStatusOf(t, v)
		got := deviceSum(t, "/dev/mapper/vol")
		if s.Phase != "attached" || got != wantSum {
			t.Fatalf("round %d (%s %v after start): phase %s with the %s, want attached with the %s", round, sigName, delay, s.Phase, relData(got, orig, changed), relData(wantSum, orig, changed))
		}
		if _, err := os.Stat(store); !os.IsNotExist(err) {
			t.Fatalf("round %d: store file left behind (%v)", round, err)
		}
		res := "signal landed while snapctl ran; " + after
		if !killed {
			res = "snapctl finished before the signal; " + after
		}
		rt.row(mode, sigName, delay.Round(time.Millisecond).String(), res, recovery, s.Phase, relData(got, orig, changed)+" (as expected)")
		v.must("detach", "vol")
	}
}

// relSignalAfter runs snapctl and, once trigger reports true (polled every
// millisecond), waits delay and sends sig (none if sig is 0). killed
// reports whether it was still running then; code is its exit code (-1 for
// a death by signal); span is the time from the trigger to the exit.
func relSignalAfter(t testing.TB, args []string, sig syscall.Signal, delay time.Duration, trigger func() bool) (killed bool, code int, out string, span time.Duration) {
	t.Helper()
	var buf bytes.Buffer
	cmd := exec.Command(snapctlBin, args...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	must(t, cmd.Start())
	done := make(chan struct{})
	var mu sync.Mutex
	sent := false
	var triggered time.Time
	go func() {
		for !trigger() {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
		mu.Lock()
		triggered = time.Now()
		mu.Unlock()
		if sig == 0 {
			return
		}
		select {
		case <-done:
		case <-time.After(delay):
			mu.Lock()
			sent = cmd.Process.Signal(sig) == nil
			mu.Unlock()
		}
	}()
	err := cmd.Wait()
	end := time.Now()
	close(done)
	mu.Lock()
	defer mu.Unlock()
	if !triggered.IsZero() {
		span = end.Sub(triggered)
	}
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("snapctl %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	t.Logf("$ snapctl %s  (%v %v after the trigger: sent %v, exit %d)\n%s", strings.Join(args, " "), sig, delay, sent, code, buf.String())
	if !sent && err != nil {
		t.Fatalf("snapctl %s failed without a signal:\n%s", strings.Join(args, " "), buf.String())
	}
	return sent, code, buf.String(), span
}

// Power cuts. Each operation gets its own machine, booted rounds+1 times:
// boot p recovers round p-1 (the documented recovery command, then the
// data check) and sets up round p, starts the operation, and after a random
// delay prints a marker on which the host kills the whole machine (no
// shutdown, no flush of the guest's caches). Boot 1 first runs the
// operation once uninterrupted to measure how long it takes; the delays
// are drawn from that span.
//
// Guest disks:
//   /dev/ubda  32 MiB  the origin (a raw pattern)
//   /dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files
//   /dev/ubdc  32 MiB  the bow device (bow-restore only)

const (
	envRelDir    = "SNAPCTL_REL_DIR"
	envRelRounds = "SNAPCTL_REL_ROUNDS"
	envRelSeed   = "SNAPCTL_REL_SEED"
	relCutMarker = "E2E-REL-POWER-CUT-NOW"
)

// relCutOp is an operation whose guest is powered off at random moments.
type relCutOp struct {
	name, mode, op string
	writes         int // chunks written after prepare
}

var relCutOps = []relCutOp{
	{name: "prepare", mode: "checkpoint", op: "prepare"},
	{name: "commit-update", mode: "update", op: "commit", writes: 4000},
	{name: "rollback-checkpoint", mode: "checkpoint", op: "rollback", writes: 4000},
	{name: "drop-update", mode: "update", op: "drop", writes: 1000},
	{name: "bow-restore", op: "bow restore"},
}

// TestReliabilityPowerCut cuts the guest's power at random moments during
// prepare, commit (update: a merge), rollback (checkpoint: a merge), drop
// and a bow restore; the next boot runs `snapctl activate` (as the boot
// unit does), mounts the store's filesystem, runs `snapctl activate --wait
// vol` (or reruns `snapctl bow restore`), and checks phase and data.
func TestReliabilityPowerCut(t *testing.T) {
	parallel(t)
	for _, op := range relCutOps {
		t.Run(op.name, func(t *testing.T) {
			if guest() {
				relCutBoot(t, op)
				return
			}
			const rounds = 3
			m := NewMachine(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}, {Size: 32 << 20}}, Timeout: 3 * time.Minute})
			dir := t.TempDir()
			seed := time.Now().UnixNano()
			t.Logf("delays from seed %d", seed)
			var total time.Duration
			defer func() { relAppend(t, "T", t.Name(), fmt.Sprintf("%.1f", total.Seconds())) }()
			for p := 1; p <= rounds+1; p++ {
				env := append(relEnv(), envPhase+"="+strconv.Itoa(p), envRelDir+"="+dir, envRelRounds+"="+strconv.Itoa(rounds), envRelSeed+"="+strconv.FormatInt(seed, 10))
				opts := RunOptions{Env: env}
				if p <= rounds {
					opts.PowerCutOn = relCutMarker
				}
				r := m.Run(t, opts)
				total += r.Elapsed
				t.Logf("boot %d took %v", p, r.Elapsed.Round(time.Millisecond))
				if p <= rounds && !r.Cut {
					t.Fatalf("boot %d did not reach the power cut (status %d):\n%s", p, r.Status, tail(r.Output, 120))
				}
				if p > rounds && (r.Status != 0 || !strings.Contains(r.Output, "--- PASS: "+t.Name())) {
					t.Fatalf("boot %d failed (status %d):\n%s", p, r.Status, tail(r.Output, 150))
				}
				if p < rounds+1 && !strings.Contains(r.Output, "E2E-REL-BOOT-OK") {
					t.Fatalf("boot %d failed before the power cut:\n%s", p, tail(r.Output, 150))
				}
			}
			if b, err := os.ReadFile(filepath.Join(dir, "defects")); err == nil {
				t.Errorf("defects found in the boots:\n%s", b)
			}
		})
	}
}

// relRound is what a boot leaves for the next one.
type relRound struct {
	Round   int           `json:"round"`
	Mode    string        `json:"mode"`
	Delay   time.Duration `json:"delay"`
	Orig    string        `json:"orig"`
	Changed string        `json:"changed"`
	Store   string        `json:"store"`
	BowDir  string        `json:"bow_dir,omitempty"`
}

func relCutBoot(t *testing.T, op relCutOp) {
	p, err := strconv.Atoi(os.Getenv(envPhase))
	if err != nil {
		t.Fatalf("no boot phase given: %v", err)
	}
	rounds, _ := strconv.Atoi(os.Getenv(envRelRounds))
	seed, _ := strconv.ParseInt(os.Getenv(envRelSeed), 10, 64)
	dir := os.Getenv(envRelDir)
	state := filepath.Join(dir, "state")
	mnt := filepath.Join(dir, "mnt")
	sc := func(args ...string) string { return mustSnapctl(t, append(args, "--state-dir", state)...) }
	var rec relStatus
	tab := newRelTable(t, "powercut", "Power cut at a random moment (the guest killed, its caches lost); recovered at the next boot",
		"mode", "operation", "power cut", "record at boot", "recovery", "phase after", "data after")
	if p == 1 {
		must(t, os.MkdirAll(mnt, 0o755))
		sc("attach", "stor", "--origin", ubd(1))
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
		run(t, "mount", "/dev/mapper/stor", mnt)
	} else if op.op != "bow restore" {
		// The record as the power cut left it, then what the boot unit
		// runs, before any filesystem is mounted.
		rec = relRecord(t, &volume{t: t, name: "vol", state: state})
		sc("activate")
		run(t, "mount", "/dev/mapper/stor", mnt)
	} else {
		sc("activate", "stor")
		run(t, "mount", "/dev/mapper/stor", mnt)
	}
	rf := filepath.Join(dir, "round.json")
	if p > 1 {
		b, err := os.ReadFile(rf)
		must(t, err)
		var r relRound
		must(t, json.Unmarshal(b, &r))
		relCutRecover(t, op, tab, r, rec, dir, state, sc)
	}
	if p > rounds {
		exec.Command("umount", mnt).Run()
		sc("detach", "stor")
		return
	}
	var span time.Duration
	if p == 1 {
		// Calibrate: the whole operation, uninterrupted.
		r := relCutSetup(t, op, 0, dir, state, mnt, sc)
		start := time.Now()
		relCutStart(t, op, r, state).Wait()
		span = time.Since(start)
		must(t, os.WriteFile(filepath.Join(dir, "span"), []byte(span.String()), 0o644))
		t.Logf("uninterrupted %s %s: %v", op.mode, op.op, span)
		if op.op != "bow restore" {
			rec = relRecord(t, &volume{t: t, name: "vol", state: state})
		}
		relCutRecover(t, op, tab, r, rec, dir, state, sc)
	} else {
		b, err := os.ReadFile(filepath.Join(dir, "span"))
		must(t, err)
		span, err = time.ParseDuration(string(b))
		must(t, err)
	}
	rng := rand.New(rand.NewSource(seed + int64(p)))
	r := relCutSetup(t, op, p, dir, state, mnt, sc)
	r.Delay = time.Duration(rng.Int63n(int64(span)*11/10 + 1))
	b, err := json.Marshal(r)
	must(t, err)
	must(t, os.WriteFile(rf, b, 0o644))
	run(t, "sync")
	fmt.Println("E2E-REL-BOOT-OK")
	cmd := relCutStart(t, op, r, state)
	time.Sleep(r.Delay)
	fmt.Println(relCutMarker)
	time.Sleep(time.Minute)
	cmd.Process.Kill()
	t.Fatal("the power was not cut")
}

// relCutSetup builds round n: a fresh volume (or bow checkpoint) with its
// images recorded.
func relCutSetup(t *testing.T, op relCutOp, n int, dir, state, mnt string, sc func(...string) string) relRound {
	r := relRound{Round: n, Mode: op.mode, Store: filepath.Join(mnt, fmt.Sprintf("store-%d", n))}
	if op.op == "bow restore" {
		r.BowDir = filepath.Join(dir, fmt.Sprintf("bow-%d", n))
		r.Orig, r.Changed = relBowCheckpoint(t, ubd(2), r.BowDir, n)
		return r
	}
	sc("attach", "vol", "--origin", ubd(0))
	fill(t, "/dev/mapper/vol", 500+n)
	r.Orig = deviceSum(t, "/dev/mapper/vol")
	r.Changed = r.Orig
	if op.op != "prepare" {
		sc("prepare", "vol", "--mode", op.mode, "--store", r.Store, "--size", "24M")
		scatter(t, "/dev/mapper/vol", op.writes, int64(n))
		r.Changed = deviceSum(t, "/dev/mapper/vol")
	}
	return r
}

// relCutStart starts the operation of a round.
func relCutStart(t *testing.T, op relCutOp, r relRound, state string) *exec.Cmd {
	var args []string
	switch op.op {
	case "bow restore":
		args = []string{"bow", "restore", ubd(2)}
	case "prepare":
		args = []string{"prepare", "vol", "--mode", op.mode, "--store", r.Store, "--size", "24M", "--state-dir", state}
	default:
		args = []string{op.op, "vol", "--state-dir", state}
	}
	cmd := exec.Command(snapctlBin, args...)
	must(t, cmd.Start())
	t.Logf("$ snapctl %s &  (a power cut %v later)", strings.Join(args, " "), r.Delay)
	return cmd
}

// relCutRecover recovers round r after the boot (or, for the calibration
// run, after the operation ended) and checks phase and data.
func relCutRecover(t *testing.T, op relCutOp, tab *relTable, r relRound, rec relStatus, dir, state string, sc func(...string) string) {
	cut := fmt.Sprintf("%v after the start", r.Delay.Round(time.Millisecond))
	if r.Round == 0 {
		cut = "none (uninterrupted run, for the time scale)"
	}
	if op.op == "bow restore" {
		relBowRecover(t, tab, r, cut)
		return
	}
	v := &volume{t: t, name: "vol", state: state}
	what := fmt.Sprintf("%s %s round %d (power cut %v after the start)", op.mode, op.op, r.Round, r.Delay)
	recovery := "`snapctl activate` at boot, then `snapctl activate --wait vol`"
	// defect marks the round: the test fails at the end (a later boot is
	// cut, so the failure is kept in a file), the table says why, and the
	// volume is torn down so the next round still runs.
	defect := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		t.Errorf("%s: DEFECT: %s", what, msg)
		relDefect(t, dir, what+": "+msg)
		tab.row(op.mode, op.op, cut, rec.record(), recovery, "-", "**DEFECT**: "+msg)
		removeDevices(t, "vol")
		if _, _, code := v.snapctl("detach", "vol"); code != 0 {
			os.Remove(filepath.Join(state, "vol.json"))
		}
	}
	if r.Round == 0 {
		recovery = "none needed"
	} else if _, errOut, code := v.snapctl("activate", "--wait", "vol"); code != 0 {
		defect("`snapctl activate --wait vol` failed with exit %d: %s", code, ieMsg(errOut))
		return
	}
	s := relStatusOf(t, v)
	got := deviceSum(t, "/dev/mapper/vol")
	// The operation finished, was finished by the recovery, or had not
	// started (or, for prepare, was undone); each has its own image.
	want, phases := r.Orig, []string{"attached"}
	switch op.op {
	case "prepare":
		phases = []string{"attached", "prepared"}
	case "commit":
		want = r.Changed
	}
	if s.Phase == "prepared" && op.op != "prepare" {
		// the operation had not recorded its first step
		want, phases = r.Changed, []string{"prepared"}
	}
	okPhase := false
	for _, ph := range phases {
		okPhase = okPhase || s.Phase == ph
	}
	if !okPhase || s.Step != "" {
		defect("phase %s step %q after recovery, want one of %v", s.Phase, s.Step, phases)
		return
	}
	if got != want {
		defect("/dev/mapper/vol holds the %s, want the %s", relData(got, r.Orig, r.Changed), relData(want, r.Orig, r.Changed))
		return
	}
	note := ""
	switch s.Phase {
	case "prepared":
		if s.Usage == nil || s.Usage.State != "active" {
			defect("prepared after recovery with store usage %+v, want active", s.Usage)
			return
		}
		if op.op != "prepare" {
			note = "; the operation had not started: it is still to do"
		}
		sc("drop", "vol")
	case "attached":
		if d := devicesOf(t, "vol"); len(d) != 1 {
			defect("devices %v after recovery, want only vol", d)
			return
		}
		if _, err := os.Stat(r.Store); !os.IsNotExist(err) {
			attrs, _ := exec.Command("lsattr", r.Store).CombinedOutput()
			defect("the store file %s came back after the power cut, orphaned: the volume is attached, its record no longer names the store, and nothing deletes it (lsattr: %s)",
				filepath.Base(r.Store), strings.TrimSpace(strings.Fields(string(attrs) + " ?")[0]))
			exec.Command("chattr", "-i", r.Store).Run()
			os.Remove(r.Store)
			return
		}
	}
	tab.row(op.mode, op.op, cut, rec.record(), recovery, s.Phase, relData(got, r.Orig, r.Changed)+" (as expected)"+note)
	sc("detach", "vol")
}

// relDefect keeps a defect found in a boot whose power is cut later.
func relDefect(t testing.TB, dir, msg string) {
	f, err := os.OpenFile(filepath.Join(dir, "defects"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintln(f, msg)
	f.Sync()
}

// relBowCheckpoint serves dev through bow, writes a pattern over its first
// half, discards the second half (free space for backups), checkpoints,
// overwrites scattered blocks of the first half (block 0 included), and
// stops the server: dev holds the changed data and the log. It returns the
// SHA-256 of the first half at the checkpoint and after the changes.
func relBowCheckpoint(t *testing.T, dev, state string, seed int) (orig, changed string) {
	must(t, os.MkdirAll(state, 0o700))
	const half = 16 << 20
	ctl := filepath.Join(state, "ctl.sock")
	nbd := "/dev/nbd0"
	var out bytes.Buffer
	srv := exec.Command(snapctlBin, "bow", "serve", dev, "--nbd", nbd, "--state-dir", state, "--control", ctl)
	srv.Stdout, srv.Stderr = &out, &out
	must(t, srv.Start())
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	ctlOK := func() bool {
		return exec.Command(snapctlBin, "bow", "status", "--control", ctl).Run() == nil
	}
	for deadline := time.Now().Add(30 * time.Second); !ctlOK(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			srv.Process.Kill()
			t.Fatalf("bow serve not ready after 30 s:\n%s", out.String())
		}
	}
	f, err := os.OpenFile(nbd, os.O_RDWR, 0)
	must(t, err)
	b := pattern(seed+7, 1<<20)
	for off := int64(0); off < half; off += 1 << 20 {
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatalf("write %s: %v", nbd, err)
		}
	}
	must(t, f.Sync())
	must(t, f.Close())
	run(t, "blkdiscard", "-o", strconv.Itoa(half), "-l", strconv.Itoa(half), nbd)
	mustSnapctl(t, "bow", "checkpoint", "--control", ctl)
	orig = relPrefixSum(t, nbd, half)
	f, err = os.OpenFile(nbd, os.O_RDWR, 0)
	must(t, err)
	rng := rand.New(rand.NewSource(int64(seed)))
	blk := make([]byte, 4096)
	for i := 0; i < 1500; i++ {
		rng.Read(blk)
		at := int64(rng.Intn(half/4096)) * 4096
		if i == 0 {
			at = 0
		}
		if _, err := f.WriteAt(blk, at); err != nil {
			t.Fatalf("write %s: %v", nbd, err)
		}
	}
	must(t, f.Sync())
	must(t, f.Close())
	changed = relPrefixSum(t, nbd, half)
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("bow serve after SIGTERM: %v\n%s", err, out.String())
		}
	case <-time.After(60 * time.Second):
		srv.Process.Kill()
		t.Fatalf("bow serve did not stop:\n%s", out.String())
	}
	if relPrefixSum(t, dev, half) == orig {
		t.Fatal("after the changes the device still holds its checkpoint image: the test could not fail")
	}
	return orig, changed
}

// relPrefixSum is the SHA-256 of the first n bytes of a device, read after
// dropping the page cache.
func relPrefixSum(t testing.TB, dev string, n int64) string {
	t.Helper()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	f, err := os.Open(dev)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// relBowRecover reruns `snapctl bow restore` after a cut (the documented
// recovery: it finishes an interrupted restore) and checks the checkpoint
// image is back.
func relBowRecover(t *testing.T, tab *relTable, r relRound, cut string) {
	dev := ubd(2)
	info, _, _ := snapctl(t, "bow", "inspect", dev, "--json")
	found := "no log (restore finished)"
	switch {
	case strings.Contains(info, `"restore_in_progress": true`):
		found = "log marked WOB (restore in progress)"
	case strings.Contains(info, `"valid": true`):
		found = "log intact (restore not started)"
	}
	recovery := "none needed"
	if found != "no log (restore finished)" {
		out := mustSnapctl(t, "bow", "restore", dev)
		recovery = "`snapctl bow restore` (rerun)"
		if strings.Contains(out, "finished an interrupted restore") {
			recovery += ": finished the interrupted restore"
		}
	}
	got := relPrefixSum(t, dev, 16<<20)
	if got != r.Orig {
		t.Fatalf("bow restore round %d (%s): the device holds the %s, want the checkpoint image", r.Round, cut, relData(got, r.Orig, r.Changed))
	}
	if _, _, code := snapctl(t, "bow", "restore", dev); code == 0 {
		t.Errorf("bow restore round %d: a second restore after the finished one succeeded; want a refusal (no log)", r.Round)
	}
	tab.row("bow", "bow restore", cut, found, recovery, "no checkpoint", "checkpoint image (as expected)")
}

// Guest disks of TestReliabilitySecurity:
//   /dev/ubda  16 MiB  the origin (a raw pattern)
//   /dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files
//   /dev/ubdc  32 MiB  a bow device (bow restore --dry-run)

// TestReliabilitySecurity: state files are 0600 in a 0700 directory that
// snapctl creates; a state directory others can write, or a symlink, is
// refused; a store directory others can write is refused; --dry-run writes
// nothing (no file, no device, the record unchanged, the device's bytes
// unchanged).
func TestReliabilitySecurity(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: []Disk{{Size: 16 << 20}, {Size: 128 << 20}, {Size: 32 << 20}}}) {
		return
	}
	tab := newRelTable(t, "security", "Security checks", "check", "expected", "observed", "result")
	mnt := storeFS(t, "ext4")
	check := func(name, expected, observed string, ok bool) {
		res := "ok"
		if !ok {
			res = "**DEFECT**"
			t.Errorf("DEFECT: %s: expected %s, observed %s", name, expected, observed)
		}
		tab.row(name, expected, observed, res)
	}
	mode := func(p string) os.FileMode {
		fi, err := os.Lstat(p)
		must(t, err)
		return fi.Mode().Perm()
	}

	// State files and directory modes.
	state := filepath.Join(t.TempDir(), "new-state")
	sc := func(args ...string) (string, string, int) { return snapctl(t, append(args, "--state-dir", state)...) }
	scMust := func(args ...string) string { return mustSnapctl(t, append(args, "--state-dir", state)...) }
	t.Cleanup(func() { removeDevices(t, "vol") })
	scMust("attach", "vol", "--origin", ubd(0))
	fill(t, "/dev/mapper/vol", 1)
	orig := deviceSum(t, "/dev/mapper/vol")
	scMust("prepare", "vol", "--store", filepath.Join(mnt, "sec-store"), "--size", "8M")
	scatter(t, "/dev/mapper/vol", 200, 1)
	scMust("deactivate", "vol")
	// Leave an offline merge's progress record behind: killed after it.
	if _, step, _ := relRun(t, []string{"SNAPCTL_TEST_CRASH_AT=merge:offline-release"}, "merge", "vol", "--offline", "--state-dir", state); step == "" {
		t.Fatal("the offline merge was not killed at merge:offline-release")
	}
	dm := mode(state)
	check("state directory created by snapctl", "0700", fmt.Sprintf("%04o", dm), dm == 0o700)
	ents, err := os.ReadDir(state)
	must(t, err)
	var files []string
	bad := false
	for _, e := range ents {
		m := mode(filepath.Join(state, e.Name()))
		files = append(files, fmt.Sprintf("%s %04o", e.Name(), m))
		bad = bad || m&0o077 != 0
	}
	check("files in the state directory (record, lock, offline merge progress)", "0600 each", strings.Join(files, ", "), !bad && len(files) >= 3)
	scMust("activate", "--wait", "vol")
	if _, err := os.Stat("/dev/mapper/vol"); err != nil {
		t.Fatalf("`snapctl activate --wait vol` finished the offline merge but left no /dev/mapper/vol: %v", err)
	}
	if got := deviceSum(t, "/dev/mapper/vol"); got != orig {
		t.Fatal("the offline merge finished by activate did not give the prepare-time image")
	}

	// A bow checkpoint's range map and its directory.
	bowState := filepath.Join(t.TempDir(), "bow-state")
	borig, _ := relBowCheckpoint(t, ubd(2), bowState, 3)
	maps, _ := filepath.Glob(filepath.Join(bowState, "bow", "*"))
	var mm []string
	bad = len(maps) == 0
	for _, p := range maps {
		mm = append(mm, fmt.Sprintf("%s %04o", filepath.Base(p), mode(p)))
		bad = bad || mode(p)&0o077 != 0
	}
	bd := mode(filepath.Join(bowState, "bow"))
	check("bow range map saved at a clean stop, and its directory", "0600 in a 0700 directory",
		fmt.Sprintf("bow/ %04o: %s", bd, strings.Join(mm, ", ")), !bad && bd == 0o700)

	// Unsafe state directories.
	for _, c := range []struct {
		name string
		make func(p string)
	}{
		{"world-writable state directory (0777)", func(p string) { must(t, os.Mkdir(p, 0o700)); must(t, os.Chmod(p, 0o777)) }},
		{"group-writable state directory (0770)", func(p string) { must(t, os.Mkdir(p, 0o700)); must(t, os.Chmod(p, 0o770)) }},
		{"state directory that is a symlink", func(p string) { must(t, os.Symlink(state, p)) }},
	} {
		p := filepath.Join(t.TempDir(), "unsafe")
		c.make(p)
		before, _ := os.ReadDir(p)
		_, errOut, code := snapctl(t, "status", "--state-dir", p)
		_, _, code2 := snapctl(t, "attach", "x", "--origin", ubd(0), "--state-dir", p)
		after, _ := os.ReadDir(p)
		msg := ieMsg(errOut)
		check(c.name, "refused by every command (exit 4), nothing written",
			fmt.Sprintf("status exit %d, attach exit %d, %d→%d entries: %s", code, code2, len(before), len(after), ieShort(msg)),
			code == 4 && code2 == 4 && len(after) == len(before) && strings.Contains(msg, p))
		removeDevices(t, "x")
	}

	// A store directory others can write: another user could race the
	// store's path.
	wdir := filepath.Join(mnt, "world")
	must(t, os.Mkdir(wdir, 0o700))
	must(t, os.Chmod(wdir, 0o1777))
	_, errOut, code := sc("prepare", "vol", "--store", filepath.Join(wdir, "store"), "--size", "8M")
	if code == 0 {
		sc("drop", "vol")
	}
	check("store in a world-writable directory (1777)", "refused (exit 4)",
		fmt.Sprintf("exit %d %s", code, ieShort(ieMsg(errOut))), code == 4)

	// --dry-run writes nothing.
	snap := func(dir string) string {
		var b strings.Builder
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			c, _ := os.ReadFile(filepath.Join(dir, e.Name()))
			fmt.Fprintf(&b, "%s %x\n", e.Name(), sha256.Sum256(c))
		}
		return b.String()
	}
	devs := func() string {
		l, err := dmtable.List()
		must(t, err)
		var s []string
		for _, d := range l {
			tb, _ := dmtable.ReadTable(d.Name)
			s = append(s, d.Name+" "+tb.String())
		}
		return strings.Join(s, "; ")
	}
	store := filepath.Join(mnt, "dry-store")
	for _, c := range []struct {
		name string
		args []string
	}{
		{"prepare --dry-run of an attached volume", []string{"prepare", "vol", "--store", store, "--size", "8M", "--dry-run", "--state-dir", state}},
		{"prepare --dry-run of an update volume never attached", []string{"prepare", "newvol", "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "8M", "--dry-run", "--state-dir", state}},
		{"prepare --dry-run --size auto --new-image", []string{"prepare", "newvol", "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "auto", "--new-image", ubd(0), "--dry-run", "--state-dir", state}},
	} {
		bs, bd, bo := snap(state), devs(), deviceSum(t, ubd(0))
		out, errOut, code := snapctl(t, c.args...)
		as, ad, ao := snap(state), devs(), deviceSum(t, ubd(0))
		_, serr := os.Stat(store)
		var diffs []string
		if as != bs {
			diffs = append(diffs, "state directory changed")
		}
		if ad != bd {
			diffs = append(diffs, "devices changed")
		}
		if ao != bo {
			diffs = append(diffs, "origin bytes changed")
		}
		if serr == nil {
			diffs = append(diffs, "store file created")
		}
		obs := "nothing changed"
		if len(diffs) > 0 {
			obs = strings.Join(diffs, ", ")
		}
		check(c.name, "exit 0, a plan printed, nothing written", fmt.Sprintf("exit %d, %s", code, obs),
			code == 0 && len(diffs) == 0 && strings.Contains(out, "dry run"))
		if code != 0 {
			t.Logf("%s: %s", c.name, errOut)
		}
	}
	missing := filepath.Join(t.TempDir(), "does-not-exist")
	_, _, code = snapctl(t, "prepare", "newvol", "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "8M", "--dry-run", "--state-dir", missing)
	_, serr := os.Stat(missing)
	check("prepare --dry-run with a state directory that does not exist", "the directory is not created",
		fmt.Sprintf("exit %d, directory exists afterwards: %v", code, serr == nil), serr != nil)

	sum := relPrefixSum(t, ubd(2), 32<<20)
	out, _, code := snapctl(t, "bow", "restore", ubd(2), "--dry-run")
	check("bow restore --dry-run", "exit 0, the log validated, the device's bytes unchanged",
		fmt.Sprintf("exit %d, bytes unchanged: %v", code, relPrefixSum(t, ubd(2), 32<<20) == sum), code == 0 && relPrefixSum(t, ubd(2), 32<<20) == sum && strings.Contains(out, "nothing was written"))
	mustSnapctl(t, "bow", "restore", ubd(2))
	if relPrefixSum(t, ubd(2), 16<<20) != borig {
		t.Error("bow restore after the dry run did not give the checkpoint image")
	}
	scMust("detach", "vol")
}
