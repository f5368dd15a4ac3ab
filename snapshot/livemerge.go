package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/snapctl/snapctl/internal/atomicfile"
	"github.com/snapctl/snapctl/merge"
)

// The live userspace merge (update-mode commit). In update mode the live
// snapshot target serves every exception's chunk from the store, so
// writing those same bytes into the origin beneath it changes nothing a
// reader of NAME sees. With NAME unused, or only mounted read-only, and
// made read-only for the duration, snapctl copies every exception's chunk
// into the origin itself (the merge package's copier, through the raw
// origin and the raw store segments), flushes the origin, and then, with
// NAME suspended, swaps its table to `linear DEV 0`: a read-only mount
// goes on unaffected. Steps, each recorded before it acts:
//
//	merge:live-readonly    NAME made read-only (BLKROSET); its openers checked
//	merge:live-copy        the copy, then a flush of the origin
//	merge:live-swap        NAME suspended, checked unwritten, loaded linear, resumed
//	merge:live-invalidate  the store marked invalid
//	merge:live-release     helpers removed, NAME writable again, store deleted
//
// Until the swap the snapshot is intact: a kill or power cut before it is
// recovered by copying again, after it by finishing the remaining steps.
// The copy resumes from its progress file only when nothing can have
// written NAME since the copy began: the same boot, the same device, and
// the kernel's write count of NAME unchanged (a stamp file beside the
// progress file records them); otherwise it starts from the beginning. Whatever makes the live merge
// unsafe (a writer, a read-write mount, a write seen during the copy)
// hands the commit to the kernel's snapshot-merge instead, which merges
// the intact store whatever the copy wrote.

// liveOpenRetries is how often the openers of NAME are checked before the
// live merge gives up on it: a short-lived opener (udev probing a device
// whose state changed) goes away.
const liveOpenRetries = 10

// commitLive commits an update-mode volume with the live userspace merge,
// or with the kernel merge when NAME is in use in a way that forbids it.
func (v *volume) commitLive(ctx context.Context, op string) error {
	if err := v.begin(op, PhaseMerging, "merge"); err != nil {
		return err
	}
	name := v.name()
	if v.rec.Phase == PhaseMerging {
		switch v.rec.Step {
		case "merge:live-invalidate", "merge:live-release":
			return v.finishLive(op, nil)
		case "merge:live-swap":
			lt, err := v.liveType(name)
			if err != nil {
				return err
			}
			if lt == "linear" {
				cur, err := v.m.k.table(name)
				if err != nil {
					return err
				}
				if sameTable(cur, linearTable(v.rec.Origin)) {
					if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
						return fmt.Errorf("%s %q: %w", op, name, err)
					}
					return v.finishLive(op, nil)
				}
			}
		}
	} else if err := v.checkUsable(op); err != nil {
		return err
	}
	// From here on the snapshot is intact: (re)build it and start over.
	if err := v.buildUpdate(); err != nil {
		return fmt.Errorf("%s %q: activate the stack: %w", op, name, err)
	}
	if err := v.checkMergeable(op); err != nil {
		return err
	}
	if reason, err := v.liveWritten(); err != nil {
		return err
	} else if reason != "" {
		return v.kernelCommit(ctx, op, reason)
	}
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	// Make what was written through NAME before durable, so that the
	// write count taken next does not move when it is written back.
	if err := v.m.k.syncDevice(name); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	before, err := v.m.k.writeCounts(inf.Dev)
	if err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	if err := v.liveProgress(inf.Dev, before); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	v.rec.Scheduled = ""
	if err := v.step(PhaseMerging, "merge:live-readonly"); err != nil {
		return err
	}
	if err := v.m.k.setReadOnly(name, true); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	reason, err := v.liveOpeners(inf.Dev)
	if err != nil || reason != "" {
		if rerr := v.m.k.setReadOnly(name, false); rerr != nil {
			return fmt.Errorf("%s %q: %w", op, name, errors.Join(err, rerr))
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", op, name, err)
		}
		return v.kernelCommit(ctx, op, reason)
	}
	if err := v.step(PhaseMerging, "merge:live-copy"); err != nil {
		return err
	}
	opts := merge.OfflineOptions{ChunkSize: v.rec.Store.ChunkSectors, ProgressFile: v.m.liveFile(name, "progress"), Progress: v.copyProgress(nil)}
	res, err := v.m.k.copyStore(ctx, v.rec.Origin.Path, v.rec.Store.Segments, true, opts)
	if err != nil {
		// The snapshot is intact: NAME writable again, and a rerun copies
		// again.
		return fmt.Errorf("%s %q: userspace merge: %w", op, name, errors.Join(err, v.m.k.setReadOnly(name, false)))
	}
	if err := v.step(PhaseMerging, "merge:live-swap"); err != nil {
		return err
	}
	if err := v.suspendIfNeeded(name); err != nil {
		return fmt.Errorf("%s %q: suspend %q: %w", op, name, name, err)
	}
	after, err := v.m.k.writeCounts(inf.Dev)
	if err != nil {
		return fmt.Errorf("%s %q: %w", op, name, errors.Join(err, v.m.k.resume(name)))
	}
	if after != before {
		// Something wrote NAME while it was copied: the store changed
		// under the copy. The kernel merge copies the whole store again.
		if err := v.m.k.resume(name); err != nil {
			return fmt.Errorf("%s %q: resume %q: %w", op, name, name, err)
		}
		if err := v.m.k.setReadOnly(name, false); err != nil {
			return fmt.Errorf("%s %q: %w", op, name, err)
		}
		return v.kernelCommit(ctx, op, fmt.Sprintf("%s was written during the userspace copy (%d writes, %d discards)",
			mapperPath(name), after.Writes-before.Writes, after.Discards-before.Discards))
	}
	if err := v.load(name, linearTable(v.rec.Origin)); err != nil {
		return fmt.Errorf("%s %q: load %q: %w", op, name, name, errors.Join(err, v.m.k.resume(name)))
	}
	if err := v.m.k.resume(name); err != nil {
		return fmt.Errorf("%s %q: resume %q: %w", op, name, name, err)
	}
	// Nothing read the origin's own node during the merge, but a reader
	// before it may have left pages there that the copy wrote below.
	if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	return v.finishLive(op, res)
}

// finishLive ends a live merge once NAME is linear: the store is marked
// invalid (so that no kernel ever merges it again over an origin that may
// be written from now on), the helpers removed, NAME made writable, and
// the store released.
func (v *volume) finishLive(op string, res *merge.OfflineResult) error {
	name := v.name()
	if v.rec.Step != "merge:live-release" {
		if err := v.step(PhaseMerging, "merge:live-invalidate"); err != nil {
			return err
		}
		if err := v.m.k.invalidateStore(v.rec.Store.Segments); err != nil {
			return fmt.Errorf("%s %q: %w", op, name, err)
		}
	}
	if err := v.step(PhaseMerging, "merge:live-release"); err != nil {
		return err
	}
	if err := v.removeStack(); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	if err := v.m.k.setReadOnly(name, false); err != nil {
		return fmt.Errorf("%s %q: %w", op, name, err)
	}
	path := v.rec.Store.Path
	if err := v.releaseStore(); err != nil {
		return fmt.Errorf("%s %q: release store %s: %w", op, name, path, err)
	}
	for _, f := range []string{v.m.liveFile(name, "progress"), v.m.liveFile(name, "stamp")} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	v.cleanup()
	v.rec.Scheduled = ""
	detail := "userspace merge, live"
	if res != nil {
		detail = fmt.Sprintf("userspace merge, live: %d bytes copied", res.Total)
	}
	return v.settle(PhaseAttached, op, detail)
}

// kernelCommit hands a commit the live merge cannot do to the kernel's
// snapshot-merge, and says why in the volume's history.
func (v *volume) kernelCommit(ctx context.Context, op, reason string) error {
	v.rec.event(op, "kernel merge: "+reason)
	v.m.Log.Info("kernel merge", "volume", v.name(), "reason", reason)
	return v.merge(ctx, op, true)
}

// liveWritten is why NAME cannot be merged live before anything is
// changed: a filesystem mounted read-write on it.
func (v *volume) liveWritten() (string, error) {
	inf, err := v.m.k.info(v.name())
	if err != nil {
		return "", err
	}
	mt, err := v.m.k.mounts(inf.Dev)
	if err != nil {
		return "", err
	}
	if mt.Mounts > 0 && !mt.ReadOnly {
		return fmt.Sprintf("%s is mounted read-write", mapperPath(v.name())), nil
	}
	return "", nil
}

// liveOpeners checks, once NAME is read-only, that every opener of NAME
// is a read-only mount: the open count is at most the one a mounted
// filesystem takes, and every mount of it is read-only. It returns why
// not, or "" when the live merge may go on.
func (v *volume) liveOpeners(dev string) (string, error) {
	var reason string
	for i := 0; i < liveOpenRetries; i++ {
		if i > 0 {
			time.Sleep(v.m.Poll)
		}
		inf, err := v.m.k.info(v.name())
		if err != nil {
			return "", err
		}
		mt, err := v.m.k.mounts(dev)
		if err != nil {
			return "", err
		}
		var fs int32
		if mt.Mounts > 0 {
			fs = 1 // one filesystem, however many mount points
		}
		switch {
		case mt.Mounts > 0 && !mt.ReadOnly:
			return fmt.Sprintf("%s is mounted read-write", mapperPath(v.name())), nil
		case inf.OpenCount > fs:
			reason = fmt.Sprintf("%s is open %d times, of which %d by a read-only mount: another opener may write", mapperPath(v.name()), inf.OpenCount, fs)
			continue
		}
		return "", nil
	}
	return reason, nil
}

// buildUpdate makes the update-mode stack live from the record, without
// touching the record (buildPrepared clears a step it finds).
func (v *volume) buildUpdate() error {
	name := v.name()
	if err := v.buildLower(); err != nil {
		return err
	}
	if err := v.checkStore(); err != nil {
		return err
	}
	cow, err := v.devOf(cowName(name))
	if err != nil {
		return err
	}
	helper, err := v.devOf(baseName(name))
	if err != nil {
		return err
	}
	return v.ensure(name, snapshotTable(v.rec.Origin.Sectors, helper, cow, v.rec.Store))
}

// liveFile is the live merge's progress ("progress") or stamp ("stamp")
// file of volume name.
func (m *Manager) liveFile(name, kind string) string {
	return filepath.Join(m.Dir, name+".live-merge-"+kind)
}

// liveProgress keeps the live merge's progress file only if it belongs to
// a copy of this same state of NAME: the stamp (boot, device, write
// counts) the copy started from equals the one taken now. Otherwise the
// progress file goes and the stamp is replaced: the copy starts over.
func (v *volume) liveProgress(dev string, now writeCounts) error {
	boot, err := BootID()
	if err != nil {
		return err
	}
	stamp := fmt.Sprintf("boot %s device %s writes %d discards %d\n", boot, dev, now.Writes, now.Discards)
	sp := v.m.liveFile(v.name(), "stamp")
	if old, err := os.ReadFile(sp); err == nil && string(old) == stamp {
		return nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if err := os.Remove(v.m.liveFile(v.name(), "progress")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return atomicfile.Write(sp, []byte(stamp), 0o600)
}
