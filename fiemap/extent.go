package fiemap

import (
	"fmt"
	"os"
)

// Extent is a run of a file's bytes stored contiguously on the filesystem's
// block device. Offsets and length are in bytes.
type Extent struct {
	Logical  uint64 `json:"logical"`  // offset in the file
	Physical uint64 `json:"physical"` // offset on the filesystem's block device
	Length   uint64 `json:"length"`   // bytes
	Flags    Flags  `json:"flags"`    // FIEMAP_EXTENT_* (union over merged extents)
}

// rawExtent is one extent exactly as FS_IOC_FIEMAP returned it.
type rawExtent = Extent

// DefaultMaxExtents is the default cap on the merged extent count of a
// store, as in AOSP's libfiemap: a table that long is still loadable, a
// longer one means the file is too fragmented to be worth mapping.
const DefaultMaxExtents = 50000

// ExtentFlagError reports an extent whose flags make it unusable as raw
// storage.
type ExtentFlagError struct {
	Path    string
	Logical uint64 // byte offset of the extent in the file
	Length  uint64
	Flag    Flags // the offending flag
}

func (e ExtentFlagError) Error() string {
	_, reason, _ := checkFlags(e.Flag)
	return fmt.Sprintf("file %q: extent at byte %d (%d bytes) is %s: %s; a store must be a plain, fully allocated file (create it with snapctl)",
		e.Path, e.Logical, e.Length, flagName(e.Flag), reason)
}

// HoleError reports a part of the file that has no blocks: a hole, or a
// region past the last extent.
type HoleError struct {
	Path   string
	Offset uint64 // first byte of the hole
	Length uint64 // bytes
}

func (e HoleError) Error() string {
	return fmt.Sprintf("file %q has a hole at bytes %d-%d (%d bytes without blocks): a store must be fully allocated from byte 0 to its size (create it with snapctl, which uses fallocate)",
		e.Path, e.Offset, e.Offset+e.Length-1, e.Length)
}

// TooFragmentedError reports a file with more merged extents than the cap.
type TooFragmentedError struct {
	Path    string
	Extents int // extents seen before giving up (at least Max+1)
	Max     int
}

func (e TooFragmentedError) Error() string {
	return fmt.Sprintf("file %q is too fragmented: more than %d extents (the limit); free space on its filesystem is scattered: delete and re-create the store after freeing space, or put it on another filesystem",
		e.Path, e.Max)
}

// EmptyError reports a file of size 0: nothing to map.
type EmptyError struct{ Path string }

func (e EmptyError) Error() string { return fmt.Sprintf("file %q is empty: nothing to map", e.Path) }

// builder validates extents as FIEMAP returns them, in logical order, and
// merges the contiguous ones. It keeps only the merged list, so memory is
// bounded by the cap even for a file of millions of raw extents.
type builder struct {
	path string
	end  uint64 // the file's size rounded up to a sector: map [0, end)
	max  int
	next uint64 // first logical byte not covered yet
	out  []Extent
	done bool // an extent reached end
}

func newBuilder(path string, size uint64, max int) *builder {
	if max <= 0 {
		max = DefaultMaxExtents
	}
	end := size
	if r := end % 512; r != 0 {
		end += 512 - r
		if end < size { // size within a sector of 2^64
			end = size
		}
	}
	return &builder{path: path, end: end, max: max}
}

// add takes the next raw extent.
func (b *builder) add(e Extent) error {
	if b.done || e.Logical >= b.end {
		// Blocks past the end of the file (preallocated beyond EOF) are
		// not part of the store.
		b.done = true
		return nil
	}
	if bad, _, ok := checkFlags(e.Flags); !ok {
		return ExtentFlagError{Path: b.path, Logical: e.Logical, Length: e.Length, Flag: bad}
	}
	if e.Length == 0 {
		return fmt.Errorf("file %q: extent at byte %d has length 0", b.path, e.Logical)
	}
	if e.Logical+e.Length < e.Logical || e.Physical+e.Length < e.Physical {
		return fmt.Errorf("file %q: extent at byte %d (%d bytes at device byte %d) overflows 64 bits", b.path, e.Logical, e.Length, e.Physical)
	}
	switch {
	case e.Logical > b.next:
		return HoleError{Path: b.path, Offset: b.next, Length: e.Logical - b.next}
	case e.Logical < b.next:
		return fmt.Errorf("file %q: extent at byte %d overlaps the previous one, which ends at byte %d", b.path, e.Logical, b.next)
	}
	if e.Logical+e.Length >= b.end {
		e.Length = b.end - e.Logical
		b.done = true
	}
	b.next = e.Logical + e.Length
	if n := len(b.out); n > 0 {
		p := &b.out[n-1]
		if p.Logical+p.Length == e.Logical && p.Physical+p.Length == e.Physical {
			p.Length += e.Length
			p.Flags |= e.Flags
			return nil
		}
	}
	if len(b.out) >= b.max {
		return TooFragmentedError{Path: b.path, Extents: len(b.out) + 1, Max: b.max}
	}
	b.out = append(b.out, e)
	return nil
}

// finish checks that the extents covered the whole file.
func (b *builder) finish() ([]Extent, error) {
	if b.end == 0 {
		return nil, EmptyError{Path: b.path}
	}
	if b.next < b.end {
		return nil, HoleError{Path: b.path, Offset: b.next, Length: b.end - b.next}
	}
	return b.out, nil
}

// Normalize validates raw FIEMAP extents of a file of size bytes and merges
// the contiguous ones (adjacent both in the file and on the device). It
// refuses extents with flags that rule out a raw mapping (ExtentFlagError),
// holes and a short mapping (HoleError), overlaps, and more than max merged
// extents (TooFragmentedError; max <= 0 means DefaultMaxExtents). The result
// covers [0, size) exactly, with size rounded up to a 512-byte sector;
// extents past it are dropped and the last one is clipped. raw must be in
// logical order, as FIEMAP returns it.
func Normalize(path string, raw []Extent, size uint64, max int) ([]Extent, error) {
	b := newBuilder(path, size, max)
	for _, e := range raw {
		if err := b.add(e); err != nil {
			return nil, err
		}
	}
	return b.finish()
}

// Extents maps the open file f with FS_IOC_FIEMAP (FIEMAP_FLAG_SYNC) and
// returns its merged, validated extents, as Normalize does, with
// DefaultMaxExtents.
func Extents(f *os.File) ([]Extent, error) { return ExtentsMax(f, DefaultMaxExtents) }

// ExtentsMax is Extents with a cap of max merged extents.
func ExtentsMax(f *os.File, max int) ([]Extent, error) {
	st, err := fstat(f)
	if err != nil {
		return nil, fmt.Errorf("map %q: %w", f.Name(), err)
	}
	if !st.regular {
		return nil, fmt.Errorf("map %q: not a regular file", f.Name())
	}
	b := newBuilder(f.Name(), st.size, max)
	req := new(fiemapRequest)
	var start uint64
	for !b.done {
		batch, err := fiemapCall(f, req, start)
		if err != nil {
			return nil, fmt.Errorf("map %q at byte %d: %w", f.Name(), start, err)
		}
		if len(batch) == 0 {
			break // nothing mapped from start on
		}
		last := false
		for _, e := range batch {
			if err := b.add(e); err != nil {
				return nil, err
			}
			last = last || e.Flags&FIEMAP_EXTENT_LAST != 0
		}
		if last {
			break
		}
		e := batch[len(batch)-1]
		next := e.Logical + e.Length
		if next <= start {
			return nil, fmt.Errorf("map %q: FS_IOC_FIEMAP made no progress at byte %d", f.Name(), start)
		}
		start = next
	}
	return b.finish()
}
