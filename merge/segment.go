package merge

// Segment is one stretch of a store on a raw device: Length bytes of the
// store, following those of the previous segments, live at byte Offset of
// Path. A store file kept by snapctl is read through its extents this way,
// never through the file itself. A Zero segment has no Path: its Length
// bytes read as zeros and cannot be written (the data slots of a seeded
// store, which the COW device maps onto a `zero` target).
type Segment struct {
	Path   string `json:"path"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	Zero   bool   `json:"zero,omitempty"`
}

// Extent is a byte range.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// OpenFlags choose how OpenRaw and OpenSegments open their files.
type OpenFlags uint8

const (
	// OpenWrite opens for reading and writing.
	OpenWrite OpenFlags = 1 << iota
	// OpenExclusive opens a block device with O_EXCL, which fails with
	// EBUSY while it is mounted or held by device-mapper.
	OpenExclusive
	// OpenDirect uses O_DIRECT for regular files as well (block devices
	// always get it), falling back to the page cache on a filesystem that
	// does not support it.
	OpenDirect
)
