package freespace

import (
	"cmp"
	"fmt"
	"slices"
)

// Extent is a byte range on the filesystem's data device.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// Run is Count consecutive chunks from chunk Start.
type Run struct {
	Start uint64 `json:"start"`
	Count uint64 `json:"count"`
}

// End is the chunk after the run.
func (r Run) End() uint64 { return r.Start + r.Count }

// UnsupportedError reports a filesystem that cannot report its free space.
type UnsupportedError struct {
	Mountpoint string
	Type       string // "f2fs", "btrfs", or the statfs magic in hex
	Err        error  // the errno of FS_IOC_GETFSMAP
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("read free space of %s: %s cannot report it (FS_IOC_GETFSMAP: %v)", e.Mountpoint, e.Type, e.Err)
}

func (e *UnsupportedError) Unwrap() error { return e.Err }

// Owner codes of struct fsmap's fmr_owner for special owners, from
// include/uapi/linux/fsmap.h (FMR_OWNER(0, code)).
const (
	FMR_OWN_FREE    = 1 // free space
	FMR_OWN_UNKNOWN = 2
	FMR_OWN_FS      = 3 // static filesystem metadata
	FMR_OWN_LOG     = 4 // journal
)

// Flags of struct fsmap's fmr_flags and struct fsmap_head's fmh_oflags.
const (
	FMR_OF_PREALLOC      = 0x1
	FMR_OF_ATTR_FORK     = 0x2
	FMR_OF_EXTENT_MAP    = 0x4
	FMR_OF_SHARED        = 0x8
	FMR_OF_SPECIAL_OWNER = 0x10
	FMR_OF_LAST          = 0x20 // the last record of the map

	FMH_OF_DEV_T = 0x1 // fmr_device holds a dev_t (new_encode_dev)
)

// Record is one struct fsmap record as the kernel returned it.
type Record struct {
	Device   uint32 // fmr_device
	Flags    uint32 // fmr_flags
	Physical uint64 // fmr_physical: bytes on the device
	Owner    uint64 // fmr_owner
	Offset   uint64 // fmr_offset
	Length   uint64 // fmr_length: bytes
}

// Free reports whether r is free space.
func (r Record) Free() bool {
	return r.Flags&FMR_OF_SPECIAL_OWNER != 0 && r.Owner == FMR_OWN_FREE
}

// DecodeDev splits a dev_t encoded as the kernel's new_encode_dev (what
// GETFSMAP puts in fmr_device under FMH_OF_DEV_T): minor bits 0-7, major
// bits 8-19, minor bits 8-19 at bits 20-31.
func DecodeDev(d uint32) (major, minor uint32) {
	return (d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00)
}

// EncodeDev is the kernel's new_encode_dev: the inverse of DecodeDev for
// majors below 4096 and minors below 2^20.
func EncodeDev(major, minor uint32) uint32 {
	return (minor & 0xff) | (major << 8) | ((minor &^ 0xff) << 12)
}

// freeExtents keeps the free records of the device major:minor, sorted by
// offset, adjacent and overlapping ones joined. devT says fmr_device is a
// dev_t (FMH_OF_DEV_T); without it the filesystem numbers its devices its
// own way, and only a map that names a single device can be trusted.
func freeExtents(recs []Record, devT bool, major, minor uint32) ([]Extent, error) {
	var out []Extent
	var other bool
	for _, r := range recs {
		if devT {
			if ma, mi := DecodeDev(r.Device); ma != major || mi != minor {
				continue
			}
		} else if r.Device != recs[0].Device {
			other = true
			continue
		}
		if !r.Free() {
			continue
		}
		if r.Physical > 1<<63-1 || r.Length > 1<<63-1-r.Physical {
			return nil, fmt.Errorf("free space record at byte %d, %d bytes: past 2^63", r.Physical, r.Length)
		}
		if r.Length == 0 {
			continue
		}
		out = append(out, Extent{Offset: int64(r.Physical), Length: int64(r.Length)})
	}
	if other {
		return nil, fmt.Errorf("free space map names several devices without dev_t numbers: cannot tell the data device")
	}
	return Coalesce(out), nil
}

// Coalesce sorts extents by offset and joins those that overlap or touch.
func Coalesce(ex []Extent) []Extent {
	ex = slices.Clone(ex)
	slices.SortFunc(ex, func(a, b Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	var out []Extent
	for _, e := range ex {
		if e.Length <= 0 {
			continue
		}
		if n := len(out); n > 0 && e.Offset <= out[n-1].Offset+out[n-1].Length {
			out[n-1].Length = max(out[n-1].Length, e.Offset+e.Length-out[n-1].Offset)
			continue
		}
		out = append(out, e)
	}
	return out
}

// Chunks returns the chunks of chunkBytes that lie wholly inside the free
// extents, as runs in ascending order; touching extents are joined first,
// so a chunk free in two records counts. A chunk only partly free is left
// out. chunkBytes must be positive.
func Chunks(free []Extent, chunkBytes int64) []Run {
	if chunkBytes <= 0 {
		return nil
	}
	var out []Run
	for _, e := range Coalesce(free) {
		first := (e.Offset + chunkBytes - 1) / chunkBytes
		end := (e.Offset + e.Length) / chunkBytes
		if end <= first {
			continue
		}
		r := Run{Start: uint64(first), Count: uint64(end - first)}
		if n := len(out); n > 0 && out[n-1].End() == r.Start {
			out[n-1].Count += r.Count
			continue
		}
		out = append(out, r)
	}
	return out
}

// Total is the number of chunks in runs.
func Total(runs []Run) uint64 {
	var n uint64
	for _, r := range runs {
		n += r.Count
	}
	return n
}
