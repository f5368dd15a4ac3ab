package dmtable

import (
	"fmt"
	"strconv"
	"strings"
)

// OriginParams is the parameter list of a `snapshot-origin` target: the
// device whose writes are copied into every snapshot of it first.
type OriginParams struct {
	Origin string // path or "major:minor"
}

// String renders the parameters as the table text expects them.
func (p OriginParams) String() string { return p.Origin }

// SnapshotOrigin is a `snapshot-origin` target over origin (a path or
// "major:minor") for sectors [start, start+length).
func SnapshotOrigin(start, length uint64, origin string) Target {
	return Target{Start: start, Length: length, Type: TypeSnapshotOrigin, Params: OriginParams{Origin: origin}.String()}
}

// ParseSnapshotOrigin parses the params of a `snapshot-origin` target.
func ParseSnapshotOrigin(params string) (OriginParams, error) {
	f := strings.Fields(params)
	if len(f) != 1 {
		return OriginParams{}, fmt.Errorf("parse snapshot-origin params %q: want \"origin\"", params)
	}
	if !validDevArg(f[0]) {
		return OriginParams{}, fmt.Errorf("parse snapshot-origin params %q: origin is not a path or major:minor", params)
	}
	return OriginParams{Origin: f[0]}, nil
}

// Store says how a snapshot keeps its exceptions.
type Store int

const (
	// Persistent ("P") keeps the exception table on the COW device, so the
	// snapshot survives a reboot and can be merged.
	Persistent Store = iota
	// PersistentOverflow ("PO", snapshot target 1.15 and later) is
	// Persistent, and a full store fails writes to the snapshot instead of
	// invalidating it. An origin write that finds the store full still
	// invalidates it.
	PersistentOverflow
	// Transient ("N") keeps the exception table in memory only.
	Transient
)

// String is the store's token in the table text: "P", "PO" or "N".
func (s Store) String() string {
	switch s {
	case Persistent:
		return "P"
	case PersistentOverflow:
		return "PO"
	case Transient:
		return "N"
	}
	return fmt.Sprintf("Store(%d)", int(s))
}

// IsPersistent reports whether the store survives a reboot (P or PO).
func (s Store) IsPersistent() bool { return s == Persistent || s == PersistentOverflow }

// ParseStore parses "P", "PO" or "N" (any case, as the kernel accepts).
func ParseStore(s string) (Store, error) {
	switch strings.ToUpper(s) {
	case "P":
		return Persistent, nil
	case "PO":
		return PersistentOverflow, nil
	case "N":
		return Transient, nil
	}
	return 0, fmt.Errorf("parse store %q: want P, PO or N", s)
}

// MaxChunkSectors is the largest chunk size, in sectors, the kernel takes:
// chunk sizes are powers of two and must stay below 2 GiB.
const MaxChunkSectors = 1 << 21

// ValidChunkSectors reports whether n sectors is a chunk size the kernel
// takes, for a snapshot table and for the header of its persistent store: a
// power of two up to MaxChunkSectors. (snapctl's own choice for new stores
// is narrower: cowsize.CheckChunk.)
func ValidChunkSectors(n uint64) bool { return n != 0 && n&(n-1) == 0 && n <= MaxChunkSectors }

// SnapshotParams is the parameter list of a `snapshot` or `snapshot-merge`
// target: "ORIGIN COW P|PO|N CHUNK [N FEATURE...]".
type SnapshotParams struct {
	Origin string // the origin device beneath the snapshot-origin: path or "major:minor"
	COW    string // the exception store device: path or "major:minor"
	Store  Store
	Chunk  uint64 // chunk size in 512-byte sectors, a power of two
	// Features are optional feature arguments (discard_zeroes_cow,
	// discard_passdown_origin); usually none.
	Features []string
}

// String renders the parameters as the table text expects them.
func (p SnapshotParams) String() string {
	s := fmt.Sprintf("%s %s %s %d", p.Origin, p.COW, p.Store, p.Chunk)
	if len(p.Features) > 0 {
		s += fmt.Sprintf(" %d %s", len(p.Features), strings.Join(p.Features, " "))
	}
	return s
}

// Validate checks the parameters the way the kernel's snapshot constructor
// will: devices named, distinct, a known store, a power-of-two chunk size.
func (p SnapshotParams) Validate() error {
	switch {
	case !validDevArg(p.Origin):
		return fmt.Errorf("snapshot origin %q is not a path or major:minor", p.Origin)
	case !validDevArg(p.COW):
		return fmt.Errorf("snapshot COW device %q is not a path or major:minor", p.COW)
	case p.Origin == p.COW:
		return fmt.Errorf("snapshot origin and COW are the same device %q", p.Origin)
	case p.Store != Persistent && p.Store != PersistentOverflow && p.Store != Transient:
		return fmt.Errorf("snapshot store %v is not P, PO or N", p.Store)
	case !ValidChunkSectors(p.Chunk):
		return fmt.Errorf("snapshot chunk size %d sectors is not a power of two up to %d", p.Chunk, MaxChunkSectors)
	}
	for _, f := range p.Features {
		if f == "" || strings.ContainsAny(f, " \t\n\x00") {
			return fmt.Errorf("snapshot feature %q is not a single word", f)
		}
	}
	return nil
}

// Snapshot is a `snapshot` target for sectors [start, start+length): the
// frozen view of p.Origin whose changed chunks live on p.COW. Table.Validate
// checks p.
func Snapshot(start, length uint64, p SnapshotParams) Target {
	return Target{Start: start, Length: length, Type: TypeSnapshot, Params: p.String()}
}

// SnapshotMerge is a `snapshot-merge` target for sectors [start, start+length):
// it presents the snapshot's view while copying the COW's chunks back onto
// p.Origin. The store must be persistent. Table.Validate checks p.
func SnapshotMerge(start, length uint64, p SnapshotParams) Target {
	return Target{Start: start, Length: length, Type: TypeSnapshotMerge, Params: p.String()}
}

// ParseSnapshot parses and validates the params of a `snapshot` target, in
// the form String renders and the kernel reports.
func ParseSnapshot(params string) (SnapshotParams, error) {
	p, err := parseSnapshotParams(params)
	if err != nil {
		return SnapshotParams{}, fmt.Errorf("parse snapshot params %q: %w", params, err)
	}
	return p, nil
}

// ParseSnapshotMerge parses and validates the params of a `snapshot-merge`
// target; the store must be persistent.
func ParseSnapshotMerge(params string) (SnapshotParams, error) {
	p, err := parseSnapshotParams(params)
	if err == nil && !p.Store.IsPersistent() {
		err = fmt.Errorf("merge needs a persistent store, not %v", p.Store)
	}
	if err != nil {
		return SnapshotParams{}, fmt.Errorf("parse snapshot-merge params %q: %w", params, err)
	}
	return p, nil
}

func parseSnapshotParams(params string) (SnapshotParams, error) {
	f := strings.Fields(params)
	if len(f) < 4 {
		return SnapshotParams{}, fmt.Errorf("want \"origin cow P|PO|N chunk\"")
	}
	store, err := ParseStore(f[2])
	if err != nil {
		return SnapshotParams{}, err
	}
	chunk, err := strconv.ParseUint(f[3], 10, 64)
	if err != nil {
		return SnapshotParams{}, fmt.Errorf("chunk size: %w", err)
	}
	p := SnapshotParams{Origin: f[0], COW: f[1], Store: store, Chunk: chunk}
	if rest := f[4:]; len(rest) > 0 {
		n, err := strconv.ParseUint(rest[0], 10, 32)
		if err != nil {
			return SnapshotParams{}, fmt.Errorf("feature count: %w", err)
		}
		if n != uint64(len(rest)-1) {
			return SnapshotParams{}, fmt.Errorf("feature count %d, but %d feature arguments follow", n, len(rest)-1)
		}
		if n > 0 {
			p.Features = append([]string(nil), rest[1:]...)
		}
	}
	if err := p.Validate(); err != nil {
		return SnapshotParams{}, err
	}
	return p, nil
}

// validDevArg reports whether s names a device the way a table may: an
// absolute path or "major:minor".
func validDevArg(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\n\x00") {
		return false
	}
	if strings.HasPrefix(s, "/") {
		return true
	}
	_, _, err := ParseDevNum(s)
	return err == nil
}
