package dmtable

import (
	"fmt"
	"strconv"
	"strings"
)

// SnapshotState is the condition a `snapshot` or `snapshot-merge` target
// reports in its status line.
type SnapshotState int

const (
	// SnapshotUnknown: the store cannot report its usage (the kernel prints
	// "Unknown"). It is also the zero value, so an unset status never looks
	// healthy.
	SnapshotUnknown SnapshotState = iota
	// SnapshotActive: the snapshot is valid and reports its usage.
	SnapshotActive
	// SnapshotInvalid: the snapshot was dropped by the kernel (store full
	// without overflow mode, or an I/O error); its data is gone.
	SnapshotInvalid
	// SnapshotMergeFailed: a merge hit an error and stopped.
	SnapshotMergeFailed
	// SnapshotOverflow: the store of a PO snapshot is full; writes to the
	// snapshot fail, the snapshot itself is still valid.
	SnapshotOverflow
)

func (s SnapshotState) String() string {
	switch s {
	case SnapshotUnknown:
		return "unknown"
	case SnapshotActive:
		return "active"
	case SnapshotInvalid:
		return "invalid"
	case SnapshotMergeFailed:
		return "merge failed"
	case SnapshotOverflow:
		return "overflow"
	}
	return fmt.Sprintf("SnapshotState(%d)", int(s))
}

// MarshalText is the state's String, so JSON shows "active", "invalid",
// "merge failed", "overflow" or "unknown".
func (s SnapshotState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses what MarshalText writes.
func (s *SnapshotState) UnmarshalText(b []byte) error {
	for st := SnapshotUnknown; st <= SnapshotOverflow; st++ {
		if st.String() == string(b) {
			*s = st
			return nil
		}
	}
	return fmt.Errorf("parse snapshot state %q: want active, invalid, merge failed, overflow or unknown", b)
}

// Status words the kernel prints instead of the usage numbers.
const (
	statusInvalid     = "Invalid"
	statusMergeFailed = "Merge failed"
	statusOverflow    = "Overflow"
	statusUnknown     = "Unknown"
)

// SnapshotStatus is the parsed status of a `snapshot` or `snapshot-merge`
// target. The sector counts are set only in SnapshotActive.
type SnapshotStatus struct {
	State SnapshotState
	// Allocated is the number of sectors of the COW device in use: header,
	// metadata areas and data chunks.
	Allocated uint64
	// Total is the size of the COW device in sectors.
	Total uint64
	// Metadata is the part of Allocated that holds the header and the
	// exception tables.
	Metadata uint64
}

// DataSectors is the number of COW sectors holding copied chunks.
func (s SnapshotStatus) DataSectors() uint64 {
	if s.Allocated < s.Metadata {
		return 0
	}
	return s.Allocated - s.Metadata
}

// Merged reports whether a `snapshot-merge` has copied every chunk back: the
// kernel's test is that only metadata remains allocated.
func (s SnapshotStatus) Merged() bool {
	return s.State == SnapshotActive && s.Allocated == s.Metadata
}

// FreeSectors is the number of COW sectors not yet allocated.
func (s SnapshotStatus) FreeSectors() uint64 {
	if s.Total < s.Allocated {
		return 0
	}
	return s.Total - s.Allocated
}

// String renders the status as the kernel prints it.
func (s SnapshotStatus) String() string {
	switch s.State {
	case SnapshotActive:
		return fmt.Sprintf("%d/%d %d", s.Allocated, s.Total, s.Metadata)
	case SnapshotInvalid:
		return statusInvalid
	case SnapshotMergeFailed:
		return statusMergeFailed
	case SnapshotOverflow:
		return statusOverflow
	}
	return statusUnknown
}

// ParseSnapshotStatus parses the status of a `snapshot` or `snapshot-merge`
// target: "<sectors_allocated>/<total_sectors> <metadata_sectors>", or
// exactly "Invalid", "Merge failed", "Overflow" or "Unknown".
func ParseSnapshotStatus(status string) (SnapshotStatus, error) {
	s := strings.TrimSpace(status)
	switch s {
	case statusInvalid:
		return SnapshotStatus{State: SnapshotInvalid}, nil
	case statusMergeFailed:
		return SnapshotStatus{State: SnapshotMergeFailed}, nil
	case statusOverflow:
		return SnapshotStatus{State: SnapshotOverflow}, nil
	case statusUnknown:
		return SnapshotStatus{State: SnapshotUnknown}, nil
	}
	usage, meta, ok := strings.Cut(s, " ")
	if !ok {
		return SnapshotStatus{}, fmt.Errorf("parse snapshot status %q: want \"allocated/total metadata\" or a state word", status)
	}
	alloc, total, ok := strings.Cut(usage, "/")
	if !ok {
		return SnapshotStatus{}, fmt.Errorf("parse snapshot status %q: want \"allocated/total metadata\"", status)
	}
	var st SnapshotStatus
	for _, f := range []struct {
		name string
		text string
		dst  *uint64
	}{{"allocated", alloc, &st.Allocated}, {"total", total, &st.Total}, {"metadata", meta, &st.Metadata}} {
		n, err := strconv.ParseUint(f.text, 10, 64)
		if err != nil {
			return SnapshotStatus{}, fmt.Errorf("parse snapshot status %q: %s sectors: %w", status, f.name, err)
		}
		*f.dst = n
	}
	st.State = SnapshotActive
	return st, nil
}
