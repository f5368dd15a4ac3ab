package fiemap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapctl/snapctl/dmtable"
)

// MapOptions tune Map.
type MapOptions struct {
	// ChunkSize, when not 0, is the snapshot chunk size in bytes: every
	// extent and segment must start and end on a multiple of it.
	ChunkSize uint64
	// MaxExtents caps the merged extent count; 0 means DefaultMaxExtents.
	MaxExtents int
	// Limits reads a block device's queue limits; nil means DeviceLimits.
	Limits func(major, minor uint32) (Limits, error)
}

// Mapping is where a store file's bytes are: its filesystem, its extents on
// the filesystem's device, and the same bytes as segments on raw devices,
// ready to become the store device's `linear` table.
type Mapping struct {
	Path      string    `json:"path"`
	Size      uint64    `json:"size"` // bytes
	FS        FS        `json:"filesystem"`
	Extents   []Extent  `json:"extents"`  // merged, offsets on FS.Dev
	Segments  []Segment `json:"segments"` // on raw devices, in sectors
	Limits    Limits    `json:"limits"`   // stacked over FS.Dev and every raw device
	ChunkSize uint64    `json:"chunk_size,omitempty"`
	Immutable bool      `json:"immutable"` // FS_IMMUTABLE_FL is set
	Pinned    bool      `json:"pinned"`    // f2fs only: the blocks are pinned
	Warnings  []string  `json:"warnings,omitempty"`
}

// Table is the `linear` table that maps the store's sectors to its blocks.
func (m *Mapping) Table() (dmtable.Table, error) { return LinearTable(m.Segments) }

// Map finds where the file at path lies on raw block devices. It refuses a
// path through a symlink on the file's filesystem (SymlinkError), a
// filesystem other than ext4, xfs and f2fs (UnsupportedFSError), extents with
// refused flags, holes and excessive fragmentation (ExtentFlagError, HoleError,
// TooFragmentedError), a filesystem not on a device-mapper device
// (DirectMountError), targets other than linear beneath it
// (UnsupportedTargetError), and runs not aligned to the devices' logical block
// size or opts.ChunkSize (MisalignedError). It changes nothing.
func Map(path string, lookup TableLookup, opts MapOptions) (*Mapping, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	f, err := os.OpenFile(abs, os.O_RDONLY|oNoFollow|oCloExec, 0)
	if err != nil {
		if isSymlinkLoop(err) {
			return nil, SymlinkError{Path: path, Link: abs}
		}
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	defer f.Close()
	st, err := fstat(f)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	if !st.regular {
		return nil, fmt.Errorf("map %q: not a regular file", path)
	}
	if err := checkPath(abs, st.dev); err != nil {
		var s SymlinkError
		if errors.As(err, &s) {
			s.Path = path
			return nil, s
		}
		return nil, err
	}
	fsys, err := statFS(f)
	if err != nil {
		var u UnsupportedFSError
		if errors.As(err, &u) {
			u.Path = path
			return nil, u
		}
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	if fsys.Magic == XFS_SUPER_MAGIC {
		if err := checkNotRealtime(f); err != nil {
			return nil, fmt.Errorf("map %q: %w", path, err)
		}
	}
	exts, err := ExtentsMax(f, opts.MaxExtents)
	if err != nil {
		return nil, err
	}
	segs, err := Resolve(exts, fsys.Major, fsys.Minor, lookup)
	if err != nil {
		var dm DirectMountError
		if errors.As(err, &dm) {
			dm.Path = path
			return nil, dm
		}
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	limitsOf := opts.Limits
	if limitsOf == nil {
		limitsOf = DeviceLimits
	}
	lim, err := limitsOf(fsys.Major, fsys.Minor)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	seen := map[string]bool{fsys.Dev: true}
	for _, s := range segs {
		if seen[s.Dev] {
			continue
		}
		seen[s.Dev] = true
		ma, mi, err := dmtable.ParseDevNum(s.Dev)
		if err != nil {
			return nil, fmt.Errorf("map %q: %w", path, err)
		}
		l, err := limitsOf(ma, mi)
		if err != nil {
			return nil, fmt.Errorf("map %q: %w", path, err)
		}
		lim = lim.Stack(l)
	}
	warnings, err := CheckAlignment(path, fsys.Dev, exts, segs, lim, opts.ChunkSize)
	if err != nil {
		return nil, err
	}
	imm, err := IsImmutable(f)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	pinned, err := IsPinned(f)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", path, err)
	}
	return &Mapping{
		Path: abs, Size: st.size, FS: fsys, Extents: exts, Segments: segs, Limits: lim,
		ChunkSize: opts.ChunkSize, Immutable: imm, Pinned: pinned, Warnings: warnings,
	}, nil
}

// MismatchError reports a store whose blocks are no longer where the state
// record says: the filesystem moved them, or the file was replaced.
type MismatchError struct {
	Path  string
	Index int      // first differing segment
	Saved *Segment // nil: the file now has more segments than saved
	Now   *Segment // nil: the file now has fewer segments than saved
}

func (e MismatchError) Error() string {
	seg := func(s *Segment) string {
		if s == nil {
			return "none"
		}
		return fmt.Sprintf("%d sectors at file sector %d on %s sector %d", s.Length, s.Logical, s.Dev, s.DevOffset)
	}
	return fmt.Sprintf("store %q has moved: segment %d was %s, is now %s; its recorded mapping no longer matches its blocks (was the file replaced, or its immutable flag cleared?)",
		e.Path, e.Index, seg(e.Saved), seg(e.Now))
}

// Revalidate maps the store at path again (FIEMAP and Resolve, as Map does)
// and compares the result with the saved segments. It returns MismatchError
// at the first difference, and the fresh Mapping so the caller can check
// Immutable and Pinned as well.
func Revalidate(path string, saved []Segment, lookup TableLookup) (*Mapping, error) {
	m, err := Map(path, lookup, MapOptions{MaxExtents: max(DefaultMaxExtents, len(saved)+1)})
	if err != nil {
		return nil, err
	}
	for i := 0; i < max(len(saved), len(m.Segments)); i++ {
		var a, b *Segment
		if i < len(saved) {
			a = &saved[i]
		}
		if i < len(m.Segments) {
			b = &m.Segments[i]
		}
		if a == nil || b == nil || *a != *b {
			return m, MismatchError{Path: path, Index: i, Saved: a, Now: b}
		}
	}
	return m, nil
}
