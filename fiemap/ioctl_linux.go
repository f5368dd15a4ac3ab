package fiemap

// This file is the package's only gate to the kernel: the C structures of
// the FIEMAP ioctl, the ioctl numbers, and thin fd-level wrappers named for
// the call they make. Everything else in the package is plain Go.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/internal/platform"
)

// FS_IOC_GETFLAGS/SETFLAGS are _IOR/_IOW('f', 1/2, long) but move a 32-bit
// int: their numbers vary with sizeof(long), and x/sys/unix carries each
// architecture's.
const (
	FS_IOC_GETFLAGS = unix.FS_IOC_GETFLAGS
	FS_IOC_SETFLAGS = unix.FS_IOC_SETFLAGS
)

// Open flags used by Allocate and Map.
const (
	oNoFollow = unix.O_NOFOLLOW
	oCloExec  = unix.O_CLOEXEC
	oDirect   = unix.O_DIRECT
)

// isSymlinkLoop reports the ELOOP an O_NOFOLLOW open returns for a symlink.
func isSymlinkLoop(err error) bool { return errors.Is(err, unix.ELOOP) }

// ioctl runs one ioctl on f with a pointer argument.
func ioctl(f *os.File, req uint32, arg unsafe.Pointer) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	cerr := sc.Control(func(fd uintptr) { ierr = platform.Ioctl(fd, req, arg) })
	runtime.KeepAlive(f)
	if cerr != nil {
		return cerr
	}
	return ierr
}

// fiemapCall runs FS_IOC_FIEMAP once: up to extentsPerCall extents of f from
// logical byte start on, with FIEMAP_FLAG_SYNC so dirty data is allocated
// and written before it is mapped.
func fiemapCall(f *os.File, req *fiemapRequest, start uint64) ([]rawExtent, error) {
	req.hdr = fiemapHeader{
		Start:       start,
		Length:      FIEMAP_MAX_OFFSET - start,
		Flags:       FIEMAP_FLAG_SYNC,
		ExtentCount: extentsPerCall,
	}
	if err := ioctl(f, FS_IOC_FIEMAP, unsafe.Pointer(req)); err != nil {
		return nil, fmt.Errorf("FS_IOC_FIEMAP: %w", err)
	}
	n := req.hdr.MappedExtents
	if n > extentsPerCall {
		return nil, fmt.Errorf("FS_IOC_FIEMAP: kernel reports %d extents in room for %d", n, extentsPerCall)
	}
	out := make([]rawExtent, n)
	for i := range out {
		e := &req.ext[i]
		out[i] = rawExtent{Logical: e.Logical, Physical: e.Physical, Length: e.Length, Flags: Flags(e.Flags)}
	}
	return out, nil
}

// getFlags is FS_IOC_GETFLAGS: the inode flags (FS_*_FL) of f.
func getFlags(f *os.File) (uint32, error) {
	var v int32
	if err := ioctl(f, FS_IOC_GETFLAGS, unsafe.Pointer(&v)); err != nil {
		return 0, fmt.Errorf("FS_IOC_GETFLAGS: %w", err)
	}
	return uint32(v), nil
}

// setFlags is FS_IOC_SETFLAGS: replace the inode flags of f.
func setFlags(f *os.File, flags uint32) error {
	v := int32(flags)
	if err := ioctl(f, FS_IOC_SETFLAGS, unsafe.Pointer(&v)); err != nil {
		return fmt.Errorf("FS_IOC_SETFLAGS: %w", err)
	}
	return nil
}

// setPinFile is F2FS_IOC_SET_PIN_FILE: pin (on) or unpin f's blocks so
// f2fs's garbage collector does not move them.
func setPinFile(f *os.File, on bool) error {
	var v uint32
	if on {
		v = 1
	}
	if err := ioctl(f, F2FS_IOC_SET_PIN_FILE, unsafe.Pointer(&v)); err != nil {
		return fmt.Errorf("F2FS_IOC_SET_PIN_FILE: %w", err)
	}
	return nil
}

// getPinFile is F2FS_IOC_GET_PIN_FILE: nonzero (the file's GC failure count)
// when f is pinned; 0 when it is not, or pinned with no failures yet.
func getPinFile(f *os.File) (uint32, error) {
	var v uint32
	if err := ioctl(f, F2FS_IOC_GET_PIN_FILE, unsafe.Pointer(&v)); err != nil {
		return 0, fmt.Errorf("F2FS_IOC_GET_PIN_FILE: %w", err)
	}
	return v, nil
}

// fsGetXattr is FS_IOC_FSGETXATTR: the file's extended attributes.
func fsGetXattr(f *os.File) (fsxattr, error) {
	var x fsxattr
	if err := ioctl(f, FS_IOC_FSGETXATTR, unsafe.Pointer(&x)); err != nil {
		return fsxattr{}, fmt.Errorf("FS_IOC_FSGETXATTR: %w", err)
	}
	return x, nil
}

// fstatfs is fstatfs(2) on f: the filesystem's magic number (f_type) and
// the bytes available to unprivileged users (f_bavail * f_bsize).
func fstatfs(f *os.File) (magic uint64, avail uint64, err error) {
	var st unix.Statfs_t
	sc, err := f.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var serr error
	if cerr := sc.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &st) }); cerr != nil {
		return 0, 0, cerr
	}
	if serr != nil {
		return 0, 0, fmt.Errorf("fstatfs: %w", serr)
	}
	return uint64(uint32(st.Type)), st.Bavail * uint64(st.Bsize), nil
}

func fromStat(st *unix.Stat_t) statInfo {
	mode := st.Mode & unix.S_IFMT
	return statInfo{
		dev:     uint64(st.Dev),
		major:   unix.Major(uint64(st.Dev)),
		minor:   unix.Minor(uint64(st.Dev)),
		size:    uint64(st.Size),
		blocks:  uint64(st.Blocks),
		regular: mode == unix.S_IFREG,
		dir:     mode == unix.S_IFDIR,
		symlink: mode == unix.S_IFLNK,
	}
}

// fstat is fstat(2) on f.
func fstat(f *os.File) (statInfo, error) {
	var st unix.Stat_t
	sc, err := f.SyscallConn()
	if err != nil {
		return statInfo{}, err
	}
	var serr error
	if cerr := sc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); cerr != nil {
		return statInfo{}, cerr
	}
	if serr != nil {
		return statInfo{}, fmt.Errorf("fstat: %w", serr)
	}
	return fromStat(&st), nil
}

// lstat is lstat(2): it does not follow a final symlink.
func lstat(path string) (statInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return statInfo{}, err
	}
	return fromStat(&st), nil
}

// fallocate is fallocate(2) with mode 0: allocate [0, size) and extend the
// file, leaving no holes.
func fallocate(f *os.File, size uint64) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if cerr := sc.Control(func(fd uintptr) {
		for {
			ferr = unix.Fallocate(int(fd), 0, 0, int64(size))
			if ferr != unix.EINTR {
				return
			}
		}
	}); cerr != nil {
		return cerr
	}
	if ferr != nil {
		return fmt.Errorf("fallocate %d bytes: %w", size, ferr)
	}
	return nil
}

// Loop devices: the fallback store backend for a filesystem mounted
// directly on a partition (see loop.go).

// loopGetFree is LOOP_CTL_GET_FREE on /dev/loop-control: the index of a
// free loop device, allocating one if needed.
func loopGetFree() (int, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("open /dev/loop-control: %w", err)
	}
	defer ctl.Close()
	n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
	if err != nil {
		return 0, fmt.Errorf("find a free loop device: %w", err)
	}
	return n, nil
}

// loopConfigure is LOOP_CONFIGURE: back loop with file, with direct I/O
// (the page cache is not a second copy of the store) and autoclear (the
// device detaches itself when its last user, NAME-cow, closes it).
func loopConfigure(loop, file *os.File, name string) error {
	cfg := unix.LoopConfig{Fd: uint32(file.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO | unix.LO_FLAGS_AUTOCLEAR
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], name)
	err := unix.IoctlLoopConfigure(int(loop.Fd()), &cfg)
	runtime.KeepAlive(file)
	if err != nil {
		return fmt.Errorf("configure %s over %s: %w", loop.Name(), name, err)
	}
	return nil
}

// loopClear is LOOP_CLR_FD: detach the loop device from its file.
func loopClear(loop *os.File) error {
	if err := unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_CLR_FD, 0); err != nil {
		return fmt.Errorf("detach %s: %w", loop.Name(), err)
	}
	return nil
}

// blockDev is the "major:minor" of an open block device.
func blockDev(f *os.File) (string, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}
