package snapshot

import (
	"fmt"

	"github.com/snapctl/snapctl/dmtable"
)

// sameTable compares tables by what the kernel reports: device paths in
// our tables are already "major:minor", so the text forms match.
func sameTable(a, b dmtable.Table) bool { return a.String() == b.String() }

// liveType is the target type of the single-target live table of name, or
// "" when the device does not exist or has no live table.
func (v *volume) liveType(name string) (string, error) {
	inf, err := v.m.k.info(name)
	if err != nil || !inf.Exists || !inf.Live {
		return "", err
	}
	t, err := v.m.k.table(name)
	if err != nil {
		return "", err
	}
	if len(t) == 0 {
		return "", nil
	}
	return t[0].Type, nil
}

// ensure makes device name exist with table t live and not suspended. It
// is idempotent: a device already in that state is left alone.
func (v *volume) ensure(name string, t dmtable.Table) error {
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	created := false
	if !inf.Exists {
		if _, err := v.m.k.create(name); err != nil {
			return err
		}
		inf.Exists, created = true, true
	}
	if inf.Live {
		cur, err := v.m.k.table(name)
		if err != nil {
			return err
		}
		if sameTable(cur, t) {
			return v.keepLive(name, inf)
		}
	}
	err = v.load(name, t)
	if err == nil {
		err = v.m.k.resume(name)
	}
	if err != nil && created {
		// Leave nothing behind: a device without a table is of no use.
		return joinErr(err, v.m.k.remove(name))
	}
	return err
}

// load loads t as name's inactive table. A table already waiting there
// (loaded and never resumed: a kill between the two) is cleared first: the
// kernel refuses a second snapshot table over a store that a waiting one
// holds.
func (v *volume) load(name string, t dmtable.Table) error {
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if inf.Inactive {
		if err := v.m.k.clearInactive(name); err != nil {
			return fmt.Errorf("clear the inactive table of %q: %w", name, err)
		}
	}
	return v.m.k.load(name, t)
}

// keepLive makes the live table of name, already the wanted one, run: a
// table loaded but never resumed (a crash between load and resume) is
// cleared first, or the resume would swap it in.
func (v *volume) keepLive(name string, inf devInfo) error {
	if inf.Inactive {
		if err := v.m.k.clearInactive(name); err != nil {
			return fmt.Errorf("clear the inactive table of %q: %w", name, err)
		}
	}
	if inf.Suspended {
		return v.m.k.resume(name)
	}
	return nil
}

// removeIfExists removes device name if it exists.
func (v *volume) removeIfExists(name string) error {
	inf, err := v.m.k.info(name)
	if err != nil || !inf.Exists {
		return err
	}
	return v.m.k.remove(name)
}

// suspendIfNeeded suspends device name unless it is already suspended.
func (v *volume) suspendIfNeeded(name string) error {
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if !inf.Exists || inf.Suspended {
		return nil
	}
	return v.m.k.suspend(name)
}

// suspendFrozenIfNeeded suspends device name, whose filesystem snapctl
// froze itself (FIFREEZE), without device-mapper's own freeze: on 6.1 that
// second freeze fails with EBUSY, and the first already holds the
// filesystem still and flushed.
func (v *volume) suspendFrozenIfNeeded(name string) error {
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if !inf.Exists || inf.Suspended {
		return nil
	}
	return v.m.k.suspendNoLockfs(name)
}

// collapse brings NAME back to `linear DEV 0` from whatever snapshot table
// it has, removing NAME-snap while NAME (the origin) is suspended, as the
// kernel requires whenever a snapshot is unloaded. Idempotent.
func (v *volume) collapse() error {
	name := v.name()
	want := linearTable(v.rec.Origin)
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if !inf.Exists {
		return v.ensure(name, want)
	}
	if inf.Live {
		cur, err := v.m.k.table(name)
		if err != nil {
			return err
		}
		if sameTable(cur, want) {
			if err := v.removeIfExists(snapName(name)); err != nil {
				return err
			}
			return v.keepLive(name, inf)
		}
	}
	if err := v.suspendIfNeeded(name); err != nil {
		return fmt.Errorf("suspend %q: %w", name, err)
	}
	if err := v.removeIfExists(snapName(name)); err != nil {
		return err
	}
	if err := v.load(name, want); err != nil {
		return err
	}
	return v.m.k.resume(name)
}

// removeStack removes the helper devices of the volume's stack.
func (v *volume) removeStack() error {
	name := v.name()
	for _, d := range []string{snapName(name), realName(name), baseName(name), cowName(name)} {
		if err := v.removeIfExists(d); err != nil {
			return fmt.Errorf("remove %q: %w", d, err)
		}
	}
	return nil
}

// releaseStore deletes the store file, or keeps it in the record's cleanup
// list when its filesystem is not mounted (rollback of a checkpoint whose
// store lives on the origin's own filesystem, which is unmounted).
func (v *volume) releaseStore() error {
	s := v.rec.Store
	if s == nil {
		return nil
	}
	reachable, err := v.release(*s)
	if err != nil {
		return err
	}
	if !reachable {
		v.rec.Cleanup = append(v.rec.Cleanup, *s)
	}
	v.rec.Store, v.rec.Mode, v.rec.Created = nil, "", false
	return nil
}

// release deletes a store file; one whose inode prepare never recorded
// (killed while allocating) only if it looks like what prepare leaves.
func (v *volume) release(s Store) (reachable bool, err error) {
	if s.Inode == 0 {
		return v.m.fs.removePartial(s)
	}
	return v.m.fs.release(s)
}

// cleanup deletes store files left for later whose filesystem is back.
func (v *volume) cleanup() {
	var keep []Store
	for _, s := range v.rec.Cleanup {
		if ok, err := v.release(s); err != nil || !ok {
			keep = append(keep, s)
		}
	}
	v.rec.Cleanup = keep
}

// cowDev, snapshot origin, and table helpers for the current mode.
func (v *volume) originHelper() string {
	if v.rec.Mode == Update {
		return baseName(v.name())
	}
	return realName(v.name())
}

// buildLower makes NAME-cow and NAME-real/NAME-base exist and be live.
func (v *volume) buildLower() error {
	name := v.name()
	if s := v.rec.Store; s.Backend == BackendLoop {
		// The loop device's number may differ after a reboot.
		segs, err := v.m.fs.loopSegments(s.Path, s.Inode)
		if err != nil {
			return fmt.Errorf("attach the loop device over store %s (its filesystem must be mounted): %w", s.Path, err)
		}
		if segs[0] != s.Segments[0] {
			s.Segments = segs
			if err := v.save(); err != nil {
				return err
			}
		}
	}
	cowT, err := cowTable(v.rec.Store)
	if err != nil {
		return err
	}
	if err := v.ensure(cowName(name), cowT); err != nil {
		return fmt.Errorf("build %q: %w", cowName(name), err)
	}
	return v.buildHelper()
}

// buildHelper makes NAME-real (checkpoint) or NAME-base (update) exist and
// be live.
func (v *volume) buildHelper() error {
	if err := v.ensure(v.originHelper(), linearTable(v.rec.Origin)); err != nil {
		return fmt.Errorf("build %q: %w", v.originHelper(), err)
	}
	return nil
}
