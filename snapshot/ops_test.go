package snapshot

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPrepareSizesOnce checks that --size auto sizes the store once per
// prepare (an unattached volume is planned twice: before and after it is
// attached) and drops the origin's page cache after the size function read
// it, except in a dry run.
func TestPrepareSizesOnce(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name      string
		attached  bool
		dryRun    bool
		wantFlush int
	}{
		{name: "not attached", wantFlush: 1},
		{name: "attached", attached: true, wantFlush: 1},
		{name: "dry run", dryRun: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, dir := newModelManager(t)
			if tc.attached {
				if err := m.Attach(ctx, "system", modelOrigin.Path); err != nil {
					t.Fatal(err)
				}
			}
			var sized []string
			o := PrepareOptions{Name: "system", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "ota.cow"), Mode: Update, DryRun: tc.dryRun,
				AutoBytes: func(_ context.Context, origin string, chunkSectors uint32) (uint64, error) {
					sized = append(sized, origin)
					k.calls = append(k.calls, "size "+origin)
					return 417792, nil
				}}
			plan, err := m.Prepare(ctx, o)
			if err != nil {
				t.Fatal(err)
			}
			if len(sized) != 1 || sized[0] != modelOrigin.Path {
				t.Errorf("got the size function called for %q, want once, for %s", sized, modelOrigin.Path)
			}
			if plan.StoreBytes != 417792 {
				t.Errorf("got a store of %d bytes, want 417792", plan.StoreBytes)
			}
			flush := "flush " + modelOrigin.Path
			var flushes []int
			for i, c := range k.calls {
				if c == flush {
					flushes = append(flushes, i)
				}
			}
			if len(flushes) != tc.wantFlush {
				t.Fatalf("got %d drops of the origin's page cache, want %d; calls: %s", len(flushes), tc.wantFlush, k.callsSince(0))
			}
			if tc.wantFlush > 0 {
				if s := slices.Index(k.calls, "size "+modelOrigin.Path); flushes[0] < s {
					t.Errorf("the origin's page cache was dropped before the size function read it; calls: %s", k.callsSince(0))
				}
			}
		})
	}
}

// TestMergeDropsOriginCache checks that every operation that merges the
// store into the origin drops the origin's page cache, once, after the
// merge wrote it: the kernel merge and the userspace copy both write the
// origin below it.
func TestMergeDropsOriginCache(t *testing.T) {
	ctx := t.Context()
	const kernelMerge, offlineCopy, liveCopy = "load vol snapshot-merge", "copy /dev/model-origin exclusive", "copy /dev/model-origin shared"
	for _, tc := range []struct {
		name   string
		mode   Mode
		op     func(m *Manager) error
		merged string // the call that merges
	}{
		{"update commit, kernel", Update, func(m *Manager) error { return m.CommitWith(ctx, "vol", CommitOptions{Kernel: true}) }, kernelMerge},
		{"update commit, live userspace", Update, func(m *Manager) error { return m.Commit(ctx, "vol") }, liveCopy},
		{"checkpoint rollback, kernel", Checkpoint, func(m *Manager) error {
			return m.Rollback(ctx, "vol", RollbackOptions{Wait: true, Kernel: true})
		}, kernelMerge},
		{"checkpoint rollback, userspace", Checkpoint, func(m *Manager) error { return m.Rollback(ctx, "vol", RollbackOptions{Wait: true}) }, offlineCopy},
		{"checkpoint merge", Checkpoint, func(m *Manager) error { return m.Merge(ctx, "vol", true) }, kernelMerge},
		{"update merge, not waited for", Update, func(m *Manager) error { return m.Merge(ctx, "vol", false) }, kernelMerge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, dir := newModelManager(t)
			_, err := m.Prepare(ctx, PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: tc.mode, Bytes: 417792})
			if err != nil {
				t.Fatal(err)
			}
			from := len(k.calls)
			if err := tc.op(m); err != nil {
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
			merged := slices.Index(calls, tc.merged)
			collapsed := slices.Index(calls, "load vol linear")
			flush := slices.Index(calls, "flush "+modelOrigin.Path)
			if merged < 0 || collapsed < 0 {
				t.Fatalf("got no %q and no collapse to linear; calls: %s", tc.merged, k.callsSince(from))
			}
			if flush < merged {
				t.Errorf("got no drop of the origin's page cache after the merge, want one; calls: %s", strings.Join(calls, "; "))
			}
			if n := strings.Count(strings.Join(calls, "\n"), "flush "); n != 1 {
				t.Errorf("got %d drops of a page cache, want 1; calls: %s", n, strings.Join(calls, "; "))
			}
		})
	}
}

// TestMergeWaitCancelled checks that a merge wait ends when its context
// does, leaves the volume merging, and that the next Merge finishes it.
func TestMergeWaitCancelled(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	k.merging = true
	ctx, cancel := context.WithCancel(t.Context())
	m.Progress = func(MergeProgress) { cancel() }
	err := m.CommitWith(ctx, "vol", CommitOptions{Kernel: true})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the wait cancelled", err)
	}
	st, err := m.Status(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if st.Phase != PhaseMerging || st.Step != "merge:wait" {
		t.Fatalf("got phase %s at step %q, want merging at merge:wait", st.Phase, st.Step)
	}
	k.merging = false
	m.Progress = nil
	if err := m.Merge(t.Context(), "vol", true); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(t.Context(), "vol"); err != nil || st.Phase != PhaseAttached {
		t.Fatalf("got %v, %v after the second merge, want attached", st, err)
	}
}
