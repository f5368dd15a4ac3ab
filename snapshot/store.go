package snapshot

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/internal/atomicfile"
)

// fileStore is the real storeFS: fallocate, FIEMAP, and resolution of the
// extents down the DM linear stack under the file's filesystem.
type fileStore struct{}

func (fileStore) devOf(path string) (Device, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return Device{}, fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		return Device{}, fmt.Errorf("%s is not a block device", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return Device{}, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return Device{}, fmt.Errorf("size of %s: %w", path, err)
	}
	dev := devString(st.Rdev)
	return Device{Path: path, Dev: dev, Sectors: uint64(size) / 512, ID: identity(dev)}, nil
}

// identity is what sysfs says identifies the block device dev beyond its
// number: a loop device's backing file, a device-mapper device's uuid (or
// name), a disk's WWID or serial; for a partition, its number and start on
// its disk plus the disk's identity. Empty when sysfs says nothing (a
// virtual disk without serial): then only the number and size identify it.
func identity(dev string) string {
	dir, err := filepath.EvalSymlinks("/sys/dev/block/" + dev)
	if err != nil {
		return ""
	}
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b))
	}
	if part := read("partition"); part != "" {
		parent, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "dev"))
		if err != nil {
			return ""
		}
		return fmt.Sprintf("partition %s at sector %s of {%s}", part, read("start"), identity(strings.TrimSpace(string(parent))))
	}
	for _, k := range []struct{ file, label string }{
		{"loop/backing_file", "loop over "}, {"dm/uuid", "dm uuid "}, {"dm/name", "dm name "},
		{"device/wwid", "wwid "}, {"wwid", "wwid "}, {"device/serial", "serial "}, {"serial", "serial "},
	} {
		if v := read(k.file); v != "" {
			return k.label + v
		}
	}
	return ""
}

func (fileStore) exclusive(path string) error {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_EXCL|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	return syscall.Close(fd)
}

func (fileStore) fsOf(path string) (string, uint64, uint64, error) {
	dir := filepath.Dir(path)
	fs, err := fiemap.StatFS(dir)
	if err != nil {
		return "", 0, 0, err
	}
	if err := fiemap.CheckFSType(dir, fs.Magic); err != nil {
		return "", 0, 0, err
	}
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(dir, &sfs); err != nil {
		return "", 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return fs.Dev, sfs.Bavail * uint64(sfs.Bsize), sfs.Blocks * uint64(sfs.Bsize), nil
}

func (fileStore) allocate(path string, bytes uint64, chunkSectors uint32, immutable bool) (uint64, error) {
	f, err := fiemap.Allocate(path, bytes, fiemap.AllocateOptions{ChunkSize: uint64(chunkSectors) * 512})
	if err != nil {
		return 0, err
	}
	defer f.Close()
	ino, err := inodeOf(f)
	if err != nil {
		return 0, err
	}
	if !immutable {
		return ino, f.Sync()
	}
	// Immutable: nothing may write, truncate, move or delete the store's
	// blocks while the kernel writes them through the raw device.
	if err := fiemap.SetImmutable(f, true); err != nil {
		return ino, err
	}
	// The flag is inode metadata: fsync commits it, so a power cut cannot
	// bring the store back writable (the check before the store is mapped
	// again would then refuse it, with a merge perhaps under way).
	if err := f.Sync(); err != nil {
		return ino, fmt.Errorf("sync store %s: %w", path, err)
	}
	return ino, nil
}

func inodeOf(f *os.File) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return st.Ino, nil
}

// openStore opens the store file and checks it is the recorded inode.
func openStore(path string, inode uint64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	ino, err := inodeOf(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if ino != inode {
		f.Close()
		return nil, fmt.Errorf("store %s is inode %d, the volume's store was inode %d: it was replaced", path, ino, inode)
	}
	return f, nil
}

func (fileStore) extend(path string, inode, bytes uint64) error {
	f, err := openStore(path, inode)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fiemap.SetImmutable(f, false); err != nil {
		return err
	}
	// fallocate needs a writable descriptor.
	w, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_WRONLY, 0)
	if err == nil {
		err = syscall.Fallocate(int(w.Fd()), 0, 0, int64(bytes))
		if err == nil {
			err = w.Sync()
		}
		w.Close()
	}
	if ierr := fiemap.SetImmutable(f, true); err == nil {
		err = ierr
	}
	if err == nil {
		err = f.Sync() // the flag, durably (see allocate)
	}
	if err != nil {
		return fmt.Errorf("extend store %s to %d bytes: %w", path, bytes, err)
	}
	return nil
}

func (fileStore) segments(path string, inode uint64, chunkSectors uint32) ([]Segment, error) {
	f, err := openStore(path, inode)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := fiemap.Map(path, dmtable.TableByDev, fiemap.MapOptions{ChunkSize: uint64(chunkSectors) * 512})
	if err != nil {
		return nil, err
	}
	// Map opened the path again: it must still be the store checked above.
	g, err := openStore(path, inode)
	if err != nil {
		return nil, err
	}
	g.Close()
	out := make([]Segment, len(m.Segments))
	for i, s := range m.Segments {
		out[i] = Segment{Dev: s.Dev, Offset: s.DevOffset, Length: s.Length}
	}
	return out, nil
}

// loops keeps the loop devices this process attached open until it exits:
// with autoclear, a loop device closed before device-mapper opens it would
// detach at once.
var loops = map[string]*fiemap.Loop{}

func (fileStore) loopSegments(path string, inode uint64) ([]Segment, error) {
	f, err := openStore(path, inode)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	f.Close()
	if err != nil {
		return nil, err
	}
	l, ok := loops[path]
	if !ok {
		if l, err = fiemap.AttachLoop(path); err != nil {
			return nil, err
		}
		loops[path] = l
	}
	return []Segment{{Dev: l.Dev, Offset: 0, Length: uint64(fi.Size()) / 512}}, nil
}

func (fileStore) release(s Store) (bool, error) {
	if s.Backend == BackendLoop {
		if l, ok := loops[s.Path]; ok {
			l.Close()
			delete(loops, s.Path)
		}
		if err := fiemap.DetachLoop(s.Path); err != nil {
			return false, err
		}
	}
	var st syscall.Stat_t
	err := syscall.Lstat(s.Path, &st)
	if errors.Is(err, syscall.ENOENT) {
		return mounted(s), nil
	}
	if err != nil {
		return false, fmt.Errorf("stat store %s: %w", s.Path, err)
	}
	if st.Ino != s.Inode {
		return true, nil // not ours any more: leave it alone
	}
	if err := fiemap.Remove(s.Path); err != nil {
		return true, err
	}
	// The removal is durable before the record says so: otherwise a power
	// cut can bring the store file back, orphaned.
	return true, atomicfile.SyncDir(filepath.Dir(s.Path))
}

// mounted tells a store file that is gone from one whose filesystem is not
// mounted (activate at boot): the directory that should hold it must be on
// the store's filesystem.
func mounted(s Store) bool {
	dev, _, _, err := fileStore{}.fsOf(s.Path)
	return err == nil && dev == s.FSDev
}

func (fileStore) removePartial(s Store) (bool, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(s.Path, &st); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return mounted(s), nil
		}
		return false, fmt.Errorf("stat store %s: %w", s.Path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG || (st.Size != 0 && uint64(st.Size) != s.Bytes) {
		return true, nil // not something prepare could have left
	}
	if err := fiemap.Remove(s.Path); err != nil {
		return true, err
	}
	// The removal is durable before the record says so: otherwise a power
	// cut can bring the store file back, orphaned.
	return true, atomicfile.SyncDir(filepath.Dir(s.Path))
}
