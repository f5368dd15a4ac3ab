package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/freespace"
	"github.com/snapctl/snapctl/merge"
)

// Free-space seeding (checkpoint mode only).
//
// A checkpoint's store normally receives a copy of every origin chunk the
// filesystem overwrites, including chunks that held nothing when the
// snapshot was taken: a new file written into free space costs its size in
// the store. A seeded store starts with an exception for every wholly free
// chunk of the mounted filesystem (read with GETFSMAP while it is frozen),
// so the kernel copies nothing when those chunks are written. The seeds
// fill whole exception areas; their data slots are mapped onto a dm `zero`
// target in NAME-cow, so they cost no store space (see merge.SeedPlan for
// the layout). What changes for the user: a rollback restores every file,
// but not the old garbage of blocks that were free (the kernel merge writes
// zeros there; the userspace merge leaves whatever was written since).
//
// Crash safety: prepare records where the filesystem is mounted
// (SeedInfo.Mountpoint) before it freezes it. A kill while it is frozen
// leaves it frozen (the freeze belongs to the filesystem, not to the
// process); undoing the prepare (activate, or prepare's own error path)
// thaws it first thing, before anything could wait on it.

// SeedInfo is how a checkpoint's store was seeded with the filesystem's
// free chunks. Areas is 0 until the free map was read under the freeze.
type SeedInfo struct {
	// Mountpoint and FSType are where NAME's filesystem was mounted when
	// prepare froze it: recovery thaws it there.
	Mountpoint string `json:"mountpoint"`
	FSType     string `json:"fs_type"`
	// MaxKernelBytes is the kernel memory budget asked for (0: the default).
	MaxKernelBytes uint64 `json:"max_kernel_bytes,omitempty"`
	// Areas is the number of full exception areas of seeds (areas 0 to
	// Areas-1), Seeds the seeded chunks (Areas*E), Objects and KernelBytes
	// what the kernel holds in memory for them.
	Areas       uint64 `json:"areas"`
	Seeds       uint64 `json:"seeds"`
	Objects     uint64 `json:"objects"`
	KernelBytes uint64 `json:"kernel_bytes"`
}

// SeedReport is what prepare tells about the seeding (a dry run: the
// estimate from the free map read without freezing).
type SeedReport struct {
	Mountpoint    string `json:"mountpoint"`
	FSType        string `json:"fs_type"`
	FreeChunks    uint64 `json:"free_chunks"` // wholly free chunks found
	Areas         uint64 `json:"areas"`
	Seeds         uint64 `json:"seeds"`
	Objects       uint64 `json:"objects"`
	KernelBytes   uint64 `json:"kernel_bytes"`
	Estimate      bool   `json:"estimate"` // read without freezing
	OriginChunks  uint64 `json:"origin_chunks"`
	UnseededRoom  uint64 `json:"unseeded_room_chunks"` // chunks the store has room for beyond the seeds
	StoreOnVolume bool   `json:"store_on_volume"`
}

// seedAreas is the number of seeded areas of a store (0: not seeded).
func seedAreas(s *Store) uint64 {
	if s == nil || s.Seeded == nil {
		return 0
	}
	return s.Seeded.Areas
}

// seededSectors is the part of the kernel's view of the store (NAME-cow)
// that seeds take: their data slots, mapped on zeros.
func seededSectors(s *Store) uint64 {
	if s == nil || s.Seeded == nil {
		return 0
	}
	return s.Seeded.Seeds * uint64(s.ChunkSectors)
}

// piece is one stretch of NAME-cow: Length sectors of zeros, or of device
// Dev at Offset.
type piece struct {
	Zero   bool
	Dev    string
	Offset uint64
	Length uint64
}

// pieces are a store file's segments as layout pieces.
func pieces(segs []Segment) []piece {
	out := make([]piece, len(segs))
	for i, seg := range segs {
		out[i] = piece{Dev: seg.Dev, Offset: seg.Offset, Length: seg.Length}
	}
	return out
}

// cowPieces is NAME-cow's layout: the store file's segments, composed with
// the seeded areas' zero-mapped data slots for a seeded store. Every
// rebuild computes it from the record alone, so it always comes out the
// same.
func cowPieces(s *Store) ([]piece, error) {
	file := pieces(s.Segments)
	if seedAreas(s) == 0 {
		return file, nil
	}
	c := uint64(s.ChunkSectors)
	fileChunks := s.Sectors() / c
	plan := merge.SeedPlan{ChunkSectors: s.ChunkSectors, Areas: s.Seeded.Areas, Seeds: s.Seeded.Seeds}
	var out []piece
	for _, cp := range plan.CowPieces(fileChunks) {
		if cp.Zero {
			out = append(out, piece{Zero: true, Length: cp.Chunks * c})
			continue
		}
		sub, err := sliceSegments(file, cp.FileChunk*c, cp.Chunks*c)
		if err != nil {
			return nil, err
		}
		out = append(out, sub...)
	}
	return out, nil
}

// sliceSegments is the part [at, at+n) (sectors of the file) of file's
// segments.
func sliceSegments(file []piece, at, n uint64) ([]piece, error) {
	var out []piece
	var pos uint64
	for _, p := range file {
		if n == 0 {
			break
		}
		end := pos + p.Length
		if end > at {
			skip := uint64(0)
			if at > pos {
				skip = at - pos
			}
			take := min(p.Length-skip, n)
			out = append(out, piece{Dev: p.Dev, Offset: p.Offset + skip, Length: take})
			at += take
			n -= take
		}
		pos = end
	}
	if n != 0 {
		return nil, fmt.Errorf("the store's file is %d sectors, the seeded layout needs %d more", pos, n)
	}
	return out, nil
}

// cowTableOf is NAME-cow's table for a store: linear targets over the file's
// segments, zero targets for the seeds' data slots.
func cowTableOf(s *Store) (dmtable.Table, error) {
	ps, err := cowPieces(s)
	if err != nil {
		return nil, err
	}
	t := make(dmtable.Table, 0, len(ps))
	var at uint64
	for _, p := range ps {
		if p.Zero {
			t = append(t, dmtable.Zero(at, p.Length))
		} else {
			t = append(t, dmtable.Linear(at, p.Length, p.Dev, p.Offset))
		}
		at += p.Length
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("build store table: %w", err)
	}
	return t, nil
}

// mergeLayout is what a userspace merge reads the store through: NAME-cow's
// layout (the file's segments, with zeros for a seeded store's seed slots)
// and the number of seeded areas, whose exceptions are not copied.
func (v *volume) mergeLayout() ([]piece, uint64, error) {
	ps, err := cowPieces(v.rec.Store)
	if err != nil {
		return nil, 0, fmt.Errorf("userspace merge %q: %w", v.name(), err)
	}
	return ps, seedAreas(v.rec.Store), nil
}

// freezer is the filesystem side of seeding: where a device is mounted,
// its free map, freeze and thaw, and writing a seeded store's metadata.
type freezer interface {
	// mountOf is where the filesystem on block device dev ("major:minor")
	// is mounted, and its type; "" when it is not mounted.
	mountOf(dev string) (mountpoint, fsType string, err error)
	free(mountpoint string) ([]freespace.Extent, error)
	freeze(mountpoint string) error
	thaw(mountpoint string) error
	// writeSeeded writes a seeded store's header and metadata through the
	// store file's raw segments.
	writeSeeded(ctx context.Context, segs []Segment, p merge.SeedPlan) error
}

type fsFreezer struct{}

func (fsFreezer) mountOf(dev string) (string, string, error) {
	m, err := mountsOf(dev)
	return m.Mountpoint, m.FSType, err
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (fsFreezer) free(mnt string) ([]freespace.Extent, error) { return freespace.Free(mnt) }
func (fsFreezer) freeze(mnt string) error                     { return freespace.Freeze(mnt) }
func (fsFreezer) thaw(mnt string) error                       { return freespace.Thaw(mnt) }

func (fsFreezer) writeSeeded(ctx context.Context, segs []Segment, p merge.SeedPlan) error {
	ms := make([]merge.Segment, len(segs))
	for i, s := range segs {
		maj, mnr, err := dmtable.ParseDevNum(s.Dev)
		if err != nil {
			return err
		}
		path, err := dmtable.PathByDev(maj, mnr)
		if err != nil {
			return fmt.Errorf("store device %s: %w", s.Dev, err)
		}
		ms[i] = merge.Segment{Path: path, Offset: int64(s.Offset) * 512, Length: int64(s.Length) * 512}
	}
	r, err := merge.OpenSegments(ms, merge.OpenWrite|merge.OpenDirect)
	if err != nil {
		return err
	}
	if err := merge.WriteSeeded(ctx, r, p); err != nil {
		return errors.Join(err, r.Close())
	}
	return r.Close()
}

// seedTarget is the mounted filesystem of a volume that prepare is asked
// to seed: NAME's device must carry it. It refuses (RefusedError) a
// volume that is not mounted, or whose filesystem cannot report its free
// space.
func (m *Manager) seedTarget(name string, o PrepareOptions) (mnt, fsType string, free []freespace.Extent, err error) {
	if o.Mode != Checkpoint {
		return "", "", nil, &RefusedError{Volume: name, Op: "prepare", Kind: RefusedSkipFreeUpdate,
			Reason: "seeding the free space is for checkpoint mode only: in update mode the snapshot is written, and a write to a seeded chunk would land on the zeros every seed shares"}
	}
	inf, err := m.k.info(name)
	if err != nil {
		return "", "", nil, err
	}
	dev := mapperPath(name)
	if !inf.Exists {
		return "", "", nil, &RefusedError{Volume: name, Op: "prepare", Kind: RefusedSkipFreeUnmounted, Device: dev,
			Reason: fmt.Sprintf("%s does not exist, so no filesystem is mounted on it: the free space is read from the mounted filesystem", dev)}
	}
	mnt, fsType, err = m.fz.mountOf(inf.Dev)
	if err != nil {
		return "", "", nil, fmt.Errorf("prepare %q: find where %s is mounted: %w", name, dev, err)
	}
	if mnt == "" {
		return "", "", nil, &RefusedError{Volume: name, Op: "prepare", Kind: RefusedSkipFreeUnmounted, Device: dev,
			Reason: fmt.Sprintf("no filesystem is mounted on %s: the free space is read from the mounted filesystem (GETFSMAP)", dev)}
	}
	free, err = m.fz.free(mnt)
	var unsup *freespace.UnsupportedError
	if errors.As(err, &unsup) {
		return "", "", nil, &RefusedError{Volume: name, Op: "prepare", Kind: RefusedSkipFreeUnsupported, Device: dev,
			Reason: fmt.Sprintf("the %s filesystem on %s (mounted on %s) cannot report its free space (GETFSMAP): %v", fsType, dev, mnt, err)}
	}
	if err != nil {
		return "", "", nil, fmt.Errorf("prepare %q: read the free space of %s (%s on %s): %w", name, mnt, fsType, dev, err)
	}
	return mnt, fsType, free, nil
}

// seedRoom is the real chunks a seeded store must have room for so that it
// never overflows: every origin chunk that is not seeded, less the store's
// own chunks when it lives on the origin (the kernel writes them beneath
// the snapshot-origin, so they never need an exception).
func seedRoom(originChunks, seeds, storeChunks uint64) uint64 {
	if seeds+storeChunks >= originChunks {
		return 0
	}
	return originChunks - seeds - storeChunks
}

// seedSize is the auto size of a seeded store, from the free map read
// before the store is allocated (the filesystem is not frozen yet).
// After the freeze the exact map can seed fewer chunks: the filesystem
// allocated meanwhile, and a store on the volume's own filesystem takes
// free chunks itself. The second is bounded: every chunk the store takes
// from the free map is one seed less but also one origin chunk that needs
// no room (see seedRoom), and the whole-area rounding can drop at most one
// area more; so the size carries a margin of one area's chunks. The first
// is not bounded: prepare checks the exact need under the freeze and, if
// the store is short, thaws, grows it and tries once more (seedAndSnapshot).
func seedSize(l merge.Layout, plan merge.SeedPlan, originChunks uint64) (cowsize.Size, error) {
	room := seedRoom(originChunks, plan.Seeds, 0) + l.PerArea()
	return cowsize.Seeded(plan.Areas, room, uint32(l.ChunkBytes()))
}

// estimateSeeds is a plan from a free map read without freezing.
func estimateSeeds(o PrepareOptions, origin Device, free []freespace.Extent) (merge.SeedPlan, uint64) {
	runs := freespace.Chunks(free, int64(o.ChunkSectors)*512)
	var n uint64
	for _, r := range runs {
		n += r.Count
	}
	runs = clipRuns(runs, origin.Sectors/uint64(o.ChunkSectors))
	return merge.PlanSeeds(merge.Layout{ChunkSize: o.ChunkSectors}, runs, merge.SeedOptions{MaxKernelBytes: o.SeedMemory}), n
}

// clipRuns drops free chunks past the origin's last whole chunk (a
// filesystem smaller than its device reports none there; this is a guard).
func clipRuns(runs []freespace.Run, chunks uint64) []freespace.Run {
	out := runs[:0:0]
	for _, r := range runs {
		if r.Start >= chunks {
			continue
		}
		if r.Start+r.Count > chunks {
			r.Count = chunks - r.Start
		}
		out = append(out, r)
	}
	return out
}

// storeChunksOn is how many of the store's chunks lie on device dev.
func storeChunksOn(s *Store, dev string) uint64 {
	var n uint64
	for _, seg := range s.Segments {
		if seg.Dev == dev {
			n += seg.Length
		}
	}
	return n / uint64(s.ChunkSectors)
}

// seedAndSnapshot freezes NAME's filesystem, reads its exact free map,
// writes the seeded store, builds NAME-cow and takes the snapshot, and
// thaws: the snapshot's point in time is the freeze. The store is already
// allocated (it may live on this very filesystem, which cannot allocate
// while frozen). The filesystem is thawed on every path out of here; a
// kill while frozen is thawed by the recovery (undoPrepare).
func (v *volume) seedAndSnapshot(ctx context.Context, o PrepareOptions, p *Plan) (err error) {
	s := v.rec.Store
	mnt := s.Seeded.Mountpoint
	l := merge.Layout{ChunkSize: s.ChunkSectors}
	chunkBytes := uint64(s.ChunkSectors) * 512
	originChunks := v.rec.Origin.Sectors / uint64(s.ChunkSectors)
	frozen := false
	thaw := func() error {
		if !frozen {
			return nil
		}
		frozen = false
		if err := v.m.fz.thaw(mnt); err != nil {
			return fmt.Errorf("thaw %s: %w", mnt, err)
		}
		return nil
	}
	defer func() {
		if frozen {
			// An error under the freeze: NAME may be suspended (a failed
			// load after the suspend); undoPrepare resumes it and thaws.
			// Thawing here first would wait on a suspended device.
			if inf, ierr := v.m.k.info(v.name()); ierr == nil && !inf.Suspended {
				err = joinErr(err, thaw())
			}
		}
	}()
	for attempt := 0; ; attempt++ {
		if err := v.step(PhasePreparing, "prepare:freeze"); err != nil {
			return err
		}
		if err := v.m.fz.freeze(mnt); err != nil {
			return fmt.Errorf("freeze %s: %w", mnt, err)
		}
		frozen = true
		free, err := v.m.fz.free(mnt)
		if err != nil {
			return fmt.Errorf("read the free space of %s: %w", mnt, err)
		}
		runs := clipRuns(freespace.Chunks(free, int64(chunkBytes)), originChunks)
		plan := merge.PlanSeeds(l, runs, merge.SeedOptions{MaxKernelBytes: s.Seeded.MaxKernelBytes})
		need, err := cowsize.Seeded(plan.Areas, seedRoom(originChunks, plan.Seeds, storeChunksOn(s, v.rec.Origin.Dev)), uint32(chunkBytes))
		if err != nil {
			return err
		}
		if o.Bytes == 0 && o.AutoBytes == nil && o.MaxBytes == 0 && need.Bytes > s.Bytes {
			// Fewer seeds than the estimate (the filesystem allocated
			// since): grow the store (it cannot while frozen) and retry.
			if err := thaw(); err != nil {
				return err
			}
			if attempt > 0 {
				return fmt.Errorf("store %s: %d bytes, and the filesystem keeps taking free space: under the freeze it needs %d bytes to hold every chunk not seeded", s.Path, s.Bytes, need.Bytes)
			}
			grown := need.Bytes + l.PerArea()*chunkBytes
			if err := v.m.fs.extend(s.Path, s.Inode, grown); err != nil {
				return err
			}
			segs, err := v.m.fs.segments(s.Path, s.Inode, s.ChunkSectors)
			if err != nil {
				return err
			}
			s.Segments, s.Bytes = segs, grown
			p.StoreBytes, p.Extents = grown, len(segs)
			p.SizeReason += fmt.Sprintf("; grown to %d bytes: the filesystem had fewer free chunks under the freeze", grown)
			continue
		}
		s.Seeded.Areas, s.Seeded.Seeds, s.Seeded.Objects, s.Seeded.KernelBytes = plan.Areas, plan.Seeds, plan.Objects, plan.KernelBytes
		if err := v.step(PhasePreparing, "prepare:seed"); err != nil {
			return err
		}
		if err := v.m.fz.writeSeeded(ctx, s.Segments, plan); err != nil {
			return fmt.Errorf("write the seeded store %s: %w", s.Path, err)
		}
		p.Seeds = &SeedReport{Mountpoint: mnt, FSType: s.Seeded.FSType, FreeChunks: runsChunks(runs), Areas: plan.Areas, Seeds: plan.Seeds,
			Objects: plan.Objects, KernelBytes: plan.KernelBytes, OriginChunks: originChunks,
			UnseededRoom: seedRoom(originChunks, plan.Seeds, storeChunksOn(s, v.rec.Origin.Dev)), StoreOnVolume: storeChunksOn(s, v.rec.Origin.Dev) > 0}
		break
	}
	cowT, err := cowTable(s)
	if err != nil {
		return err
	}
	p.Tables[cowName(v.name())] = cowT.String()
	if err := v.step(PhasePreparing, "prepare:cow"); err != nil {
		return err
	}
	if err := v.ensure(cowName(v.name()), cowT); err != nil {
		return fmt.Errorf("create %q: %w", cowName(v.name()), err)
	}
	if err := v.buildSnapshot(PhasePreparing, thaw); err != nil {
		return err
	}
	return nil
}

func runsChunks(runs []freespace.Run) uint64 {
	var n uint64
	for _, r := range runs {
		n += r.Count
	}
	return n
}

// thawAfterKill thaws a filesystem that a prepare killed under the freeze
// left frozen. NAME must not be suspended: the thaw writes the
// filesystem's superblock through it. A filesystem that is not frozen
// answers EINVAL, which is the common case.
func (v *volume) thawAfterKill() error {
	s := v.rec.Store
	if s == nil || s.Seeded == nil || s.Seeded.Mountpoint == "" {
		return nil
	}
	inf, err := v.m.k.info(v.name())
	if err != nil || !inf.Exists || inf.Suspended {
		return err
	}
	mnt, _, err := v.m.fz.mountOf(inf.Dev)
	if err != nil || mnt == "" {
		// Not mounted any more (or after a reboot): nothing is frozen.
		return err
	}
	if err := v.m.fz.thaw(mnt); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("thaw %s: %w", mnt, err)
	}
	return nil
}

// SeedEstimate is what seeding the filesystem mounted at mountpoint would
// give, from its free map read without freezing it: the seeds, and the
// size of a store that holds them and room for every chunk not seeded
// (what prepare --skip-free --size auto allocates, less its margin).
func SeedEstimate(mountpoint string, chunkSectors uint32, maxKernelBytes uint64) (*SeedReport, cowsize.Size, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(mountpoint, &st); err != nil {
		return nil, cowsize.Size{}, fmt.Errorf("stat %s: %w", mountpoint, err)
	}
	dev := devString(uint64(st.Dev))
	mnt, fsType, err := fsFreezer{}.mountOf(dev)
	if err != nil {
		return nil, cowsize.Size{}, err
	}
	if mnt == "" {
		return nil, cowsize.Size{}, fmt.Errorf("%s: no filesystem of a block device is mounted there", mountpoint)
	}
	b, err := os.ReadFile("/sys/dev/block/" + dev + "/size")
	if err != nil {
		return nil, cowsize.Size{}, fmt.Errorf("size of the device %s under %s: %w", dev, mountpoint, err)
	}
	sectors, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return nil, cowsize.Size{}, fmt.Errorf("size of the device %s under %s: %w", dev, mountpoint, err)
	}
	free, err := freespace.Free(mnt)
	if err != nil {
		return nil, cowsize.Size{}, err
	}
	o := PrepareOptions{ChunkSectors: chunkSectors, SeedMemory: maxKernelBytes}
	sp, n := estimateSeeds(o, Device{Sectors: sectors}, free)
	originChunks := sectors / uint64(chunkSectors)
	r := &SeedReport{Mountpoint: mnt, FSType: fsType, FreeChunks: n, Areas: sp.Areas, Seeds: sp.Seeds, Objects: sp.Objects,
		KernelBytes: sp.KernelBytes, Estimate: true, OriginChunks: originChunks, UnseededRoom: seedRoom(originChunks, sp.Seeds, 0)}
	size, err := cowsize.Seeded(sp.Areas, r.UnseededRoom, chunkSectors*512)
	return r, size, err
}
