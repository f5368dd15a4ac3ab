package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

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

func (m *Manager) progressFile(name string) string {
	return filepath.Join(m.Dir, name+".merge-progress.json")
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
	return v.mergeOffline(ctx, opts)
}

func (v *volume) mergeOffline(ctx context.Context, opts merge.OfflineOptions) (*merge.OfflineResult, error) {
	name := v.name()
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
	segs, seeded, err := v.offlineMergeInput()
	if err != nil {
		return nil, err
	}
	opts.SeededAreas = seeded
	if err := v.step(PhaseMerging, "merge:offline"); err != nil {
		return nil, err
	}
	opts.ChunkSize = v.rec.Store.ChunkSectors
	opts.ProgressFile = v.m.progressFile(name)
	opts.Invalidate = true
	res, err := merge.OfflinePaths(ctx, v.rec.Origin.Path, segs, opts)
	if err != nil {
		return nil, fmt.Errorf("offline merge %q: %w", name, err)
	}
	// The copy wrote the origin with O_DIRECT, which drops the pages it
	// overwrote from the origin's page cache; drop the whole cache anyway,
	// as after a kernel merge, so that no buffered reader of the origin
	// sees the old content. A failure leaves the step at merge:offline,
	// and a rerun finds the merge done and drops it again.
	if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
		return nil, fmt.Errorf("offline merge %q: %w", name, err)
	}
	if err := v.step(PhaseMerging, "merge:offline-release"); err != nil {
		return nil, err
	}
	path := v.rec.Store.Path
	if err := v.releaseStore(); err != nil {
		return nil, fmt.Errorf("offline merge %q: release store %s: %w", name, path, err)
	}
	if err := os.Remove(v.m.progressFile(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	v.rec.Scheduled = ""
	return res, v.settle(PhaseAttached, "merge --offline", fmt.Sprintf("%d bytes copied", res.Total))
}
