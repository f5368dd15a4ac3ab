package nbd

import (
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sigset_t as x/sys/unix declares it is 1024 bits on every architecture,
// in 32-bit words on 386 and arm and 64-bit words elsewhere; doIt fills it
// word by word.
var _ = [1]struct{}{}[unsafe.Sizeof(unix.Sigset_t{})-128]

// TestIoctlNumbers pins the NBD ioctls of include/uapi/linux/nbd.h, all
// _IO(0xab, n): 0xab00 + n, except on powerpc, whose _IO sets bit 29.
func TestIoctlNumbers(t *testing.T) {
	base := uint32(0xab00)
	if runtime.GOARCH == "ppc64le" || runtime.GOARCH == "ppc64" {
		base = 0x2000ab00
	}
	for _, c := range []struct {
		name string
		got  uint32
		n    uint32
	}{
		{"NBD_SET_SOCK", NBD_SET_SOCK, 0},
		{"NBD_SET_BLKSIZE", NBD_SET_BLKSIZE, 1},
		{"NBD_DO_IT", NBD_DO_IT, 3},
		{"NBD_CLEAR_SOCK", NBD_CLEAR_SOCK, 4},
		{"NBD_SET_SIZE_BLOCKS", NBD_SET_SIZE_BLOCKS, 7},
		{"NBD_DISCONNECT", NBD_DISCONNECT, 8},
		{"NBD_SET_TIMEOUT", NBD_SET_TIMEOUT, 9},
		{"NBD_SET_FLAGS", NBD_SET_FLAGS, 10},
	} {
		if c.got != base+c.n {
			t.Errorf("%s on %s: got %#x, want %#x", c.name, runtime.GOARCH, c.got, base+c.n)
		}
	}
}
