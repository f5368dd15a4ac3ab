package snapshot

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// modelKernel is device-mapper as the lifecycle sees it, in memory: devices
// with a live and an inactive table, suspended or not. A snapshot-merge
// table reads as merged at once, unless merging is set. It records the calls that change
// something, in order, as "op name [target type]".
type modelKernel struct {
	devs  map[string]*modelDev
	next  int
	calls []string
	// merging keeps a snapshot-merge table unfinished, one data chunk left.
	merging bool
	// opens, mounted and written are what the model reports of a device's
	// openers, mounts and write count, by device name; a test sets them.
	opens   map[string]int32
	mounted map[string]deviceMounts
	written map[string]writeCounts
	// onCopy, when set, runs during a userspace copy (a writer racing it).
	onCopy func()
	// copyErr, when set, fails the userspace copy before it writes.
	copyErr error
}

type modelDev struct {
	dev            string
	live, inactive dmtable.Table
	suspended      bool
}

func newModelKernel() *modelKernel {
	return &modelKernel{devs: map[string]*modelDev{}, opens: map[string]int32{}, mounted: map[string]deviceMounts{}, written: map[string]writeCounts{}}
}

func (k *modelKernel) get(name string) (*modelDev, error) {
	d, ok := k.devs[name]
	if !ok {
		return nil, fmt.Errorf("device %q: %w", name, syscall.ENXIO)
	}
	return d, nil
}

func (k *modelKernel) info(name string) (devInfo, error) {
	d, ok := k.devs[name]
	if !ok {
		return devInfo{}, nil
	}
	return devInfo{Exists: true, Suspended: d.suspended, Live: d.live != nil, Inactive: d.inactive != nil, Dev: d.dev, OpenCount: k.opens[name]}, nil
}

// devName is the name of the model device numbered dev.
func (k *modelKernel) devName(dev string) string {
	for n, d := range k.devs {
		if d.dev == dev {
			return n
		}
	}
	return ""
}

func (k *modelKernel) copyStore(ctx context.Context, origin string, store []Segment, live bool, opts merge.OfflineOptions) (*merge.OfflineResult, error) {
	how := "exclusive"
	if live {
		how = "shared"
	}
	if k.copyErr != nil {
		return nil, k.copyErr
	}
	k.calls = append(k.calls, "copy "+origin+" "+how)
	if opts.Progress != nil {
		opts.Progress(4096, 4096)
	}
	if k.onCopy != nil {
		k.onCopy()
	}
	return &merge.OfflineResult{Store: &merge.Store{}, Total: 4096, Copied: 4096}, ctx.Err()
}

func (k *modelKernel) invalidateStore([]Segment) error {
	k.calls = append(k.calls, "invalidate store")
	return nil
}

func (k *modelKernel) setReadOnly(name string, ro bool) error {
	if _, err := k.get(name); err != nil {
		return err
	}
	k.calls = append(k.calls, fmt.Sprintf("readonly %s %v", name, ro))
	return nil
}

func (k *modelKernel) mounts(dev string) (deviceMounts, error) {
	return k.mounted[k.devName(dev)], nil
}

func (k *modelKernel) writeCounts(dev string) (writeCounts, error) {
	return k.written[k.devName(dev)], nil
}

func (k *modelKernel) create(name string) (string, error) {
	if _, ok := k.devs[name]; ok {
		return "", fmt.Errorf("create %q: %w", name, syscall.EEXIST)
	}
	d := &modelDev{dev: fmt.Sprintf("4000:%d", k.next)} // a major no real device has
	k.next++
	k.devs[name] = d
	k.calls = append(k.calls, "create "+name)
	return d.dev, nil
}

func (k *modelKernel) load(name string, t dmtable.Table) error {
	d, err := k.get(name)
	if err != nil {
		return err
	}
	d.inactive = t
	k.calls = append(k.calls, "load "+name+" "+t[0].Type)
	return nil
}

func (k *modelKernel) clearInactive(name string) error {
	d, err := k.get(name)
	if err != nil {
		return err
	}
	d.inactive = nil
	return nil
}

func (k *modelKernel) suspend(name string) error {
	d, err := k.get(name)
	if err != nil {
		return err
	}
	d.suspended = true
	k.calls = append(k.calls, "suspend "+name)
	return nil
}

func (k *modelKernel) resume(name string) error {
	d, err := k.get(name)
	if err != nil {
		return err
	}
	if d.inactive != nil {
		d.live, d.inactive = d.inactive, nil
	}
	d.suspended = false
	k.calls = append(k.calls, "resume "+name)
	return nil
}

func (k *modelKernel) remove(name string) error {
	if _, err := k.get(name); err != nil {
		return err
	}
	delete(k.devs, name)
	k.calls = append(k.calls, "remove "+name)
	return nil
}

func (k *modelKernel) table(name string) (dmtable.Table, error) {
	d, err := k.get(name)
	if err != nil {
		return nil, err
	}
	return d.live, nil
}

func (k *modelKernel) status(name string) (dmtable.SnapshotStatus, error) {
	d, err := k.get(name)
	if err != nil {
		return dmtable.SnapshotStatus{}, err
	}
	if len(d.live) != 1 {
		return dmtable.SnapshotStatus{}, fmt.Errorf("status of %q: %d targets, want 1", name, len(d.live))
	}
	switch d.live[0].Type {
	case "snapshot":
		return dmtable.SnapshotStatus{State: dmtable.SnapshotActive, Allocated: 48, Total: 816, Metadata: 16}, nil
	case "snapshot-merge":
		if k.merging {
			return dmtable.SnapshotStatus{State: dmtable.SnapshotActive, Allocated: 24, Total: 816, Metadata: 16}, nil
		}
		return dmtable.SnapshotStatus{State: dmtable.SnapshotActive, Allocated: 16, Total: 816, Metadata: 16}, nil
	}
	return dmtable.SnapshotStatus{}, fmt.Errorf("status of %q: a %s target", name, d.live[0].Type)
}

func (k *modelKernel) zeroHeader(name string, n int) error { _, err := k.get(name); return err }

func (k *modelKernel) readHeader(name string) (merge.Header, error) {
	_, err := k.get(name)
	return merge.Header{Magic: merge.Magic, Valid: true, Version: merge.Version, ChunkSize: 8}, err
}

func (k *modelKernel) flushBuffers(path string) error {
	k.calls = append(k.calls, "flush "+path)
	return nil
}

// modelOrigin is the origin block device of the model.
var modelOrigin = Device{Path: "/dev/model-origin", Dev: "98:0", Sectors: 131072}

// modelFS is the store's filesystem side: a store file that is really
// created (empty) in a test directory, on a device other than the origin.
type modelFS struct{}

func (modelFS) devOf(path string) (Device, error) {
	if path != modelOrigin.Path {
		return Device{}, fmt.Errorf("stat %s: %w", path, syscall.ENOENT)
	}
	return modelOrigin, nil
}

func (modelFS) exclusive(string) error { return nil }

func (modelFS) fsOf(string) (string, uint64, uint64, error) { return "98:16", 1 << 30, 2 << 30, nil }

func (modelFS) allocate(path string, bytes uint64, chunkSectors uint32, immutable bool) (uint64, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	return 12, f.Close()
}

func (modelFS) loopSegments(string, uint64) ([]Segment, error) {
	return nil, fmt.Errorf("no loop devices in the model")
}

func (modelFS) extend(string, uint64, uint64) error { return nil }

func (modelFS) segments(path string, inode uint64, chunkSectors uint32) ([]Segment, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, err
	}
	return []Segment{{Dev: "98:16", Offset: 2048, Length: 816}}, nil
}

func (modelFS) release(s Store) (bool, error) { return true, os.Remove(s.Path) }

func (f modelFS) removePartial(s Store) (bool, error) { return f.release(s) }

// newModelManager is a Manager over the model, with its state directory
// and store directory in t.TempDir().
func newModelManager(t *testing.T) (*Manager, *modelKernel, string) {
	t.Helper()
	m, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	k := newModelKernel()
	m.k, m.fs, m.Poll = loggedKernel{kernel: k, m: m}, modelFS{}, 0
	return m, k, t.TempDir()
}

// callsSince returns the calls from index i on, joined for messages.
func (k *modelKernel) callsSince(i int) string { return strings.Join(k.calls[i:], "; ") }
