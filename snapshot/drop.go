package snapshot

import (
	"context"
	"fmt"
)

// Drop drops the snapshot (the low-level verb: commit in checkpoint mode,
// rollback in update mode).
func (m *Manager) Drop(ctx context.Context, name string) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	return v.drop("drop")
}

// openCount is how many holders NAME has (a mounted filesystem is one).
func (v *volume) openCount() (int32, error) {
	inf, err := v.m.k.info(v.name())
	if err != nil {
		return 0, err
	}
	return inf.OpenCount, nil
}

func (v *volume) drop(op string) error {
	if err := v.begin(op, PhaseDropping, "drop"); err != nil {
		return err
	}
	if v.rec.Phase == PhasePrepared {
		if v.rec.Mode == Update {
			// The content of NAME jumps back to the origin.
			if n, err := v.openCount(); err != nil {
				return err
			} else if n > 0 {
				return &InUseError{Volume: v.name(), Device: mapperPath(v.name()), OpenCount: n, Op: op}
			}
		}
	}
	v.rec.Scheduled = ""
	if err := v.step(PhaseDropping, "drop:collapse"); err != nil {
		return err
	}
	if err := v.collapse(); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	return v.finish(op, "drop")
}

// finish removes the helper devices and the store after NAME collapsed.
func (v *volume) finish(op, kind string) error {
	phase := v.rec.Phase
	if err := v.step(phase, kind+":remove"); err != nil {
		return err
	}
	if err := v.removeStack(); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	if err := v.step(phase, kind+":release"); err != nil {
		return err
	}
	path := v.rec.Store.Path
	if err := v.releaseStore(); err != nil {
		return fmt.Errorf("%s %q: release store %s: %w", op, v.name(), path, err)
	}
	v.cleanup()
	v.rec.Scheduled = ""
	return v.settle(PhaseAttached, op, kind)
}

// begin is where merge and drop (verb) start: the volume must be prepared,
// or in the middle of this same operation (own), which then carries on; its
// origin must still be the recorded device; and a fresh start must be what
// the volume's update group decided.
func (v *volume) begin(op string, own Phase, verb string) error {
	switch v.rec.Phase {
	case PhasePrepared, own:
	case PhaseAttached:
		return &WrongPhaseError{Volume: v.name(), Op: op, Phase: v.rec.Phase}
	default:
		return &InterruptedError{Volume: v.name(), Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	if err := v.checkOrigin(); err != nil {
		return err
	}
	if v.rec.Phase == PhasePrepared {
		return v.groupAllows(op, verb)
	}
	return nil
}
