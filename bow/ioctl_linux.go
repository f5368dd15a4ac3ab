package bow

import (
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/internal/platform"
)

// This file is bow's only gate to the kernel's block-device interface.

const exclusiveFlag = unix.O_EXCL

// blockDeviceSize asks for the size in bytes with BLKGETSIZE64
// (include/uapi/linux/fs.h: _IOR(0x12, 114, size_t)).
func blockDeviceSize(f *os.File) (int64, error) {
	var size uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		return 0, err
	}
	return int64(size), nil
}

// blockDiscard discards a byte range with BLKDISCARD, whose argument is
// uint64 range[2] = {start, length} (include/uapi/linux/fs.h).
func blockDiscard(f *os.File, off, length int64) error {
	r := [2]uint64{uint64(off), uint64(length)}
	return ioctlPtr(f, unix.BLKDISCARD, unsafe.Pointer(&r))
}

// punchHole deallocates a byte range of a regular file, keeping its size.
func punchHole(f *os.File, off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

// datasync flushes a file's data and the device's write cache.
func datasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

func ioctlPtr(f *os.File, req uint32, arg unsafe.Pointer) error {
	err := platform.Ioctl(f.Fd(), req, arg)
	runtime.KeepAlive(f)
	return err
}
