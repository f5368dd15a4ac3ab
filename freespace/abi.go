package freespace

// The C ABI of FS_IOC_GETFSMAP, FIFREEZE and FITHAW, mirrored in plain Go
// (no unsafe, no x/sys/unix, which has none of them). The calls live in
// ioctl_linux.go.

import (
	"fmt"

	"github.com/snapctl/snapctl/internal/platform"
)

// fsmap is struct fsmap from include/uapi/linux/fsmap.h (64 bytes).
type fsmap struct {
	Device   uint32    // fmr_device
	Flags    uint32    // fmr_flags
	Physical uint64    // fmr_physical
	Owner    uint64    // fmr_owner
	Offset   uint64    // fmr_offset
	Length   uint64    // fmr_length
	Reserved [3]uint64 // fmr_reserved
}

// fsmapHead is struct fsmap_head without its flexible array fmh_recs[]
// (192 bytes).
type fsmapHead struct {
	IFlags   uint32    // fmh_iflags (in)
	OFlags   uint32    // fmh_oflags (out): FMH_OF_DEV_T
	Count    uint32    // fmh_count: room in fmh_recs (in)
	Entries  uint32    // fmh_entries: records filled in (out)
	Reserved [6]uint64 // fmh_reserved
	Keys     [2]fsmap  // fmh_keys: the low and high key of the query
}

// recsPerCall is the room for records in one FS_IOC_GETFSMAP call.
const recsPerCall = 128

// fsmapRequest is the memory FS_IOC_GETFSMAP reads and writes: the head
// immediately followed by its records, as the C flexible array member.
type fsmapRequest struct {
	head fsmapHead
	recs [recsPerCall]fsmap
}

// Ioctl numbers, from include/uapi/linux/fs.h: FS_IOC_GETFSMAP is
// _IOWR('X', 59, struct fsmap_head), FIFREEZE and FITHAW _IOWR('X', 119/120,
// int). _IOWR numbers are the same on every architecture snapctl builds
// for, powerpc included (see platform.DirReadWrite).
const (
	FS_IOC_GETFSMAP = platform.DirReadWrite | 192<<platform.SizeShift | 'X'<<platform.TypeShift | 59
	FIFREEZE        = platform.DirReadWrite | 4<<platform.SizeShift | 'X'<<platform.TypeShift | 119
	FITHAW          = platform.DirReadWrite | 4<<platform.SizeShift | 'X'<<platform.TypeShift | 120
)

// record converts the kernel's struct fsmap.
func (f *fsmap) record() Record {
	return Record{Device: f.Device, Flags: f.Flags, Physical: f.Physical, Owner: f.Owner, Offset: f.Offset, Length: f.Length}
}

// queryAll is the high key that asks for everything: every field at its
// largest, as the kernel documents for the end of the range.
func queryAll() fsmap {
	return fsmap{Device: ^uint32(0), Flags: ^uint32(0), Physical: ^uint64(0), Owner: ^uint64(0), Offset: ^uint64(0)}
}

// readMap runs the GETFSMAP query loop over call, which issues the ioctl
// once on req: from the lowest key to the highest, each call resuming
// after the last record of the previous one, until a record carries
// FMR_OF_LAST or a call returns none. It reports whether fmr_device holds
// dev_t numbers.
func readMap(req *fsmapRequest, call func(*fsmapRequest) error) (recs []Record, devT bool, err error) {
	req.head = fsmapHead{Count: recsPerCall}
	req.head.Keys[1] = queryAll()
	for calls := 0; ; calls++ {
		req.head.Count, req.head.Entries, req.head.OFlags = recsPerCall, 0, 0
		if err := call(req); err != nil {
			return recs, devT, err
		}
		n := req.head.Entries
		if n == 0 {
			return recs, devT, nil
		}
		if n > recsPerCall {
			return recs, devT, fmt.Errorf("FS_IOC_GETFSMAP: kernel reports %d records in room for %d", n, recsPerCall)
		}
		devT = req.head.OFlags&FMH_OF_DEV_T != 0
		for i := range n {
			recs = append(recs, req.recs[i].record())
		}
		last := req.recs[n-1]
		if last.Flags&FMR_OF_LAST != 0 {
			return recs, devT, nil
		}
		if calls > 0 && last == req.head.Keys[0] {
			return recs, devT, fmt.Errorf("FS_IOC_GETFSMAP: no progress past the record at byte %d", last.Physical)
		}
		req.head.Keys[0] = last
	}
}
