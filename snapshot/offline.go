package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// ActiveError is an offline operation on a volume whose devices exist.
type ActiveError struct {
	Volume string
	Device string
}

func (e *ActiveError) Error() string {
	return fmt.Sprintf("volume %q is active (%s exists): an offline merge needs its devices torn down", e.Volume, e.Device)
}

// progressSuffix ends the name of a userspace merge's progress file in the
// state directory (before ".json"); no volume name ends so.
const progressSuffix = ".merge-progress"

func (m *Manager) progressFile(name string) string {
	return filepath.Join(m.Dir, name+progressSuffix+".json")
}

// MergeOffline merges the store into the origin in userspace, through the
// raw devices under the store's extents, with the volume deactivated. It is
// restartable at any point (progress is recorded write-ahead; copying is
// idempotent); the store is invalidated only after the origin is durable,
// and the volume then ends attached, as after a kernel merge.
func (m *Manager) MergeOffline(ctx context.Context, name string, opts merge.OfflineOptions) (*merge.OfflineResult, error) {
	v, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer v.close()
	switch {
	case v.rec.Phase == PhasePrepared:
		if err := v.groupAllows("merge --offline", "merge"); err != nil {
			return nil, err
		}
		if err := v.checkUsable("merge --offline"); err != nil {
			return nil, err
		}
		if err := v.checkStoreFile(); err != nil {
			return nil, err
		}
	case v.rec.Phase == PhaseMerging && strings.HasPrefix(v.rec.Step, "merge:offline"):
	case v.rec.Phase == PhaseAttached:
		return nil, &WrongPhaseError{Volume: name, Op: "offline merge", Phase: v.rec.Phase}
	default:
		return nil, &InterruptedError{Volume: name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	return v.mergeOffline(ctx, "merge --offline", opts, false)
}

// mergeOffline merges the store into the origin in userspace, through the
// raw devices under the store's extents, step by step, each recorded
// before it acts:
//
//	merge:offline-teardown  (collapse only) NAME and its stack removed
//	merge:offline           the copy (restartable from its progress file),
//	                        then the origin's page cache dropped
//	merge:offline-linear    (collapse only) NAME made `linear DEV 0`
//	merge:offline-release   the store file deleted
//
// Without collapse the devices must already be gone (the volume was
// deactivated) and the volume ends attached without them; with collapse
// (rollback, activate) the stack is torn down first and NAME ends linear,
// as after a kernel merge. A rerun from any step finishes the job: a step
// past the copy does not copy again.
func (v *volume) mergeOffline(ctx context.Context, op string, opts merge.OfflineOptions, collapse bool) (*merge.OfflineResult, error) {
	name := v.name()
	res := &merge.OfflineResult{Store: &merge.Store{}, AlreadyDone: true}
	switch v.rec.Step {
	case "merge:offline-linear", "merge:offline-release":
		// The copy is durable and the page cache dropped.
	default:
		if collapse {
			if err := v.teardown(op); err != nil {
				return nil, err
			}
		}
		for _, d := range []string{name, snapName(name), realName(name), baseName(name), cowName(name)} {
			inf, err := v.m.k.info(d)
			if err != nil {
				return nil, err
			}
			if inf.Exists {
				return nil, &ActiveError{Volume: name, Device: d}
			}
		}
		if err := v.checkOrigin(); err != nil {
			return nil, err
		}
		if err := v.step(PhaseMerging, "merge:offline"); err != nil {
			return nil, err
		}
		opts.ChunkSize = v.rec.Store.ChunkSectors
		opts.ProgressFile = v.m.progressFile(name)
		opts.Invalidate = true
		opts.Progress = v.copyProgress(opts.Progress)
		var err error
		if res, err = v.m.k.copyStore(ctx, v.rec.Origin.Path, v.rec.Store.Segments, false, opts); err != nil {
			if collapse && errors.Is(err, syscall.EBUSY) {
				// Something else holds the origin (another volume's store
				// mapped on it, a direct mount): the copy wrote nothing,
				// and the kernel merge works beside it.
				v.rec.event(op, fmt.Sprintf("kernel merge: %s is held by another device or mount", v.rec.Origin.Path))
				return &merge.OfflineResult{Store: &merge.Store{}}, v.merge(ctx, op, true)
			}
			if collapse && (errors.Is(err, merge.ErrInvalidStore) || errors.Is(err, merge.ErrFreshStore)) {
				// The kernel invalidated the store (or never wrote it):
				// nothing was copied. The volume goes back to prepared,
				// deactivated, with the store recorded unusable, as a
				// refused kernel merge leaves it.
				return nil, v.refuseStore(op, err)
			}
			return nil, fmt.Errorf("%s %q: userspace merge: %w", op, name, err)
		}
		// The copy wrote the origin with O_DIRECT, which drops the pages it
		// overwrote from the origin's page cache; drop the whole cache
		// anyway, as after a kernel merge, so that no buffered reader of
		// the origin sees the old content. A failure leaves the step at
		// merge:offline, and a rerun finds the merge done and drops it
		// again.
		if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
			return nil, fmt.Errorf("%s %q: %w", op, name, err)
		}
	}
	if collapse {
		if err := v.step(PhaseMerging, "merge:offline-linear"); err != nil {
			return nil, err
		}
		if err := v.ensure(name, linearTable(v.rec.Origin)); err != nil {
			return nil, fmt.Errorf("%s %q: load %q: %w", op, name, name, err)
		}
	}
	if err := v.step(PhaseMerging, "merge:offline-release"); err != nil {
		return nil, err
	}
	path := v.rec.Store.Path
	if err := v.releaseStore(); err != nil {
		return nil, fmt.Errorf("%s %q: release store %s: %w", op, name, path, err)
	}
	if err := os.Remove(v.m.progressFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	v.rec.Scheduled = ""
	detail := fmt.Sprintf("userspace merge: %d bytes copied", res.Total)
	if res.AlreadyDone {
		detail = "userspace merge: finished"
	}
	return res, v.settle(PhaseAttached, op, detail)
}

// teardown removes NAME and its stack before a userspace merge, which must
// be the only writer of the origin: the kernel's view of the store is
// recorded first (an Overflow or Invalid it reports refuses the merge), and
// NAME must be unused. It records the step before it removes anything.
func (v *volume) teardown(op string) error {
	name := v.name()
	if err := v.observeStore(); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	if err := v.checkUsable(op); err != nil {
		return err
	}
	if n, err := v.openCount(); err != nil {
		return err
	} else if n > 0 {
		return &InUseError{Volume: name, Device: mapperPath(name), OpenCount: n, Op: op}
	}
	if err := v.step(PhaseMerging, "merge:offline-teardown"); err != nil {
		return err
	}
	if err := v.removeIfExists(name); err != nil {
		return fmt.Errorf("%s %q: remove %q: %w", op, name, name, err)
	}
	if err := v.removeStack(); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	return nil
}

// copyProgress reports a userspace copy as merge progress, in sectors, to
// the Manager's Progress and to also (when set).
func (v *volume) copyProgress(also func(done, total int64)) func(done, total int64) {
	if v.m.Progress == nil && also == nil {
		return nil
	}
	chunk := uint64(v.rec.Store.ChunkSectors) * 512
	return func(done, total int64) {
		if also != nil {
			also(done, total)
		}
		if v.m.Progress != nil {
			v.m.Progress(MergeProgress{Volume: v.name(), Total: uint64(total) / 512, Remaining: uint64(total-done) / 512, ChunkBytes: chunk})
		}
	}
}

// refuseStore ends a userspace rollback whose store the copy found
// invalid or never written before it copied anything.
func (v *volume) refuseStore(op string, why error) error {
	state := dmtable.SnapshotInvalid
	if err := v.noteUnusable(state); err != nil {
		return errors.Join(why, err)
	}
	if err := v.settle(PhasePrepared, op, "refused: the store is not mergeable; the volume is deactivated"); err != nil {
		return errors.Join(why, err)
	}
	return &StoreUnusableError{Volume: v.name(), State: state, Header: why.Error()}
}
