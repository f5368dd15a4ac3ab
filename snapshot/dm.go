package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// dmKernel is the real kernel: dmtable's device-mapper ioctl client.
type dmKernel struct{}

// loggedKernel logs every device-mapper call that changes something, with
// the device, the table and the outcome (snapctl -v).
type loggedKernel struct {
	kernel
	m *Manager // its Log, as set by the caller after Open
}

func (l loggedKernel) done(op, name string, err error, attrs ...any) error {
	attrs = append([]any{"op", op, "device", name}, attrs...)
	if err != nil {
		l.m.Log.Debug("ioctl failed", append(attrs, "err", err)...)
	} else {
		l.m.Log.Debug("ioctl", attrs...)
	}
	return err
}

func (l loggedKernel) create(name string) (string, error) {
	dev, err := l.kernel.create(name)
	return dev, l.done("DM_DEV_CREATE", name, err, "dev", dev)
}
func (l loggedKernel) load(name string, t dmtable.Table) error {
	err := l.kernel.load(name, t)
	if !l.m.Log.Enabled(context.Background(), slog.LevelDebug) {
		return err
	}
	return l.done("DM_TABLE_LOAD", name, err, "targets", len(t), "table", logTable(t))
}

// logTable is t's text for the log: in full up to logTargets targets; a
// store's table can have 50,000, so a longer one is its first and last
// targets.
func logTable(t dmtable.Table) string {
	if len(t) <= logTargets {
		return strings.TrimSpace(t.String())
	}
	return fmt.Sprintf("%s ... %s", t[0], t[len(t)-1])
}

const logTargets = 16

func (l loggedKernel) clearInactive(name string) error {
	return l.done("DM_TABLE_CLEAR", name, l.kernel.clearInactive(name))
}
func (l loggedKernel) suspend(name string) error {
	return l.done("DM_DEV_SUSPEND", name, l.kernel.suspend(name))
}
func (l loggedKernel) suspendNoLockfs(name string) error {
	return l.done("DM_DEV_SUSPEND (skip lockfs)", name, l.kernel.suspendNoLockfs(name))
}
func (l loggedKernel) resume(name string) error {
	return l.done("DM_DEV_SUSPEND (resume)", name, l.kernel.resume(name))
}
func (l loggedKernel) remove(name string) error {
	return l.done("DM_DEV_REMOVE", name, l.kernel.remove(name))
}
func (l loggedKernel) flushBuffers(path string) error {
	return l.done("BLKFLSBUF", path, l.kernel.flushBuffers(path))
}

func (l loggedKernel) setReadOnly(name string, ro bool) error {
	return l.done("BLKROSET", name, l.kernel.setReadOnly(name, ro), "read_only", ro)
}
func (l loggedKernel) invalidateStore(store []piece) error {
	return l.done("invalidate store", fmt.Sprintf("%d segments", len(store)), l.kernel.invalidateStore(store))
}

func (dmKernel) info(name string) (devInfo, error) {
	inf, err := dmtable.Info(name)
	if errors.Is(err, syscall.ENXIO) {
		return devInfo{}, nil
	}
	if err != nil {
		return devInfo{}, err
	}
	return devInfo{Exists: true, Suspended: inf.Suspended, Live: inf.LiveTable, Inactive: inf.InactiveTable,
		OpenCount: inf.OpenCount, Dev: inf.Dev.String()}, nil
}

func (dmKernel) create(name string) (string, error) {
	d, err := dmtable.Create(name, "")
	if err != nil {
		return "", err
	}
	return d.String(), nil
}

func (dmKernel) load(name string, t dmtable.Table) error { return dmtable.Load(name, t) }
func (dmKernel) clearInactive(name string) error         { return dmtable.ClearInactive(name) }
func (dmKernel) suspend(name string) error {
	return dmtable.Suspend(name, dmtable.SuspendOptions{})
}
func (dmKernel) suspendNoLockfs(name string) error {
	return dmtable.Suspend(name, dmtable.SuspendOptions{NoLockFS: true})
}
func (dmKernel) resume(name string) error                 { return dmtable.Resume(name) }
func (dmKernel) remove(name string) error                 { return dmtable.Remove(name) }
func (dmKernel) table(name string) (dmtable.Table, error) { return dmtable.ReadTable(name) }
func (dmKernel) flushBuffers(path string) error           { return dmtable.FlushBuffers(path) }

func (dmKernel) status(name string) (dmtable.SnapshotStatus, error) {
	sts, err := dmtable.Status(name)
	if err != nil {
		return dmtable.SnapshotStatus{}, err
	}
	if len(sts) != 1 {
		return dmtable.SnapshotStatus{}, fmt.Errorf("status of %q: %d targets, want 1", name, len(sts))
	}
	st, err := dmtable.ParseSnapshotStatus(sts[0].Status)
	if err != nil {
		return dmtable.SnapshotStatus{}, fmt.Errorf("status of %q: %w", name, err)
	}
	return st, nil
}

// zeroHeader and readHeader go through merge's raw device access (O_DIRECT,
// aligned buffers), which owns the store's format: the header must come
// from the device, not from a page cache that device-mapper writes beneath.

func (dmKernel) zeroHeader(name string, n int) error {
	r, err := merge.OpenRaw(mapperPath(name), merge.OpenWrite)
	if err != nil {
		return err
	}
	// No fsync here: a flush of NAME-cow goes to every segment of a
	// fragmented store. The write has reached the raw device when it
	// returns (O_DIRECT), so the snapshot loaded next reads the zeroes;
	// prepare flushes the raw devices once at its end, and a prepare cut
	// short before that is undone, store and all.
	if _, err := r.WriteAt(make([]byte, n), 0); err != nil {
		return errors.Join(fmt.Errorf("write %s: %w", mapperPath(name), err), r.Close())
	}
	return r.Close()
}

func (dmKernel) readHeader(name string) (merge.Header, error) {
	r, err := merge.OpenRaw(mapperPath(name), 0)
	if err != nil {
		return merge.Header{}, err
	}
	defer r.Close()
	h, err := merge.ReadHeader(r, r.Size())
	if err != nil {
		return h, fmt.Errorf("%s: %w", mapperPath(name), err)
	}
	return h, nil
}

// rawSegments turns the store's recorded segments into paths of their raw
// devices, for a merge that reads the store beneath its filesystem.
func rawSegments(store []piece) ([]merge.Segment, error) {
	segs := make([]merge.Segment, 0, len(store))
	// Each device is looked up once (in sysfs and /dev): a fragmented
	// store has thousands of segments, usually all on one device.
	paths := map[string]string{}
	for _, s := range store {
		if s.Zero {
			segs = append(segs, merge.Segment{Zero: true, Length: int64(s.Length) * 512})
			continue
		}
		p, ok := paths[s.Dev]
		if !ok {
			maj, min, err := dmtable.ParseDevNum(s.Dev)
			if err != nil {
				return nil, err
			}
			if p, err = dmtable.PathByDev(maj, min); err != nil {
				return nil, fmt.Errorf("store device %s: %w", s.Dev, err)
			}
			paths[s.Dev] = p
		}
		segs = append(segs, merge.Segment{Path: p, Offset: int64(s.Offset) * 512, Length: int64(s.Length) * 512})
	}
	return segs, nil
}

func (dmKernel) copyStore(ctx context.Context, origin string, store []piece, live bool, opts merge.OfflineOptions) (_ *merge.OfflineResult, err error) {
	segs, err := rawSegments(store)
	if err != nil {
		return nil, err
	}
	if !live {
		return merge.OfflinePaths(ctx, origin, segs, opts)
	}
	// Device-mapper holds the origin (the snapshot's origin helper maps
	// it), so it cannot be opened exclusively; nothing writes it while the
	// snapshot is live in update mode.
	o, err := merge.OpenRaw(origin, merge.OpenWrite|merge.OpenDirect)
	if err != nil {
		return nil, fmt.Errorf("open origin: %w", err)
	}
	defer func() { err = errors.Join(err, o.Close()) }()
	s, err := merge.OpenSegments(segs, merge.OpenDirect)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	return merge.Offline(ctx, o, s, opts)
}

func (dmKernel) invalidateStore(store []piece) (err error) {
	segs, err := rawSegments(store)
	if err != nil {
		return err
	}
	s, err := merge.OpenSegments(segs, merge.OpenDirect|merge.OpenWrite)
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	return merge.Invalidate(s)
}

func (dmKernel) setReadOnly(name string, ro bool) error {
	return dmtable.SetReadOnly(mapperPath(name), ro)
}

func (dmKernel) mounts(dev string) (deviceMounts, error) { return mountsOf(dev) }

func (dmKernel) writeCounts(dev string) (writeCounts, error) { return writeCountsOf(dev) }
