package snapshot

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

	"github.com/snapctl/snapctl/merge"
)

func TestParseMountinfo(t *testing.T) {
	const info = `22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw
30 22 253:1 / /mnt/a ro,relatime shared:2 - ext4 /dev/mapper/vol ro
31 22 253:1 / /mnt/b ro,relatime shared:3 - ext4 /dev/mapper/vol ro,errors=continue
40 22 253:2 /sub /mnt/c ro,relatime shared:4 - ext4 /dev/mapper/other rw,errors=remount-ro
41 22 0:5 / /proc rw - proc proc rw
`
	for _, tc := range []struct {
		dev  string
		want deviceMounts
	}{
		{"253:1", deviceMounts{Mounts: 2, ReadOnly: true, Mountpoint: "/mnt/a", FSType: "ext4"}},
		// A read-only bind mount of a read-write filesystem: the
		// superblock still writes. It is not the filesystem's root, so
		// no mountpoint of it is reported.
		{"253:2", deviceMounts{Mounts: 1, ReadOnly: false}},
		{"254:0", deviceMounts{Mounts: 1, ReadOnly: false, Mountpoint: "/", FSType: "ext4"}},
		{"253:9", deviceMounts{Mounts: 0, ReadOnly: true}},
	} {
		got, err := parseMountinfo(strings.NewReader(info), tc.dev)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("%s: got %+v, want %+v", tc.dev, got, tc.want)
		}
	}
	if _, err := parseMountinfo(strings.NewReader("30 22 253:1 / /mnt/a ro shared:2 ext4\n"), "253:1"); err == nil {
		t.Error("got no error for a line without its separator")
	}
}

func TestParseDiskStat(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want writeCounts
		err  bool
	}{
		{"     163        0     4562       56      12        0       96        8        0      100       64        3        0      24        0        0        0\n", writeCounts{Writes: 12, Discards: 3}, false},
		{"1 2 3 4 5 6 7 8 9 10 11", writeCounts{Writes: 5}, false},
		{"1 2 3 4", writeCounts{}, true},
		{"1 2 3 4 x 6 7 8 9 10 11", writeCounts{}, true},
	} {
		got, err := parseDiskStat(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseDiskStat(%q) = %+v, %v; want %+v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestCommitPath checks which merge an update-mode commit runs: the live
// userspace merge for a device unused or mounted read-only only, the
// kernel's snapshot-merge otherwise, and says which in the history.
func TestCommitPath(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		setup  func(k *modelKernel)
		kernel bool
		live   bool   // the live merge ran to the end
		ro     bool   // NAME was made read-only (and writable again)
		detail string // in the last history events
	}{
		{name: "unused", live: true, ro: true, detail: "userspace merge, live"},
		{name: "mounted read-only", setup: func(k *modelKernel) {
			k.mounted["vol"], k.opens["vol"] = deviceMounts{Mounts: 2, ReadOnly: true}, 1
		}, live: true, ro: true, detail: "userspace merge, live"},
		{name: "mounted read-write", setup: func(k *modelKernel) {
			k.mounted["vol"], k.opens["vol"] = deviceMounts{Mounts: 1}, 1
		}, detail: "kernel merge: /dev/mapper/vol is mounted read-write"},
		{name: "opened besides a read-only mount", setup: func(k *modelKernel) {
			k.mounted["vol"], k.opens["vol"] = deviceMounts{Mounts: 1, ReadOnly: true}, 2
		}, ro: true, detail: "kernel merge: /dev/mapper/vol is open 2 times"},
		{name: "written during the copy", setup: func(k *modelKernel) {
			k.onCopy = func() { k.written["vol"] = writeCounts{Writes: 1} }
		}, ro: true, detail: "kernel merge: /dev/mapper/vol was written during the userspace copy"},
		{name: "kernel asked for", kernel: true, detail: "merge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, dir := newModelManager(t)
			if _, err := m.Prepare(ctx, PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 417792}); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(k)
			}
			from := len(k.calls)
			if err := m.CommitWith(ctx, "vol", CommitOptions{Kernel: tc.kernel}); err != nil {
				t.Fatal(err)
			}
			calls := k.calls[from:]
			st, err := m.Status(ctx, "vol")
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseAttached {
				t.Fatalf("got phase %s, want attached; calls: %s", st.Phase, k.callsSince(from))
			}
			kernelMerged := slices.Contains(calls, "load vol snapshot-merge")
			if kernelMerged == tc.live {
				t.Errorf("got kernel merge %v, want %v; calls: %s", kernelMerged, !tc.live, k.callsSince(from))
			}
			ro, rw := slices.Index(calls, "readonly vol true"), slices.Index(calls, "readonly vol false")
			if (ro >= 0) != tc.ro || (rw >= 0) != tc.ro || rw < ro {
				t.Errorf("got read-only at call %d and writable at call %d, want read-only then writable: %v; calls: %s", ro, rw, tc.ro, k.callsSince(from))
			}
			if tc.live && !slices.Contains(calls, "invalidate store") {
				t.Errorf("the live merge did not invalidate the store; calls: %s", k.callsSince(from))
			}
			var events []string
			for _, e := range st.History[max(len(st.History)-2, 0):] {
				events = append(events, e.Event+": "+e.Detail)
			}
			if !strings.Contains(strings.Join(events, "\n"), "commit: "+tc.detail) {
				t.Errorf("got last events %q, want one saying %q", events, tc.detail)
			}
		})
	}
}

// TestUserspaceMergeResumes: a userspace rollback and a live commit cut
// short during the copy are finished by Activate, and the merge the
// low-level verb would start instead is refused meanwhile.
func TestUserspaceMergeResumes(t *testing.T) {
	for _, tc := range []struct {
		mode Mode
		step string
		run  func(m *Manager, ctx context.Context) error
	}{
		{Checkpoint, "merge:offline", func(m *Manager, ctx context.Context) error {
			return m.Rollback(ctx, "vol", RollbackOptions{Wait: true})
		}},
		{Update, "merge:live-copy", func(m *Manager, ctx context.Context) error { return m.Commit(ctx, "vol") }},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			m, k, dir := newModelManager(t)
			if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: tc.mode, Bytes: 417792}); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			k.onCopy = cancel
			if err := tc.run(m, ctx); !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want the copy cancelled", err)
			}
			k.onCopy = nil
			st, err := m.Status(t.Context(), "vol")
			if err != nil {
				t.Fatal(err)
			}
			if st.Phase != PhaseMerging || st.Step != tc.step {
				t.Fatalf("got phase %s at step %q, want merging at %s", st.Phase, st.Step, tc.step)
			}
			var interrupted *InterruptedError
			if err := m.Merge(t.Context(), "vol", true); !errors.As(err, &interrupted) {
				t.Errorf("merge during the userspace merge: got %v, want InterruptedError", err)
			}
			from := len(k.calls)
			if err := m.Activate(t.Context(), ActivateOptions{Wait: true}, "vol"); err != nil {
				t.Fatal(err)
			}
			if st, err := m.Status(t.Context(), "vol"); err != nil || st.Phase != PhaseAttached {
				t.Fatalf("got %+v, %v after activate, want attached", st, err)
			}
			calls := k.calls[from:]
			if slices.Contains(calls, "load vol snapshot-merge") || !slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "copy ") }) {
				t.Errorf("activate did not finish with the userspace copy; calls: %s", k.callsSince(from))
			}
			if d := k.devs["vol"]; d == nil || !sameTable(d.live, linearTable(modelOrigin)) {
				t.Errorf("vol is not linear after activate; calls: %s", k.callsSince(from))
			}
			if len(k.devs) != 1 {
				t.Errorf("got devices %v left, want vol alone", k.devs)
			}
		})
	}
}

// TestRollbackInUse: the userspace rollback refuses an open device before
// it changes anything.
func TestRollbackInUse(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	k.opens["vol"] = 1
	from := len(k.calls)
	var inUse *InUseError
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{Wait: true}); !errors.As(err, &inUse) {
		t.Fatalf("got %v, want InUseError", err)
	}
	if calls := k.callsSince(from); calls != "" {
		t.Errorf("the refused rollback changed the kernel: %s", calls)
	}
	if st, _ := m.Status(t.Context(), "vol"); st.Phase != PhasePrepared {
		t.Errorf("got phase %s after the refusal, want prepared", st.Phase)
	}
}

// TestRollbackOriginHeld: when the origin cannot be opened exclusively
// (another volume's store is mapped on it), the userspace rollback hands
// over to the kernel merge and says why.
func TestRollbackOriginHeld(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	k.copyErr = fmt.Errorf("open origin: open %s: %w", modelOrigin.Path, syscall.EBUSY)
	from := len(k.calls)
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{Wait: true}); err != nil {
		t.Fatal(err)
	}
	st, err := m.Status(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhaseAttached || !slices.Contains(k.calls[from:], "load vol snapshot-merge") {
		t.Fatalf("got phase %s, want attached after a kernel merge; calls: %s", st.Phase, k.callsSince(from))
	}
	if h := st.History; len(h) < 2 || !strings.HasPrefix(h[len(h)-2].Detail, "kernel merge: ") {
		t.Errorf("got history %+v, want the reason for the kernel merge", h)
	}
}

// TestBootRollbackBuildsNothing: the boot-time rollback of a checkpoint
// (scheduled, after the devices went with the shutdown) copies with no
// device of the volume in existence, and only then creates NAME, linear.
func TestBootRollbackBuildsNothing(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{AtNextActivate: true}); err != nil {
		t.Fatal(err)
	}
	if err := m.Deactivate(t.Context(), "vol"); err != nil {
		t.Fatal(err)
	}
	var during []string
	k.onCopy = func() {
		for n := range k.devs {
			during = append(during, n)
		}
	}
	from := len(k.calls)
	if err := m.Activate(t.Context(), ActivateOptions{Wait: true}, "vol"); err != nil {
		t.Fatal(err)
	}
	if len(during) > 0 {
		t.Errorf("devices %v existed during the copy, want none", during)
	}
	want := []string{"copy /dev/model-origin exclusive", "flush /dev/model-origin", "create vol", "load vol linear", "resume vol"}
	if got := k.calls[from:]; !slices.Equal(got, want) {
		t.Errorf("got calls %q, want %q", got, want)
	}
}

// TestRollbackTearsDown: the userspace rollback removes NAME and its stack
// before it copies, so nothing can open the volume while its content is
// rewritten, and brings NAME back linear after.
func TestRollbackTearsDown(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	during := []string{}
	k.onCopy = func() {
		for n := range k.devs {
			during = append(during, n)
		}
	}
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{Wait: true}); err != nil {
		t.Fatal(err)
	}
	if len(during) > 0 {
		t.Errorf("devices %v existed during the copy, want none", during)
	}
	if d := k.devs["vol"]; d == nil || !sameTable(d.live, linearTable(modelOrigin)) || len(k.devs) != 1 {
		t.Errorf("got devices %v after the rollback, want vol alone, linear", k.devs)
	}
}

// TestLiveProgressStamp: the live merge's progress file survives only
// while the stamp (boot, device, write counts) it was made under holds.
func TestLiveProgressStamp(t *testing.T) {
	m, _, _ := newModelManager(t)
	v := &volume{m: m, rec: &Record{Name: "vol"}}
	progress := m.liveFile("vol", "progress")
	write := func() {
		if err := os.WriteFile(progress, []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	exists := func() bool { _, err := os.Stat(progress); return err == nil }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	write()
	must(v.liveProgress("253:4", writeCounts{Writes: 7}))
	if exists() {
		t.Error("a progress file without a stamp was kept")
	}
	write()
	must(v.liveProgress("253:4", writeCounts{Writes: 7}))
	if !exists() {
		t.Error("the progress file of the same stamp was dropped")
	}
	must(v.liveProgress("253:4", writeCounts{Writes: 8}))
	if exists() {
		t.Error("the progress file was kept although the device was written since")
	}
	write()
	must(v.liveProgress("253:5", writeCounts{Writes: 8}))
	if exists() {
		t.Error("the progress file was kept for another device")
	}
}

// TestRollbackInvalidStore: a store the copy finds invalid (the kernel
// invalidated it, and no command recorded it) is refused before anything
// is copied; the volume is left prepared, its store recorded unusable.
func TestRollbackInvalidStore(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	k.copyErr = fmt.Errorf("merge store into origin: %w", merge.ErrInvalidStore)
	var unusable *StoreUnusableError
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{Wait: true}); !errors.As(err, &unusable) {
		t.Fatalf("got %v, want StoreUnusableError", err)
	}
	st, err := m.Status(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhasePrepared || st.Store == nil || st.Store.Unusable != "invalid" {
		t.Fatalf("got phase %s, store %+v; want prepared with the store recorded invalid", st.Phase, st.Store)
	}
}

// TestNamesSkipsProgress: a userspace merge's progress file in the state
// directory is not a volume (activate without names lists the volumes).
func TestNamesSkipsProgress(t *testing.T) {
	m, _, _ := newModelManager(t)
	if err := m.Attach(t.Context(), "vol", modelOrigin.Path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(m.progressFile("vol"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Names(); err != nil || !slices.Equal(got, []string{"vol"}) {
		t.Fatalf("got names %q, %v; want [vol]", got, err)
	}
	if err := CheckName("x.merge-progress"); err == nil {
		t.Error("a volume name ending in .merge-progress, which names a progress file, was accepted")
	}
}
