package snapshot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/dmtable"
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
	return l.done("DM_TABLE_LOAD", name, l.kernel.load(name, t), "table", strings.TrimSpace(t.String()))
}
func (l loggedKernel) clearInactive(name string) error {
	return l.done("DM_TABLE_CLEAR", name, l.kernel.clearInactive(name))
}
func (l loggedKernel) suspend(name string) error {
	return l.done("DM_DEV_SUSPEND", name, l.kernel.suspend(name))
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

// directBuffer is an anonymous mapping: page aligned, as O_DIRECT needs.
func directBuffer(n int) ([]byte, error) {
	return syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
}

func (dmKernel) zeroHeader(name string, n int) error {
	buf, err := directBuffer(n)
	if err != nil {
		return err
	}
	defer syscall.Munmap(buf)
	f, err := os.OpenFile(mapperPath(name), os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("write %s: %w", mapperPath(name), err)
	}
	return f.Sync()
}

func (dmKernel) readHeader(name string) (uint32, uint32, error) {
	buf, err := directBuffer(4096)
	if err != nil {
		return 0, 0, err
	}
	defer syscall.Munmap(buf)
	f, err := os.OpenFile(mapperPath(name), os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	if _, err := f.ReadAt(buf[:512], 0); err != nil {
		return 0, 0, fmt.Errorf("read %s: %w", mapperPath(name), err)
	}
	return binary.LittleEndian.Uint32(buf[0:]), binary.LittleEndian.Uint32(buf[4:]), nil
}
