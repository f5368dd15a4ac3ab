package platform

// The ioctl number encoding of include/uapi/asm-generic/ioctl.h:
//
//	dir << 30 | size << 16 | type << 8 | nr
//
// with 14 size bits and _IOC_NONE 0, _IOC_WRITE 1, _IOC_READ 2. powerpc
// (arch/powerpc/include/uapi/asm/ioctl.h) has 13 size bits and three
// direction bits at 29: _IOC_NONE 1, _IOC_READ 2, _IOC_WRITE 4, so its _IO,
// _IOR and _IOW numbers differ from every other architecture snapctl builds
// for (its _IOWR numbers happen to agree); mips and sparc encode as powerpc. The constants below are the
// direction bits in place, so that an ioctl number stays a constant:
//
//	_IOR(0xf5, 14, __u32) = DirRead | 4<<SizeShift | 0xf5<<TypeShift | 14
const (
	DirNone      = iocNone << iocDirShift
	DirRead      = iocRead << iocDirShift
	DirWrite     = iocWrite << iocDirShift
	DirReadWrite = (iocRead | iocWrite) << iocDirShift

	SizeShift = 16
	TypeShift = 8
)
