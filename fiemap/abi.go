package fiemap

// The C ABI of FIEMAP and the inode-flag ioctls, mirrored in plain Go: no
// unsafe, no x/sys/unix, so it builds (and its size test runs) anywhere.
// The calls that use it live in ioctl_linux.go.

import "github.com/snapctl/snapctl/internal/platform"

// fiemapHeader is struct fiemap from include/uapi/linux/fiemap.h, without
// its trailing flexible array fm_extents[] (32 bytes).
type fiemapHeader struct {
	Start         uint64 // fm_start: first logical byte to map (in)
	Length        uint64 // fm_length: logical bytes to map (in)
	Flags         uint32 // fm_flags: FIEMAP_FLAG_* (in/out)
	MappedExtents uint32 // fm_mapped_extents: extents written to the array (out)
	ExtentCount   uint32 // fm_extent_count: room in the array (in)
	Reserved      uint32 // fm_reserved
}

// fiemapExtent is struct fiemap_extent from include/uapi/linux/fiemap.h
// (56 bytes).
type fiemapExtent struct {
	Logical    uint64    // fe_logical: byte offset in the file
	Physical   uint64    // fe_physical: byte offset on the filesystem's device
	Length     uint64    // fe_length: bytes
	Reserved64 [2]uint64 // fe_reserved64
	Flags      uint32    // fe_flags: FIEMAP_EXTENT_*
	Reserved   [3]uint32 // fe_reserved
}

// extentsPerCall is the room for extents in one FS_IOC_FIEMAP call: 4,096
// (a 224 KiB buffer, allocated once per mapping), so a store of 50,000
// extents (the cap) is mapped in 13 calls rather than 196 of 256.
const extentsPerCall = 4096

// fiemapRequest is the memory FS_IOC_FIEMAP reads and writes: the header
// immediately followed by its extent array, as the C flexible array member.
type fiemapRequest struct {
	hdr fiemapHeader
	ext [extentsPerCall]fiemapExtent
}

// Request flags for fm_flags, from include/uapi/linux/fiemap.h.
const (
	FIEMAP_FLAG_SYNC  = 0x00000001 // sync the file before mapping it
	FIEMAP_FLAG_XATTR = 0x00000002 // map the extended attribute tree instead
	FIEMAP_FLAG_CACHE = 0x00000004 // request caching of the extents

	// FIEMAP_MAX_OFFSET is the largest fm_length: "to the end of the file".
	FIEMAP_MAX_OFFSET = ^uint64(0)
)

// Ioctl numbers. FS_IOC_FIEMAP is _IOWR('f', 11, struct fiemap) and
// FS_IOC_FSGETXATTR _IOR('X', 31, struct fsxattr), from
// include/uapi/linux/fs.h; the F2FS numbers are _IOW/_IOR(0xf5, 13/14,
// __u32) from include/uapi/linux/f2fs.h. The _IOR and _IOW numbers differ on
// powerpc (see platform.DirRead).
const (
	FS_IOC_FIEMAP         = platform.DirReadWrite | 32<<platform.SizeShift | 'f'<<platform.TypeShift | 11
	FS_IOC_FSGETXATTR     = platform.DirRead | 28<<platform.SizeShift | 'X'<<platform.TypeShift | 31
	F2FS_IOC_SET_PIN_FILE = platform.DirWrite | 4<<platform.SizeShift | 0xf5<<platform.TypeShift | 13
	F2FS_IOC_GET_PIN_FILE = platform.DirRead | 4<<platform.SizeShift | 0xf5<<platform.TypeShift | 14
)

// Inode flags moved by FS_IOC_GETFLAGS/SETFLAGS, from include/uapi/linux/fs.h.
const (
	FS_IMMUTABLE_FL = 0x00000010 // no writes, truncation, renames or unlink
	FS_NOCOW_FL     = 0x00800000 // f2fs reports a pinned file with this flag
)

// FS_XFLAG_REALTIME (struct fsxattr fsx_xflags) marks an XFS file whose data
// lives on the realtime device, not on the device st_dev names.
const FS_XFLAG_REALTIME = 0x00000001

// fsxattr is struct fsxattr from include/uapi/linux/fs.h (28 bytes).
type fsxattr struct {
	Xflags     uint32 // fsx_xflags
	Extsize    uint32 // fsx_extsize
	Nextents   uint32 // fsx_nextents
	Projid     uint32 // fsx_projid
	Cowextsize uint32 // fsx_cowextsize
	Pad        [8]byte
}

// statInfo is what Map and Allocate need from stat(2).
type statInfo struct {
	dev          uint64 // st_dev
	major, minor uint32 // of st_dev
	size         uint64
	blocks       uint64 // 512-byte units allocated
	regular      bool
	dir          bool
	symlink      bool
}
