package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// Merge merges the store into the origin (the low-level verb: rollback in
// checkpoint mode, commit in update mode). With wait false it returns once
// the kernel has taken the merge over. When ctx ends while the merge is
// waited for, Merge returns ctx's error and the kernel goes on merging: the
// volume stays merging, and Merge or Activate again finishes it.
func (m *Manager) Merge(ctx context.Context, name string, wait bool) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	if v.rec.Phase == PhaseMerging && (strings.HasPrefix(v.rec.Step, "merge:offline") || strings.HasPrefix(v.rec.Step, "merge:live")) {
		// A userspace merge is under way: the command that started it (or
		// activate) finishes it.
		return &InterruptedError{Volume: name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	return v.merge(ctx, "merge", wait)
}

// storeState reads the kernel's view of the snapshot before a merge.
func (v *volume) checkMergeable(op string) error {
	dev := v.name()
	if v.rec.Mode == Checkpoint {
		dev = snapName(v.name())
	}
	st, err := v.m.k.status(dev)
	if err != nil {
		return fmt.Errorf("%s %q: status of %q: %w", op, v.name(), dev, err)
	}
	if st.State != dmtable.SnapshotActive {
		return joinErr(&StoreUnusableError{Volume: v.name(), State: st.State}, v.noteUnusable(st.State))
	}
	h, err := v.m.k.readHeader(cowName(v.name()))
	var bad *merge.CorruptError
	switch {
	case errors.As(err, &bad):
		return &StoreUnusableError{Volume: v.name(), State: dmtable.SnapshotInvalid, Header: "bad header: " + bad.Error()}
	case err != nil:
		return fmt.Errorf("%s %q: read the store header: %w", op, v.name(), err)
	case h.Fresh() || !h.Valid:
		// A store the kernel never wrote, or one it invalidated, merges as
		// a silent no-op. One it invalidated stays refused for good.
		if !h.Fresh() {
			if err := v.noteUnusable(dmtable.SnapshotInvalid); err != nil {
				return err
			}
		}
		valid := 0
		if h.Valid {
			valid = 1
		}
		return &StoreUnusableError{Volume: v.name(), State: dmtable.SnapshotInvalid, Header: fmt.Sprintf("bad header: magic %#x, valid %d", h.Magic, valid)}
	}
	return nil
}

func (v *volume) merge(ctx context.Context, op string, wait bool) error {
	if err := v.begin(op, PhaseMerging, "merge"); err != nil {
		return err
	}
	if v.rec.Phase == PhasePrepared {
		if err := v.checkUsable(op); err != nil {
			return err
		}
		// A deactivated volume (or one not activated since boot) gets its
		// stack back first: the kernel's view of the store decides below.
		if err := v.buildPrepared(PhasePrepared); err != nil {
			return fmt.Errorf("%s %q: activate the stack: %w", op, v.name(), err)
		}
		if err := v.checkMergeable(op); err != nil {
			return err
		}
		if v.rec.Mode == Checkpoint {
			if n, err := v.openCount(); err != nil {
				return err
			} else if n > 0 {
				return &InUseError{Volume: v.name(), Device: mapperPath(v.name()), OpenCount: n, Op: op}
			}
		}
	}
	v.rec.Scheduled = "" // a scheduled rollback is now under way
	if err := v.step(PhaseMerging, "merge:handover"); err != nil {
		return err
	}
	done, err := v.handover()
	if err != nil {
		return fmt.Errorf("%s %q: hand over to snapshot-merge: %w", op, v.name(), err)
	}
	if !done && !wait {
		// A merge with nothing left (a small store) is finished now.
		if st, err := v.m.k.status(v.name()); err != nil || !st.Merged() {
			v.rec.event(op, "merge handed over to the kernel")
			return v.save()
		}
	}
	if !done {
		if err := v.step(PhaseMerging, "merge:wait"); err != nil {
			return err
		}
		if err := v.waitMerged(ctx); err != nil {
			return fmt.Errorf("%s %q: %w", op, v.name(), err)
		}
	}
	if err := v.step(PhaseMerging, "merge:collapse"); err != nil {
		return err
	}
	if err := v.collapse(); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	// The kernel merged through device-mapper, below the origin's own page
	// cache: drop what was read through the origin before (by snapctl's
	// sizing, by anyone), or buffered reads of it return the old content
	// until its last opener closes it. A failure leaves the step at
	// merge:collapse, and rerunning the command drops it again.
	if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	return v.finish(op, "merge")
}

// handover makes NAME a live snapshot-merge of the store, whatever the
// stack looks like now: a live snapshot(-origin) is swapped with both NAME
// and NAME-snap suspended, a missing stack (after a reboot) is rebuilt
// straight into the merge, a merge table is left running. done is true when
// NAME is already back to linear (the merge finished and NAME collapsed).
func (v *volume) handover() (done bool, err error) {
	name := v.name()
	lt, err := v.liveType(name)
	if err != nil {
		return false, err
	}
	if lt == dmtable.TypeLinear {
		cur, err := v.m.k.table(name)
		if err != nil {
			return false, err
		}
		if sameTable(cur, linearTable(v.rec.Origin)) {
			return true, nil
		}
	}
	if err := v.buildLower(); err != nil {
		return false, err
	}
	cow, err := v.devOf(cowName(name))
	if err != nil {
		return false, err
	}
	helper, err := v.devOf(v.originHelper())
	if err != nil {
		return false, err
	}
	want := mergeTable(v.rec.Origin.Sectors, helper, cow, v.rec.Store)
	switch lt {
	case dmtable.TypeSnapshotOrigin, dmtable.TypeSnapshot:
		if err := v.suspendIfNeeded(name); err != nil {
			return false, err
		}
		if err := v.suspendIfNeeded(snapName(name)); err != nil {
			return false, err
		}
		if err := v.load(name, want); err != nil {
			return false, err
		}
		if err := v.m.k.resume(name); err != nil {
			return false, err
		}
	case dmtable.TypeSnapshotMerge:
		if err := v.ensure(name, want); err != nil {
			return false, err
		}
		// "Merge failed" (an I/O error) sticks to the running target, and
		// the kernel refuses a second merge table over the same store while
		// it exists: remove NAME and build it again; the new target re-reads
		// the store and goes on from where the merge stopped.
		if st, err := v.m.k.status(name); err == nil && st.State == dmtable.SnapshotMergeFailed {
			if n, err := v.openCount(); err != nil {
				return false, err
			} else if n > 0 {
				return false, &InUseError{Volume: name, Device: mapperPath(name), OpenCount: n, Op: "restart the failed merge of"}
			}
			if err := v.m.k.remove(name); err != nil {
				return false, err
			}
			if err := v.ensure(name, want); err != nil {
				return false, err
			}
		}
	default:
		// Nothing holds the store (a merge resumed after a reboot): check
		// it is still the one prepare made before the merge reads it.
		if err := v.checkStore(); err != nil {
			return false, err
		}
		if err := v.ensure(name, want); err != nil {
			return false, err
		}
	}
	return false, v.removeIfExists(snapName(name))
}

// waitMerged polls NAME's status until the merge is complete or ctx ends.
func (v *volume) waitMerged(ctx context.Context) error {
	chunk := uint64(v.rec.Store.ChunkSectors)
	var first uint64
	for {
		st, err := v.m.k.status(v.name())
		if err != nil {
			return err
		}
		if st.State != dmtable.SnapshotActive {
			return &StoreUnusableError{Volume: v.name(), State: st.State}
		}
		left := st.DataSectors()
		if first == 0 {
			first = left
		}
		if v.m.Progress != nil {
			v.m.Progress(MergeProgress{Volume: v.name(), Total: first, Remaining: left, ChunkBytes: chunk * 512})
		}
		if st.Merged() {
			return nil
		}
		poll := time.NewTimer(v.m.Poll)
		select {
		case <-ctx.Done():
			poll.Stop()
			return fmt.Errorf("wait for the merge of %q: %w", v.name(), ctx.Err())
		case <-poll.C:
		}
	}
}
