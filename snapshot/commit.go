package snapshot

import (
	"context"
	"strings"

	"github.com/snapctl/snapctl/merge"
)

// CommitOptions modify Commit.
type CommitOptions struct {
	// Kernel merges an update-mode volume with the kernel's snapshot-merge
	// even where the live userspace merge could run.
	Kernel bool
}

// Commit keeps the change: drop in checkpoint mode, merge in update mode.
// An update-mode volume whose device is unused or mounted read-only only
// is merged live in userspace (see commitLive); one in use otherwise, or
// with the loop backend, by the kernel's snapshot-merge.
func (m *Manager) Commit(ctx context.Context, name string) error {
	return m.CommitWith(ctx, name, CommitOptions{})
}

// CommitWith is Commit with options.
func (m *Manager) CommitWith(ctx context.Context, name string, o CommitOptions) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	if v.rec.Mode == Update {
		if v.rec.Phase == PhaseMerging && strings.HasPrefix(v.rec.Step, "merge:live") {
			return v.commitLive(ctx, "commit") // finish what was started
		}
		if o.Kernel || v.rec.Store == nil || v.rec.Store.Backend == BackendLoop || v.rec.Phase == PhaseMerging {
			return v.merge(ctx, "commit", true)
		}
		return v.commitLive(ctx, "commit")
	}
	return v.drop("commit")
}

// RollbackOptions modify Rollback.
type RollbackOptions struct {
	// AtNextActivate records the rollback for `snapctl activate` to do at
	// boot, before anything mounts the volume.
	AtNextActivate bool
	Wait           bool
	// Kernel rolls a checkpoint back with the kernel's snapshot-merge
	// instead of the userspace merge.
	Kernel bool
}

// Rollback returns to the earlier content: merge in checkpoint mode, drop
// in update mode. The volume must not be open (its content jumps back).
// A checkpoint is merged back in userspace: NAME and its stack are torn
// down, the store's chunks copied into the origin through the raw devices,
// and NAME comes back as `linear DEV 0`; with Kernel (or the loop backend),
// by the kernel's snapshot-merge.
func (m *Manager) Rollback(ctx context.Context, name string, o RollbackOptions) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	if o.AtNextActivate {
		if v.rec.Phase != PhasePrepared {
			return &WrongPhaseError{Volume: name, Op: "rollback", Phase: v.rec.Phase, Mode: v.rec.Mode}
		}
		if err := v.groupAllows("rollback --at-next-activate", "rollback"); err != nil {
			return err
		}
		v.rec.Scheduled = "rollback"
		v.rec.event("rollback scheduled", "for the next activate")
		return v.save()
	}
	return v.rollback(ctx, o)
}

// userspaceRollback reports whether a rollback of the volume runs the
// userspace merge: a checkpoint whose store is mapped from its raw
// extents (a loop device over the store goes away with the stack).
func (v *volume) userspaceRollback(kernel bool) bool {
	return !kernel && v.rec.Mode == Checkpoint && v.rec.Store != nil && v.rec.Store.Backend != BackendLoop
}

func (v *volume) rollback(ctx context.Context, o RollbackOptions) error {
	if v.rec.Mode == Update {
		return v.drop("rollback")
	}
	if v.rec.Phase == PhaseMerging {
		// Finish the merge under way the way it was started.
		if strings.HasPrefix(v.rec.Step, "merge:offline") {
			_, err := v.mergeOffline(ctx, "rollback", merge.OfflineOptions{}, true)
			return err
		}
		return v.merge(ctx, "rollback", o.Wait)
	}
	if !v.userspaceRollback(o.Kernel) {
		return v.merge(ctx, "rollback", o.Wait)
	}
	if err := v.begin("rollback", PhaseMerging, "merge"); err != nil {
		return err
	}
	if err := v.checkUsable("rollback"); err != nil {
		return err
	}
	if err := v.checkStoreFile(); err != nil {
		return err
	}
	_, err := v.mergeOffline(ctx, "rollback", merge.OfflineOptions{}, true)
	return err
}
