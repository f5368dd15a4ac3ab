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
)

// fiemapHeader is struct fiemap from include/uapi/linux/fiemap.h, without
// its trailing flexible array fm_extents[] (32 bytes).
type fiemapHeader struct {
	Start         uint64 // fm_start: first logical byte to map (in)
	Length        uint64 // fm_length: logical bytes to map (in)
	Flags         uint32 // fm_flags: FIEMAP_FLAG_* (in/out)
	MappedExtents uint32 // fm_mapped_extents: extents written to the array (out)
	ExtentCount   uint32 // fm_extent_count: room in the array (in)
	Reserved      uint32 // fm_reserved
}

// fiemapExtent is struct fiemap_extent from include/uapi/linux/fiemap.h
// (56 bytes).
type fiemapExtent struct {
	Logical    uint64    // fe_logical: byte offset in the file
	Physical   uint64    // fe_physical: byte offset on the filesystem's device
	Length     uint64    // fe_length: bytes
	Reserved64 [2]uint64 // fe_reserved64
	Flags      uint32    // fe_flags: FIEMAP_EXTENT_*
	Reserved   [3]uint32 // fe_reserved
}

// extentsPerCall is the room for extents in one FS_IOC_FIEMAP call.
const extentsPerCall = 256

// fiemapRequest is the memory FS_IOC_FIEMAP reads and writes: the header
// immediately followed by its extent array, as the C flexible array member.
type fiemapRequest struct {
	hdr fiemapHeader
	ext [extentsPerCall]fiemapExtent
}

// Request flags for fm_flags, from include/uapi/linux/fiemap.h.
const (
	FIEMAP_FLAG_SYNC  = 0x00000001 // sync the file before mapping it
	FIEMAP_FLAG_XATTR = 0x00000002 // map the extended attribute tree instead
	FIEMAP_FLAG_CACHE = 0x00000004 // request caching of the extents

	// FIEMAP_MAX_OFFSET is the largest fm_length: "to the end of the file".
	FIEMAP_MAX_OFFSET = ^uint64(0)
)

// Ioctl numbers. FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap) from
// include/uapi/linux/fs.h. The F2FS numbers are from
// include/uapi/linux/f2fs.h: _IOW/_IOR(0xf5, 13/14, __u32).
// FS_IOC_GETFLAGS/SETFLAGS are _IOR/_IOW('f', 1/2, long) but move a 32-bit
// int; x/sys/unix carries their per-architecture values.
const (
	FS_IOC_FIEMAP         = 0xC020660B
	F2FS_IOC_SET_PIN_FILE = 0x4004F50D
	F2FS_IOC_GET_PIN_FILE = 0x8004F50E
	FS_IOC_FSGETXATTR     = 0x801C581F // _IOR('X', 31, struct fsxattr)
	FS_IOC_GETFLAGS       = unix.FS_IOC_GETFLAGS
	FS_IOC_SETFLAGS       = unix.FS_IOC_SETFLAGS
)

// Inode flags moved by FS_IOC_GETFLAGS/SETFLAGS, from include/uapi/linux/fs.h.
const (
	FS_IMMUTABLE_FL = 0x00000010 // no writes, truncation, renames or unlink
	FS_NOCOW_FL     = 0x00800000 // f2fs reports a pinned file with this flag
)

// FS_XFLAG_REALTIME (struct fsxattr fsx_xflags) marks an XFS file whose data
// lives on the realtime device, not on the device st_dev names.
const FS_XFLAG_REALTIME = 0x00000001

// fsxattr is struct fsxattr from include/uapi/linux/fs.h (28 bytes).
type fsxattr struct {
	Xflags     uint32 // fsx_xflags
	Extsize    uint32 // fsx_extsize
	Nextents   uint32 // fsx_nextents
	Projid     uint32 // fsx_projid
	Cowextsize uint32 // fsx_cowextsize
	Pad        [8]byte
}

// Open flags used by Allocate and Map.
const (
	oNoFollow = unix.O_NOFOLLOW
	oCloExec  = unix.O_CLOEXEC
	oDirect   = unix.O_DIRECT
)

// isSymlinkLoop reports the ELOOP an O_NOFOLLOW open returns for a symlink.
func isSymlinkLoop(err error) bool { return errors.Is(err, unix.ELOOP) }

// ioctl runs one ioctl on f with a pointer argument.
func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	sc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno unix.Errno
	cerr := sc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	})
	runtime.KeepAlive(f)
	if cerr != nil {
		return cerr
	}
	if errno != 0 {
		return errno
	}
	return nil
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

// statInfo is what Map and Allocate need from stat(2).
type statInfo struct {
	dev          uint64 // st_dev
	major, minor uint32 // of st_dev
	size         uint64
	blocks       uint64 // 512-byte units allocated
	regular      bool
	dir          bool
	symlink      bool
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

// stat is stat(2): it follows symlinks.
func stat(path string) (statInfo, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
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
