package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/internal/atomicfile"
	"github.com/snapctl/snapctl/internal/strictjson"
)

// FormatVersion is the version of the state record's JSON form.
const FormatVersion = 1

// Mode says where writes land while a volume is prepared.
type Mode string

const (
	// Checkpoint: writes land on the origin; the snapshot keeps the old data.
	Checkpoint Mode = "checkpoint"
	// Update: writes land in the snapshot; the origin is written by the merge.
	Update Mode = "update"
)

// Phase is where a volume is in its life cycle. The phases ending in -ing
// are operations under way; a record found in one of them after a crash is
// finished (or, for preparing, undone) by Activate.
type Phase string

const (
	PhaseAttached  Phase = "attached"  // NAME = linear DEV 0, no snapshot
	PhasePreparing Phase = "preparing" // building the snapshot; undone on recovery
	PhasePrepared  Phase = "prepared"  // the snapshot is live
	PhaseGrowing   Phase = "growing"   // the store is being extended; finished on recovery
	PhaseMerging   Phase = "merging"   // merging the store into the origin; finished on recovery
	PhaseDropping  Phase = "dropping"  // dropping the snapshot; finished on recovery
)

// Busy reports whether the phase is an operation under way.
func (p Phase) Busy() bool {
	switch p {
	case PhasePreparing, PhaseGrowing, PhaseMerging, PhaseDropping:
		return true
	}
	return false
}

// Backend is how NAME-cow reaches the store file's blocks.
type Backend string

const (
	// BackendFIEMAP maps the file's extents (FIEMAP) on the raw devices
	// beneath its filesystem; the file is immutable while it is mapped.
	BackendFIEMAP Backend = "fiemap"
	// BackendLoop puts a loop device with direct I/O over the file, for a
	// filesystem mounted directly on a partition; the kernel then writes the
	// store through its filesystem.
	BackendLoop Backend = "loop"
)

// Overflow is what a full store does to the snapshot.
type Overflow string

const (
	// OverflowInvalidate (table "P"): the kernel invalidates the snapshot.
	OverflowInvalidate Overflow = "invalidate"
	// OverflowFail (table "PO"): writes to the snapshot fail and the
	// snapshot stays valid; an origin write that finds the store full still
	// invalidates it.
	OverflowFail Overflow = "fail"
)

// Device identifies a block device by the path the user gave, the device
// number it had then, and its size, so a renumbered device is detected.
type Device struct {
	Path    string `json:"path"`
	Dev     string `json:"dev"` // "major:minor"
	Sectors uint64 `json:"sectors"`
	// ID is what identifies the device beyond its number and size, where
	// the kernel says (a loop device's backing file, a DM device's uuid or
	// name, a disk's WWID or serial, a partition's number and start on its
	// disk); empty when nothing does.
	ID string `json:"id,omitempty"`
}

// Segment is one piece of the store on a raw device: Length sectors at
// Offset of device Dev ("major:minor").
type Segment struct {
	Dev    string `json:"dev"`
	Offset uint64 `json:"offset"`
	Length uint64 `json:"length"`
}

// Store is the exception store: a file whose extents are mapped, through
// NAME-cow, on the raw devices beneath its filesystem.
type Store struct {
	Path         string    `json:"path"`
	FSDev        string    `json:"fs_dev"` // device of the filesystem holding the file
	Inode        uint64    `json:"inode"`
	Bytes        uint64    `json:"bytes"`
	ChunkSectors uint32    `json:"chunk_sectors"`
	Backend      Backend   `json:"backend"`
	Overflow     Overflow  `json:"overflow"`
	Segments     []Segment `json:"segments"`
	// Unusable is "overflow" or "invalid" once any snapctl command saw the
	// kernel report the store so (or found its header marked invalid). The
	// kernel keeps Overflow in memory only: after a deactivate or a reboot
	// the store loads clean, so the record remembers it, and a store marked
	// here is never merged. Empty in records written before the field.
	Unusable string `json:"unusable,omitempty"`
	// Seeded is how the store was seeded with the free chunks of the
	// volume's filesystem (checkpoint mode, prepare --skip-free); nil for
	// an ordinary store.
	Seeded *SeedInfo `json:"seeded,omitempty"`
}

// Sectors is the size of the mapped store.
func (s *Store) Sectors() uint64 {
	var n uint64
	for _, seg := range s.Segments {
		n += seg.Length
	}
	return n
}

// Event is one line of a volume's history.
type Event struct {
	Time   time.Time `json:"time"`
	Event  string    `json:"event"`
	Detail string    `json:"detail,omitempty"`
}

// Record is the persisted state of one volume.
type Record struct {
	Format int    `json:"format"`
	Name   string `json:"name"`
	Mode   Mode   `json:"mode,omitempty"`
	Phase  Phase  `json:"phase"`
	// Step is the step of the operation under way that was about to run
	// (write-ahead), for diagnostics and the crash-test hook.
	Step string `json:"step,omitempty"`
	// Command is the command that started the operation under way.
	Command string `json:"command,omitempty"`
	// Created says NAME did not exist before prepare created it (update mode
	// on a volume that was never attached): undoing prepare removes it.
	Created bool `json:"created,omitempty"`
	// Scheduled is an operation to run at the next activate ("rollback").
	Scheduled string `json:"scheduled,omitempty"`
	// Group is the update group the volume was prepared into: the group's
	// record decides its outcome (see GroupGate).
	Group   string  `json:"group,omitempty"`
	Origin  Device  `json:"origin"`
	Store   *Store  `json:"store,omitempty"`
	Cleanup []Store `json:"cleanup,omitempty"` // store files to delete once reachable
	History []Event `json:"history,omitempty"`
}

func (r *Record) event(name, detail string) {
	r.History = append(r.History, Event{Time: time.Now().UTC(), Event: name, Detail: detail})
	if len(r.History) > 100 {
		r.History = r.History[len(r.History)-100:]
	}
}

// Device names of a volume's stack.
func cowName(v string) string  { return v + "-cow" }
func realName(v string) string { return v + "-real" }
func snapName(v string) string { return v + "-snap" }
func baseName(v string) string { return v + "-base" }

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]*$`)

// CheckName refuses a volume name that cannot be a device-mapper name with
// snapctl's suffixes, or a state file name.
func CheckName(name string) error {
	if len(name) == 0 || len(name)+len("-real") > 127 {
		return fmt.Errorf("volume name %q: want 1 to 122 bytes (device-mapper names are at most 127 with snapctl's suffixes)", name)
	}
	if !validName.MatchString(name) {
		return fmt.Errorf("volume name %q: use letters, digits and . _ + - (no slash, no leading punctuation)", name)
	}
	for _, suffix := range []string{"-cow", "-real", "-snap", "-base"} {
		if strings.HasSuffix(name, suffix) {
			return fmt.Errorf("volume name %q: must not end in %q, which snapctl uses for its own devices", name, suffix)
		}
	}
	if strings.HasSuffix(name, progressSuffix) {
		return fmt.Errorf("volume name %q: must not end in %q, which snapctl uses for its merge progress files", name, progressSuffix)
	}
	return nil
}

// CorruptRecordError is a state record that cannot be trusted. snapctl never
// guesses: the user must look at it.
type CorruptRecordError struct {
	Path string
	Err  error
}

func (e *CorruptRecordError) Error() string {
	return fmt.Sprintf("state record %s is unreadable or corrupt: %v", e.Path, e.Err)
}
func (e *CorruptRecordError) Unwrap() error { return e.Err }

// UnknownVolumeError is a volume with no state record.
type UnknownVolumeError struct{ Name, Dir string }

func (e *UnknownVolumeError) Error() string {
	return fmt.Sprintf("volume %q is unknown (no state record in %s)", e.Name, e.Dir)
}

func recordPath(dir, name string) string { return filepath.Join(dir, name+".json") }

// readRecord loads and checks a volume's record.
func readRecord(dir, name string) (*Record, error) {
	p := recordPath(dir, name)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, &UnknownVolumeError{Name: name, Dir: dir}
	}
	if err != nil {
		return nil, fmt.Errorf("read state record %s: %w", p, err)
	}
	return parseRecord(p, name, b)
}

// parseRecord decodes a record strictly and checks its invariants.
func parseRecord(path, name string, b []byte) (*Record, error) {
	var r Record
	if err := strictjson.Decode(b, &r); err != nil {
		return nil, &CorruptRecordError{Path: path, Err: err}
	}
	if err := r.check(name); err != nil {
		return nil, &CorruptRecordError{Path: path, Err: err}
	}
	return &r, nil
}

func (r *Record) check(name string) error {
	if r.Format != FormatVersion {
		return fmt.Errorf("format %d, this snapctl reads format %d", r.Format, FormatVersion)
	}
	if r.Name != name {
		return fmt.Errorf("record names volume %q, file is for %q", r.Name, name)
	}
	switch r.Phase {
	case PhaseAttached, PhasePreparing, PhasePrepared, PhaseGrowing, PhaseMerging, PhaseDropping:
	default:
		return fmt.Errorf("unknown phase %q", r.Phase)
	}
	if r.Group != "" {
		if err := CheckName(r.Group); err != nil {
			return fmt.Errorf("group: %w", err)
		}
	}
	if r.Origin.Path == "" || r.Origin.Dev == "" || r.Origin.Sectors == 0 {
		return errors.New("origin device is missing")
	}
	if r.Phase != PhaseAttached {
		if r.Mode != Checkpoint && r.Mode != Update {
			return fmt.Errorf("unknown mode %q", r.Mode)
		}
		if r.Store == nil {
			return fmt.Errorf("phase %s without a store", r.Phase)
		}
	}
	if s := r.Store; s != nil {
		if !dmtable.ValidChunkSectors(uint64(s.ChunkSectors)) {
			return fmt.Errorf("store chunk size %d sectors is not a power of two up to %d", s.ChunkSectors, dmtable.MaxChunkSectors)
		}
		if r.Phase != PhasePreparing && len(s.Segments) == 0 {
			return errors.New("store has no extents")
		}
		for i, seg := range s.Segments {
			if seg.Length == 0 || seg.Dev == "" {
				return fmt.Errorf("store segment %d is empty", i)
			}
		}
		if sd := s.Seeded; sd != nil {
			if r.Mode == Update {
				return errors.New("a seeded store in update mode")
			}
			if e := uint64(s.ChunkSectors) * 512 / 16; sd.Seeds != sd.Areas*e {
				return fmt.Errorf("seeded store: %d seeds in %d areas of %d", sd.Seeds, sd.Areas, e)
			}
			if sd.Mountpoint == "" {
				return errors.New("seeded store without the mount point it was frozen at")
			}
		}
	}
	return nil
}

// compactSegments is the segment count above which a record is written
// without indentation.
const compactSegments = 1000

// writeRecord replaces the record atomically: temp file, fsync, rename,
// fsync of the directory. A crash leaves either the old or the new record.
func writeRecord(dir string, r *Record) error {
	r.Format = FormatVersion
	if r.Phase == PhasePreparing && r.Store != nil && len(r.Store.Segments) > 0 {
		// A prepare cut short is undone (activate, or prepare itself),
		// which needs the store's path and inode, not its segments: those
		// are written once, with the phase prepared. A fragmented store
		// has 50,000 and prepare saves the record at each of its steps.
		c, s := *r, *r.Store
		s.Segments = nil
		c.Store = &s
		r = &c
	}
	var (
		b   []byte
		err error
	)
	if r.Store != nil && len(r.Store.Segments) > compactSegments {
		// A fragmented store's record is written without indentation:
		// indenting 50,000 segments (six lines each) made every save of
		// a prepare cost ~100 ms and 4 MB.
		b, err = json.Marshal(r)
	} else {
		b, err = json.MarshalIndent(r, "", "  ")
	}
	if err != nil {
		return err
	}
	b = append(b, '\n')
	return atomicfile.Write(recordPath(dir, r.Name), b, 0o600)
}
