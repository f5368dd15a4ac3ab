package fiemap

import (
	"fmt"
	"sort"

	"github.com/snapctl/snapctl/dmtable"
)

// SectorSize is the unit of device-mapper tables: 512 bytes.
const SectorSize = 512

// maxDepth bounds the walk down a device stack; real stacks are a few
// levels deep, a longer chain is a cycle or a broken lookup.
const maxDepth = 16

// TableLookup returns the live table of the device-mapper device
// major:minor, or ok = false when the device is not a device-mapper device
// (a disk or a partition). dmtable.TableByDev has this shape.
type TableLookup func(major, minor uint32) (t dmtable.Table, ok bool, err error)

// Segment is a run of the store, in 512-byte sectors, on a raw (non
// device-mapper) block device: sectors [Logical, Logical+Length) of the file
// (and of the device-mapper device built over it) are sectors
// [DevOffset, DevOffset+Length) of Dev. Segments are what the state record
// persists.
type Segment struct {
	Logical   uint64 `json:"logical"`    // first sector in the file
	Dev       string `json:"dev"`        // raw device as "major:minor"
	DevOffset uint64 `json:"dev_offset"` // first sector on Dev
	Length    uint64 `json:"length"`     // sectors
}

// DirectMountError reports a store whose filesystem is mounted directly on a
// disk or partition rather than through a device-mapper device.
type DirectMountError struct {
	Path string // the store file (may be empty when Resolve reports it)
	Dev  string // the filesystem's device, "major:minor"
}

func (e DirectMountError) Error() string {
	what := "the store's filesystem"
	if e.Path != "" {
		what = fmt.Sprintf("the filesystem of %q", e.Path)
	}
	return fmt.Sprintf("%s is mounted directly on block device %s, not on a device-mapper device: device-mapper claims every device it maps exclusively, so a linear table over the mounted device would fail with EBUSY; a loop device with direct I/O over the file, or the filesystem on a device-mapper device, avoids that",
		what, e.Dev)
}

// UnsupportedTargetError reports a device in the stack under the store whose
// table has a target snapctl cannot translate offsets through.
type UnsupportedTargetError struct {
	Dev  string // the device-mapper device, "major:minor"
	Type string // its target type at the store's blocks
}

func (e UnsupportedTargetError) Error() string {
	return fmt.Sprintf("device %s under the store is a %q device-mapper target: %s; snapctl maps a store only through linear targets",
		e.Dev, e.Type, targetReason(e.Type))
}

func targetReason(typ string) string {
	switch typ {
	case "crypt":
		return "the store would be written beneath the encryption, unencrypted"
	case "snapshot-origin":
		return "the store would be copied on write into itself"
	case "snapshot", "snapshot-merge":
		return "the store's blocks would bypass a snapshot's exception store"
	case "thin", "thin-pool", "cache", "writecache", "era", "clone", "vdo":
		return "its blocks are not at fixed offsets of a device beneath it"
	case "striped", "raid", "mirror":
		return "its blocks are spread over several devices by a layout snapctl does not translate"
	case "error", "zero":
		return "it has no storage beneath it"
	}
	return "it does not map blocks to fixed offsets snapctl can translate"
}

// devString is the "major:minor" form of a device number.
func devString(major, minor uint32) string { return fmt.Sprintf("%d:%d", major, minor) }

// Resolve translates a file's extents, as offsets on its filesystem's
// device fsMajor:fsMinor, into segments on raw block devices: it walks down
// the stack of device-mapper `linear` tables beneath that device (any number
// of targets per table, any depth), splitting an extent wherever it crosses
// a target boundary, and stops at the first device that is not a
// device-mapper device. Adjacent results that stay contiguous are merged.
//
// Any other target type is refused with UnsupportedTargetError. A filesystem
// device that is not a device-mapper device is refused with DirectMountError
// (its Path is left empty for the caller to fill). Every extent must be
// sector aligned.
func Resolve(extents []Extent, fsMajor, fsMinor uint32, lookup TableLookup) ([]Segment, error) {
	r := resolver{lookup: lookup, tables: map[[2]uint32]lookedUp{}, out: make([]Segment, 0, len(extents))}
	top, err := r.table(fsMajor, fsMinor)
	if err != nil {
		return nil, err
	}
	if !top.ok {
		return nil, DirectMountError{Dev: devString(fsMajor, fsMinor)}
	}
	for _, e := range extents {
		if e.Logical%SectorSize != 0 || e.Physical%SectorSize != 0 || e.Length%SectorSize != 0 {
			return nil, fmt.Errorf("extent at byte %d (%d bytes at device byte %d) is not aligned to %d-byte sectors", e.Logical, e.Length, e.Physical, SectorSize)
		}
		if e.Length == 0 {
			continue
		}
		if err := r.walk(fsMajor, fsMinor, e.Physical/SectorSize, e.Length/SectorSize, e.Logical/SectorSize, 0); err != nil {
			return nil, err
		}
	}
	return r.out, nil
}

type lookedUp struct {
	t   dmtable.Table
	ok  bool
	dev string // "major:minor" of the device itself
	// lower holds each linear target's parsed parameters, parsed once per
	// Resolve rather than once per extent (a store has up to 50,000).
	lower []lowerDev
}

// lowerDev is one linear target's device and offset, or err when its
// parameters do not parse (reported only if an extent reaches it).
type lowerDev struct {
	major, minor uint32
	offset       uint64
	err          error
}

type resolver struct {
	lookup TableLookup
	tables map[[2]uint32]lookedUp
	out    []Segment
}

// table looks a device up once per Resolve and checks its table is whole.
func (r *resolver) table(major, minor uint32) (lookedUp, error) {
	k := [2]uint32{major, minor}
	if l, ok := r.tables[k]; ok {
		return l, nil
	}
	t, ok, err := r.lookup(major, minor)
	if err != nil {
		return lookedUp{}, fmt.Errorf("read table of %s: %w", devString(major, minor), err)
	}
	if ok {
		if err := t.Validate(); err != nil {
			return lookedUp{}, fmt.Errorf("table of %s: %w", devString(major, minor), err)
		}
	}
	l := lookedUp{t: t, ok: ok, dev: devString(major, minor)}
	if ok {
		l.lower = make([]lowerDev, len(t))
		for i, tg := range t {
			if tg.Type != "linear" {
				continue
			}
			lp, err := dmtable.ParseLinear(tg.Params)
			if err != nil {
				l.lower[i].err = fmt.Errorf("device %s: %w", l.dev, err)
				continue
			}
			ma, mi, err := dmtable.ParseDevNum(lp.Dev)
			if err != nil {
				l.lower[i].err = fmt.Errorf("device %s: linear target maps %q: %w", l.dev, lp.Dev, err)
				continue
			}
			l.lower[i] = lowerDev{major: ma, minor: mi, offset: lp.Offset}
		}
	}
	r.tables[k] = l
	return l, nil
}

// walk maps sectors [off, off+n) of device major:minor, which hold the
// file's sectors from logical on.
func (r *resolver) walk(major, minor uint32, off, n, logical uint64, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("device %s: stack of device-mapper devices deeper than %d levels (a cycle?)", devString(major, minor), maxDepth)
	}
	l, err := r.table(major, minor)
	if err != nil {
		return err
	}
	if !l.ok {
		r.emit(Segment{Logical: logical, Dev: l.dev, DevOffset: off, Length: n})
		return nil
	}
	t := l.t
	if off+n < off || off+n > t.Sectors() {
		return fmt.Errorf("device %s: sectors %d-%d are past its end (%d sectors)", devString(major, minor), off, off+n-1, t.Sectors())
	}
	i := sort.Search(len(t), func(i int) bool { return t[i].Start+t[i].Length > off })
	for n > 0 && i < len(t) {
		tg := t[i]
		if tg.Type != "linear" {
			return UnsupportedTargetError{Dev: devString(major, minor), Type: tg.Type}
		}
		lp := l.lower[i]
		if lp.err != nil {
			return lp.err
		}
		lower, lowerMinor := lp.major, lp.minor
		delta := off - tg.Start
		take := min(n, tg.Length-delta)
		lowOff := lp.offset + delta
		if lowOff < lp.offset || lowOff+take < lowOff {
			return fmt.Errorf("device %s: linear target at sector %d maps past 2^64 sectors", devString(major, minor), tg.Start)
		}
		if err := r.walk(lower, lowerMinor, lowOff, take, logical, depth+1); err != nil {
			return err
		}
		off += take
		logical += take
		n -= take
		i++
	}
	return nil
}

// emit appends s, merging it into the previous segment when it continues it.
func (r *resolver) emit(s Segment) {
	if n := len(r.out); n > 0 {
		p := &r.out[n-1]
		if p.Dev == s.Dev && p.Logical+p.Length == s.Logical && p.DevOffset+p.Length == s.DevOffset {
			p.Length += s.Length
			return
		}
	}
	r.out = append(r.out, s)
}

// LinearTable is the device-mapper table for the store: one `linear` target
// per segment, in logical order. The segments must cover the store
// contiguously from sector 0.
func LinearTable(segs []Segment) (dmtable.Table, error) {
	t := make(dmtable.Table, 0, len(segs))
	for _, s := range segs {
		t = append(t, dmtable.Linear(s.Logical, s.Length, s.Dev, s.DevOffset))
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("build store table: %w", err)
	}
	return t, nil
}
