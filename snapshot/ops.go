package snapshot

import (
	"context"
	"errors"
	"path/filepath"
	"strings"

	"fmt"
	"github.com/hashicorp/go-multierror"

	"github.com/snapctl/snapctl/fiemap"

	"github.com/snapctl/snapctl/merge"
	"os"
	"syscall"
	"time"
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
	AutoBytes    func(origin string, chunkSectors uint32) (uint64, error)
	MaxBytes     uint64 // cap for the checkpoint-mode auto size; 0 = none
	ChunkSectors uint32
	Overflow     string // "invalidate" (P) or "fail" (PO)
	// Backend is "fiemap" (map the file's extents on the raw device; the
	// default) or "loop" (a loop device over the file, for a filesystem
	// mounted directly on a partition).
	Backend string
	DryRun  bool
}

// Plan is what Prepare does (or, with DryRun, would do).
type Plan struct {
	Name       string            `json:"name"`
	Mode       Mode              `json:"mode"`
	StorePath  string            `json:"store_path"`
	StoreBytes uint64            `json:"store_bytes"`
	SizeReason string            `json:"size_reason"`
	ChunkBytes uint64            `json:"chunk_bytes"`
	Tables     map[string]string `json:"tables"` // device name → table text
	Extents    int               `json:"extents,omitempty"`
	DryRun     bool              `json:"dry_run"`
}

// reserve is what checkpoint-mode auto sizing leaves free on the store's
// filesystem: 5 % of it or 256 MiB, whichever is smaller.
func reserve(total uint64) uint64 { return min(total/20, 256<<20) }

// Prepare creates the store and builds the snapshot stack over the volume.
// An unattached volume is attached first. If anything fails, everything
// prepare did is undone and both errors are returned.
func (m *Manager) Prepare(o PrepareOptions) (*Plan, error) {
	if o.Mode == "" {
		o.Mode = Checkpoint
	}
	if o.Mode != Checkpoint && o.Mode != Update {
		return nil, fmt.Errorf("prepare %q: unknown mode %q (want checkpoint or update)", o.Name, o.Mode)
	}
	if o.Overflow == "" {
		o.Overflow = "invalidate"
	}
	if o.Overflow != "invalidate" && o.Overflow != "fail" {
		return nil, fmt.Errorf("prepare %q: unknown overflow policy %q (want fail or invalidate)", o.Name, o.Overflow)
	}
	if o.ChunkSectors == 0 {
		o.ChunkSectors = 8
	}
	if o.Backend == "" {
		o.Backend = "fiemap"
	}
	if o.Backend != "fiemap" && o.Backend != "loop" {
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
		plan, err := m.plan(nil, o)
		if err != nil || o.DryRun {
			return plan, err
		}
		if err := m.Attach(o.Name, o.Origin); err != nil {
			return nil, err
		}
		attachedHere = true
	}
	plan, err := m.prepareAttached(o)
	if err != nil && attachedHere {
		// The volume did not exist before: leave it so.
		if derr := m.Detach(o.Name); derr != nil {
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
func (m *Manager) sizeOnce(f func(origin string, chunkSectors uint32) (uint64, error), dropCache bool) func(string, uint32) (uint64, error) {
	var (
		done bool
		n    uint64
		err  error
	)
	return func(origin string, chunkSectors uint32) (uint64, error) {
		if !done {
			done = true
			n, err = f(origin, chunkSectors)
			if err == nil && dropCache {
				err = m.k.flushBuffers(origin)
			}
		}
		return n, err
	}
}

func (m *Manager) prepareAttached(o PrepareOptions) (*Plan, error) {
	v, err := m.open(o.Name)
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
			return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: fmt.Sprintf("the volume's origin is %s, not %s", v.rec.Origin.Path, o.Origin),
				Hint: "leave out --origin, or use another volume name for " + o.Origin}
		}
	}
	if err := v.checkOrigin(); err != nil {
		return nil, err
	}
	v.cleanup()
	plan, err := m.plan(v, o)
	if err != nil || o.DryRun {
		return plan, err
	}
	if err := v.prepare(o, plan); err != nil {
		err = fmt.Errorf("prepare %q: %w", o.Name, err)
		if uerr := v.undoPrepare(); uerr != nil {
			// Neither done nor undone: the record says preparing, and
			// activate undoes it once the cause is fixed.
			return nil, joinErr(err, &InterruptedError{Volume: o.Name, Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command, Err: uerr})
		}
		return nil, err
	}
	// Report the tables as the kernel now holds them.
	for d := range plan.Tables {
		if t, err := m.k.table(d); err == nil {
			plan.Tables[d] = t.String()
		}
	}
	return plan, nil
}

// plan checks the request and sizes the store; v is nil for a volume not
// attached yet (dry run only).
func (m *Manager) plan(v *volume, o PrepareOptions) (*Plan, error) {
	chunkBytes := uint64(o.ChunkSectors) * 512
	var origin Device
	if v != nil {
		origin = v.rec.Origin
	} else {
		if o.Origin == "" {
			return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: "the volume is not attached and no --origin was given",
				Hint: "give --origin DEV, or `snapctl attach " + o.Name + " --origin DEV` first"}
		}
		d, err := m.fs.devOf(o.Origin)
		if err != nil {
			return nil, fmt.Errorf("prepare %q: %w", o.Name, err)
		}
		origin = d
	}
	if origin.Sectors < uint64(o.ChunkSectors) {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: fmt.Sprintf("origin %s (%d bytes) is smaller than one chunk (%d bytes)", origin.Path, origin.Sectors*512, chunkBytes),
			Hint: "snapshot a larger device, or choose a smaller --chunk-size"}
	}
	if o.StorePath == "" {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: "no store path given", Hint: "give --store PATH on an ext4, xfs or f2fs filesystem"}
	}
	if err := fiemap.CheckStorePath(o.StorePath); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(o.StorePath); err == nil {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: fmt.Sprintf("store %s already exists (a file or a symbolic link)", o.StorePath),
			Hint: "choose a new --store path; remove the old file only if no volume uses it (`snapctl status`)"}
	}
	_, free, total, err := m.fs.fsOf(o.StorePath)
	if err != nil {
		return nil, fmt.Errorf("prepare %q: store %s: %w", o.Name, o.StorePath, err)
	}
	if fi, err := os.Stat(filepath.Dir(o.StorePath)); err == nil && fi.Mode().Perm()&0o002 != 0 {
		return nil, &RefusedError{Volume: o.Name, Op: "prepare", Reason: fmt.Sprintf("the store's directory %s is writable by everyone (%v): others could replace or remove the store", filepath.Dir(o.StorePath), fi.Mode()),
			Hint: "put the store in a directory only root can write, e.g. mkdir -m 700 DIR"}
	}
	if err := m.checkStateDir(o.Name, origin); err != nil {
		return nil, err
	}
	p := &Plan{Name: o.Name, Mode: o.Mode, StorePath: o.StorePath, ChunkBytes: chunkBytes, DryRun: o.DryRun, Tables: map[string]string{}}
	switch {
	case o.Bytes > 0:
		p.StoreBytes, p.SizeReason = o.Bytes, "as requested"
	case o.AutoBytes != nil:
		n, err := o.AutoBytes(origin.Path, o.ChunkSectors)
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
		return nil, fmt.Errorf("prepare %q: update mode needs --size BYTES, or --size auto with --changes or --new-image", o.Name)
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
	p.Tables[cowName(o.Name)] = fmt.Sprintf("linear segments over the extents of %s, resolved at allocation", o.StorePath)
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
		return &UnsafeStateDirError{Dir: m.Dir, Reason: fmt.Sprintf("is on the volume's origin (%s): a rollback would rewind the state record itself; use --state-dir on another filesystem", dev)}
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

func (v *volume) prepare(o PrepareOptions, p *Plan) error {
	v.rec.Mode = o.Mode
	fsDev, _, _, err := v.m.fs.fsOf(o.StorePath)
	if err != nil {
		return err
	}
	loop := o.Backend == "loop"
	if loop {
		inf, err := v.m.k.info(v.name())
		if err != nil {
			return err
		}
		if fsDev == v.rec.Origin.Dev || (inf.Exists && fsDev == inf.Dev) {
			return &StoreOnOriginError{Path: o.StorePath, Reason: "is on the volume itself; with --backend loop the store is written through its filesystem, which would copy-on-write the store into itself"}
		}
	}
	v.rec.Store = &Store{Path: o.StorePath, FSDev: fsDev, Bytes: p.StoreBytes, ChunkSectors: o.ChunkSectors, Backend: o.Backend, Overflow: o.Overflow}
	if err := v.step(PhasePreparing, "prepare:allocate"); err != nil {
		return err
	}
	ino, err := v.m.fs.allocate(o.StorePath, p.StoreBytes, o.ChunkSectors, !loop)
	if err != nil {
		return err
	}
	v.rec.Store.Inode = ino
	if err := v.save(); err != nil {
		return err
	}
	var segs []Segment
	if loop {
		segs, err = v.m.fs.loopSegments(o.StorePath, ino)
	} else {
		segs, err = v.m.fs.segments(o.StorePath, ino, o.ChunkSectors)
	}
	if err != nil {
		return err
	}
	for _, s := range segs {
		if s.Dev == v.rec.Origin.Dev && o.Mode == Update {
			return &StoreOnOriginError{Path: o.StorePath, Reason: "is on the origin; in update mode the origin is written only by the merge, so the store must be on another device"}
		}
	}
	v.rec.Store.Segments = segs
	p.Extents = len(segs)
	p.Tables[cowName(v.name())] = cowTable(v.rec.Store).String()
	if err := v.step(PhasePreparing, "prepare:cow"); err != nil {
		return err
	}
	if err := v.ensure(cowName(v.name()), cowTable(v.rec.Store)); err != nil {
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
func (v *volume) buildPrepared(phase Phase) error {
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
	if err := v.buildLower(); err != nil {
		return err
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
	if err := v.suspendIfNeeded(name); err != nil {
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
	return v.settle(PhasePrepared, "prepare", fmt.Sprintf("%s mode, store %s, %d bytes, %d extents", v.rec.Mode, v.rec.Store.Path, v.rec.Store.Bytes, len(v.rec.Store.Segments)))
}

// undoPrepare takes the volume back to attached: NAME = linear DEV 0, no
// helper devices, no store file. Nothing of the origin is lost.
func (v *volume) undoPrepare() error {
	if err := v.collapse(); err != nil {
		return fmt.Errorf("restore %q: %w", v.name(), err)
	}
	if err := v.removeStack(); err != nil {
		return err
	}
	if err := v.releaseStore(); err != nil {
		return err
	}
	return v.settle(PhaseAttached, "prepare undone", "")
}

// Commit keeps the change: drop in checkpoint mode, merge in update mode.
func (m *Manager) Commit(name string) error {
	v, err := m.open(name)
	if err != nil {
		return err
	}
	defer v.close()
	if v.rec.Mode == Update {
		return v.merge("commit", true)
	}
	return v.drop("commit")
}

// RollbackOptions modify Rollback.
type RollbackOptions struct {
	// AtNextActivate records the rollback for `snapctl activate` to do at
	// boot, before anything mounts the volume.
	AtNextActivate bool
	Wait           bool
}

// Rollback returns to the earlier content: merge in checkpoint mode, drop
// in update mode. The volume must not be open (its content jumps back).
func (m *Manager) Rollback(name string, o RollbackOptions) error {
	v, err := m.open(name)
	if err != nil {
		return err
	}
	defer v.close()
	if o.AtNextActivate {
		if v.rec.Phase != PhasePrepared {
			return &WrongPhaseError{Volume: name, Op: "rollback", Phase: v.rec.Phase, Mode: v.rec.Mode}
		}
		v.rec.Scheduled = "rollback"
		v.rec.event("rollback scheduled", "for the next activate")
		return v.save()
	}
	return v.rollback(o.Wait)
}

func (v *volume) rollback(wait bool) error {
	if v.rec.Mode == Update {
		return v.drop("rollback")
	}
	return v.merge("rollback", wait)
}

// Merge merges the store into the origin (the low-level verb: rollback in
// checkpoint mode, commit in update mode). With wait false it returns once
// the kernel has taken the merge over.
func (m *Manager) Merge(name string, wait bool) error {
	v, err := m.open(name)
	if err != nil {
		return err
	}
	defer v.close()
	return v.merge("merge", wait)
}

// Drop drops the snapshot (the low-level verb: commit in checkpoint mode,
// rollback in update mode).
func (m *Manager) Drop(name string) error {
	v, err := m.open(name)
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
	switch v.rec.Phase {
	case PhasePrepared, PhaseDropping:
	case PhaseAttached:
		return &WrongPhaseError{Volume: v.name(), Op: op, Phase: v.rec.Phase}
	default:
		return &InterruptedError{Volume: v.name(), Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	if err := v.checkOrigin(); err != nil {
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

// storeState reads the kernel's view of the snapshot before a merge.
func (v *volume) checkMergeable(op string) error {
	dev := v.name()
	if v.rec.Mode == Checkpoint {
		dev = snapName(v.name())
	}
	st, err := v.m.k.status(dev)
	if err != nil {
		return fmt.Errorf("%s %q: status of %q: %w", op, v.name(), dev, err)
	}
	if !st.ok() {
		return &StoreUnusableError{Volume: v.name(), State: st.State}
	}
	magic, valid, err := v.m.k.readHeader(cowName(v.name()))
	if err != nil {
		return fmt.Errorf("%s %q: read the store header: %w", op, v.name(), err)
	}
	if magic != snapMagic || valid != 1 {
		return &StoreUnusableError{Volume: v.name(), State: fmt.Sprintf("bad header: magic %#x, valid %d", magic, valid)}
	}
	return nil
}

// snapMagic is the persistent exception store's header magic ("SnAp").
const snapMagic = 0x70416e53

func (v *volume) merge(op string, wait bool) error {
	switch v.rec.Phase {
	case PhasePrepared, PhaseMerging:
	case PhaseAttached:
		return &WrongPhaseError{Volume: v.name(), Op: op, Phase: v.rec.Phase}
	default:
		return &InterruptedError{Volume: v.name(), Phase: v.rec.Phase, Step: v.rec.Step, Command: v.rec.Command}
	}
	if err := v.checkOrigin(); err != nil {
		return err
	}
	if v.rec.Phase == PhasePrepared {
		// A deactivated volume (or one not activated since boot) gets its
		// stack back first: the kernel's view of the store decides below.
		if err := v.buildPrepared(PhasePrepared); err != nil {
			return fmt.Errorf("%s %q: activate the stack: %w", op, v.name(), err)
		}
		if err := v.checkMergeable(op); err != nil {
			return err
		}
		if v.rec.Mode == Checkpoint {
			if n, err := v.openCount(); err != nil {
				return err
			} else if n > 0 {
				return &InUseError{Volume: v.name(), Device: mapperPath(v.name()), OpenCount: n, Op: op}
			}
		}
	}
	v.rec.Scheduled = "" // a scheduled rollback is now under way
	if err := v.step(PhaseMerging, "merge:handover"); err != nil {
		return err
	}
	done, err := v.handover()
	if err != nil {
		return fmt.Errorf("%s %q: hand over to snapshot-merge: %w", op, v.name(), err)
	}
	if !done && !wait {
		// A merge with nothing left (a small store) is finished now.
		if st, err := v.m.k.status(v.name()); err != nil || !st.merged() {
			v.rec.event(op, "merge handed over to the kernel")
			return v.save()
		}
	}
	if !done {
		if err := v.step(PhaseMerging, "merge:wait"); err != nil {
			return err
		}
		if err := v.waitMerged(); err != nil {
			return fmt.Errorf("%s %q: %w", op, v.name(), err)
		}
	}
	if err := v.step(PhaseMerging, "merge:collapse"); err != nil {
		return err
	}
	if err := v.collapse(); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	// The kernel merged through device-mapper, below the origin's own page
	// cache: drop what was read through the origin before (by snapctl's
	// sizing, by anyone), or buffered reads of it return the old content
	// until its last opener closes it. A failure leaves the step at
	// merge:collapse, and rerunning the command drops it again.
	if err := v.m.k.flushBuffers(v.rec.Origin.Path); err != nil {
		return fmt.Errorf("%s %q: %w", op, v.name(), err)
	}
	return v.finish(op, "merge")
}

// handover makes NAME a live snapshot-merge of the store, whatever the
// stack looks like now: a live snapshot(-origin) is swapped with both NAME
// and NAME-snap suspended, a missing stack (after a reboot) is rebuilt
// straight into the merge, a merge table is left running. done is true when
// NAME is already back to linear (the merge finished and NAME collapsed).
func (v *volume) handover() (done bool, err error) {
	name := v.name()
	lt, err := v.liveType(name)
	if err != nil {
		return false, err
	}
	if lt == "linear" {
		cur, err := v.m.k.table(name)
		if err != nil {
			return false, err
		}
		if sameTable(cur, linearTable(v.rec.Origin)) {
			return true, nil
		}
	}
	if err := v.buildLower(); err != nil {
		return false, err
	}
	cow, err := v.devOf(cowName(name))
	if err != nil {
		return false, err
	}
	helper, err := v.devOf(v.originHelper())
	if err != nil {
		return false, err
	}
	want := mergeTable(v.rec.Origin.Sectors, helper, cow, v.rec.Store)
	switch lt {
	case "snapshot-origin", "snapshot":
		if err := v.suspendIfNeeded(name); err != nil {
			return false, err
		}
		if err := v.suspendIfNeeded(snapName(name)); err != nil {
			return false, err
		}
		if err := v.load(name, want); err != nil {
			return false, err
		}
		if err := v.m.k.resume(name); err != nil {
			return false, err
		}
	case "snapshot-merge":
		if err := v.ensure(name, want); err != nil {
			return false, err
		}
		// "Merge failed" (an I/O error) sticks to the running target, and
		// the kernel refuses a second merge table over the same store while
		// it exists: remove NAME and build it again; the new target re-reads
		// the store and goes on from where the merge stopped.
		if st, err := v.m.k.status(name); err == nil && st.State == "merge failed" {
			if n, err := v.openCount(); err != nil {
				return false, err
			} else if n > 0 {
				return false, &InUseError{Volume: name, Device: mapperPath(name), OpenCount: n, Op: "restart the failed merge of"}
			}
			if err := v.m.k.remove(name); err != nil {
				return false, err
			}
			if err := v.ensure(name, want); err != nil {
				return false, err
			}
		}
	default:
		if err := v.ensure(name, want); err != nil {
			return false, err
		}
	}
	return false, v.removeIfExists(snapName(name))
}

// waitMerged polls NAME's status until the merge is complete.
func (v *volume) waitMerged() error {
	chunk := uint64(v.rec.Store.ChunkSectors)
	var first uint64
	for {
		st, err := v.m.k.status(v.name())
		if err != nil {
			return err
		}
		if !st.ok() {
			return &StoreUnusableError{Volume: v.name(), State: st.State}
		}
		left := st.Allocated - st.Metadata
		if first == 0 {
			first = left
		}
		if v.m.Progress != nil {
			v.m.Progress(MergeProgress{Volume: v.name(), Total: first, Remaining: left, ChunkBytes: chunk * 512})
		}
		if st.merged() {
			return nil
		}
		time.Sleep(v.m.Poll)
	}
}

// ActivateOptions modify Activate.
type ActivateOptions struct {
	Wait bool // wait for merges to finish (and finish the volume)
}

// Activate rebuilds each volume's stack from its record (all volumes when
// names is empty), finishes or undoes interrupted operations, and runs
// rollbacks scheduled with --at-next-activate. One volume's failure does
// not stop the others; all errors are returned together.
func (m *Manager) Activate(o ActivateOptions, names ...string) error {
	if len(names) == 0 {
		var err error
		if names, err = m.Names(); err != nil {
			return err
		}
	}
	var errs *multierror.Error
	for _, n := range names {
		v, err := m.open(n)
		if err != nil {
			errs = multierror.Append(errs, err)
			continue
		}
		err = m.activateOpts(v, o)
		v.close()
		if err != nil {
			errs = multierror.Append(errs, fmt.Errorf("activate %q: %w", n, err))
		}
	}
	if errs != nil && len(errs.Errors) == 1 {
		return errs.Errors[0]
	}
	return errs.ErrorOrNil()
}

func (m *Manager) activate(v *volume) error { return m.activateOpts(v, ActivateOptions{}) }

func (m *Manager) activateOpts(v *volume, o ActivateOptions) error {
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
		if strings.HasPrefix(v.rec.Step, "merge:offline") {
			// Finish the offline merge, then activate as for any attached
			// volume.
			if _, err := v.mergeOffline(context.Background(), merge.OfflineOptions{}); err != nil {
				return err
			}
			return v.ensure(v.name(), linearTable(v.rec.Origin))
		}
		return v.merge("merge", o.Wait)
	case PhaseGrowing:
		return v.finishGrow()
	case PhasePrepared:
		// After a reboot nothing exists: build the stack first, then run a
		// rollback scheduled with --at-next-activate on top of it.
		if err := v.buildPrepared(PhasePrepared); err != nil {
			return err
		}
		if v.rec.Scheduled == "rollback" {
			return v.rollback(o.Wait)
		}
		return nil
	}
	return fmt.Errorf("unknown phase %q", v.rec.Phase)
}

// Deactivate removes the volume's devices without changing its data or
// state (before shutdown, or before an offline merge); Activate brings them
// back. A merge under way stops and resumes at the next activate.
func (m *Manager) Deactivate(name string) error {
	v, err := m.open(name)
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
	if err := v.removeIfExists(name); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	if err := v.removeStack(); err != nil {
		return fmt.Errorf("deactivate %q: %w", name, err)
	}
	v.rec.event("deactivate", "")
	return v.save()
}

// Grow extends the store by at least by bytes, online: the file grows, its
// new extents are mapped and NAME-cow is reloaded with more segments (the
// kernel reads the store's size at every allocation).
func (m *Manager) Grow(name string, by uint64) error {
	v, err := m.open(name)
	if err != nil {
		return err
	}
	defer v.close()
	return v.grow(by)
}

func (v *volume) grow(by uint64) error {
	if v.rec.Phase == PhaseGrowing {
		return v.finishGrow()
	}
	if v.rec.Phase != PhasePrepared {
		return &WrongPhaseError{Volume: v.name(), Op: "grow", Phase: v.rec.Phase, Mode: v.rec.Mode}
	}
	if err := v.checkOrigin(); err != nil {
		return err
	}
	s := v.rec.Store
	if s.Backend == "loop" {
		return fmt.Errorf("grow %q: not supported with --backend loop (the loop device's size is fixed); prepare with a larger --size", v.name())
	}
	chunk := uint64(s.ChunkSectors) * 512
	newBytes := (s.Bytes + by + chunk - 1) / chunk * chunk
	_, free, _, err := v.m.fs.fsOf(s.Path)
	if err != nil {
		return fmt.Errorf("grow %q: %w", v.name(), err)
	}
	if newBytes-s.Bytes > free {
		return &NoSpaceError{Path: s.Path, Need: newBytes - s.Bytes, Free: free}
	}
	if err := v.step(PhaseGrowing, "grow:extend"); err != nil {
		return err
	}
	if err := v.m.fs.extend(s.Path, s.Inode, newBytes); err != nil {
		return joinErr(fmt.Errorf("grow %q: %w", v.name(), err), v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	segs, err := v.m.fs.segments(s.Path, s.Inode, s.ChunkSectors)
	if err != nil {
		return joinErr(fmt.Errorf("grow %q: %w", v.name(), err), v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	if !keepsPrefix(s.Segments, segs) {
		err := fmt.Errorf("grow %q: the store's existing extents moved while it grew", v.name())
		return joinErr(err, v.settle(PhasePrepared, "grow failed", err.Error()))
	}
	old := s.Bytes
	s.Segments, s.Bytes = segs, newBytes
	if err := v.step(PhaseGrowing, "grow:reload"); err != nil {
		return err
	}
	if err := v.finishGrow(); err != nil {
		return err
	}
	v.rec.event("grow", fmt.Sprintf("%d -> %d bytes, %d extents", old, newBytes, len(segs)))
	return v.save()
}

// finishGrow makes NAME-cow map the recorded segments. A grow interrupted
// before it recorded the new segments leaves the old ones, which still map
// the start of the (larger) file exactly.
func (v *volume) finishGrow() error {
	name := cowName(v.name())
	inf, err := v.m.k.info(name)
	if err != nil {
		return err
	}
	if inf.Exists {
		if err := v.load(name, cowTable(v.rec.Store)); err != nil {
			return fmt.Errorf("grow %q: load %q: %w", v.name(), name, err)
		}
		if err := v.suspendIfNeeded(name); err != nil {
			return err
		}
		if err := v.m.k.resume(name); err != nil {
			return fmt.Errorf("grow %q: resume %q: %w", v.name(), name, err)
		}
	}
	v.rec.Phase, v.rec.Step, v.rec.Command = PhasePrepared, "", ""
	if err := v.save(); err != nil {
		return err
	}
	return v.buildPrepared(PhasePrepared)
}

// keepsPrefix reports whether the new mapping maps every sector the old one
// mapped to the same place.
func keepsPrefix(old, cur []Segment) bool {
	type piece struct {
		dev       string
		off, left uint64
	}
	j := 0
	var c piece
	for _, o := range old {
		off, left := o.Offset, o.Length
		for left > 0 {
			if c.left == 0 {
				if j >= len(cur) {
					return false
				}
				c = piece{cur[j].Dev, cur[j].Offset, cur[j].Length}
				j++
			}
			if c.dev != o.Dev || c.off != off {
				return false
			}
			n := min(left, c.left)
			off, left = off+n, left-n
			c.off, c.left = c.off+n, c.left-n
		}
	}
	return true
}

// devString renders a Linux dev_t as "major:minor".
func devString(d uint64) string {
	major := (d>>8)&0xfff | (d>>32)&^0xfff
	minor := d&0xff | (d>>12)&^0xff
	return fmt.Sprintf("%d:%d", major, minor)
}
