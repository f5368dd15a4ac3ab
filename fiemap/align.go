package fiemap

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Limits are the I/O size limits of a block device, in bytes, as the
// kernel's request queue reports them (/sys/dev/block/M:m/queue).
type Limits struct {
	LogicalBlockSize  uint64 `json:"logical_block_size"`  // smallest addressable unit
	PhysicalBlockSize uint64 `json:"physical_block_size"` // smallest unit written without read-modify-write
	MinIO             uint64 `json:"min_io"`              // preferred minimum I/O size (io_min)
}

// Stack combines the limits of two devices that one table maps: the larger
// of each, as the kernel stacks queue limits for a device-mapper device.
// Block sizes are powers of two, so the larger is a multiple of the smaller.
func (l Limits) Stack(o Limits) Limits {
	return Limits{
		LogicalBlockSize:  max(l.LogicalBlockSize, o.LogicalBlockSize),
		PhysicalBlockSize: max(l.PhysicalBlockSize, o.PhysicalBlockSize),
		MinIO:             max(l.MinIO, o.MinIO),
	}
}

// DeviceLimits reads the queue limits of block device major:minor from
// sysfs (/sys/dev/block/M:m/queue). A partition reports its disk's limits.
func DeviceLimits(major, minor uint32) (Limits, error) {
	return deviceLimits("/sys/dev/block", major, minor)
}

// deviceLimits is DeviceLimits under the sysfs directory sysBlock.
func deviceLimits(sysBlock string, major, minor uint32) (Limits, error) {
	dev := devString(major, minor)
	dir := filepath.Join(sysBlock, dev)
	q := filepath.Join(dir, "queue")
	if _, err := os.Stat(q); err != nil {
		// A partition has no queue of its own; its disk's is one level up
		// from where the M:m link points.
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return Limits{}, fmt.Errorf("read queue limits of %s: %w", dev, err)
		}
		q = filepath.Join(filepath.Dir(real), "queue")
	}
	var l Limits
	for _, f := range []struct {
		name string
		v    *uint64
	}{
		{"logical_block_size", &l.LogicalBlockSize},
		{"physical_block_size", &l.PhysicalBlockSize},
		{"minimum_io_size", &l.MinIO},
	} {
		b, err := os.ReadFile(filepath.Join(q, f.name))
		if err != nil {
			return Limits{}, fmt.Errorf("read queue limits of %s: %w", dev, err)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return Limits{}, fmt.Errorf("read queue limits of %s: %s: %w", dev, f.name, err)
		}
		*f.v = v
	}
	if l.LogicalBlockSize == 0 {
		l.LogicalBlockSize = SectorSize
	}
	return l, nil
}

// MisalignedError reports a store extent or segment that does not start or
// end on a multiple of a required alignment.
type MisalignedError struct {
	Path    string
	Logical uint64 // byte offset in the file of the misaligned run
	Offset  uint64 // its byte offset on Dev
	Dev     string // "major:minor" of the device Offset refers to
	Length  uint64 // bytes
	Align   uint64 // the required multiple, bytes
	What    string // what requires it: "the logical block size", "the chunk size"
}

func (e MisalignedError) Error() string {
	return fmt.Sprintf("store %q: the run at file byte %d (%d bytes at byte %d of %s) is not a multiple of %s (%d bytes): the kernel would refuse or corrupt I/O to it; re-create the store (snapctl allocates whole blocks) or choose a chunk size the filesystem's block size is a multiple of",
		e.Path, e.Logical, e.Length, e.Offset, e.Dev, e.What, e.Align)
}

// CheckAlignment checks that every extent and every segment of a store
// starts (in the file and on its device) and ends on a multiple of the
// logical block size of lim and of chunk bytes (0: no chunk requirement).
// It returns MisalignedError for the first run that does not. Runs that are
// not multiples of the physical block size or of io_min are only slower:
// they come back as warnings, one per kind.
func CheckAlignment(path string, fsDev string, exts []Extent, segs []Segment, lim Limits, chunk uint64) (warnings []string, err error) {
	type run struct {
		logical, offset, length uint64
		dev                     string
	}
	// The runs are the extents and then the segments, visited in place:
	// a store has up to 50,000 of each.
	each := func(f func(r run) bool) {
		for _, e := range exts {
			if !f(run{e.Logical, e.Physical, e.Length, fsDev}) {
				return
			}
		}
		for _, s := range segs {
			if !f(run{s.Logical * SectorSize, s.DevOffset * SectorSize, s.Length * SectorSize, s.Dev}) {
				return
			}
		}
	}
	aligned := func(r run, a uint64) bool {
		return a <= 1 || (r.logical%a == 0 && r.offset%a == 0 && r.length%a == 0)
	}
	for _, req := range []struct {
		a    uint64
		what string
	}{
		{SectorSize, "the sector size"},
		{lim.LogicalBlockSize, "the logical block size"},
		{chunk, "the chunk size"},
	} {
		each(func(r run) bool {
			if !aligned(r, req.a) {
				err = MisalignedError{Path: path, Logical: r.logical, Offset: r.offset, Dev: r.dev, Length: r.length, Align: req.a, What: req.what}
				return false
			}
			return true
		})
		if err != nil {
			return nil, err
		}
	}
	for _, adv := range []struct {
		a, already uint64 // already: a multiple checked before
		what       string
	}{
		{lim.PhysicalBlockSize, lim.LogicalBlockSize, "physical block size"},
		{lim.MinIO, max(lim.LogicalBlockSize, lim.PhysicalBlockSize), "minimum I/O size (io_min)"},
	} {
		if adv.a <= adv.already || (chunk != 0 && chunk%adv.a == 0) {
			continue // implied by a required alignment
		}
		var bad int
		var first run
		each(func(r run) bool {
			if !aligned(r, adv.a) {
				if bad == 0 {
					first = r
				}
				bad++
			}
			return true
		})
		if bad > 0 {
			warnings = append(warnings, fmt.Sprintf("%d of %d runs of %q are not multiples of the %s (%d bytes), first at file byte %d (byte %d of %s): I/O to them needs read-modify-write and is slower",
				bad, len(exts)+len(segs), path, adv.what, adv.a, first.logical, first.offset, first.dev))
		}
	}
	return warnings, nil
}
