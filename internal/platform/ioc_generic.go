//go:build !ppc64 && !ppc64le && !mips && !mipsle && !mips64 && !mips64le && !sparc64

package platform

// Direction bits of include/uapi/asm-generic/ioctl.h.
const (
	iocNone     = 0
	iocWrite    = 1
	iocRead     = 2
	iocDirShift = 30
)
