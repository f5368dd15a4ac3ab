// Package freespace reads which blocks of a mounted filesystem are free,
// and freezes and thaws the filesystem so that the answer stays true.
//
// # Free space
//
// The FS_IOC_GETFSMAP ioctl (Linux 4.12 on, include/uapi/linux/fsmap.h)
// reports a filesystem's space map: records of physical byte ranges on
// the filesystem's devices, each with its owner. ext4 reports the ranges
// its block allocator holds free, xfs those of its free-space btrees, both
// with the owner FMR_OWN_FREE. Free keeps those records, and only those on
// the filesystem's data device (xfs may also report an external log or a
// realtime device, ext4 an external journal). Filesystems without the
// ioctl (f2fs, btrfs) are refused with *UnsupportedError.
//
// Chunks turns free byte ranges into runs of wholly free chunks of a
// given size: a chunk that is only partly free is never reported.
//
// # Freezing
//
// A free map is exact only while nothing allocates. Freeze (FIFREEZE)
// flushes the filesystem and blocks every writer until Thaw (FITHAW);
// GETFSMAP still answers while frozen. A device-mapper suspend of the
// device beneath a frozen filesystem must skip its own freeze
// (DM_SKIP_LOCKFS_FLAG): the two do not nest.
package freespace
