package dmtable

import (
	"fmt"
	"strings"
)

// NoDeviceMapperError means the kernel offers no device-mapper: there is no
// /dev/mapper/control and no device-mapper driver is registered. The kernel
// was built without CONFIG_BLK_DEV_DM, or dm-mod is a module that is not
// loaded.
type NoDeviceMapperError struct {
	Control string // the control node that was looked for
	Err     error  // the error opening it, if any
}

func (e NoDeviceMapperError) Error() string {
	msg := fmt.Sprintf("device-mapper is not available (no %s): the kernel lacks CONFIG_BLK_DEV_DM or the dm-mod module is not loaded (modprobe dm-mod)", e.Control)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e NoDeviceMapperError) Unwrap() error { return e.Err }

// PermissionError means the kernel refused a device-mapper request because the
// caller is not privileged: device-mapper needs root (CAP_SYS_ADMIN). Err is
// the errno (EACCES or EPERM), so errors.Is(err, os.ErrPermission) holds.
type PermissionError struct {
	Err error
}

func (e PermissionError) Error() string {
	return fmt.Sprintf("%v: device-mapper needs root (CAP_SYS_ADMIN)", e.Err)
}

func (e PermissionError) Unwrap() error { return e.Err }

// InvalidNameError means a device name the kernel would refuse or that could
// not be a node under /dev/mapper: empty, longer than 127 bytes, containing
// '/' or NUL, or one of ".", ".." and "control".
type InvalidNameError struct {
	Name   string
	Reason string
}

func (e InvalidNameError) Error() string {
	return fmt.Sprintf("invalid device name %q: %s", e.Name, e.Reason)
}

// InvalidTableError means a table failed Validate; it was not sent to the
// kernel.
type InvalidTableError struct {
	Reason string
}

func (e InvalidTableError) Error() string { return "invalid table: " + e.Reason }

func invalidTable(format string, args ...any) error {
	return InvalidTableError{Reason: fmt.Sprintf(format, args...)}
}

// UnknownTargetError means the kernel refused a table because it has no
// target of type Type, even after trying to load its module. Err is the
// errno of the refused load (EINVAL).
type UnknownTargetError struct {
	Type string
	Err  error
}

func (e UnknownTargetError) Error() string {
	return fmt.Sprintf("target type %q is not known to the kernel (its module: %s): %v", e.Type, e.Module(), e.Err)
}

func (e UnknownTargetError) Unwrap() error { return e.Err }

// Module is the kernel module that provides the target type, by the kernel's
// "dm-TYPE" naming convention; the snapshot targets share dm-snapshot.
func (e UnknownTargetError) Module() string {
	switch e.Type {
	case TypeSnapshot, TypeSnapshotOrigin, TypeSnapshotMerge:
		return "dm-snapshot"
	case TypeLinear:
		return "dm-mod"
	}
	return "dm-" + e.Type
}

// maxNameLen is the longest device name: dm_ioctl.name is DM_NAME_LEN (128)
// bytes including the terminating NUL. UUIDs likewise fit DM_UUID_LEN (129).
const (
	maxNameLen = 127
	maxUUIDLen = 128
)

// ValidateName checks a device name before it reaches the kernel. The error
// is an InvalidNameError.
func ValidateName(name string) error {
	switch {
	case name == "":
		return InvalidNameError{name, "empty"}
	case len(name) > maxNameLen:
		return InvalidNameError{name, fmt.Sprintf("%d bytes, longer than %d", len(name), maxNameLen)}
	case strings.Contains(name, "/"):
		return InvalidNameError{name, "contains '/'"}
	case strings.Contains(name, "\x00"):
		return InvalidNameError{name, "contains a NUL byte"}
	case name == "." || name == "..":
		return InvalidNameError{name, "not usable as a file name under /dev/mapper"}
	case name == "control":
		return InvalidNameError{name, "reserved for /dev/mapper/control"}
	}
	return nil
}

func validateUUID(uuid string) error {
	switch {
	case len(uuid) > maxUUIDLen:
		return fmt.Errorf("invalid device uuid %q: %d bytes, longer than %d", uuid, len(uuid), maxUUIDLen)
	case strings.Contains(uuid, "\x00"):
		return fmt.Errorf("invalid device uuid %q: contains a NUL byte", uuid)
	}
	return nil
}
