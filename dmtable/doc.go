// Package dmtable models device-mapper tables and drives the kernel's
// device-mapper through its ioctl interface.
//
// A device-mapper device is a virtual block device whose sectors are mapped,
// range by range, onto other block devices by targets. Its table lists the
// targets: each line "start length type params" covers Length sectors from
// Start, and together the lines cover the device from sector 0 with no gap
// or overlap. A device holds up to two tables: the live one serving I/O and
// an inactive one just loaded. Resume swaps the inactive table in; suspend
// first quiesces I/O (and by default freezes a filesystem on the device), so
// a table swap happens at a single point in time.
//
// snapctl uses four targets (see the kernel's
// Documentation/admin-guide/device-mapper/linear.rst and snapshot.rst,
// https://docs.kernel.org/admin-guide/device-mapper/snapshot.html):
//
//   - linear DEV OFFSET maps a range onto DEV from sector OFFSET; many linear
//     lines stitch a file's scattered extents into one device.
//   - snapshot-origin ORIGIN passes I/O to ORIGIN and, before a write lands,
//     copies the old chunk into every snapshot of ORIGIN.
//   - snapshot ORIGIN COW P|PO|N CHUNK is the frozen view: chunks changed
//     since the snapshot was taken are read from the exception store COW.
//     P keeps the store's table on disk (persistent), PO is persistent with
//     overflow mode (a full store fails snapshot writes instead of
//     invalidating the snapshot), N keeps it in memory. CHUNK is in sectors.
//   - snapshot-merge ORIGIN COW P CHUNK copies the store's chunks back onto
//     ORIGIN while presenting the snapshot's content.
//
// A snapshot's status line is "allocated/total metadata" in sectors of the
// store, or one of Invalid, Merge failed, Overflow, Unknown; a merge is done
// when only metadata is still allocated. The kernel sends no event when a
// merge completes or a store overflows: callers poll Status.
//
// The model (Target, Table, the builders and the parsers) is pure. The
// kernel client (Create, Load, Suspend, Resume, Remove, Info, Status,
// ReadTable, List, DriverVersion, TargetVersions) talks to
// /dev/mapper/control with the ioctls of include/uapi/linux/dm-ioctl.h
// (https://docs.kernel.org/admin-guide/device-mapper/). Its errors name the
// device and keep the errno, so errors.Is(err, unix.EBUSY) works, and turn
// what a user can act on into typed errors: NoDeviceMapperError,
// PermissionError, InvalidNameError, InvalidTableError, UnknownTargetError.
//
// Without udev nothing creates /dev/mapper/NAME, and since Linux 5.15 even
// /dev/dm-N only appears after the first table load. This package makes the
// node itself from the device number the kernel returns at create time, and
// removes it with the device.
package dmtable
