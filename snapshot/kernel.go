package snapshot

import (
	"context"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/merge"
)

// devInfo is what the lifecycle needs to know about one DM device.
type devInfo struct {
	Exists    bool
	Suspended bool
	Live      bool // a live table is loaded
	Inactive  bool // an inactive table is loaded
	OpenCount int32
	Dev       string // "major:minor"
}

// kernel is the device-mapper as the lifecycle uses it. The real one is
// dmtable's ioctl client; unit tests of the crash logic use a model.
type kernel interface {
	info(name string) (devInfo, error)
	create(name string) (dev string, err error)
	load(name string, t dmtable.Table) error
	// clearInactive drops a loaded table that was never resumed.
	clearInactive(name string) error
	suspend(name string) error
	// suspendNoLockfs suspends without freezing the filesystem on name
	// (DM_SKIP_LOCKFS_FLAG): for a filesystem frozen with FIFREEZE.
	suspendNoLockfs(name string) error
	resume(name string) error
	remove(name string) error
	table(name string) (dmtable.Table, error)
	// status is the status of name's single snapshot or snapshot-merge
	// target.
	status(name string) (dmtable.SnapshotStatus, error)
	// zeroHeader writes n zero bytes at the start of /dev/mapper/name with
	// O_DIRECT, which initialises a persistent exception store. It does not
	// flush: the caller makes the store durable once it is built.
	zeroHeader(name string, n int) error
	// readHeader reads and checks the store header through
	// /dev/mapper/name, with O_DIRECT.
	readHeader(name string) (merge.Header, error)
	// readStore parses the whole store (header and exception areas, bounds
	// checked) through /dev/mapper/name.
	readStore(name string, want merge.Expect) (*merge.Store, error)
	// syncDevice flushes /dev/mapper/name down to its devices (fsync).
	syncDevice(name string) error
	// syncRaw flushes the block device dev ("major:minor") (fsync).
	syncRaw(dev string) error
	// flushBuffers drops the page cache of the block device at path
	// (BLKFLSBUF). Device-mapper writes the origin below that cache, so
	// whatever was read through the origin's own node before a merge would
	// otherwise be served, stale, to buffered readers after it.
	flushBuffers(path string) error
	// copyStore copies every exception's chunk of the store laid out on
	// the raw segments into the origin at path (merge.Offline), checking
	// the whole store first. The origin is opened exclusively, so the copy
	// fails while anything maps or mounts it; with live set it is opened
	// shared, beneath the device-mapper tables that map it.
	copyStore(ctx context.Context, origin string, store []piece, live bool, opts merge.OfflineOptions) (*merge.OfflineResult, error)
	// invalidateStore marks the store on the raw segments invalid, so no
	// kernel merges it again (merge.Invalidate).
	invalidateStore(store []piece) error
	// setReadOnly sets or clears the read-only policy of /dev/mapper/name
	// (BLKROSET).
	setReadOnly(name string, ro bool) error
	// mounts is what /proc/self/mountinfo says of the filesystems mounted
	// from the block device dev ("major:minor").
	mounts(dev string) (deviceMounts, error)
	// writeCounts are the kernel's counts of the writes the block device
	// dev ("major:minor") was sent.
	writeCounts(dev string) (writeCounts, error)
}

// storeFS is the file system side of the store: the real one allocates
// with fallocate, maps with FIEMAP and resolves down DM linear stacks.
type storeFS interface {
	// devOf identifies the block device at path: number, size, identity.
	devOf(path string) (Device, error)
	// exclusive checks that nothing holds the block device at path
	// exclusively (a mounted filesystem, another device-mapper device).
	exclusive(path string) error
	// fsOf is the filesystem holding path (which need not exist yet): its
	// device, its free and total bytes.
	fsOf(path string) (dev string, free, total uint64, err error)
	// allocate creates path (O_EXCL) of the given size, fully allocated and
	// immutable, and returns its inode.
	// Immutable only for the fiemap backend: with a loop device the kernel
	// writes the store through its filesystem.
	allocate(path string, bytes uint64, chunkSectors uint32, immutable bool) (inode uint64, err error)
	// loopSegments attaches (or finds) the loop device over the store file
	// and maps the whole of it; the device stays held until the process
	// exits, so device-mapper can open it first.
	loopSegments(path string, inode uint64) ([]Segment, error)
	// extend grows the store file at path (inode) to bytes.
	extend(path string, inode uint64, bytes uint64) error
	// segments maps the file's extents to raw-device segments.
	segments(path string, inode uint64, chunkSectors uint32) ([]Segment, error)
	// release deletes the store file if its path still holds its inode;
	// reachable is false when its filesystem is not mounted (delete later).
	release(s Store) (reachable bool, err error)
	// removePartial deletes a store file that prepare may have left before it
	// could record the inode: only an empty or exactly sized regular file.
	// reachable is false when its filesystem is not mounted (delete later).
	removePartial(s Store) (reachable bool, err error)
	// revalidate lists how the store file differs from s (FIEMAP, inode,
	// flags) when its filesystem is mounted.
	revalidate(s Store) (changes []string, err error)
	// placement is where a store at path would be, for a dry run.
	placement(path string, backend Backend) (*Placement, error)
}

// Tables of the stack.

func linearTable(origin Device) dmtable.Table {
	return dmtable.Table{dmtable.Linear(0, origin.Sectors, origin.Dev, 0)}
}

// cowTable maps the store's segments, in order, as NAME-cow; a seeded
// store's seed slots are zero targets between them (cowTableOf).
func cowTable(s *Store) (dmtable.Table, error) {
	if seedAreas(s) > 0 {
		return cowTableOf(s)
	}
	segs := make([]fiemap.Segment, len(s.Segments))
	var at uint64
	for i, seg := range s.Segments {
		segs[i] = fiemap.Segment{Logical: at, Dev: seg.Dev, DevOffset: seg.Offset, Length: seg.Length}
		at += seg.Length
	}
	return fiemap.LinearTable(segs)
}

func snapshotParams(origin, cow string, s *Store) dmtable.SnapshotParams {
	p := dmtable.SnapshotParams{Origin: origin, COW: cow, Store: dmtable.Persistent, Chunk: uint64(s.ChunkSectors)}
	if s.Overflow == OverflowFail {
		p.Store = dmtable.PersistentOverflow
	}
	return p
}

func snapshotTable(sectors uint64, origin, cow string, s *Store) dmtable.Table {
	return dmtable.Table{dmtable.Snapshot(0, sectors, snapshotParams(origin, cow, s))}
}

func originTable(sectors uint64, real string) dmtable.Table {
	return dmtable.Table{dmtable.SnapshotOrigin(0, sectors, real)}
}

// mergeTable merges the store into origin; a merge always takes the plain
// persistent store (P), whatever overflow policy the snapshot had.
func mergeTable(sectors uint64, origin, cow string, s *Store) dmtable.Table {
	p := snapshotParams(origin, cow, s)
	p.Store = dmtable.Persistent
	return dmtable.Table{dmtable.SnapshotMerge(0, sectors, p)}
}

func mapperPath(name string) string { return "/dev/mapper/" + name }
