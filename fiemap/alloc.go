package fiemap

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// AllocateOptions tune Allocate.
type AllocateOptions struct {
	// Overwrite replaces an existing regular file at the path (it is
	// removed as Remove does). Without it an existing file is ExistsError.
	Overwrite bool
	// ChunkSize, when not 0, is the snapshot chunk size in bytes; the
	// store size must be a multiple of it.
	ChunkSize uint64
}

// SizeError reports a store size Allocate refuses.
type SizeError struct {
	Path     string
	Size     uint64
	Multiple uint64 // the size must be a multiple of this (0: must not be 0)
	What     string // what Multiple is: "512-byte sectors", "the chunk size"
}

func (e SizeError) Error() string {
	if e.Multiple == 0 {
		return fmt.Sprintf("allocate %q: size %d: %s", e.Path, e.Size, e.What)
	}
	return fmt.Sprintf("allocate %q: size %d is not a multiple of %s (%d bytes)", e.Path, e.Size, e.What, e.Multiple)
}

// SymlinkError reports a symbolic link on the store's path, below the mount
// point of the store's filesystem (or the store itself). Anyone who can
// change such a link can redirect where the store is created or which file
// is mapped.
type SymlinkError struct {
	Path string // the store path as given
	Link string // the component that is a symlink
}

func (e SymlinkError) Error() string {
	return fmt.Sprintf("store path %q: %q is a symbolic link: a store path must not go through symlinks on the store's filesystem; give the resolved path", e.Path, e.Link)
}

// ExistsError reports that the store file already exists. errors.Is(err,
// fs.ErrExist) holds.
type ExistsError struct{ Path string }

func (e ExistsError) Error() string {
	return fmt.Sprintf("allocate %q: file exists; remove it or allow overwriting it", e.Path)
}

// Is makes errors.Is(err, fs.ErrExist) true.
func (e ExistsError) Is(target error) bool { return target == fs.ErrExist }

// NoSpaceError reports too little free space for the store.
type NoSpaceError struct {
	Path      string
	Needed    uint64 // bytes
	Available uint64 // bytes free for the store (including a replaced file)
}

func (e NoSpaceError) Error() string {
	return fmt.Sprintf("allocate %q: need %d bytes (%s) but only %d bytes (%s) are available on its filesystem; free space or choose a smaller store",
		e.Path, e.Needed, human(e.Needed), e.Available, human(e.Available))
}

// human prints a byte count with a binary unit.
func human(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// checkPath refuses a store path that goes through a symbolic link on the
// filesystem the store lives on (SymlinkError), or is itself one. Links on
// other filesystems (above the mount point, e.g. /var -> /data/var with the
// store under /data) are allowed. fsDev is the st_dev of the store's
// directory. Components that do not exist yet end the check.
func checkPath(path string, fsDev uint64) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("store path %q: %w", path, err)
	}
	parts := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	cur := ""
	for _, p := range parts {
		if p == "" {
			continue
		}
		cur += "/" + p
		st, err := lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("store path %q: lstat %q: %w", path, cur, err)
		}
		// The link's own st_dev is the filesystem its directory is on.
		if st.symlink && st.dev == fsDev {
			return SymlinkError{Path: path, Link: cur}
		}
	}
	return nil
}

// Allocate creates the store file at path with size bytes, all allocated
// (fallocate mode 0: no holes), and returns it open for reading and
// writing. It refuses a size that is 0 or not a multiple of 512 bytes (or of
// opts.ChunkSize) with SizeError, a filesystem other than ext4, xfs and f2fs
// with UnsupportedFSError, a symlink on the path below the mount point with
// SymlinkError, an existing file with ExistsError unless opts.Overwrite, and too
// little free space with NoSpaceError. The file is created with O_CREAT|O_EXCL|
// O_NOFOLLOW, mode 0600. On f2fs it is pinned (F2FS_IOC_SET_PIN_FILE) while
// still empty, so the blocks fallocate gives it are never moved by f2fs's
// garbage collector. The file and its directory are fsynced. On any error
// the new file is removed again.
//
// The caller then makes the file immutable (SetImmutable) and only then
// maps it (Map), so its blocks cannot change between the mapping and the
// table loaded over them.
func Allocate(path string, size uint64, opts AllocateOptions) (_ *os.File, err error) {
	switch {
	case size == 0:
		return nil, SizeError{Path: path, Size: size, What: "a store cannot be empty"}
	case size%SectorSize != 0:
		return nil, SizeError{Path: path, Size: size, Multiple: SectorSize, What: "512-byte sectors"}
	case opts.ChunkSize != 0 && size%opts.ChunkSize != 0:
		return nil, SizeError{Path: path, Size: size, Multiple: opts.ChunkSize, What: "the chunk size"}
	case size > math.MaxInt64:
		return nil, SizeError{Path: path, Size: size, What: "larger than 2^63-1 bytes"}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("allocate %q: open directory: %w", path, err)
	}
	defer d.Close()
	dst, err := fstat(d)
	if err != nil {
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	if err := checkPath(abs, dst.dev); err != nil {
		var s SymlinkError
		if errors.As(err, &s) {
			s.Path = path
			return nil, s
		}
		return nil, err
	}
	fsys, err := statFS(d)
	if err != nil {
		var u UnsupportedFSError
		if errors.As(err, &u) {
			u.Path = path
			return nil, u
		}
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	var reclaim uint64
	old, err := lstat(abs)
	exists := err == nil
	switch {
	case exists && !opts.Overwrite:
		return nil, ExistsError{Path: path}
	case exists && !old.regular:
		return nil, fmt.Errorf("allocate %q: it exists and is not a regular file; refusing to replace it", path)
	case exists:
		reclaim = old.blocks * 512
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	_, avail, err := fstatfs(d)
	if err != nil {
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	if avail+reclaim < size {
		return nil, NoSpaceError{Path: path, Needed: size, Available: avail + reclaim}
	}
	if exists {
		if err := Remove(abs); err != nil {
			return nil, fmt.Errorf("allocate %q: replace the existing file: %w", path, err)
		}
	}

	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL|oNoFollow|oCloExec, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, ExistsError{Path: path}
		}
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.Close(), removeNew(abs))
		}
	}()
	if fsys.Magic == F2FS_SUPER_MAGIC {
		if err := setPinFile(f, true); err != nil {
			return nil, fmt.Errorf("allocate %q: pin: %w", path, err)
		}
	}
	if fsys.Magic == XFS_SUPER_MAGIC {
		if err := checkNotRealtime(f); err != nil {
			return nil, fmt.Errorf("allocate %q: %w", path, err)
		}
	}
	if err := fallocate(f, size); err != nil {
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("allocate %q: %w", path, err)
	}
	if err := d.Sync(); err != nil {
		return nil, fmt.Errorf("allocate %q: sync directory: %w", path, err)
	}
	return f, nil
}

// removeNew unlinks a file Allocate created and failed to finish.
func removeNew(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("clean up %q: %w", path, err)
	}
	return nil
}

// checkNotRealtime refuses an XFS realtime file: its data lives on the
// realtime device, not on the device st_dev names.
func checkNotRealtime(f *os.File) error {
	x, err := fsGetXattr(f)
	if err != nil {
		return err
	}
	if x.Xflags&FS_XFLAG_REALTIME != 0 {
		return UnsupportedFSError{Path: f.Name(), Type: "xfs (realtime file)", Reason: "the file's data is on the XFS realtime device, not on the filesystem's main block device; put the store in a directory without the rtinherit flag"}
	}
	return nil
}

// SetImmutable sets (on) or clears FS_IMMUTABLE_FL on f with
// FS_IOC_GETFLAGS/FS_IOC_SETFLAGS. While it is set nobody (root included)
// can write, truncate, rename, link or unlink the file, and the filesystem
// does not defragment it. Needs CAP_LINUX_IMMUTABLE.
func SetImmutable(f *os.File, on bool) error {
	flags, err := getFlags(f)
	if err != nil {
		return fmt.Errorf("set immutable on %q: %w", f.Name(), err)
	}
	want := flags &^ FS_IMMUTABLE_FL
	if on {
		want |= FS_IMMUTABLE_FL
	}
	if want == flags {
		return nil
	}
	if err := setFlags(f, want); err != nil {
		verb := "set"
		if !on {
			verb = "clear"
		}
		return fmt.Errorf("%s immutable on %q: %w", verb, f.Name(), err)
	}
	return nil
}

// IsImmutable reports whether FS_IMMUTABLE_FL is set on f.
func IsImmutable(f *os.File) (bool, error) {
	flags, err := getFlags(f)
	if err != nil {
		return false, fmt.Errorf("read flags of %q: %w", f.Name(), err)
	}
	return flags&FS_IMMUTABLE_FL != 0, nil
}

// IsPinned reports whether f2fs has pinned f's blocks (FS_NOCOW_FL in
// FS_IOC_GETFLAGS, or a nonzero F2FS_IOC_GET_PIN_FILE). f2fs may unpin a
// file on its own after repeated garbage-collection failures, so a mapped
// store on f2fs is re-checked. On other filesystems it reports false: ext4
// and xfs have no pinning and do not move an immutable file's blocks.
func IsPinned(f *os.File) (bool, error) {
	magic, _, err := fstatfs(f)
	if err != nil {
		return false, fmt.Errorf("check pinning of %q: %w", f.Name(), err)
	}
	if magic != F2FS_SUPER_MAGIC {
		return false, nil
	}
	flags, err := getFlags(f)
	if err != nil {
		return false, fmt.Errorf("check pinning of %q: %w", f.Name(), err)
	}
	if flags&FS_NOCOW_FL != 0 {
		return true, nil
	}
	n, err := getPinFile(f)
	if err != nil {
		return false, fmt.Errorf("check pinning of %q: %w", f.Name(), err)
	}
	return n != 0, nil
}

// Remove deletes a store file: it clears FS_IMMUTABLE_FL, unpins it on
// f2fs, and unlinks it. A missing file is not an error, so Remove can be
// repeated after a crash. It refuses a symlink (O_NOFOLLOW) and anything
// but a regular file.
func Remove(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow|oCloExec, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove store %q: %w", path, err)
	}
	st, err := fstat(f)
	if err == nil && !st.regular {
		err = fmt.Errorf("not a regular file")
	}
	if err == nil {
		err = SetImmutable(f, false)
	}
	if err == nil {
		if magic, _, serr := fstatfs(f); serr != nil {
			err = serr
		} else if magic == F2FS_SUPER_MAGIC {
			err = setPinFile(f, false)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("remove store %q: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove store %q: %w", path, err)
	}
	return nil
}

// CheckStorePath refuses, before anything is created, a store path that goes
// through a symbolic link on the store's filesystem or is one (SymlinkError),
// as Allocate would.
func CheckStorePath(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("store path %q: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(abs))
	if err != nil {
		return fmt.Errorf("store path %q: open directory: %w", path, err)
	}
	defer d.Close()
	dst, err := fstat(d)
	if err != nil {
		return fmt.Errorf("store path %q: %w", path, err)
	}
	if err := checkPath(abs, dst.dev); err != nil {
		var s SymlinkError
		if errors.As(err, &s) {
			s.Path = path
			return s
		}
		return err
	}
	return nil
}
