package dmtable

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a device-mapper version triple: of the ioctl interface (the
// "driver" version `dmsetup version` prints) or of a target type.
type Version [3]uint32

// String renders "major.minor.patch".
func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v[0], v[1], v[2]) }

// AtLeast reports whether v is major.minor.patch or later.
func (v Version) AtLeast(major, minor, patch uint32) bool {
	w := Version{major, minor, patch}
	for i := range v {
		if v[i] != w[i] {
			return v[i] > w[i]
		}
	}
	return true
}

// MarshalText renders the version as "major.minor.patch" (also in JSON).
func (v Version) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText parses "major.minor.patch".
func (v *Version) UnmarshalText(b []byte) error {
	p, err := ParseVersion(string(b))
	if err != nil {
		return err
	}
	*v = p
	return nil
}

// ParseVersion parses "major.minor.patch".
func ParseVersion(s string) (Version, error) {
	f := strings.Split(s, ".")
	if len(f) != 3 {
		return Version{}, fmt.Errorf("parse version %q: want major.minor.patch", s)
	}
	var v Version
	for i, x := range f {
		n, err := strconv.ParseUint(x, 10, 32)
		if err != nil {
			return Version{}, fmt.Errorf("parse version %q: %w", s, err)
		}
		v[i] = uint32(n)
	}
	return v, nil
}

// TargetVersion is one target type the kernel has registered.
type TargetVersion struct {
	Name    string  `json:"name"`
	Version Version `json:"version"`
}
