package snapshot

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/snapctl/snapctl/merge"
)

// ActivateOptions modify Activate.
type ActivateOptions struct {
	Wait bool // wait for merges to finish (and finish the volume)
}

// Activate rebuilds each volume's stack from its record (all volumes when
// names is empty), finishes or undoes interrupted operations, and runs
// rollbacks scheduled with RollbackOptions.AtNextActivate. One volume's failure does
// not stop the others; all errors are returned together.
func (m *Manager) Activate(ctx context.Context, o ActivateOptions, names ...string) error {
	if len(names) == 0 {
		var err error
		if names, err = m.Names(); err != nil {
			return err
		}
	}
	var errs []error
	for _, n := range names {
		v, err := m.open(ctx, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = m.activateOpts(ctx, v, o)
		v.close()
		if err != nil {
			errs = append(errs, fmt.Errorf("activate %q: %w", n, err))
		}
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

func (m *Manager) activate(ctx context.Context, v *volume) error {
	return m.activateOpts(ctx, v, ActivateOptions{})
}

func (m *Manager) activateOpts(ctx context.Context, v *volume, o ActivateOptions) error {
	if err := v.checkOrigin(); err != nil {
		return err
	}
	switch v.rec.Phase {
	case PhaseAttached:
		v.cleanup()
		if err := v.ensure(v.name(), linearTable(v.rec.Origin)); err != nil {
			return err
		}
		return v.save()
	case PhasePreparing:
		return v.undoPrepare()
	case PhaseDropping:
		return v.drop("drop")
	case PhaseMerging:
		switch {
		case strings.HasPrefix(v.rec.Step, "merge:offline"):
			// Finish the userspace merge; NAME ends linear, as for any
			// attached volume.
			_, err := v.mergeOffline(ctx, "merge", merge.OfflineOptions{}, true)
			return err
		case strings.HasPrefix(v.rec.Step, "merge:live"):
			return v.commitLive(ctx, "commit")
		}
		return v.merge(ctx, "merge", o.Wait)
	case PhaseGrowing:
		return v.finishGrow()
	case PhasePrepared:
		gate, err := v.groupBeforeBuild()
		if err != nil {
			return err
		}
		rollback := v.rec.Scheduled == "rollback" || gate != nil && gate.Decision == GroupRollback
		if rollback && v.userspaceRollback(false) {
			// A checkpoint goes back by the userspace merge, with the
			// stack not built (nothing may open NAME while it runs).
			return v.rollback(ctx, RollbackOptions{Wait: o.Wait})
		}
		// After a reboot nothing exists: build the stack first, then run a
		// rollback scheduled for the next activate (or decided by the
		// volume's update group) on top of it.
		if err := v.observeStore(); err != nil {
			return err
		}
		if err := v.buildPrepared(PhasePrepared); err != nil {
			return err
		}
		if rollback {
			return v.rollback(ctx, RollbackOptions{Wait: o.Wait})
		}
		return nil
	}
	return fmt.Errorf("unknown phase %q", v.rec.Phase)
}

// Deactivate removes the volume's devices without changing its data or
// state (before shutdown, or before an offline merge); Activate brings them
// back. A merge under way stops and resumes at the next activate.
func (m *Manager) Deactivate(ctx context.Context, name string) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	switch v.rec.Phase {
	case PhaseAttached, PhasePrepared, PhaseMerging:
	default:
		return &InterruptedError{Volume: name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	if n, err := v.openCount(); err != nil {
		return err
	} else if n > 0 {
		return &InUseError{Volume: name, Device: mapperPath(name), OpenCount: n, Op: "deactivate"}
	}
	// The kernel forgets an Overflow with the table: record it first.
	if err := v.observeStore(); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	if err := v.removeIfExists(name); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	if err := v.removeStack(); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	v.rec.event("deactivate", "")
	return v.save()
}
