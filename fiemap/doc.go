// Package fiemap turns a file into raw storage for a device-mapper device:
// it allocates the snapshot store file, finds its blocks on disk, and
// translates them into a `linear` table over raw block devices.
//
// # Why a file
//
// dm-snapshot keeps its exception store (the COW) on a block device. Rather
// than ask for a spare partition, snapctl carves the store out of an
// ordinary file: it allocates the file in full (fallocate, no holes), asks
// the filesystem where its blocks are with the FS_IOC_FIEMAP ioctl, and
// builds a device-mapper device whose `linear` targets point straight at
// those blocks. From then on the store is read and written only through
// that device, never through the file; the file exists to keep the
// filesystem from handing its blocks to anyone else. It is made immutable
// (FS_IMMUTABLE_FL) so nothing writes, truncates, moves or deletes it while
// it is mapped, and on f2fs it is pinned (F2FS_IOC_SET_PIN_FILE) so the
// garbage collector leaves its blocks in place.
//
// # FIEMAP
//
// FS_IOC_FIEMAP returns a file's extents: runs of bytes at a logical offset
// in the file, stored contiguously at a physical byte offset on the
// filesystem's block device, each with flags. Extents reports them with
// FIEMAP_FLAG_SYNC (so delayed allocations are resolved first), calling
// again from the end of the last extent until one carries
// FIEMAP_EXTENT_LAST. Extents whose physical offset is not the file's bytes
// at a fixed place on the device are refused: unknown or delayed
// locations, encoded, encrypted, inline or tail-packed data, unaligned
// extents, and blocks shared with another file. Unwritten (preallocated)
// extents are accepted: the file's own view of them reads as zeroes, but
// the store is never read through the file. The extents must cover the file
// from byte 0 to its size without holes; contiguous ones are merged, and a
// file with more than DefaultMaxExtents merged extents is refused as too
// fragmented.
//
// Only ext4, xfs and f2fs are accepted: their FIEMAP physical offsets are
// byte offsets on the one block device the filesystem is mounted from (the
// file's st_dev). btrfs reports addresses in its own logical space, which
// can span devices; tmpfs, network and FUSE filesystems have no blocks.
//
// # Resolving down a device stack
//
// Device-mapper claims every device it maps exclusively, with one holder
// shared by all device-mapper tables. A `linear` table over a partition that
// a filesystem has mounted directly therefore fails with EBUSY. When the
// filesystem sits on a device-mapper device instead, its blocks can be
// reached on the device beneath it: Resolve walks the tables of the stack
// (any number of `linear` targets per table, any depth), splitting extents
// where they cross target boundaries, down to the first device that is not
// a device-mapper device. Any other target type is refused: beneath `crypt`
// the store would be written unencrypted, beneath `snapshot-origin` it
// would be copied on write into itself. A filesystem mounted directly on a
// disk or partition gets DirectMountError, which names the fallback: a loop
// device with direct I/O over the file (--backend loop).
//
// Every run must start and end on a multiple of the devices' logical block
// size and of the snapshot chunk size, and should on the physical block
// size and io_min (misaligned I/O works but is slow, and the kernel warns
// about it).
//
// Segments, the result in 512-byte sectors on raw devices, are persisted in
// the volume's state record and re-checked with Revalidate against a fresh
// FIEMAP whenever the filesystem is mounted.
//
// Kernel documentation: Documentation/filesystems/fiemap.rst and
// Documentation/admin-guide/device-mapper/linear.rst.
package fiemap
