package fiemap

import (
	"fmt"
	"os"
)

// Filesystem magic numbers (statfs f_type), from include/uapi/linux/magic.h.
const (
	EXT4_SUPER_MAGIC  = 0xEF53 // shared by ext2, ext3 and ext4
	XFS_SUPER_MAGIC   = 0x58465342
	F2FS_SUPER_MAGIC  = 0xF2F52010
	BTRFS_SUPER_MAGIC = 0x9123683E
	TMPFS_MAGIC       = 0x01021994
)

// FS is the filesystem a store lives on.
type FS struct {
	Type  string `json:"type"`  // "ext4", "xfs", "f2fs", or a name for a refused one
	Magic uint64 `json:"magic"` // statfs f_type
	Dev   string `json:"dev"`   // its block device (the file's st_dev) as "major:minor"
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
}

// UnsupportedFSError reports a filesystem a store cannot live on.
type UnsupportedFSError struct {
	Path   string
	Type   string // filesystem name, or its magic number in hex
	Reason string
}

func (e UnsupportedFSError) Error() string {
	return fmt.Sprintf("%q is on %s, which cannot hold a store: %s; put the store on ext4, xfs or f2fs", e.Path, e.Type, e.Reason)
}

type fsKind struct {
	name   string
	ok     bool
	reason string // why it is refused
}

const (
	reasonNoBlocks = "its files have no fixed blocks on a local block device"
	reasonOther    = "snapctl supports only ext4, xfs and f2fs, whose FIEMAP offsets are fixed byte offsets on the filesystem's own block device"
)

var fsKinds = map[uint64]fsKind{
	EXT4_SUPER_MAGIC:  {name: "ext4", ok: true},
	XFS_SUPER_MAGIC:   {name: "xfs", ok: true},
	F2FS_SUPER_MAGIC:  {name: "f2fs", ok: true},
	BTRFS_SUPER_MAGIC: {name: "btrfs", reason: "btrfs reports FIEMAP physical addresses in its own logical address space, which may span several devices and is remapped by balance and copy-on-write; they are not offsets on one block device"},
	TMPFS_MAGIC:       {name: "tmpfs", reason: "tmpfs keeps files in memory; " + reasonNoBlocks},
	0x858458F6:        {name: "ramfs", reason: "ramfs keeps files in memory; " + reasonNoBlocks},
	0x794C7630:        {name: "overlayfs", reason: "overlayfs stacks other filesystems; put the store on the filesystem beneath it"},
	0x6969:            {name: "nfs", reason: "a network filesystem: " + reasonNoBlocks},
	0xFF534D42:        {name: "cifs", reason: "a network filesystem: " + reasonNoBlocks},
	0xFE534D42:        {name: "smb2", reason: "a network filesystem: " + reasonNoBlocks},
	0x01021997:        {name: "9p", reason: "a network filesystem: " + reasonNoBlocks},
	0x65735546:        {name: "fuse", reason: "a FUSE filesystem: " + reasonNoBlocks},
	0x00C0FFEE:        {name: "hostfs", reason: "user-mode Linux's hostfs: " + reasonNoBlocks},
	0x2FC12FC1:        {name: "zfs", reason: "ZFS copies on write: " + reasonNoBlocks},
	0xCA451A4E:        {name: "bcachefs", reason: "bcachefs copies on write and may span devices: " + reasonNoBlocks},
	0x4D44:            {name: "vfat", reason: reasonOther},
	0x2011BAB0:        {name: "exfat", reason: reasonOther},
	0x5346544E:        {name: "ntfs", reason: reasonOther},
	0x7366746E:        {name: "ntfs3", reason: reasonOther},
	0x73717368:        {name: "squashfs", reason: "a read-only compressed filesystem: " + reasonNoBlocks},
	0xE0F5E1E2:        {name: "erofs", reason: "a read-only filesystem: " + reasonNoBlocks},
	0x9660:            {name: "iso9660", reason: "a read-only filesystem: " + reasonNoBlocks},
	0x9FA0:            {name: "proc", reason: reasonNoBlocks},
	0x62656572:        {name: "sysfs", reason: reasonNoBlocks},
}

// FSName is the name of a filesystem magic number, or its hex form.
func FSName(magic uint64) string {
	if k, ok := fsKinds[magic]; ok {
		return k.name
	}
	return fmt.Sprintf("filesystem type 0x%x", magic)
}

// CheckFSType returns UnsupportedFSError unless magic is ext4, xfs or f2fs.
func CheckFSType(path string, magic uint64) error {
	k, ok := fsKinds[magic]
	if !ok {
		return UnsupportedFSError{Path: path, Type: FSName(magic), Reason: reasonOther}
	}
	if !k.ok {
		return UnsupportedFSError{Path: path, Type: k.name, Reason: k.reason}
	}
	return nil
}

// statFS identifies the filesystem of the open file (or directory) f and
// its block device. It returns UnsupportedFSError (with the FS filled in) for
// a filesystem that cannot hold a store.
func statFS(f *os.File) (FS, error) {
	magic, _, err := fstatfs(f)
	if err != nil {
		return FS{}, fmt.Errorf("identify filesystem of %q: %w", f.Name(), err)
	}
	st, err := fstat(f)
	if err != nil {
		return FS{}, fmt.Errorf("identify filesystem of %q: %w", f.Name(), err)
	}
	fs := FS{Type: FSName(magic), Magic: magic, Dev: devString(st.major, st.minor), Major: st.major, Minor: st.minor}
	return fs, CheckFSType(f.Name(), magic)
}

// StatFS identifies the filesystem path is on (path may be the store file or
// its directory; symlinks are followed) and its block device. It returns
// UnsupportedFSError, with the FS still filled in, for a filesystem that
// cannot hold a store: only ext4, xfs and f2fs can.
func StatFS(path string) (FS, error) {
	f, err := os.Open(path)
	if err != nil {
		return FS{}, fmt.Errorf("identify filesystem: %w", err)
	}
	defer f.Close()
	return statFS(f)
}
