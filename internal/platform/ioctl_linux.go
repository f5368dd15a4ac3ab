package platform

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ioctl issues ioctl(fd, req, arg) with a pointer argument, repeating it
// while it is interrupted (EINTR: the Go runtime signals its threads; the
// kernel copies nothing back on error). The request number is a uint32, as
// the kernel's _IOC encoding is: numbers with the direction bits set, such
// as 0xC0186601, overflow an int on 386 and arm. The error is the bare
// unix.Errno.
func Ioctl(fd uintptr, req uint32, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

// IoctlValue issues ioctl(fd, req, arg) once, with the argument passed by
// value (the NBD ioctls). It does not repeat an interrupted call: an
// interrupted NBD_DO_IT has already torn its connection down.
func IoctlValue(fd uintptr, req uint32, arg uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), arg)
	if errno != 0 {
		return errno
	}
	return nil
}
