package snapshot

import (
	"context"
	"fmt"

	"github.com/snapctl/snapctl/dmtable"
)

// The kernel reports a full or dropped snapshot only while its table is
// loaded: "Overflow" (a PO store that filled) lives in memory alone, so a
// deactivate or a reboot loads the same half-written store as if it were
// whole. Whatever snapctl command sees the store overflowed or invalid
// therefore records it in the volume's record (Store.Unusable), and no merge
// of such a store ever starts.

// Values of Store.Unusable.
const (
	unusableOverflow = "overflow"
	unusableInvalid  = "invalid"
)

// unusableState maps a kernel snapshot state to what the record keeps, or
// "" for a state that says nothing lasting about the store ("merge failed"
// is an I/O error during a merge, which a restart continues).
func unusableState(state dmtable.SnapshotState) string {
	switch state {
	case dmtable.SnapshotOverflow:
		return unusableOverflow
	case dmtable.SnapshotInvalid:
		return unusableInvalid
	}
	return ""
}

// StoreSeenUnusableError is a merge refused because a snapctl command once
// saw the kernel report the store overflowed or invalid. The kernel may have
// forgotten (it keeps Overflow in memory only), but the store does not hold
// the complete image: merging it would write a partial update into the
// origin, or nothing at all. Nothing was changed.
type StoreSeenUnusableError struct {
	Volume string
	Mode   Mode
	State  string // "overflow" or "invalid"
	Op     string
}

func (e *StoreSeenUnusableError) Error() string {
	what := "was seen full (Overflow): writes to the snapshot failed, so it does not hold the complete update"
	if e.State == unusableInvalid {
		what = "was seen invalid: the kernel dropped the snapshot, so it no longer holds a complete earlier image"
	}
	return fmt.Sprintf("%s %q: refusing to merge: the store %s (recorded in the volume's state; the kernel forgets Overflow when the snapshot is unloaded)", e.Op, e.Volume, what)
}

// noteUnusable records in the volume's record that the store was seen in
// kernel state (one of the snapshot states), once; other states are
// ignored. The caller holds the volume's lock.
func (v *volume) noteUnusable(state dmtable.SnapshotState) error {
	u := unusableState(state)
	if u == "" || v.rec.Store == nil || v.rec.Store.Unusable != "" {
		return nil
	}
	v.rec.Store.Unusable = u
	v.rec.event("store "+u, "seen by "+v.m.Command+"; the store will not be merged")
	v.m.Log.Warn("store unusable", "volume", v.name(), "state", u)
	return v.save()
}

// observeStore reads the kernel's view of the volume's live snapshot, if
// there is one, and records an Overflow or Invalid it reports. Called by
// the commands that are about to unload or rebuild the snapshot, which
// would make the kernel forget.
func (v *volume) observeStore() error {
	if v.rec.Store == nil {
		return nil
	}
	for _, d := range []string{snapName(v.name()), v.name()} {
		lt, err := v.liveType(d)
		if err != nil {
			return err
		}
		if lt != dmtable.TypeSnapshot && lt != dmtable.TypeSnapshotMerge {
			continue
		}
		if inf, err := v.m.k.info(d); err != nil || inf.Suspended {
			return err
		}
		st, err := v.m.k.status(d)
		if err != nil {
			return err
		}
		if err := v.noteUnusable(st.State); err != nil {
			return err
		}
	}
	return nil
}

// checkUsable refuses the merge op of a store recorded as unusable.
func (v *volume) checkUsable(op string) error {
	if s := v.rec.Store; s != nil && s.Unusable != "" {
		return &StoreSeenUnusableError{Volume: v.name(), Mode: v.rec.Mode, State: s.Unusable, Op: op}
	}
	return nil
}

// noteUnusableUnlocked records what Status saw, from outside any
// operation: it takes the volume's lock if it is free, and otherwise
// leaves the recording to the command that holds it (which reads the
// kernel's state itself before any merge). It returns whether the record
// now says so.
func (m *Manager) noteUnusableUnlocked(ctx context.Context, name string, state dmtable.SnapshotState) bool {
	v, err := m.open(ctx, name)
	if err != nil {
		return false
	}
	defer v.close()
	if v.rec.Store == nil {
		return false
	}
	if err := v.noteUnusable(state); err != nil {
		m.Log.Warn("record unusable store", "volume", name, "err", err)
		return false
	}
	return v.rec.Store.Unusable != ""
}

// checkOverflowMode refuses the overflow policy "fail" (PO) in checkpoint
// mode, where it would do nothing: writes go to the origin through
// snapshot-origin, and an origin write that finds the store full
// invalidates the snapshot whatever the policy; PO only changes writes to
// the snapshot device itself, which checkpoint mode never makes.
func checkOverflowMode(o PrepareOptions) error {
	if o.Mode == Checkpoint && o.Overflow == "fail" {
		return &RefusedError{Volume: o.Name, Op: "prepare", Reason: "the overflow policy fail applies to update mode only: in checkpoint mode writes go to the origin, and a write that finds the store full invalidates the snapshot whatever the policy",
			Hint: "prepare a checkpoint with the default policy (invalidate), or use update mode, where fail makes writes to a full snapshot fail instead of invalidating it"}
	}
	return nil
}
