package freespace

import (
	"errors"
	"runtime"
	"slices"
	"testing"
	"unsafe"
)

// Sizes of include/uapi/linux/fsmap.h, the same on every architecture.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(fsmap{})-64]
	_ = [1]struct{}{}[unsafe.Sizeof(fsmapHead{})-192]
	_ = [1]struct{}{}[unsafe.Offsetof(fsmapRequest{}.recs)-192]
)

func TestABISizes(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(struct fsmap)", unsafe.Sizeof(fsmap{}), 64},
		{"offsetof(fsmap, fmr_physical)", unsafe.Offsetof(fsmap{}.Physical), 8},
		{"offsetof(fsmap, fmr_length)", unsafe.Offsetof(fsmap{}.Length), 32},
		{"sizeof(struct fsmap_head)", unsafe.Sizeof(fsmapHead{}), 192},
		{"offsetof(fsmap_head, fmh_keys)", unsafe.Offsetof(fsmapHead{}.Keys), 64},
		{"offsetof(fsmap_head, fmh_recs)", unsafe.Offsetof(fsmapRequest{}.recs), 192},
	} {
		if c.got != c.want {
			t.Errorf("%s: got %d, want %d", c.name, c.got, c.want)
		}
	}
}

// TestIoctlNumbers pins the numbers (from xfsprogs' and util-linux's
// headers); _IOWR is encoded alike on every architecture.
func TestIoctlNumbers(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want uint32
	}{
		{"FS_IOC_GETFSMAP", FS_IOC_GETFSMAP, 0xC0C0583B},
		{"FIFREEZE", FIFREEZE, 0xC0045877},
		{"FITHAW", FITHAW, 0xC0045878},
	} {
		if c.got != c.want {
			t.Errorf("%s on %s: got %#x, want %#x", c.name, runtime.GOARCH, c.got, c.want)
		}
	}
}

func TestDevEncoding(t *testing.T) {
	for _, c := range []struct{ major, minor, enc uint32 }{
		{8, 0, 0x800},            // sda
		{98, 16, 0x6210},         // ubdb
		{254, 3, 0xfe03},         // dm-3
		{259, 300, 0x11032c},     // minor > 255: 0x2c | 259<<8 | 0x100<<12
		{7, 1 << 19, 0x80000700}, // a large minor
	} {
		if got := EncodeDev(c.major, c.minor); got != c.enc {
			t.Errorf("EncodeDev(%d, %d) = %#x, want %#x", c.major, c.minor, got, c.enc)
		}
		if ma, mi := DecodeDev(c.enc); ma != c.major || mi != c.minor {
			t.Errorf("DecodeDev(%#x) = %d:%d, want %d:%d", c.enc, ma, mi, c.major, c.minor)
		}
	}
}

func free(dev uint32, off, n uint64) Record {
	return Record{Device: dev, Flags: FMR_OF_SPECIAL_OWNER, Owner: FMR_OWN_FREE, Physical: off, Length: n}
}

// TestFreeExtents keeps the free records of the data device only, joined.
func TestFreeExtents(t *testing.T) {
	data, log := EncodeDev(254, 300), EncodeDev(8, 16)
	recs := []Record{
		{Device: data, Flags: FMR_OF_SPECIAL_OWNER, Owner: FMR_OWN_FS, Physical: 0, Length: 4096},
		free(data, 4096, 8192),
		free(data, 12288, 4096),                                  // touches the previous one
		{Device: data, Owner: 12, Physical: 16384, Length: 4096}, // an inode's data
		free(log, 0, 1<<20),                                      // the external log device
		free(data, 1<<20, 4096),
		{Device: data, Flags: FMR_OF_SPECIAL_OWNER, Owner: FMR_OWN_LOG, Physical: 2 << 20, Length: 4096},
	}
	got, err := freeExtents(recs, true, 254, 300)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{{4096, 12288}, {1 << 20, 4096}}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	// Without dev_t numbers a single device is trusted, several are not.
	single := []Record{free(0, 4096, 4096), {Device: 0, Owner: 5, Physical: 0, Length: 4096}}
	if got, err := freeExtents(single, false, 1, 2); err != nil || !slices.Equal(got, []Extent{{4096, 4096}}) {
		t.Errorf("single device without dev_t: got %v, %v", got, err)
	}
	if _, err := freeExtents([]Record{free(0, 0, 4096), free(1, 0, 4096)}, false, 1, 2); err == nil {
		t.Error("two devices without dev_t: no error")
	}
	if _, err := freeExtents([]Record{free(data, 1<<63, 4096)}, true, 254, 300); err == nil {
		t.Error("record past 2^63: no error")
	}
}

// TestChunks keeps wholly free chunks only.
func TestChunks(t *testing.T) {
	for _, c := range []struct {
		name string
		free []Extent
		cb   int64
		want []Run
	}{
		{"aligned", []Extent{{0, 16384}}, 4096, []Run{{0, 4}}},
		{"partial both ends", []Extent{{100, 16384}}, 4096, []Run{{1, 3}}},
		{"shorter than a chunk", []Extent{{4096, 4095}}, 4096, nil},
		{"inside one chunk", []Extent{{4097, 4000}}, 4096, nil},
		{"two records make a chunk", []Extent{{8192 + 2048, 2048}, {8192, 2048}}, 4096, []Run{{2, 1}}},
		{"overlapping records", []Extent{{0, 8192}, {4096, 8192}}, 4096, []Run{{0, 3}}},
		{"gap of a byte", []Extent{{0, 8191}, {8192, 8192}}, 4096, []Run{{0, 1}, {2, 2}}},
		{"64 KiB chunks", []Extent{{65536 - 512, 3 * 65536}}, 65536, []Run{{1, 2}}},
		{"empty", nil, 4096, nil},
		{"bad chunk", []Extent{{0, 4096}}, 0, nil},
	} {
		if got := Chunks(c.free, c.cb); !slices.Equal(got, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
	if n := Total([]Run{{0, 3}, {10, 4}}); n != 7 {
		t.Errorf("Total = %d, want 7", n)
	}
}

// TestReadMap drives the query loop with a fake kernel that hands out a
// map in batches: every record comes back once, each call resumes after
// the last record of the previous one, and the loop ends at FMR_OF_LAST.
func TestReadMap(t *testing.T) {
	var all []fsmap
	for i := range 300 {
		all = append(all, fsmap{Device: 0x800, Flags: FMR_OF_SPECIAL_OWNER, Owner: FMR_OWN_FREE, Physical: uint64(i) * 8192, Length: 4096})
	}
	all[len(all)-1].Flags |= FMR_OF_LAST
	for _, batch := range []int{1, 7, recsPerCall} {
		var calls int
		recs, devT, err := readMap(new(fsmapRequest), func(r *fsmapRequest) error {
			calls++
			if r.head.Keys[1] != queryAll() || r.head.Count != recsPerCall {
				t.Fatalf("call %d: high key %+v, count %d", calls, r.head.Keys[1], r.head.Count)
			}
			start := 0
			if calls > 1 { // resume after the low key
				for start < len(all) && all[start] != r.head.Keys[0] {
					start++
				}
				start++
			} else if r.head.Keys[0] != (fsmap{}) {
				t.Fatalf("first call: low key %+v, want zero", r.head.Keys[0])
			}
			n := copy(r.recs[:batch], all[min(start, len(all)):])
			r.head.Entries = uint32(n)
			r.head.OFlags = FMH_OF_DEV_T
			return nil
		})
		if err != nil || !devT || len(recs) != len(all) {
			t.Fatalf("batch %d: got %d records, dev_t %v, %v", batch, len(recs), devT, err)
		}
		if want := (len(all) + batch - 1) / batch; calls != want {
			t.Errorf("batch %d: %d calls, want %d", batch, calls, want)
		}
	}
	// No FMR_OF_LAST: an empty batch ends the map.
	calls := 0
	recs, _, err := readMap(new(fsmapRequest), func(r *fsmapRequest) error {
		calls++
		if calls == 1 {
			r.recs[0] = all[0]
			r.head.Entries = 1
		}
		return nil
	})
	if err != nil || len(recs) != 1 || calls != 2 {
		t.Errorf("empty batch: got %d records in %d calls, %v", len(recs), calls, err)
	}
	// A kernel that repeats itself is caught.
	_, _, err = readMap(new(fsmapRequest), func(r *fsmapRequest) error {
		r.recs[0] = all[0]
		r.head.Entries = 1
		return nil
	})
	if err == nil {
		t.Error("no progress: no error")
	}
	// Errors come back as they are.
	errX := errors.New("x")
	if _, _, err := readMap(new(fsmapRequest), func(*fsmapRequest) error { return errX }); err != errX {
		t.Errorf("got %v, want the call's error", err)
	}
}
