package snapshot

import "context"

// Commit keeps the change: drop in checkpoint mode, merge in update mode.
func (m *Manager) Commit(ctx context.Context, name string) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	if v.rec.Mode == Update {
		return v.merge(ctx, "commit", true)
	}
	return v.drop("commit")
}

// RollbackOptions modify Rollback.
type RollbackOptions struct {
	// AtNextActivate records the rollback for `snapctl activate` to do at
	// boot, before anything mounts the volume.
	AtNextActivate bool
	Wait           bool
}

// Rollback returns to the earlier content: merge in checkpoint mode, drop
// in update mode. The volume must not be open (its content jumps back).
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
	return v.rollback(ctx, o.Wait)
}

func (v *volume) rollback(ctx context.Context, wait bool) error {
	if v.rec.Mode == Update {
		return v.drop("rollback")
	}
	return v.merge(ctx, "rollback", wait)
}
