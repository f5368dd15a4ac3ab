package bow

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// Device is the storage the engine runs on: a block device or an image
// file. The engine issues only block-aligned reads and writes to it, from
// many goroutines at once, so implementations must be safe for concurrent
// use. Flush makes every write that completed before the call durable.
// Discard tells the device a range is unused; its contents may then read
// as anything.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Discard(off, length int64) error
	Size() int64
}

// deviceName names dev in messages: its Name method if it has one.
func deviceName(dev Device) string {
	if n, ok := dev.(interface{ Name() string }); ok {
		return n.Name()
	}
	return "device"
}

// File is a Device over an open image file or block device.
type File struct {
	f     *os.File
	size  int64
	block bool
}

// OpenFile opens the image file or block device at path for reading and
// writing. A block device is opened exclusively (O_EXCL), so a mounted or
// otherwise claimed device is refused with EBUSY.
func OpenFile(path string) (*File, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	block := st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0
	if !block && !st.Mode().IsRegular() {
		return nil, fmt.Errorf("open %q: not a regular file or block device", path)
	}
	flags := os.O_RDWR
	if block {
		flags |= exclusiveFlag
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, fmt.Errorf("open %q: %w", path, err)
	}
	size := st.Size()
	if block {
		if size, err = blockDeviceSize(f); err != nil {
			f.Close()
			return nil, fmt.Errorf("open %q: %w", path, err)
		}
	}
	return &File{f: f, size: size, block: block}, nil
}

// Name returns the path the file was opened with.
func (d *File) Name() string { return d.f.Name() }

// Size returns the size in bytes, fixed when the file was opened.
func (d *File) Size() int64 { return d.size }

func (d *File) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.f.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		return n, fmt.Errorf("read %q at %d: %w", d.Name(), off, err)
	}
	return n, nil
}

func (d *File) WriteAt(p []byte, off int64) (int, error) {
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, fmt.Errorf("write %q at %d: %w", d.Name(), off, err)
	}
	return n, nil
}

// Flush makes completed writes durable (fdatasync).
func (d *File) Flush() error {
	if err := datasync(d.f); err != nil {
		return fmt.Errorf("flush %q: %w", d.Name(), err)
	}
	return nil
}

// Discard issues BLKDISCARD on a block device and punches a hole in a file.
func (d *File) Discard(off, length int64) error {
	var err error
	if d.block {
		err = blockDiscard(d.f, off, length)
	} else {
		err = punchHole(d.f, off, length)
	}
	if err != nil {
		return fmt.Errorf("discard %q at %d+%d: %w", d.Name(), off, length, err)
	}
	return nil
}

// Close closes the file.
func (d *File) Close() error { return d.f.Close() }

// Mem is a Device held in memory, for tests and experiments. Discarded
// ranges read as zeros.
type Mem struct {
	mu   sync.RWMutex
	data []byte
}

// NewMem returns a zero-filled in-memory device of size bytes.
func NewMem(size int64) *Mem { return &Mem{data: make([]byte, size)} }

// NewMemFrom returns an in-memory device holding a copy of image.
func NewMemFrom(image []byte) *Mem { return &Mem{data: append([]byte(nil), image...)} }

func (m *Mem) Name() string { return "memory" }
func (m *Mem) Size() int64  { return int64(len(m.data)) }

func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("read memory at %d+%d: %w", off, len(p), io.ErrUnexpectedEOF)
	}
	return copy(p, m.data[off:]), nil
}

func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		return 0, fmt.Errorf("write memory at %d+%d: %w", off, len(p), io.ErrShortWrite)
	}
	return copy(m.data[off:], p), nil
}

func (m *Mem) Flush() error { return nil }

func (m *Mem) Discard(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || length < 0 || off+length > int64(len(m.data)) {
		return fmt.Errorf("discard memory at %d+%d: out of range", off, length)
	}
	clear(m.data[off : off+length])
	return nil
}

// Bytes returns a copy of the contents.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}
