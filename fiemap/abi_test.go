package fiemap

import (
	"runtime"
	"testing"
	"unsafe"
)

// The sizes of include/uapi/linux/fiemap.h and fs.h are the same on every
// architecture (every __u64 sits at a multiple of 8, so 386's and arm's
// 4-byte alignment of 64-bit fields changes nothing). These assertions fail
// the build of the tests, so a cross-compiled `go vet` or `go test -c`
// checks them on an architecture whose binaries cannot run here.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(fiemapHeader{})-32]
	_ = [1]struct{}{}[unsafe.Sizeof(fiemapExtent{})-56]
	_ = [1]struct{}{}[unsafe.Sizeof(fsxattr{})-28]
	_ = [1]struct{}{}[unsafe.Offsetof(fiemapRequest{}.ext)-32]
)

// TestABISizes pins struct fiemap (32 bytes), struct fiemap_extent (56) and
// struct fsxattr (28) and the field offsets the kernel reads.
func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct fiemap)", unsafe.Sizeof(fiemapHeader{}), 32},
		{"offsetof(fiemap, fm_flags)", unsafe.Offsetof(fiemapHeader{}.Flags), 16},
		{"offsetof(fiemap, fm_extent_count)", unsafe.Offsetof(fiemapHeader{}.ExtentCount), 24},
		{"offsetof(fiemap, fm_extents)", unsafe.Offsetof(fiemapRequest{}.ext), 32},
		{"sizeof(struct fiemap_extent)", unsafe.Sizeof(fiemapExtent{}), 56},
		{"offsetof(fiemap_extent, fe_flags)", unsafe.Offsetof(fiemapExtent{}.Flags), 40},
		{"sizeof(struct fsxattr)", unsafe.Sizeof(fsxattr{}), 28},
		{"sizeof(fiemapRequest)", unsafe.Sizeof(fiemapRequest{}), 32 + extentsPerCall*56},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestIoctlNumbers pins the ioctl numbers per architecture: powerpc encodes
// _IOR and _IOW with other direction bits.
func TestIoctlNumbers(t *testing.T) {
	want := map[string]uint32{
		"FS_IOC_FIEMAP":         0xC020660B,
		"FS_IOC_FSGETXATTR":     0x801C581F,
		"F2FS_IOC_SET_PIN_FILE": 0x4004F50D,
		"F2FS_IOC_GET_PIN_FILE": 0x8004F50E,
	}
	if runtime.GOARCH == "ppc64le" || runtime.GOARCH == "ppc64" {
		want["FS_IOC_FSGETXATTR"] = 0x401C581F
		want["F2FS_IOC_SET_PIN_FILE"] = 0x8004F50D
		want["F2FS_IOC_GET_PIN_FILE"] = 0x4004F50E
	}
	got := map[string]uint32{
		"FS_IOC_FIEMAP":         FS_IOC_FIEMAP,
		"FS_IOC_FSGETXATTR":     FS_IOC_FSGETXATTR,
		"F2FS_IOC_SET_PIN_FILE": F2FS_IOC_SET_PIN_FILE,
		"F2FS_IOC_GET_PIN_FILE": F2FS_IOC_GET_PIN_FILE,
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s on %s: got %#x, want %#x", name, runtime.GOARCH, got[name], w)
		}
	}
}
