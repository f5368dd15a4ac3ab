package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/snapctl/snapctl/internal/crashhook"
)

// Manager runs volume operations against one state directory.
type Manager struct {
	Dir string
	// Command is the command line recorded as the holder of a volume and as
	// the starter of its operations, for messages to other snapctl runs.
	Command string
	Log     *slog.Logger
	// Poll is how often a merge's status is read; the kernel raises no event
	// for merge completion.
	Poll time.Duration
	// Progress, if set, is called while a merge is waited for.
	Progress func(MergeProgress)

	k  kernel
	fs storeFS
}

// MergeProgress is one reading of a merge under way.
type MergeProgress struct {
	Volume     string
	Total      uint64 // data sectors to merge when the wait began
	Remaining  uint64 // data sectors not yet merged
	ChunkBytes uint64
}

// New opens (creating it 0700 if needed) the state directory dir.
func New(dir string) (*Manager, error) { return Open(dir, true) }

// Open opens the state directory dir; with create false a missing
// directory is not created (a dry run changes nothing), and only a
// dry-run prepare of a volume without a record works on it.
func Open(dir string, create bool) (*Manager, error) {
	if _, err := os.Stat(dir); create || err == nil {
		if err := openStateDir(dir); err != nil {
			return nil, err
		}
	}
	m := &Manager{Dir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Poll: 100 * time.Millisecond, fs: fileStore{}}
	m.k = loggedKernel{kernel: dmKernel{}, m: m}
	return m, nil
}

// volume is a locked volume with its record.
type volume struct {
	m   *Manager
	rec *Record
	lk  *volumeLock
}

// lock takes a volume's lock; a cancelled ctx takes nothing.
func (m *Manager) lock(ctx context.Context, name string) (*volume, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := CheckName(name); err != nil {
		return nil, err
	}
	lk, err := lockVolume(m.Dir, name, m.Command)
	if err != nil {
		return nil, err
	}
	return &volume{m: m, lk: lk}, nil
}

// open locks a volume and reads its record.
func (m *Manager) open(ctx context.Context, name string) (*volume, error) {
	v, err := m.lock(ctx, name)
	if err != nil {
		return nil, err
	}
	rec, err := readRecord(m.Dir, name)
	if err != nil {
		v.close()
		return nil, err
	}
	v.rec = rec
	return v, nil
}

// close unlocks the volume; a volume left without a record (unknown, or
// refused before it was attached) keeps no lock file either.
func (v *volume) close() {
	if _, err := os.Stat(recordPath(v.m.Dir, v.lk.name)); errors.Is(err, os.ErrNotExist) {
		os.Remove(filepath.Join(v.m.Dir, v.lk.name+".lock"))
	}
	v.lk.unlock()
}

func (v *volume) name() string { return v.rec.Name }

func (v *volume) save() error { return writeRecord(v.m.Dir, v.rec) }

// step records, before acting, that the operation is about to run step in
// phase (write-ahead); then gives the crash-test hook its chance.
func (v *volume) step(phase Phase, step string) error {
	v.rec.Phase, v.rec.Step = phase, step
	if phase.Busy() && v.rec.Command == "" {
		v.rec.Command = v.m.Command
	}
	if err := v.save(); err != nil {
		return err
	}
	v.m.Log.Debug("state", "volume", v.name(), "phase", phase, "step", step)
	crashhook.Point(step)
	return nil
}

// settle records a stable phase at the end of an operation.
func (v *volume) settle(phase Phase, event, detail string) error {
	v.rec.Phase, v.rec.Step, v.rec.Command = phase, "", ""
	v.rec.event(event, detail)
	return v.save()
}

// checkOrigin verifies that the recorded origin path still names the
// recorded device with the recorded size.
func (v *volume) checkOrigin() error {
	rec := v.rec.Origin
	now, err := v.m.fs.devOf(rec.Path)
	if err != nil {
		return fmt.Errorf("volume %q: origin: %w", v.name(), err)
	}
	if now.Dev != rec.Dev || now.Sectors != rec.Sectors || (rec.ID != "" && now.ID != rec.ID) {
		return &DeviceChangedError{Volume: v.name(), Path: rec.Path,
			Recorded: describeDev(rec), Now: describeDev(now)}
	}
	return nil
}

func describeDev(d Device) string {
	s := fmt.Sprintf("%s, %d sectors", d.Dev, d.Sectors)
	if d.ID != "" {
		s += ", " + d.ID
	}
	return s
}

// checkFree refuses an origin that something holds exclusively, unless it
// is the volume's own device-mapper stack that holds it.
func (v *volume) checkFree() error {
	if inf, err := v.m.k.info(v.name()); err != nil || inf.Exists {
		return err
	}
	for _, d := range []string{realName(v.name()), baseName(v.name())} {
		if inf, err := v.m.k.info(d); err != nil || inf.Exists {
			return err
		}
	}
	if err := v.m.fs.exclusive(v.rec.Origin.Path); err != nil {
		return &OriginBusyError{Volume: v.name(), Path: v.rec.Origin.Path, Err: err}
	}
	return nil
}

// Attach creates /dev/mapper/NAME as a linear map of origin, so that a
// filesystem can be mounted on it and snapshotted live later. Attaching an
// attached volume again is a no-op.
func (m *Manager) Attach(ctx context.Context, name, origin string) error {
	v, err := m.lock(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	rec, err := readRecord(m.Dir, name)
	var unknown *UnknownVolumeError
	switch {
	case errors.As(err, &unknown):
		if err := m.checkNotGroup(name); err != nil {
			return err
		}
		d, err := m.fs.devOf(origin)
		if err != nil {
			return fmt.Errorf("attach %q: %w", name, err)
		}
		v.rec = &Record{Name: name, Phase: PhaseAttached, Origin: d}
	case err != nil:
		return err
	default:
		v.rec = rec
		if rec.Origin.Path != origin {
			if d, err := m.fs.devOf(origin); err != nil || d.Dev != rec.Origin.Dev {
				return &RefusedError{Volume: name, Op: "attach", Kind: RefusedOtherOrigin, Device: origin,
					Reason: fmt.Sprintf("the volume is attached to %s, not %s", rec.Origin.Path, origin)}
			}
		}
		if rec.Phase != PhaseAttached {
			return m.activate(ctx, v)
		}
	}
	if err := v.checkOrigin(); err != nil {
		return err
	}
	if err := v.checkFree(); err != nil {
		return err
	}
	if err := v.ensure(name, linearTable(v.rec.Origin)); err != nil {
		return fmt.Errorf("attach %q: %w", name, err)
	}
	if len(v.rec.History) == 0 {
		v.rec.event("attach", v.rec.Origin.Path)
	}
	return v.save()
}

// Detach forgets an attached volume: it removes /dev/mapper/NAME (which must
// not be open) and the state record.
func (m *Manager) Detach(ctx context.Context, name string) error {
	v, err := m.open(ctx, name)
	if err != nil {
		return err
	}
	defer v.close()
	if v.rec.Phase != PhaseAttached {
		return &WrongPhaseError{Volume: name, Op: "detach", Phase: v.rec.Phase, Mode: v.rec.Mode}
	}
	if err := v.removeIfExists(name); err != nil {
		return fmt.Errorf("detach %q: %w", name, err)
	}
	if err := os.Remove(recordPath(m.Dir, name)); err != nil {
		return fmt.Errorf("detach %q: %w", name, err)
	}
	os.Remove(filepath.Join(m.Dir, name+".lock"))
	return nil
}

// Names lists the volumes with a state record, sorted.
func (m *Manager) Names() ([]string, error) {
	ents, err := os.ReadDir(m.Dir)
	if err != nil {
		return nil, fmt.Errorf("list volumes in %s: %w", m.Dir, err)
	}
	var names []string
	for _, e := range ents {
		// NAME.merge-progress.json is the progress of NAME's userspace
		// merge, not a volume.
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(n, ".") && !strings.HasSuffix(n, progressSuffix) {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// joinErr keeps both the operation's error and the error of undoing it.
func joinErr(err, undo error) error {
	if undo == nil {
		return err
	}
	return errors.Join(err, fmt.Errorf("undo: %w", undo))
}
