package dmtable

import (
	"fmt"
	"strconv"
	"strings"
)

// Target is one line of a device-mapper table: the target of type Type maps
// Length sectors of the device, starting at sector Start, and is configured
// by Params (the text after the type on a `dmsetup table` line).
type Target struct {
	Start  uint64 // first sector of the device this target maps
	Length uint64 // number of 512-byte sectors
	Type   string // target type: "linear", "snapshot", ...
	Params string // target parameters, as the kernel reports them
}

// Table is a device's complete table: targets sorted by Start, each starting
// where the previous one ends, the first at sector 0.
type Table []Target

// String renders t in the text form dmsetup reads and prints: one target per
// line, "start length type params" ("start length type" with no params).
func (t Target) String() string { return string(t.appendText(nil)) }

// appendText appends t's text form to b (strconv, not fmt: a store's table
// has up to 50,000 targets).
func (t Target) appendText(b []byte) []byte {
	b = strconv.AppendUint(b, t.Start, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, t.Length, 10)
	b = append(b, ' ')
	b = append(b, t.Type...)
	if t.Params != "" {
		b = append(b, ' ')
		b = append(b, t.Params...)
	}
	return b
}

// String renders the table one target per line, each ending in a newline.
func (t Table) String() string {
	b := make([]byte, 0, 48*len(t))
	for _, tg := range t {
		b = tg.appendText(b)
		b = append(b, '\n')
	}
	return string(b)
}

// Sectors is the size of the device the table describes, in sectors.
func (t Table) Sectors() uint64 {
	if len(t) == 0 {
		return 0
	}
	last := t[len(t)-1]
	return last.Start + last.Length
}

// Validate checks that the table is loadable as a whole: at least one target,
// no empty target, no gap and no overlap, the first target at sector 0, type
// names the kernel can hold, and, for the target types this package knows
// (linear, snapshot-origin, snapshot, snapshot-merge), well-formed parameters.
// The error is an InvalidTableError.
func (t Table) Validate() error {
	if len(t) == 0 {
		return invalidTable("table is empty")
	}
	var next uint64
	for i, tg := range t {
		if tg.Length == 0 {
			return invalidTable("target %d (%s) has length 0", i, tg.Type)
		}
		if tg.Type == "" || strings.ContainsAny(tg.Type, " \t\n\x00") {
			return invalidTable("target %d has an invalid type %q", i, tg.Type)
		}
		if len(tg.Type) > maxTypeLen {
			return invalidTable("target %d has a type name longer than %d bytes: %q", i, maxTypeLen, tg.Type)
		}
		if strings.ContainsAny(tg.Params, "\n\x00") {
			return invalidTable("target %d (%s) parameters contain a newline or NUL", i, tg.Type)
		}
		switch {
		case tg.Start > next:
			return invalidTable("gap in table: sectors %d-%d are not mapped (target %d starts at %d)", next, tg.Start-1, i, tg.Start)
		case tg.Start < next:
			return invalidTable("overlap in table: target %d starts at sector %d, inside the previous target which ends at %d", i, tg.Start, next)
		}
		if tg.Start+tg.Length < tg.Start {
			return invalidTable("target %d (%s) overflows the sector range", i, tg.Type)
		}
		if err := checkParams(tg); err != nil {
			return invalidTable("target %d: %v", i, err)
		}
		next = tg.Start + tg.Length
	}
	return nil
}

// maxTypeLen is the longest target type name: dm_target_spec.target_type is
// DM_MAX_TYPE_NAME (16) bytes including the terminating NUL.
const maxTypeLen = 15

// Target type names of the targets snapctl builds.
const (
	TypeLinear         = "linear"
	TypeSnapshotOrigin = "snapshot-origin"
	TypeSnapshot       = "snapshot"
	TypeSnapshotMerge  = "snapshot-merge"
	TypeZero           = "zero"
)

// checkParams parses the parameters of the target types this package knows;
// other types are passed to the kernel unchecked.
func checkParams(tg Target) error {
	var err error
	switch tg.Type {
	case TypeLinear:
		var p LinearParams
		if p, err = ParseLinear(tg.Params); err == nil && !validDevArg(p.Dev) {
			err = fmt.Errorf("linear device %q is not a path or major:minor", p.Dev)
		}
	case TypeSnapshotOrigin:
		_, err = ParseSnapshotOrigin(tg.Params)
	case TypeSnapshot:
		_, err = ParseSnapshot(tg.Params)
	case TypeSnapshotMerge:
		_, err = ParseSnapshotMerge(tg.Params)
	case TypeZero:
		if tg.Params != "" {
			err = fmt.Errorf("zero takes no parameters, got %q", tg.Params)
		}
	}
	return err
}

// ParseTable parses the text form of a table (as printed by String or by
// `dmsetup table NAME`). Blank lines are skipped. It does not Validate.
func ParseTable(s string) (Table, error) {
	var t Table
	for n, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		tg, err := ParseTarget(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		t = append(t, tg)
	}
	return t, nil
}

// ParseTarget parses one "start length type [params]" line.
func ParseTarget(line string) (Target, error) {
	f := strings.Fields(line)
	if len(f) < 3 {
		return Target{}, fmt.Errorf("parse target %q: want \"start length type params\"", line)
	}
	start, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return Target{}, fmt.Errorf("parse target %q: start: %w", line, err)
	}
	length, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return Target{}, fmt.Errorf("parse target %q: length: %w", line, err)
	}
	return Target{Start: start, Length: length, Type: f[2], Params: strings.Join(f[3:], " ")}, nil
}

// Linear is a `linear` target mapping [start, start+length) to dev at offset
// (all in sectors). dev is a path or "major:minor".
func Linear(start, length uint64, dev string, offset uint64) Target {
	return Target{Start: start, Length: length, Type: "linear", Params: dev + " " + strconv.FormatUint(offset, 10)}
}

// Zero is a `zero` target of length sectors at start: reads return zeros,
// writes are discarded.
func Zero(start, length uint64) Target {
	return Target{Start: start, Length: length, Type: TypeZero}
}

// LinearParams is the parsed parameter list of a `linear` target.
type LinearParams struct {
	Dev    string // "major:minor" as the kernel reports it, or a path
	Offset uint64 // sectors
}

// ParseLinear parses the params of a `linear` target: "dev offset".
func ParseLinear(params string) (LinearParams, error) {
	f := strings.Fields(params)
	if len(f) != 2 {
		return LinearParams{}, fmt.Errorf("parse linear params %q: want \"device offset\"", params)
	}
	off, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return LinearParams{}, fmt.Errorf("parse linear params %q: offset: %w", params, err)
	}
	return LinearParams{Dev: f[0], Offset: off}, nil
}

// ParseDevNum parses a "major:minor" device number.
func ParseDevNum(s string) (major, minor uint32, err error) {
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("parse device number %q: want major:minor", s)
	}
	ma, err := strconv.ParseUint(a, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("parse device number %q: %w", s, err)
	}
	mi, err := strconv.ParseUint(b, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("parse device number %q: %w", s, err)
	}
	return uint32(ma), uint32(mi), nil
}
