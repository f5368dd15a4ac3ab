package fiemap

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
)

// fakeStack is a TableLookup over table texts keyed by "major:minor";
// devices not in it are raw devices.
type fakeStack map[string]string

func (s fakeStack) lookup(major, minor uint32) (dmtable.Table, bool, error) {
	text, ok := s[devString(major, minor)]
	if !ok {
		return nil, false, nil
	}
	t, err := dmtable.ParseTable(text)
	if err != nil {
		return nil, false, err
	}
	return t, true, nil
}

// ext builds an extent from sector numbers.
func ext(logical, physical, length uint64) Extent {
	return Extent{Logical: logical * SectorSize, Physical: physical * SectorSize, Length: length * SectorSize}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		stack   fakeStack
		extents []Extent
		want    []Segment
	}{
		{
			name:    "one level, one target",
			stack:   fakeStack{"253:0": "0 100000 linear 8:0 2048"},
			extents: []Extent{ext(0, 100, 8), ext(8, 500, 16)},
			want: []Segment{
				{Logical: 0, Dev: "8:0", DevOffset: 2148, Length: 8},
				{Logical: 8, Dev: "8:0", DevOffset: 2548, Length: 16},
			},
		},
		{
			name: "one level, extent split over two disks",
			stack: fakeStack{"253:0": "0 1000 linear 8:0 0\n" +
				"1000 1000 linear 8:16 50"},
			extents: []Extent{ext(0, 990, 20)},
			want: []Segment{
				{Logical: 0, Dev: "8:0", DevOffset: 990, Length: 10},
				{Logical: 10, Dev: "8:16", DevOffset: 50, Length: 10},
			},
		},
		{
			name: "two levels with a split at each",
			stack: fakeStack{
				// fs on 253:1, an LV of two segments on the PV 253:0,
				// which is itself a partition-offset linear on 8:0 and 8:16.
				"253:1": "0 100 linear 253:0 1000\n100 100 linear 253:0 5000",
				"253:0": "0 1050 linear 8:0 0\n1050 10000 linear 8:16 7",
			},
			extents: []Extent{ext(0, 40, 80)}, // 253:1 sectors 40-119
			want: []Segment{
				// 253:1 40-99 -> 253:0 1040-1099 -> 8:0 1040-1049, 8:16 7-56
				{Logical: 0, Dev: "8:0", DevOffset: 1040, Length: 10},
				{Logical: 10, Dev: "8:16", DevOffset: 7, Length: 50},
				// 253:1 100-119 -> 253:0 5000-5019 -> 8:16 3957-3976
				{Logical: 60, Dev: "8:16", DevOffset: 3957, Length: 20},
			},
		},
		{
			name: "three levels, identity, extents stay merged",
			stack: fakeStack{
				"253:2": "0 4096 linear 253:1 0",
				"253:1": "0 4096 linear 253:0 0",
				"253:0": "0 4096 linear 7:0 0",
			},
			extents: []Extent{ext(0, 8, 8), ext(8, 16, 8), ext(16, 100, 1)},
			want: []Segment{
				{Logical: 0, Dev: "7:0", DevOffset: 8, Length: 16},
				{Logical: 16, Dev: "7:0", DevOffset: 100, Length: 1},
			},
		},
		{
			name: "three levels, offsets add up and split",
			stack: fakeStack{
				"253:2": "0 64 linear 253:1 10\n64 64 linear 253:1 1000",
				"253:1": "0 2000 linear 253:0 100",
				"253:0": "0 1000 linear 8:0 0\n1000 2000 linear 8:32 0",
			},
			extents: []Extent{ext(60, 60, 8)},
			// 253:2 60-63 -> 253:1 70-73 -> 253:0 170-173 -> 8:0 170-173
			// 253:2 64-67 -> 253:1 1000-1003 -> 253:0 1100-1103 -> 8:32 100-103
			want: []Segment{
				{Logical: 60, Dev: "8:0", DevOffset: 170, Length: 4},
				{Logical: 64, Dev: "8:32", DevOffset: 100, Length: 4},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fsMaj, fsMin := topDev(tt.stack)
			got, err := Resolve(tt.extents, fsMaj, fsMin, tt.stack.lookup)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got segments\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// topDev is the device with the highest minor among the DM devices: the
// filesystem's in these fixtures.
func topDev(s fakeStack) (uint32, uint32) {
	var best string
	for k := range s {
		if best == "" || k > best {
			best = k
		}
	}
	ma, mi, _ := dmtable.ParseDevNum(best)
	return ma, mi
}

func TestResolveRefusesTargets(t *testing.T) {
	for typ, params := range map[string]string{
		"crypt":           "aes-xts-plain64 0000000000000000000000000000000000000000000000000000000000000000 0 8:0 4096",
		"snapshot-origin": "8:0",
		"snapshot":        "8:0 8:16 P 8",
		"striped":         "2 128 8:0 0 8:16 0",
		"thin":            "253:9 1",
		"zero":            "",
	} {
		t.Run(typ, func(t *testing.T) {
			stack := fakeStack{
				"253:1": "0 100 linear 253:0 0",
				"253:0": "0 50 linear 8:0 0\n50 50 " + typ + " " + params,
			}
			// The first extent is fine, the second hits the refused target.
			_, err := Resolve([]Extent{ext(0, 0, 10), ext(10, 60, 10)}, 253, 1, stack.lookup)
			var u UnsupportedTargetError
			if !errors.As(err, &u) {
				t.Fatalf("got %v, want UnsupportedTargetError", err)
			}
			if u.Dev != "253:0" || u.Type != typ {
				t.Errorf("got %+v, want Dev 253:0 Type %s", u, typ)
			}
			if !strings.Contains(u.Error(), typ) {
				t.Errorf("message %q does not name %s", u.Error(), typ)
			}
		})
	}
	t.Run("reasons", func(t *testing.T) {
		for typ, want := range map[string]string{"crypt": "unencrypted", "snapshot-origin": "into itself"} {
			if msg := (UnsupportedTargetError{Dev: "253:0", Type: typ}).Error(); !strings.Contains(msg, want) {
				t.Errorf("%s: got %q, want it to say %q", typ, msg, want)
			}
		}
	})
}

func TestResolveDirectMount(t *testing.T) {
	_, err := Resolve([]Extent{ext(0, 0, 8)}, 8, 1, fakeStack{}.lookup)
	var dm DirectMountError
	if !errors.As(err, &dm) {
		t.Fatalf("got %v, want DirectMountError", err)
	}
	if dm.Dev != "8:1" {
		t.Errorf("got Dev %q, want 8:1", dm.Dev)
	}
	dm.Path = "/data/store"
	for _, want := range []string{"/data/store", "8:1", "EBUSY", "loop device", "device-mapper"} {
		if !strings.Contains(dm.Error(), want) {
			t.Errorf("message %q lacks %q", dm.Error(), want)
		}
	}
}

func TestResolveErrors(t *testing.T) {
	tests := []struct {
		name    string
		stack   fakeStack
		extents []Extent
		want    string
	}{
		{"past the end", fakeStack{"253:0": "0 100 linear 8:0 0"}, []Extent{ext(0, 95, 10)}, "past its end"},
		{"cycle", fakeStack{"253:0": "0 100 linear 253:1 0", "253:1": "0 100 linear 253:0 0"}, []Extent{ext(0, 0, 1)}, "deeper than"},
		{"gap in table", fakeStack{"253:0": "0 10 linear 8:0 0\n20 10 linear 8:0 0"}, []Extent{ext(0, 0, 1)}, "gap"},
		{"device path", fakeStack{"253:0": "0 10 linear /dev/sda 0"}, []Extent{ext(0, 0, 1)}, "/dev/sda"},
		{"bad linear params", fakeStack{"253:0": "0 10 linear 8:0"}, []Extent{ext(0, 0, 1)}, "linear params"},
		{"unaligned extent", fakeStack{"253:0": "0 10 linear 8:0 0"}, []Extent{{Logical: 0, Physical: 100, Length: 512}}, "not aligned"},
		{"offset overflow", fakeStack{"253:0": "0 10 linear 8:0 18446744073709551614"}, []Extent{ext(0, 0, 8)}, "2^64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Resolve(tt.extents, 253, 0, tt.stack.lookup)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	t.Run("lookup error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := Resolve([]Extent{ext(0, 0, 1)}, 253, 0, func(uint32, uint32) (dmtable.Table, bool, error) { return nil, false, boom })
		if !errors.Is(err, boom) {
			t.Fatalf("got %v, want it to wrap the lookup error", err)
		}
	})
}

func TestLinearTable(t *testing.T) {
	segs := []Segment{
		{Logical: 0, Dev: "8:0", DevOffset: 2048, Length: 8},
		{Logical: 8, Dev: "8:16", DevOffset: 0, Length: 16},
	}
	tab, err := LinearTable(segs)
	if err != nil {
		t.Fatal(err)
	}
	want := "0 8 linear 8:0 2048\n8 16 linear 8:16 0\n"
	if got := tab.String(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	for name, bad := range map[string][]Segment{
		"empty":         nil,
		"gap":           {{Logical: 0, Dev: "8:0", Length: 8}, {Logical: 9, Dev: "8:0", Length: 8}},
		"not from zero": {{Logical: 8, Dev: "8:0", Length: 8}},
	} {
		if _, err := LinearTable(bad); err == nil {
			t.Errorf("%s: got no error, want one", name)
		}
	}
}

func TestSegmentJSON(t *testing.T) {
	segs := []Segment{{Logical: 0, Dev: "8:0", DevOffset: 2048, Length: 8}, {Logical: 8, Dev: "259:3", DevOffset: 1 << 40, Length: 1}}
	b, err := json.Marshal(segs)
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"logical":0,"dev":"8:0","dev_offset":2048,"length":8},{"logical":8,"dev":"259:3","dev_offset":1099511627776,"length":1}]`
	if string(b) != want {
		t.Errorf("got %s, want %s", b, want)
	}
	var back []Segment
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, segs) {
		t.Errorf("round trip: got %+v, want %+v", back, segs)
	}
}

// FuzzResolve feeds arbitrary table text through Resolve: it must never
// panic, and whatever it returns must be a loadable table covering exactly
// the extents.
func FuzzResolve(f *testing.F) {
	f.Add("0 100 linear 8:0 0", "0 100 linear 253:0 0", uint64(0), uint64(10))
	f.Add("0 50 linear 8:0 0\n50 50 crypt x 0", "0 100 linear 253:0 0", uint64(40), uint64(20))
	f.Add("0 100 linear 253:1 0", "0 100 linear 253:0 0", uint64(0), uint64(1))
	f.Add("0 18446744073709551615 linear 8:0 18446744073709551615", "", uint64(1), uint64(1))
	f.Fuzz(func(t *testing.T, t0, t1 string, off, n uint64) {
		stack := fakeStack{"253:0": t0}
		if t1 != "" {
			stack["253:1"] = t1
		}
		n %= 1 << 20
		e := Extent{Logical: 0, Physical: off * SectorSize, Length: n * SectorSize}
		if e.Physical/SectorSize != off {
			return
		}
		segs, err := Resolve([]Extent{e}, 253, 1, stack.lookup)
		if err != nil || n == 0 {
			return
		}
		tab, err := LinearTable(segs)
		if err != nil {
			t.Fatalf("Resolve returned segments that do not form a table: %v\n%v", err, segs)
		}
		if tab.Sectors() != n {
			t.Fatalf("got %d sectors, want %d", tab.Sectors(), n)
		}
	})
}
