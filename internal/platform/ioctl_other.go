//go:build !linux

package platform

import "unsafe"

// Ioctl returns ErrUnsupported outside Linux.
func Ioctl(fd uintptr, req uint32, arg unsafe.Pointer) error { return ErrUnsupported }

// IoctlValue returns ErrUnsupported outside Linux.
func IoctlValue(fd uintptr, req uint32, arg uintptr) error { return ErrUnsupported }
