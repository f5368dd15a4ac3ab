package merge

import (
	"errors"
	"fmt"
)

// What can be wrong with a store. Each CorruptError wraps one of these, so
// callers can test with errors.Is.
var (
	ErrBadMagic     = errors.New("bad magic")
	ErrBadVersion   = errors.New("unsupported format version")
	ErrBadValid     = errors.New("bad valid flag")
	ErrBadChunkSize = errors.New("bad chunk size")
	ErrTruncated    = errors.New("store truncated")
	ErrMetadataSlot = errors.New("new chunk on a metadata slot")
	ErrPastStore    = errors.New("new chunk past the end of the store")
	ErrPastOrigin   = errors.New("old chunk past the end of the origin")
	ErrDuplicateOld = errors.New("duplicate old chunk")
	ErrDuplicateNew = errors.New("duplicate new chunk")
)

// ErrChunkSizeMismatch is wrapped by ChunkSizeError.
var ErrChunkSizeMismatch = errors.New("chunk size mismatch")

// ErrInvalidStore refuses a store whose header says valid = 0.
var ErrInvalidStore = errors.New("store is marked invalid (valid=0): the kernel dropped this snapshot " +
	"after it overflowed or hit an I/O error, so its exceptions do not describe a complete earlier state; " +
	"a kernel merge of it is a silent no-op and the snapshot is lost")

// ErrFreshStore refuses a store whose header is zeroed: the kernel never
// activated it, so it holds no exceptions. Merging it would do nothing; the
// more likely explanation is a wrong path.
var ErrFreshStore = errors.New("store header is zeroed: the kernel never used this store, there is nothing to merge")

// CorruptError says what is wrong with a store and where. Area and Entry are
// -1 when the problem is not in an exception table (the header, the size).
type CorruptError struct {
	Kind   error // one of the Err* values above
	Area   int64 // metadata area, or -1
	Entry  int64 // entry within the area, or -1
	Detail string
}

func (e *CorruptError) Error() string {
	where := "header"
	switch {
	case e.Area >= 0 && e.Entry >= 0:
		where = fmt.Sprintf("area %d entry %d", e.Area, e.Entry)
	case e.Area >= 0:
		where = fmt.Sprintf("area %d", e.Area)
	}
	return fmt.Sprintf("corrupt store: %s: %s", where, e.Detail)
}

func (e *CorruptError) Unwrap() error { return e.Kind }

// ChunkSizeError reports a store whose header records a different chunk size
// than the one the caller expects (from the snapshot table or state record).
type ChunkSizeError struct {
	Header, Expected uint32 // sectors
}

func (e *ChunkSizeError) Error() string {
	return fmt.Sprintf("store chunk size %d sectors (%d bytes) differs from the expected %d sectors (%d bytes)",
		e.Header, int64(e.Header)*SectorSize, e.Expected, int64(e.Expected)*SectorSize)
}

func (e *ChunkSizeError) Unwrap() error { return ErrChunkSizeMismatch }

// OverlapError refuses a merge that would write over the store itself: an
// exception's origin chunk covers bytes where the store lives on the same
// device. Such a copy would destroy data still to be copied, so it is not
// idempotent and cannot be restarted.
type OverlapError struct {
	Exception Exception
	Extent    Extent // the protected range hit, in origin bytes
}

func (e *OverlapError) Error() string {
	return fmt.Sprintf("exception %v would overwrite the store's own extent at byte %d (+%d) of the origin",
		e.Exception, e.Extent.Offset, e.Extent.Length)
}

func corrupt(kind error, area, entry int64, format string, args ...any) error {
	return &CorruptError{Kind: kind, Area: area, Entry: entry, Detail: fmt.Sprintf(format, args...)}
}
