package dmtable

import "fmt"

// Dev is a block device number.
type Dev struct {
	Major uint32 `json:"major"`
	Minor uint32 `json:"minor"`
}

// String renders "major:minor", the form tables use.
func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// Device is one device-mapper device as DM_LIST_DEVICES reports it.
type Device struct {
	Name string `json:"name"`
	UUID string `json:"uuid,omitempty"`
	Dev  Dev    `json:"dev"`
}

// DeviceInfo is the state of one device-mapper device (DM_DEV_STATUS).
type DeviceInfo struct {
	Name          string `json:"name"`
	UUID          string `json:"uuid,omitempty"`
	Dev           Dev    `json:"dev"`
	OpenCount     int32  `json:"open_count"` // openers of the mapped device
	EventNr       uint32 `json:"event_nr"`
	Suspended     bool   `json:"suspended"`
	LiveTable     bool   `json:"live_table"`     // a table is active
	InactiveTable bool   `json:"inactive_table"` // a loaded table waits for resume
	ReadOnly      bool   `json:"read_only"`
	TargetCount   uint32 `json:"target_count"` // targets of the live table
}

// TargetStatus is one target's line of a status query (`dmsetup status`):
// Target carries Start, Length and Type, Status the target's own text.
type TargetStatus struct {
	Target Target
	Status string
}

// SuspendOptions are the flags of a suspend.
type SuspendOptions struct {
	// NoFlush (DM_NOFLUSH_FLAG) keeps queued I/O queued instead of
	// completing it before the suspend returns.
	NoFlush bool
	// NoLockFS (DM_SKIP_LOCKFS_FLAG) does not freeze the filesystem on the
	// device.
	NoLockFS bool
}
