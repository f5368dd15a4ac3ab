package platform

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestIoctlEncoding checks the encoding against the numbers x/sys/unix
// generated from each architecture's kernel headers.
func TestIoctlEncoding(t *testing.T) {
	long := uint32(unsafe.Sizeof(uintptr(0))) // sizeof(long), sizeof(size_t)
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"BLKFLSBUF _IO(0x12, 97)", DirNone | 0x12<<TypeShift | 97, unix.BLKFLSBUF},
		{"BLKSSZGET _IO(0x12, 104)", DirNone | 0x12<<TypeShift | 104, unix.BLKSSZGET},
		{"BLKGETSIZE64 _IOR(0x12, 114, size_t)", DirRead | long<<SizeShift | 0x12<<TypeShift | 114, unix.BLKGETSIZE64},
		{"FS_IOC_GETFLAGS _IOR('f', 1, long)", DirRead | long<<SizeShift | 'f'<<TypeShift | 1, unix.FS_IOC_GETFLAGS},
		{"FS_IOC_SETFLAGS _IOW('f', 2, long)", DirWrite | long<<SizeShift | 'f'<<TypeShift | 2, unix.FS_IOC_SETFLAGS},
		{"DM_VERSION _IOWR(0xfd, 0, struct dm_ioctl)", DirReadWrite | 312<<SizeShift | 0xfd<<TypeShift, unix.DM_VERSION},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %#x, want %#x", c.name, c.got, c.want)
		}
	}
}
