package freespace

// This file is the package's only gate to the kernel: the fd-level calls
// of FS_IOC_GETFSMAP, FIFREEZE and FITHAW.

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/internal/platform"
)

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

// getFSMap is FS_IOC_GETFSMAP: one batch of the space map.
func getFSMap(f *os.File, req *fsmapRequest) error {
	return ioctl(f, FS_IOC_GETFSMAP, unsafe.Pointer(req))
}

// open opens a file or directory of the filesystem for an ioctl.
func open(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
}

// fsType names the filesystem f is on, for errors.
func fsType(f *os.File) string {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return "an unknown filesystem"
	}
	return fiemap.FSName(uint64(st.Type))
}

// Free returns the free byte ranges of the data device of the filesystem
// mounted at mountpoint (any path on it will do), sorted and joined, read
// with FS_IOC_GETFSMAP. For an exact answer, Freeze the filesystem first.
// A filesystem without the ioctl (f2fs, btrfs) yields *UnsupportedError.
func Free(mountpoint string) ([]Extent, error) {
	f, err := open(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("read free space of %s: %w", mountpoint, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, fmt.Errorf("read free space of %s: stat: %w", mountpoint, err)
	}
	req := new(fsmapRequest)
	first := true
	recs, devT, err := readMap(req, func(r *fsmapRequest) error {
		err := getFSMap(f, r)
		if err != nil && first && (errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
			return &UnsupportedError{Mountpoint: mountpoint, Type: fsType(f), Err: err}
		}
		first = false
		return err
	})
	runtime.KeepAlive(req)
	if err != nil {
		var u *UnsupportedError
		if errors.As(err, &u) {
			return nil, err
		}
		return nil, fmt.Errorf("read free space of %s: %w", mountpoint, err)
	}
	ex, err := freeExtents(recs, devT, unix.Major(uint64(st.Dev)), unix.Minor(uint64(st.Dev)))
	if err != nil {
		return nil, fmt.Errorf("read free space of %s: %w", mountpoint, err)
	}
	return ex, nil
}

// Freeze is FIFREEZE on the filesystem mounted at mountpoint: it flushes
// it and blocks every writer until Thaw. A filesystem that is frozen
// already fails with EBUSY.
func Freeze(mountpoint string) error {
	return freezeCall(mountpoint, FIFREEZE, "freeze")
}

// Thaw is FITHAW on the filesystem mounted at mountpoint. A filesystem
// that is not frozen fails with EINVAL.
func Thaw(mountpoint string) error {
	return freezeCall(mountpoint, FITHAW, "thaw")
}

func freezeCall(mountpoint string, req uint32, verb string) error {
	f, err := open(mountpoint)
	if err != nil {
		return fmt.Errorf("%s %s: %w", verb, mountpoint, err)
	}
	defer f.Close()
	var arg int32
	if err := ioctl(f, req, unsafe.Pointer(&arg)); err != nil {
		return fmt.Errorf("%s %s: %w", verb, mountpoint, err)
	}
	return nil
}
