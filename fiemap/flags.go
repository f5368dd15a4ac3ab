package fiemap

import (
	"fmt"
	"math/bits"
	"strings"
)

// Flags are the fe_flags of one FIEMAP extent.
type Flags uint32

// Extent flags (fe_flags), from include/uapi/linux/fiemap.h.
const (
	FIEMAP_EXTENT_LAST           Flags = 0x00000001 // last extent of the file
	FIEMAP_EXTENT_UNKNOWN        Flags = 0x00000002 // location not known yet
	FIEMAP_EXTENT_DELALLOC       Flags = 0x00000004 // delayed allocation: no blocks yet (sets UNKNOWN)
	FIEMAP_EXTENT_ENCODED        Flags = 0x00000008 // data is compressed or otherwise encoded
	FIEMAP_EXTENT_DATA_ENCRYPTED Flags = 0x00000080 // data is encrypted (sets ENCODED)
	FIEMAP_EXTENT_NOT_ALIGNED    Flags = 0x00000100 // extent offsets may not be block aligned
	FIEMAP_EXTENT_DATA_INLINE    Flags = 0x00000200 // data is inside metadata (sets NOT_ALIGNED)
	FIEMAP_EXTENT_DATA_TAIL      Flags = 0x00000400 // data is packed with other tails (sets NOT_ALIGNED)
	FIEMAP_EXTENT_UNWRITTEN      Flags = 0x00000800 // allocated but never written: reads return zeroes
	FIEMAP_EXTENT_MERGED         Flags = 0x00001000 // the filesystem merged block-sized extents for us
	FIEMAP_EXTENT_SHARED         Flags = 0x00002000 // blocks are shared with another file
)

var flagNames = []struct {
	f    Flags
	name string
}{
	{FIEMAP_EXTENT_LAST, "last"},
	{FIEMAP_EXTENT_UNKNOWN, "unknown"},
	{FIEMAP_EXTENT_DELALLOC, "delalloc"},
	{FIEMAP_EXTENT_ENCODED, "encoded"},
	{FIEMAP_EXTENT_DATA_ENCRYPTED, "data_encrypted"},
	{FIEMAP_EXTENT_NOT_ALIGNED, "not_aligned"},
	{FIEMAP_EXTENT_DATA_INLINE, "data_inline"},
	{FIEMAP_EXTENT_DATA_TAIL, "data_tail"},
	{FIEMAP_EXTENT_UNWRITTEN, "unwritten"},
	{FIEMAP_EXTENT_MERGED, "merged"},
	{FIEMAP_EXTENT_SHARED, "shared"},
}

// String lists the set flags by their lower-case C suffix, joined by "|",
// for example "unwritten|last"; unknown bits print in hex. No flags: "-".
func (f Flags) String() string {
	if f == 0 {
		return "-"
	}
	var parts []string
	rest := f
	for _, n := range flagNames {
		if f&n.f != 0 {
			parts = append(parts, n.name)
			rest &^= n.f
		}
	}
	if rest != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint32(rest)))
	}
	return strings.Join(parts, "|")
}

// acceptedFlags are the flags a store extent may carry.
//
// FIEMAP_EXTENT_UNWRITTEN is accepted although reading such an extent
// through the file returns zeroes while the device holds old bytes: the
// store is never read or written through the file (only through the
// device-mapper table over the raw blocks), and the file is immutable while
// mapped, so the filesystem never converts or zeroes those blocks behind the
// mapping. dm-snapshot initialises the store itself by zeroing its first
// chunk through the mapping.
const acceptedFlags = FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_MERGED

// rejectedFlagReasons says, per refused flag, why such an extent cannot back
// a raw mapping. Checked in this order, so the most specific reason wins
// (DATA_ENCRYPTED before the ENCODED it implies, and so on).
var rejectedFlagReasons = []struct {
	f      Flags
	reason string
}{
	{FIEMAP_EXTENT_DATA_INLINE, "its data is stored inside filesystem metadata, not in blocks of its own"},
	{FIEMAP_EXTENT_DATA_TAIL, "its data is packed into a block shared with other files' tails"},
	{FIEMAP_EXTENT_NOT_ALIGNED, "its offsets are not aligned to the filesystem's blocks"},
	{FIEMAP_EXTENT_DATA_ENCRYPTED, "its data is encrypted on the device, so the raw blocks are not the file's bytes"},
	{FIEMAP_EXTENT_ENCODED, "its data is compressed or otherwise encoded on the device"},
	{FIEMAP_EXTENT_DELALLOC, "its blocks are not allocated yet (delayed allocation)"},
	{FIEMAP_EXTENT_UNKNOWN, "its location on the device is not known"},
	{FIEMAP_EXTENT_SHARED, "its blocks are shared with another file (a reflink copy or a filesystem snapshot), so writing them would change that file too"},
}

// checkFlags returns the flag that makes an extent unusable and why, or
// ok = true.
func checkFlags(f Flags) (bad Flags, reason string, ok bool) {
	for _, r := range rejectedFlagReasons {
		if f&r.f != 0 {
			return r.f, r.reason, false
		}
	}
	if rest := f &^ acceptedFlags; rest != 0 {
		// Lowest unknown bit first, so the message is deterministic.
		bit := Flags(1) << bits.TrailingZeros32(uint32(rest))
		return bit, "it carries a flag this version of snapctl does not know", false
	}
	return 0, "", true
}

// flagName is the C name of a single flag, or its hex value.
func flagName(f Flags) string {
	for _, n := range flagNames {
		if f == n.f {
			return "FIEMAP_EXTENT_" + strings.ToUpper(n.name)
		}
	}
	return fmt.Sprintf("0x%x", uint32(f))
}
