package snapshot

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/freespace"
	"github.com/snapctl/snapctl/merge"
)

// PrepareOptions describes a snapshot to prepare.
type PrepareOptions struct {
	Name      string
	Origin    string // the origin block device
	StorePath string // the store file to create
	Mode      Mode
	// Bytes is the store size; 0 means auto: AutoBytes in update mode, the
	// store filesystem's free space less a reserve in checkpoint mode.
	Bytes        uint64
	AutoBytes    func(ctx context.Context, origin string, chunkSectors uint32) (uint64, error)
	MaxBytes     uint64 // cap for the checkpoint-mode auto size; 0 = none
	ChunkSectors uint32
	Overflow     Overflow // OverflowInvalidate (the default) or OverflowFail
	Backend      Backend  // BackendFIEMAP (the default) or BackendLoop
	DryRun       bool
	// Group is the update group the volume joins (package group records the
	// membership on its side first).
	Group string
	// SkipFree seeds the store with the free chunks of the filesystem
	// mounted on NAME (checkpoint mode only; see seed.go): the kernel then
	// copies nothing when they are written. SeedMemory is the kernel
	// memory budget for the seeds (0: the default).
	SkipFree   bool
	SeedMemory uint64
}

// Plan is what Prepare does (or, with DryRun, would do).
type Plan struct {
	Name       string            `json:"name"`
	Mode       Mode              `json:"mode"`
	StorePath  string            `json:"store_path"`
	StoreBytes uint64            `json:"store_bytes"`
	SizeReason string            `json:"size_reason"`
	ChunkBytes uint64            `json:"chunk_bytes"`
	Tables     map[string]string `json:"tables"` // device name → table text (NAME-cow only once allocated)
	Extents    int               `json:"extents,omitempty"`
	DryRun     bool              `json:"dry_run"`
	// Placement is, in a dry run, where the store would be; its segments
	// (the NAME-cow table) are known only once the file is allocated.
	Placement *Placement `json:"store_placement,omitempty"`
	// Seeds is the free-space seeding (--skip-free): in a dry run, an
	// estimate from the free map read without freezing.
	Seeds *SeedReport `json:"seeds,omitempty"`
}

// reserve is what checkpoint-mode auto sizing leaves free on the store's
// filesystem: 5 % of it or 256 MiB, whichever is smaller.
func reserve(total uint64) uint64 { return min(total/20, 256<<20) }

// Prepare creates the store and builds the snapshot stack over the volume.
// An unattached volume is attached first. If anything fails, everything
// prepare did is undone and both errors are returned.
func (m *Manager) Prepare(ctx context.Context, o PrepareOptions) (*Plan, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if o.Mode == "" {
		o.Mode = Checkpoint
	}
	if o.Mode != Checkpoint && o.Mode != Update {
		return nil, fmt.Errorf("prepare %q: unknown mode %q (want checkpoint or update)", o.Name, o.Mode)
	}
	if o.Overflow == "" {
		o.Overflow = OverflowInvalidate
	}
	if o.Overflow != OverflowInvalidate && o.Overflow != OverflowFail {
		return nil, fmt.Errorf("prepare %q: unknown overflow policy %q (want fail or invalidate)", o.Name, o.Overflow)
	}
	if err := checkOverflowMode(o); err != nil {
		return nil, err
	}
	if o.ChunkSectors == 0 {
		o.ChunkSectors = 8
	}
	if o.Backend == "" {
		o.Backend = BackendFIEMAP
	}
	if o.Backend != BackendFIEMAP && o.Backend != BackendLoop {
		return nil, fmt.Errorf("prepare %q: unknown backend %q (want fiemap or loop)", o.Name, o.Backend)
	}
	if o.AutoBytes != nil {
		o.AutoBytes = m.sizeOnce(o.AutoBytes, !o.DryRun)
	}
	attachedHere := false
	if _, err := readRecord(m.Dir, o.Name); err != nil {
		var unknown *UnknownVolumeError
		if !errors.As(err, &unknown) {
			return nil, err
		}
		if err := CheckName(o.Name); err != nil {
			return nil, err
		}
		// Refuse what the plan refuses before attaching anything.
		plan, err := m.plan(ctx, nil, o)
		if err != nil || o.DryRun {
			return plan, err
		}
		if err := m.Attach(ctx, o.Name, o.Origin); err != nil {
			return nil, err
		}
		attachedHere = true
	}
	plan, err := m.prepareAttached(ctx, o)
	if err != nil && attachedHere {
		// The volume did not exist before: leave it so.
		// Undo with a context of its own: a cancelled ctx must not leave
		// the attach behind.
		if derr := m.Detach(context.WithoutCancel(ctx), o.Name); derr != nil {
			return nil, joinErr(err, derr)
		}
	}
	return plan, err
}

// sizeOnce makes the size function f run once however often the prepare
// plans: an unattached volume is planned before it is attached and again
// after, and f may read both images in full (and print what it found).
// With dropCache, the origin's page cache is dropped right after f: f reads
// the origin through it, and once the snapshot is live device-mapper writes
// the origin underneath (every write in checkpoint mode, the merge in
// update mode), which would leave what f read there stale for buffered
// readers.
func (m *Manager) sizeOnce(f func(ctx context.Context, origin string, chunkSectors uint32) (uint64, error), dropCache bool) func(context.Context, string, uint32) (uint64, error) {
	var (
		done bool
		n    uint64
		err  error
	)
	return func(ctx context.Context, origin string, chunkSectors uint32) (uint64, error) {
		if !done {
			done = true
			n, err = f(ctx, origin, chunkSectors)
			if err == nil && dropCache {
				err = m.k.flushBuffers(origin)
			}
		}
		return n, err
	}
}

func (m *Manager) prepareAttached(ctx context.Context, o PrepareOptions) (*Plan, error) {
	v, err := m.open(ctx, o.Name)
	if err != nil {
		return nil, err
	}
	defer v.close()
	if v.rec.Phase.Busy() {
		return nil, &InterruptedError{Volume: o.Name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	if v.rec.Phase != PhaseAttached {
		return nil, &WrongPhaseError{Volume: o.Name, Op: "prepare", Phase: v.rec.Phase, Mode: v.rec.Mode}
	}
	if o.Origin != "" && o.Origin != v.rec.Origin.Path {
		if d, err := m.fs.devOf(o.Origin); err != nil || d.Dev != v.rec.Origin.Dev {
			return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedOtherOrigin, Device: o.Origin,
				Reason: fmt.Sprintf("the volume's origin is %s, not %s", v.rec.Origin.Path, o.Origin)}
		}
	}
	if err := v.checkOrigin(); err != nil {
		return nil, err
	}
	v.cleanup()
	plan, err := m.plan(ctx, v, o)
	if err != nil || o.DryRun {
		return plan, err
	}
	if err := v.prepare(ctx, o, plan); err != nil {
		err = fmt.Errorf("prepare %q: %w", o.Name, err)
		if uerr := v.undoPrepare(); uerr != nil {
			// Neither done nor undone: the record says preparing, and
			// activate undoes it once the cause is fixed.
			return nil, joinErr(err, &InterruptedError{Volume: o.Name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command, Err: uerr})
		}
		return nil, err
	}
	// Report the tables as the kernel now holds them. NAME-cow holds what
	// prepare loaded (its devices are already major:minor), and it can
	// have 50,000 targets: it is not read back.
	for d := range plan.Tables {
		if d == cowName(o.Name) {
			continue
		}
		if t, err := m.k.table(d); err == nil {
			plan.Tables[d] = t.String()
		}
	}
	return plan, nil
}

// plan checks the request and sizes the store; v is nil for a volume not
// attached yet (dry run only).
func (m *Manager) plan(ctx context.Context, v *volume, o PrepareOptions) (*Plan, error) {
	chunkBytes := uint64(o.ChunkSectors) * 512
	var origin Device
	if v != nil {
		origin = v.rec.Origin
	} else {
		if o.Origin == "" {
			return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedNoOrigin, Reason: "the volume is not attached and no origin device was given"}
		}
		d, err := m.fs.devOf(o.Origin)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: %w", o.Name, err)
		}
		origin = d
	}
	if origin.Sectors < uint64(o.ChunkSectors) {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedOriginTooSmall, Device: origin.Path,
			Reason: fmt.Sprintf("origin %s (%d bytes) is smaller than one chunk (%d bytes)", origin.Path, origin.Sectors*512, chunkBytes)}
	}
	// Seeding is refused (the mode, an unmounted volume, a filesystem
	// without a free map) before anything about the store is looked at.
	var (
		seedMnt, seedFS string
		seedFree        []freespace.Extent
	)
	if o.SkipFree {
		var err error
		if seedMnt, seedFS, seedFree, err = m.seedTarget(o.Name, o); err != nil {
			return nil, err
		}
	}
	if o.StorePath == "" {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedNoStorePath, Reason: "no store path given"}
	}
	if err := fiemap.CheckStorePath(o.StorePath); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(o.StorePath); err == nil {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedStoreExists,
			Reason: fmt.Sprintf("store %s already exists (a file or a symbolic link)", o.StorePath)}
	}
	storeFSDev, free, total, err := m.fs.fsOf(o.StorePath)
	if err != nil {
		return nil, fmt.Errorf("prepare %q: store %s: %w", o.Name, o.StorePath, err)
	}
	if fi, err := os.Stat(filepath.Dir(o.StorePath)); err == nil && fi.Mode().Perm()&0o002 != 0 {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Kind: RefusedStoreDirShared,
			Reason: fmt.Sprintf("the store's directory %s is writable by everyone (%v): others could replace or remove the store", filepath.Dir(o.StorePath), fi.Mode())}
	}
	if err := m.checkStateDir(o.Name, origin); err != nil {
		return nil, err
	}
	p := &Plan{Name: o.Name, Mode: o.Mode, StorePath: o.StorePath, ChunkBytes: chunkBytes, DryRun: o.DryRun, Tables: map[string]string{}}
	var seedBytes uint64
	if o.SkipFree {
		originChunks := origin.Sectors / uint64(o.ChunkSectors)
		sp, n := estimateSeeds(o, origin, seedFree)
		p.Seeds = &SeedReport{Mountpoint: seedMnt, FSType: seedFS, FreeChunks: n, Areas: sp.Areas, Seeds: sp.Seeds, Objects: sp.Objects,
			KernelBytes: sp.KernelBytes, Estimate: true, OriginChunks: originChunks, UnseededRoom: seedRoom(originChunks, sp.Seeds, 0)}
		if inf, err := m.k.info(o.Name); err == nil && inf.Exists && inf.Dev == storeFSDev {
			p.Seeds.StoreOnVolume = true
		}
		sz, err := seedSize(merge.Layout{ChunkSize: o.ChunkSectors}, sp, originChunks)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: size the seeded store: %w", o.Name, err)
		}
		seedBytes = sz.Bytes
	}
	switch {
	case o.Bytes > 0:
		p.StoreBytes, p.SizeReason = o.Bytes, "as requested"
	case o.SkipFree && o.AutoBytes == nil:
		p.StoreBytes = seedBytes
		p.SizeReason = fmt.Sprintf("seeded store: header, %d metadata chunks of seeds, and room for every chunk not seeded (%d), so it cannot fill", p.Seeds.Areas, p.Seeds.UnseededRoom)
		if o.MaxBytes > 0 && p.StoreBytes > o.MaxBytes {
			p.StoreBytes = o.MaxBytes
			p.SizeReason += fmt.Sprintf(", capped by --max-size at %d bytes (it can fill)", o.MaxBytes)
		}
	case o.AutoBytes != nil:
		n, err := o.AutoBytes(ctx, origin.Path, o.ChunkSectors)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: size the store: %w", o.Name, err)
		}
		p.StoreBytes, p.SizeReason = n, "exact size for the change set (dm-snapshot exception-store formula)"
	case o.Mode == Checkpoint:
		r := reserve(total)
		if free <= r {
			return nil, &NoSpaceError{Path: o.StorePath, Need: r + chunkBytes*3, Free: free}
		}
		p.StoreBytes = free - r
		p.SizeReason = fmt.Sprintf("free space of the store's filesystem (%d bytes) less a reserve of %d bytes", free, r)
		if o.MaxBytes > 0 && p.StoreBytes > o.MaxBytes {
			p.StoreBytes = o.MaxBytes
			p.SizeReason += fmt.Sprintf(", capped by --max-size at %d bytes", o.MaxBytes)
		}
	default:
		return nil, fmt.Errorf("prepare %q: %w", o.Name, ErrNoStoreSize)
	}
	// Whole chunks, at least the header, one metadata area and one data chunk.
	p.StoreBytes = (p.StoreBytes + chunkBytes - 1) / chunkBytes * chunkBytes
	if p.StoreBytes < 3*chunkBytes {
		p.StoreBytes = 3 * chunkBytes
	}
	if p.StoreBytes > free {
		return nil, &NoSpaceError{Path: o.StorePath, Need: p.StoreBytes, Free: free}
	}
	cow, helper := mapperPath(cowName(o.Name)), mapperPath(realName(o.Name))
	s := &Store{ChunkSectors: o.ChunkSectors, Overflow: o.Overflow}
	if o.DryRun {
		// NAME-cow's table is known only once the file is allocated.
		if p.Placement, err = m.fs.placement(o.StorePath, o.Backend); err != nil {
			return nil, fmt.Errorf("prepare %q: store %s: %w", o.Name, o.StorePath, err)
		}
	}
	if o.Mode == Checkpoint {
		p.Tables[realName(o.Name)] = linearTable(origin).String()
		p.Tables[snapName(o.Name)] = snapshotTable(origin.Sectors, helper, cow, s).String()
		p.Tables[o.Name] = originTable(origin.Sectors, helper).String()
	} else {
		helper = mapperPath(baseName(o.Name))
		p.Tables[baseName(o.Name)] = linearTable(origin).String()
		p.Tables[o.Name] = snapshotTable(origin.Sectors, helper, cow, s).String()
	}
	return p, nil
}

// checkStateDir refuses a state directory on the volume's own devices.
func (m *Manager) checkStateDir(name string, origin Device) error {
	var st syscall.Stat_t
	if err := syscall.Stat(m.Dir, &st); err != nil {
		return fmt.Errorf("state directory %s: %w", m.Dir, err)
	}
	dev := devString(uint64(st.Dev))
	inf, _ := m.k.info(name)
	if dev == origin.Dev || (inf.Exists && dev == inf.Dev) {
		return &UnsafeStateDirError{Dir: m.Dir, Reason: fmt.Sprintf("is on the volume's origin (%s): a rollback would rewind the state record itself", dev)}
	}
	return nil
}

// devOf is the device number of one of the stack's DM devices.
func (v *volume) devOf(name string) (string, error) {
	inf, err := v.m.k.info(name)
	if err != nil {
		return "", err
	}
	if !inf.Exists {
		return "", fmt.Errorf("device %q does not exist", name)
	}
	return inf.Dev, nil
}

func (v *volume) prepare(ctx context.Context, o PrepareOptions, p *Plan) error {
	v.rec.Mode, v.rec.Group = o.Mode, o.Group
	fsDev, _, _, err := v.m.fs.fsOf(o.StorePath)
	if err != nil {
		return err
	}
	loop := o.Backend == BackendLoop
	if loop {
		inf, err := v.m.k.info(v.name())
		if err != nil {
			return err
		}
		if fsDev == v.rec.Origin.Dev || (inf.Exists && fsDev == inf.Dev) {
			return &StoreOnOriginError{Path: o.StorePath, Reason: "is on the volume itself; with the loop backend the store is written through its filesystem, which would copy-on-write the store into itself"}
		}
	}
	v.rec.Store = &Store{Path: o.StorePath, FSDev: fsDev, Bytes: p.StoreBytes, ChunkSectors: o.ChunkSectors, Backend: o.Backend, Overflow: o.Overflow}
	if o.SkipFree {
		if loop {
			return &RefusedError{Volume: v.name(), Op: "prepare", Kind: RefusedSkipFreeUnsupported, Reason: "a seeded store is mapped on the raw devices beneath its file; the loop backend cannot map its seeds"}
		}
		// Where the filesystem is mounted, recorded before it is frozen:
		// the recovery thaws it there.
		v.rec.Store.Seeded = &SeedInfo{Mountpoint: p.Seeds.Mountpoint, FSType: p.Seeds.FSType, MaxKernelBytes: o.SeedMemory}
	}
	if err := v.step(PhasePreparing, "prepare:allocate"); err != nil {
		return err
	}
	began := time.Now()
	ino, err := v.m.fs.allocate(o.StorePath, p.StoreBytes, o.ChunkSectors, !loop)
	if err != nil {
		return err
	}
	v.m.Log.Debug("store allocated", "path", o.StorePath, "bytes", p.StoreBytes, "took", time.Since(began))
	v.rec.Store.Inode = ino
	if err := v.save(); err != nil {
		return err
	}
	began = time.Now()
	var segs []Segment
	if loop {
		segs, err = v.m.fs.loopSegments(o.StorePath, ino)
	} else {
		segs, err = v.m.fs.segments(o.StorePath, ino, o.ChunkSectors)
	}
	if err != nil {
		return err
	}
	v.m.Log.Debug("store mapped", "path", o.StorePath, "segments", len(segs), "took", time.Since(began))
	for _, s := range segs {
		if s.Dev == v.rec.Origin.Dev && o.Mode == Update {
			return &StoreOnOriginError{Path: o.StorePath, Reason: "is on the origin; in update mode the origin is written only by the merge, so the store must be on another device"}
		}
	}
	v.rec.Store.Segments = segs
	p.Extents = len(segs)
	if o.SkipFree {
		return v.seedAndSnapshot(ctx, o, p)
	}
	cowT, err := cowTable(v.rec.Store)
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
	if err := v.m.k.zeroHeader(cowName(v.name()), int(o.ChunkSectors)*512); err != nil {
		return fmt.Errorf("initialise the store through %q: %w", cowName(v.name()), err)
	}
	return v.buildPrepared(PhasePreparing)
}

// buildPrepared builds the live snapshot stack of a prepared volume from
// its record, in the order the kernel requires; it is what prepare ends
// with and what activate does after a reboot. Idempotent.
func (v *volume) buildPrepared(phase Phase) error { return v.buildSnapshot(phase, nil) }

// buildSnapshot is buildPrepared for a prepare that froze NAME's
// filesystem itself (thaw not nil): NAME is suspended without a second
// freeze (device-mapper's own freeze fails with EBUSY on a filesystem
// frozen with FIFREEZE), and thaw runs once the snapshot is live, before
// the record says prepared.
func (v *volume) buildSnapshot(phase Phase, thaw func() error) error {
	name := v.name()
	// Prepare records each step before it acts. Rebuilding a prepared
	// volume's stack needs no record: it is idempotent and activate simply
	// does it again.
	step := func(s string) error {
		if phase != PhasePreparing {
			return nil
		}
		return v.step(phase, s)
	}
	if err := step("prepare:lower"); err != nil {
		return err
	}
	build := v.buildLower
	if phase == PhasePreparing {
		// prepare built NAME-cow just before: comparing its live table
		// with the wanted one would read back up to 50,000 targets.
		build = v.buildHelper
	}
	if err := build(); err != nil {
		return err
	}
	if phase != PhasePreparing {
		// A store found again (activate, merge) must still be the one
		// prepare made before a snapshot table is loaded over it.
		if err := v.checkStore(); err != nil {
			return err
		}
	}
	cow, err := v.devOf(cowName(name))
	if err != nil {
		return err
	}
	helper, err := v.devOf(v.originHelper())
	if err != nil {
		return err
	}
	snapT := snapshotTable(v.rec.Origin.Sectors, helper, cow, v.rec.Store)
	if v.rec.Mode == Update {
		if err := step("prepare:snapshot"); err != nil {
			return err
		}
		if err := v.ensure(name, snapT); err != nil {
			return fmt.Errorf("load %q: %w", name, err)
		}
		return v.prepared(phase)
	}
	originT := originTable(v.rec.Origin.Sectors, helper)
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if inf.Exists && inf.Live && !inf.Suspended {
		cur, err := v.m.k.table(name)
		if err != nil {
			return err
		}
		if sameTable(cur, originT) {
			if err := v.ensure(snapName(name), snapT); err != nil {
				return err
			}
			return v.prepared(phase)
		}
	}
	if !inf.Exists {
		if _, err := v.m.k.create(name); err != nil {
			return fmt.Errorf("create %q: %w", name, err)
		}
	}
	// Suspending NAME freezes its filesystem: this is the point in time the
	// snapshot captures.
	if err := step("prepare:suspend"); err != nil {
		return err
	}
	suspend := v.suspendIfNeeded
	if thaw != nil {
		suspend = v.suspendFrozenIfNeeded
	}
	if err := suspend(name); err != nil {
		return fmt.Errorf("suspend %q: %w", name, err)
	}
	if err := step("prepare:snapshot"); err != nil {
		return err
	}
	sinf, err := v.m.k.info(snapName(name))
	if err != nil {
		return err
	}
	if !sinf.Exists {
		if _, err := v.m.k.create(snapName(name)); err != nil {
			return fmt.Errorf("create %q: %w", snapName(name), err)
		}
	}
	if err := v.load(snapName(name), snapT); err != nil {
		return fmt.Errorf("load %q: %w", snapName(name), err)
	}
	if err := step("prepare:origin"); err != nil {
		return err
	}
	if err := v.load(name, originT); err != nil {
		return fmt.Errorf("load %q: %w", name, err)
	}
	if err := step("prepare:resume"); err != nil {
		return err
	}
	if err := v.m.k.resume(snapName(name)); err != nil {
		return fmt.Errorf("resume %q: %w", snapName(name), err)
	}
	if err := v.m.k.resume(name); err != nil {
		return fmt.Errorf("resume %q: %w", name, err)
	}
	if thaw != nil {
		if err := step("prepare:thaw"); err != nil {
			return err
		}
		if err := thaw(); err != nil {
			return err
		}
	}
	return v.prepared(phase)
}

// prepared records the end of prepare; after activate's rebuild it only
// clears the step the rebuild recorded.
func (v *volume) prepared(phase Phase) error {
	if phase != PhasePreparing {
		if v.rec.Step == "" {
			return nil
		}
		v.rec.Step, v.rec.Command = "", ""
		return v.save()
	}
	// The kernel wrote the store's header when it loaded the snapshot, and
	// a prepared store whose header reads as zeroed is refused later: make
	// it durable before the record says prepared (flush.go: through the
	// raw devices, not NAME-cow).
	if err := v.syncStore(); err != nil {
		return err
	}
	v.m.Log.Debug("store flushed", "volume", v.name())
	return v.settle(PhasePrepared, "prepare", fmt.Sprintf("%s mode, store %s, %d bytes, %d extents", v.rec.Mode, v.rec.Store.Path, v.rec.Store.Bytes, len(v.rec.Store.Segments)))
}

// undoPrepare takes the volume back to attached: NAME = linear DEV 0, no
// helper devices, no store file. Nothing of the origin is lost.
func (v *volume) undoPrepare() error {
	// A prepare killed while NAME's filesystem was frozen (seeding) left it
	// frozen: thaw it before anything waits on it (a plain suspend of NAME
	// fails on a frozen filesystem, deleting the store would hang). With
	// NAME suspended the thaw would wait on it: collapse resumes NAME
	// first, and the thaw follows.
	if err := v.thawAfterKill(); err != nil {
		return err
	}
	if err := v.collapse(); err != nil {
		return fmt.Errorf("restore %q: %w", v.name(), err)
	}
	if err := v.thawAfterKill(); err != nil {
		return err
	}
	if err := v.removeStack(); err != nil {
		return err
	}
	if err := v.releaseStore(); err != nil {
		return err
	}
	return v.settle(PhaseAttached, "prepare undone", "")
}
