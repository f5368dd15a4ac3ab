package group

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/snapshot"
)

// fakeVols is a model of the volume life cycle: enough to drive the
// group's decisions. The real life cycle (and its own refusal to act on a
// member behind its group's back) is tested on a real kernel by the e2e
// suite.
type fakeVols struct {
	vols map[string]*fakeVol
	fail map[string]error // "commit NAME" / "rollback NAME" → error, once
	ops  []string
}

type fakeVol struct {
	mode  snapshot.Mode
	phase snapshot.Phase
	group string
	store dmtable.SnapshotState // kernel state of the store; SnapshotUnknown = not active
	open  int32
}

func newFake() *fakeVols { return &fakeVols{vols: map[string]*fakeVol{}, fail: map[string]error{}} }

func (f *fakeVols) Status(ctx context.Context, name string) (*snapshot.VolumeStatus, error) {
	if ctx == nil {
		panic("Status without a context")
	}
	v, ok := f.vols[name]
	if !ok {
		return nil, &snapshot.UnknownVolumeError{Name: name}
	}
	s := &snapshot.VolumeStatus{Name: name, Mode: v.mode, Phase: v.phase, Group: v.group,
		Devices: []snapshot.DeviceStatus{{Name: name, Exists: true, OpenCount: v.open}}}
	if v.store != dmtable.SnapshotUnknown {
		s.Usage = &snapshot.Usage{State: v.store}
	}
	return s, nil
}

func (f *fakeVols) Prepare(_ context.Context, o snapshot.PrepareOptions) (*snapshot.Plan, error) {
	f.ops = append(f.ops, "prepare "+o.Name)
	if err := f.fail["prepare "+o.Name]; err != nil {
		delete(f.fail, "prepare "+o.Name)
		return nil, err
	}
	v, ok := f.vols[o.Name]
	if ok && v.phase != snapshot.PhaseAttached {
		return nil, &snapshot.WrongPhaseError{Volume: o.Name, Op: "prepare", Phase: v.phase}
	}
	f.vols[o.Name] = &fakeVol{mode: o.Mode, phase: snapshot.PhasePrepared, group: o.Group, store: dmtable.SnapshotActive}
	return &snapshot.Plan{Name: o.Name}, nil
}

func (f *fakeVols) act(op, name string) error {
	f.ops = append(f.ops, op+" "+name)
	if err := f.fail[op+" "+name]; err != nil {
		delete(f.fail, op+" "+name)
		return err
	}
	v := f.vols[name]
	if v.open > 0 && op == "rollback" {
		return &snapshot.InUseError{Volume: name, Op: op}
	}
	v.phase, v.store = snapshot.PhaseAttached, dmtable.SnapshotUnknown
	return nil
}

func (f *fakeVols) Commit(_ context.Context, name string) error { return f.act("commit", name) }
func (f *fakeVols) Rollback(_ context.Context, name string, o snapshot.RollbackOptions) error {
	return f.act("rollback", name)
}

func (f *fakeVols) Names() ([]string, error) {
	var n []string
	for k := range f.vols {
		n = append(n, k)
	}
	return n, nil
}

func (f *fakeVols) Activate(_ context.Context, o snapshot.ActivateOptions, names ...string) error {
	f.ops = append(f.ops, "activate "+strings.Join(names, " "))
	return nil
}

type testGroups struct {
	*Manager
	f    *fakeVols
	boot string
	logs []string
}

func newGroups(t *testing.T) *testGroups {
	tg := &testGroups{f: newFake(), boot: "boot-0"}
	tg.Manager = &Manager{Dir: t.TempDir(), Command: "snapctl test", Vols: tg.f,
		BootID: func() (string, error) { return tg.boot, nil },
		Report: func(g, m string) { tg.logs = append(tg.logs, g+": "+m) }}
	return tg
}

func (tg *testGroups) join(t *testing.T, group, vol string, mode snapshot.Mode) {
	t.Helper()
	if _, err := tg.Join(t.Context(), group, snapshot.PrepareOptions{Name: vol, Mode: mode}); err != nil {
		t.Fatalf("join %s to %s: %v", vol, group, err)
	}
}

func (tg *testGroups) status(t *testing.T, group string) *Status {
	t.Helper()
	s, err := tg.Status(t.Context(), group)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func refusal(t *testing.T, err error, kind RefusalKind) {
	t.Helper()
	var r *RefusedError
	if !errors.As(err, &r) || r.Kind != kind {
		t.Fatalf("got %v, want a refusal of kind %d", err, kind)
	}
}

// Boot counting: seal --tries 2; boots 1 and 2 take a try each (a second
// activate in the same boot takes none); boot 3 finds none left and rolls
// every member back before the volumes are activated.
func TestBootCounting(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	tg.join(t, "ota", "userdata", snapshot.Checkpoint)
	if _, err := tg.Seal(t.Context(), "ota", 2); err != nil {
		t.Fatal(err)
	}
	// The sealing boot takes no try.
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := tg.status(t, "ota"); s.TriesLeft != 2 || s.State != StateSealed {
		t.Fatalf("after activate in the sealing boot: %d tries left, state %s; want 2, sealed", s.TriesLeft, s.State)
	}
	for boot, want := range []int{1, 0} {
		tg.boot = fmt.Sprintf("boot-%d", boot+1)
		for range 2 {
			if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if s := tg.status(t, "ota"); s.TriesLeft != want || s.State != StateSealed {
			t.Fatalf("boot %d: %d tries left, state %s; want %d, sealed", boot+1, s.TriesLeft, s.State, want)
		}
	}
	tg.f.ops = nil
	tg.boot = "boot-3"
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The merge (userdata's rollback) first: it is the step that can fail.
	want := []string{"rollback userdata", "rollback system", "activate "}
	if !slices.Equal(tg.f.ops, want) {
		t.Fatalf("boot 3 did %q, want %q (every member rolled back, the merge first, before the volumes are activated)", tg.f.ops, want)
	}
	s := tg.status(t, "ota")
	if s.State != StateRolledBack || s.DecidedBy != "boot: no tries left" {
		t.Fatalf("boot 3: state %s decided by %q, want rolled-back by the boot", s.State, s.DecidedBy)
	}
	if !slices.ContainsFunc(tg.logs, func(l string) bool { return strings.Contains(l, "no boot tries left") }) {
		t.Errorf("no journal line says why the group was rolled back: %q", tg.logs)
	}
	// mark-good after the rollback is refused: the decision is final.
	refusal(t, tg.MarkGood(t.Context(), "ota"), RefusedDecided)
}

func TestMarkGood(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	tg.join(t, "ota", "userdata", snapshot.Checkpoint)
	refusal(t, tg.MarkGood(t.Context(), "ota"), RefusedUnsealed)
	if _, err := tg.Seal(t.Context(), "ota", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := tg.Join(t.Context(), "ota", snapshot.PrepareOptions{Name: "late", Mode: snapshot.Checkpoint}); err == nil {
		t.Fatal("a volume joined a sealed group")
	} else {
		refusal(t, err, RefusedSealed)
	}
	tg.boot = "boot-1"
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	tg.f.ops = nil
	if err := tg.MarkGood(t.Context(), "ota"); err != nil {
		t.Fatal(err)
	}
	if want := []string{"commit system", "commit userdata"}; !slices.Equal(tg.f.ops, want) {
		t.Fatalf("mark-good did %q, want %q (the merge first)", tg.f.ops, want)
	}
	if s := tg.status(t, "ota"); s.State != StateCommitted || s.Members[0].Phase != "attached" || s.Members[1].Phase != "attached" {
		t.Fatalf("after mark-good: %+v", s)
	}
	if err := tg.MarkGood(t.Context(), "ota"); err != nil {
		t.Fatalf("mark-good again: %v, want nothing to do", err)
	}
	refusal(t, errOnly(tg.MarkBad(t.Context(), "ota")), RefusedDecided)
	// A finished group's name starts a new group.
	tg.join(t, "ota", "system", snapshot.Update)
	if s := tg.status(t, "ota"); s.State != StateOpen || len(s.Members) != 1 {
		t.Fatalf("a new group under a finished one's name: %+v", s)
	}
}

func errOnly(_ bool, err error) error { return err }

// A commit cut short after the decision (a member's merge failed) is
// finished by the next activate, never turned into a rollback.
func TestInterruptedCommit(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	tg.join(t, "ota", "userdata", snapshot.Checkpoint)
	if _, err := tg.Seal(t.Context(), "ota", 1); err != nil {
		t.Fatal(err)
	}
	tg.f.fail["commit userdata"] = errors.New("I/O error")
	if err := tg.MarkGood(t.Context(), "ota"); err == nil {
		t.Fatal("mark-good with a failing member succeeded")
	}
	s := tg.status(t, "ota")
	if s.State != StateCommitting || s.Step != "commit:userdata" || !s.Members[1].Pending || s.Members[0].Pending {
		t.Fatalf("after the failed commit: %+v", s)
	}
	refusal(t, errOnly(tg.MarkBad(t.Context(), "ota")), RefusedDecided)
	// Many boots later (no tries left), the decision still stands.
	tg.boot = "boot-9"
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := tg.status(t, "ota"); s.State != StateCommitted {
		t.Fatalf("after activate: state %s, want committed", s.State)
	}
	if slices.ContainsFunc(tg.f.ops, func(o string) bool { return strings.HasPrefix(o, "rollback") }) {
		t.Fatalf("a member of a group decided commit was rolled back: %q", tg.f.ops)
	}
}

// mark-bad with a member open: nothing is rolled back now, the decision is
// recorded, and the next activate rolls every member back.
func TestMarkBadDeferred(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	tg.join(t, "ota", "userdata", snapshot.Checkpoint)
	if _, err := tg.Seal(t.Context(), "ota", 3); err != nil {
		t.Fatal(err)
	}
	tg.f.vols["userdata"].open = 1
	tg.f.ops = nil
	deferred, err := tg.MarkBad(t.Context(), "ota")
	if err != nil || !deferred {
		t.Fatalf("mark-bad with a member open: deferred %v, %v; want deferred", deferred, err)
	}
	if len(tg.f.ops) != 0 {
		t.Fatalf("mark-bad with a member open acted on members: %q", tg.f.ops)
	}
	refusal(t, tg.MarkGood(t.Context(), "ota"), RefusedDecided)
	// An activate later in the same boot does not roll back part of it.
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(tg.f.ops, func(o string) bool { return strings.HasPrefix(o, "rollback") }) {
		t.Fatalf("activate with a member open rolled back members: %q", tg.f.ops)
	}
	tg.f.vols["userdata"].open = 0 // rebooted
	tg.boot = "boot-1"
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := tg.status(t, "ota"); s.State != StateRolledBack || s.DecidedBy != "mark-bad" || s.TriesLeft != 3 {
		t.Fatalf("after activate: %+v", s)
	}
	// An unsealed group can be abandoned.
	tg.join(t, "next", "system", snapshot.Update)
	if deferred, err := tg.MarkBad(t.Context(), "next"); err != nil || deferred {
		t.Fatalf("mark-bad of an open group: deferred %v, %v", deferred, err)
	}
}

func TestSealRefusals(t *testing.T) {
	tg := newGroups(t)
	for _, n := range []int{0, -1, MaxTries + 1, 1 << 30} {
		_, err := tg.Seal(t.Context(), "ota", n)
		refusal(t, err, RefusedTries)
	}
	if _, err := tg.Seal(t.Context(), "ota", 3); !errors.As(err, new(*UnknownGroupError)) {
		t.Fatalf("seal of an unknown group: %v", err)
	}
	// An empty group: its only member's prepare failed after the group
	// existed.
	tg.join(t, "ota", "system", snapshot.Update)
	tg.f.fail["prepare userdata"] = errors.New("no space")
	if _, err := tg.Join(t.Context(), "ota", snapshot.PrepareOptions{Name: "userdata"}); err == nil {
		t.Fatal("join with a failing prepare succeeded")
	}
	if s := tg.status(t, "ota"); len(s.Members) != 1 {
		t.Fatalf("a member whose prepare failed stayed in the group: %+v", s.Members)
	}
	tg.f.vols["system"].store = dmtable.SnapshotOverflow
	_, err := tg.Seal(t.Context(), "ota", 3)
	refusal(t, err, RefusedMember)
	if s := tg.status(t, "ota"); s.Sealed || s.Step != "" {
		t.Fatalf("a refused seal left the group %+v", s)
	}
	tg.f.vols["system"].store = dmtable.SnapshotUnknown
	_, err = tg.Seal(t.Context(), "ota", 3)
	refusal(t, err, RefusedMember)
	// A group started by a failed prepare leaves nothing.
	tg.f.fail["prepare x"] = errors.New("no space")
	if _, err := tg.Join(t.Context(), "lone", snapshot.PrepareOptions{Name: "x"}); err == nil {
		t.Fatal("join with a failing prepare succeeded")
	}
	if tg.IsGroup("lone") {
		t.Fatal("a group whose first prepare failed exists")
	}
	// An empty group record (by hand): seal refuses.
	writeRaw(t, tg.Dir, "empty", `{"format":1,"name":"empty","members":[],"sealed":false,"tries_left":0}`)
	_, err = tg.Seal(t.Context(), "empty", 3)
	refusal(t, err, RefusedEmpty)
}

func TestNames(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	// A group named like a volume, a volume named like a group, a volume
	// its own group, a volume in two groups.
	_, err := tg.Join(t.Context(), "system", snapshot.PrepareOptions{Name: "userdata"})
	refusal(t, err, RefusedNameTaken)
	_, err = tg.Join(t.Context(), "other", snapshot.PrepareOptions{Name: "ota"})
	refusal(t, err, RefusedNameTaken)
	_, err = tg.Join(t.Context(), "data", snapshot.PrepareOptions{Name: "data"})
	refusal(t, err, RefusedNameTaken)
	_, err = tg.Join(t.Context(), "other", snapshot.PrepareOptions{Name: "system"})
	refusal(t, err, RefusedOtherGroup)
	if _, err := tg.Join(t.Context(), "a/b", snapshot.PrepareOptions{Name: "v"}); err == nil {
		t.Fatal("a group name with a slash was accepted")
	}
	if tg.IsGroup("../ota") || !tg.IsGroup("ota") || tg.IsGroup("system") {
		t.Fatal("IsGroup is wrong")
	}
}

func writeRaw(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.MkdirAll(snapshot.GroupsDir(dir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(snapshot.GroupPath(dir, name), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A corrupt group record is refused by every operation, activate included
// (whose other groups and volumes still go on), and never guessed at.
func TestCorruptRecord(t *testing.T) {
	for name, body := range map[string]string{
		"truncated":       `{"format":1,"name":"g","members":["a"],"sealed":tr`,
		"unknown field":   `{"format":1,"name":"g","members":["a"],"sealed":false,"tries_left":0,"decison":"commit"}`,
		"format":          `{"format":2,"name":"g","members":["a"],"sealed":false,"tries_left":0}`,
		"other name":      `{"format":1,"name":"h","members":["a"],"sealed":false,"tries_left":0}`,
		"decision":        `{"format":1,"name":"g","members":["a"],"sealed":true,"tries":3,"tries_left":1,"try_boot":"b","decision":"maybe"}`,
		"tries left":      `{"format":1,"name":"g","members":["a"],"sealed":true,"tries":3,"tries_left":4,"try_boot":"b"}`,
		"tries":           `{"format":1,"name":"g","members":["a"],"sealed":true,"tries":0,"tries_left":0,"try_boot":"b"}`,
		"member twice":    `{"format":1,"name":"g","members":["a","a"],"sealed":false,"tries_left":0}`,
		"bad member":      `{"format":1,"name":"g","members":["../a"],"sealed":false,"tries_left":0}`,
		"commit unsealed": `{"format":1,"name":"g","members":["a"],"sealed":false,"tries_left":0,"decision":"commit"}`,
		"done undecided":  `{"format":1,"name":"g","members":["a"],"sealed":true,"tries":1,"tries_left":1,"try_boot":"b","done":true}`,
		"trailing":        `{"format":1,"name":"g","members":["a"],"sealed":false,"tries_left":0} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			tg := newGroups(t)
			writeRaw(t, tg.Dir, "g", body)
			var c *CorruptRecordError
			_, err := tg.Seal(t.Context(), "g", 3)
			if !errors.As(err, &c) {
				t.Errorf("seal: %v, want a CorruptRecordError", err)
			}
			if err := tg.MarkGood(t.Context(), "g"); !errors.As(err, &c) {
				t.Errorf("mark-good: %v, want a CorruptRecordError", err)
			}
			if _, err := tg.MarkBad(t.Context(), "g"); !errors.As(err, &c) {
				t.Errorf("mark-bad: %v, want a CorruptRecordError", err)
			}
			if _, err := tg.Status(t.Context(), "g"); !errors.As(err, &c) {
				t.Errorf("status: %v, want a CorruptRecordError", err)
			}
			err = tg.Activate(t.Context(), snapshot.ActivateOptions{})
			if !errors.As(err, &c) || !slices.Contains(tg.f.ops, "activate ") {
				t.Errorf("activate: %v (ops %q), want a CorruptRecordError and the volumes activated", err, tg.f.ops)
			}
			if !tg.IsGroup("g") {
				t.Error("a corrupt group is not a group: its name could be taken by a volume")
			}
		})
	}
}

// Two snapctl runs on one group: the second is refused, naming the first.
func TestBusy(t *testing.T) {
	tg := newGroups(t)
	tg.join(t, "ota", "system", snapshot.Update)
	f, err := os.OpenFile(filepath.Join(snapshot.GroupsDir(tg.Dir), "ota.lock"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	f.WriteString("pid 1: snapctl mark-good ota\n")
	var b *BusyError
	if _, err := tg.Seal(t.Context(), "ota", 3); !errors.As(err, &b) || !strings.Contains(b.Error(), "snapctl mark-good ota") {
		t.Fatalf("seal of a busy group: %v", err)
	}
	if err := tg.Activate(t.Context(), snapshot.ActivateOptions{}); !errors.As(err, &b) {
		t.Fatalf("activate with a busy group: %v", err)
	}
}
