package snapshot

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/merge"
)

// A store is mapped by the raw segments its record holds, not through its
// file: if the file was replaced, moved or deleted while the volume was
// inactive (its immutable flag cleared, an offline fsck or resize, an
// administrator), those segments now hold something else. Before any
// snapshot table is loaded over a store, and before any merge starts,
// snapctl checks:
//
//   - through the mapping alone (the store's filesystem need not be
//     mounted, as at boot): the store must carry the header the kernel wrote
//     when the snapshot was first loaded (magic, version, the recorded
//     chunk size), and its exception areas must parse within the store and
//     the origin. A zeroed header would load as a brand-new empty snapshot.
//   - when the store's filesystem is mounted: a fresh FIEMAP of the file
//     must give the recorded segments, and the file must be the recorded
//     inode, still immutable, and on f2fs still pinned.
//
// Any mismatch is refused (StoreChangedError), and nothing is written.

// StoreChangedError is a store whose file or blocks are no longer what the
// volume's record says. Mapping it would read another file's blocks as the
// store and let the kernel write into them.
type StoreChangedError struct {
	Volume  string
	Path    string
	Changes []string
}

func (e *StoreChangedError) Error() string {
	return fmt.Sprintf("volume %q: store %s changed since it was prepared: %s; refusing to map its recorded blocks (nothing was written)",
		e.Volume, e.Path, strings.Join(e.Changes, "; "))
}

// checkStore validates the volume's store before a snapshot or merge
// table is loaded over it: the file with FIEMAP when its filesystem is
// mounted, and the header and exception areas through NAME-cow (which the
// caller has built) unless a live snapshot already holds the store. On a
// refusal it removes the linear helpers it finds unused, so nothing is
// left mapping foreign blocks.
func (v *volume) checkStore() error {
	err := v.checkStoreFile()
	if err == nil {
		err = v.checkStoreContent()
	}
	var changed *StoreChangedError
	if errors.As(err, &changed) {
		return joinErr(err, v.dropUnheld())
	}
	return err
}

// checkStoreFile re-validates the store file against the record with a
// fresh FIEMAP, when its filesystem is mounted.
func (v *volume) checkStoreFile() error {
	s := v.rec.Store
	changes, err := v.m.fs.revalidate(*s)
	if err != nil {
		return fmt.Errorf("volume %q: check store %s: %w", v.name(), s.Path, err)
	}
	if len(changes) > 0 {
		return &StoreChangedError{Volume: v.name(), Path: s.Path, Changes: changes}
	}
	return nil
}

// checkStoreContent reads the store's header and exception areas through
// NAME-cow, unless a live snapshot holds the store (the kernel read them
// when it loaded the table, and is writing them now).
func (v *volume) checkStoreContent() error {
	if held, err := v.storeHeld(); err != nil || held {
		return err
	}
	s := v.rec.Store
	cow := cowName(v.name())
	st, err := v.m.k.readStore(cow, merge.Expect{ChunkSize: s.ChunkSectors, OriginSize: int64(v.rec.Origin.Sectors) * 512})
	var (
		corrupt *merge.CorruptError
		chunk   *merge.ChunkSizeError
	)
	switch {
	case errors.As(err, &corrupt) || errors.As(err, &chunk):
		return &StoreChangedError{Volume: v.name(), Path: s.Path, Changes: []string{
			fmt.Sprintf("its recorded blocks (read through %s) no longer hold the store: %v", mapperPath(cow), err)}}
	case err != nil:
		return fmt.Errorf("volume %q: read store %s through %s: %w", v.name(), s.Path, mapperPath(cow), err)
	case st.Header.Fresh():
		return &StoreChangedError{Volume: v.name(), Path: s.Path, Changes: []string{
			fmt.Sprintf("its recorded blocks (read through %s) are zeroed where the kernel wrote a store header when the snapshot was first loaded: they were overwritten, or belong to another file now; loading them would start an empty snapshot and lose what the store held", mapperPath(cow))}}
	case !st.Header.Valid:
		return v.noteUnusable(dmtable.SnapshotInvalid)
	}
	return nil
}

// storeHeld reports whether a live snapshot or snapshot-merge table holds
// the volume's store.
func (v *volume) storeHeld() (bool, error) {
	for _, d := range []string{v.name(), snapName(v.name())} {
		lt, err := v.liveType(d)
		if err != nil {
			return false, err
		}
		if lt == "snapshot" || lt == "snapshot-merge" {
			return true, nil
		}
	}
	return false, nil
}

// dropUnheld removes NAME-cow, and the origin helper unless NAME's
// snapshot-origin uses it, after a refused check: no snapshot holds the
// store then.
func (v *volume) dropUnheld() error {
	if held, err := v.storeHeld(); err != nil || held {
		return err
	}
	var errs []error
	if err := v.removeIfExists(cowName(v.name())); err != nil {
		errs = append(errs, err)
	}
	if lt, err := v.liveType(v.name()); err != nil {
		errs = append(errs, err)
	} else if lt != "snapshot-origin" {
		if err := v.removeIfExists(v.originHelper()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// readStore parses the store through /dev/mapper/name with direct I/O
// (merge.ReadStore: header and exception areas, bounds checked).
func (dmKernel) readStore(name string, want merge.Expect) (*merge.Store, error) {
	r, err := merge.OpenRaw(mapperPath(name), merge.OpenDirect)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return merge.ReadStore(r, r.Size(), want)
}

// revalidate maps the store file again with FIEMAP and lists what differs
// from the record: the file gone or replaced, its immutable flag cleared,
// unpinned on f2fs, its segments moved. It checks nothing (and returns no
// change) when the store's filesystem is not mounted, or for the loop
// backend, whose loop device is attached through the file by its inode.
// A mapping that extends the recorded one (every recorded sector still at
// the same place in the file and on the device) is accepted: a grow cut
// short after the file grew and before the record took the new segments
// leaves it, and the store maps only the part it recorded.
func (fileStore) revalidate(s Store) ([]string, error) {
	if s.Backend == "loop" || !mounted(s) {
		return nil, nil
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(s.Path, &st); errors.Is(err, syscall.ENOENT) {
		return []string{"the file is gone (deleted or renamed) although its filesystem is mounted"}, nil
	} else if err != nil {
		return nil, fmt.Errorf("stat %s: %w", s.Path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return []string{"the path is no longer a regular file"}, nil
	}
	var changes []string
	if st.Ino != s.Inode {
		changes = append(changes, fmt.Sprintf("it is inode %d now, the store was inode %d: the file was replaced", st.Ino, s.Inode))
	}
	f, err := os.OpenFile(s.Path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", s.Path, err)
	}
	defer f.Close()
	if imm, err := fiemap.IsImmutable(f); err != nil {
		return nil, err
	} else if !imm {
		changes = append(changes, "its immutable flag is cleared, so its blocks could be moved, rewritten or freed")
	}
	saved := make([]fiemap.Segment, len(s.Segments))
	var at uint64
	for i, seg := range s.Segments {
		saved[i] = fiemap.Segment{Logical: at, Dev: seg.Dev, DevOffset: seg.Offset, Length: seg.Length}
		at += seg.Length
	}
	m, err := fiemap.Revalidate(s.Path, saved, originAsLinear)
	var moved fiemap.MismatchError
	switch {
	case errors.As(err, &moved):
		if keepsPrefix(s.Segments, segmentsOf(m.Segments)) {
			break
		}
		changes = append(changes, fmt.Sprintf("its blocks moved (FIEMAP): segment %d was %s, is %s", moved.Index, describeSeg(moved.Saved), describeSeg(moved.Now)))
	case err != nil:
		changes = append(changes, fmt.Sprintf("its extents cannot be mapped again: %v", err))
	}
	if m != nil && m.FS.Magic == fiemap.F2FS_SUPER_MAGIC && !m.Pinned {
		changes = append(changes, "f2fs no longer pins it, so its garbage collector may move its blocks")
	}
	return changes, nil
}

func describeSeg(s *fiemap.Segment) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprintf("%d sectors on %s at sector %d", s.Length, s.Dev, s.DevOffset)
}

func segmentsOf(in []fiemap.Segment) []Segment {
	out := make([]Segment, len(in))
	for i, s := range in {
		out[i] = Segment{Dev: s.Dev, Offset: s.DevOffset, Length: s.Length}
	}
	return out
}

// originAsLinear is dmtable.TableByDev with every snapshot-origin target
// read as the linear map of its origin it is for reads and for where data
// lands: a checkpoint store on the volume's own filesystem lies beneath
// NAME, which is a snapshot-origin while the volume is prepared. The
// recorded segments were resolved while NAME was linear.
func originAsLinear(major, minor uint32) (dmtable.Table, bool, error) {
	t, ok, err := dmtable.TableByDev(major, minor)
	if err != nil || !ok {
		return t, ok, err
	}
	out := make(dmtable.Table, len(t))
	for i, tg := range t {
		if tg.Type == "snapshot-origin" {
			tg = dmtable.Linear(tg.Start, tg.Length, strings.TrimSpace(tg.Params), 0)
		}
		out[i] = tg
	}
	return out, true, nil
}

// syncDevice makes what the kernel wrote through /dev/mapper/name durable:
// fsync of a block device flushes its dirty pages and the volatile caches
// of the devices beneath.
func (dmKernel) syncDevice(name string) error {
	f, err := os.Open(mapperPath(name))
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", mapperPath(name), err)
	}
	return nil
}
