package dmtable

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// blkROSet sets or clears the read-only policy of the block device open as
// f: BLKROSET, _IO(0x12, 93) from include/uapi/linux/fs.h, blkdev_roset in
// block/ioctl.c; the argument is a pointer to an int. It needs
// CAP_SYS_ADMIN.
func blkROSet(f *os.File, ro bool) error {
	v := 0
	if ro {
		v = 1
	}
	return unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, v)
}

// blkROGet reads the read-only state of the block device open as f:
// BLKROGET, _IO(0x12, 94), which reports the device's own policy or its
// disk's (bdev_read_only).
func blkROGet(f *os.File) (bool, error) {
	v, err := unix.IoctlGetInt(int(f.Fd()), unix.BLKROGET)
	return v != 0, err
}

// SetReadOnly sets (or, with ro false, clears) the read-only policy of the
// block device at path (BLKROSET). While it is set, the kernel refuses to
// mount the device's filesystem read-write or to remount it so (EACCES).
// It does not stop every writer (Linux 6.1 only warns about a write to a
// read-only device): a caller that must know nothing was written checks
// the device's write count as well. The policy belongs to the block
// device, not to its table: a table reload keeps it.
func SetReadOnly(path string, ro bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("set read-only policy of %s: %w", path, permission(err))
	}
	defer f.Close()
	if err := blkROSet(f, ro); err != nil {
		return fmt.Errorf("set read-only policy of %s: BLKROSET: %w", path, permission(err))
	}
	return nil
}

// ReadOnly reports whether the block device at path is read-only
// (BLKROGET).
func ReadOnly(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("read read-only state of %s: %w", path, permission(err))
	}
	defer f.Close()
	ro, err := blkROGet(f)
	if err != nil {
		return false, fmt.Errorf("read read-only state of %s: BLKROGET: %w", path, permission(err))
	}
	return ro, nil
}
