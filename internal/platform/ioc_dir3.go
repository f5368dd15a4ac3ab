//go:build ppc64 || ppc64le || mips || mipsle || mips64 || mips64le || sparc64

package platform

// Direction bits of arch/powerpc/include/uapi/asm/ioctl.h (mips and sparc
// use the same three bits).
const (
	iocNone     = 1
	iocWrite    = 4
	iocRead     = 2
	iocDirShift = 29
)
