package fiemap

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestFlagValidation(t *testing.T) {
	tests := []struct {
		flags Flags
		ok    bool
		bad   Flags
	}{
		{0, true, 0},
		{FIEMAP_EXTENT_LAST, true, 0},
		{FIEMAP_EXTENT_UNWRITTEN, true, 0},
		{FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED, true, 0},
		{FIEMAP_EXTENT_UNKNOWN, false, FIEMAP_EXTENT_UNKNOWN},
		{FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN, false, FIEMAP_EXTENT_DELALLOC},
		{FIEMAP_EXTENT_ENCODED, false, FIEMAP_EXTENT_ENCODED},
		{FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_ENCODED, false, FIEMAP_EXTENT_DATA_ENCRYPTED},
		{FIEMAP_EXTENT_NOT_ALIGNED, false, FIEMAP_EXTENT_NOT_ALIGNED},
		{FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_LAST, false, FIEMAP_EXTENT_DATA_INLINE},
		{FIEMAP_EXTENT_DATA_TAIL | FIEMAP_EXTENT_NOT_ALIGNED, false, FIEMAP_EXTENT_DATA_TAIL},
		{FIEMAP_EXTENT_SHARED, false, FIEMAP_EXTENT_SHARED},
		{FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_UNWRITTEN, false, FIEMAP_EXTENT_SHARED},
		{0x10, false, 0x10},
		{0x80000000 | FIEMAP_EXTENT_LAST, false, 0x80000000},
	}
	for _, tt := range tests {
		t.Run(tt.flags.String(), func(t *testing.T) {
			raw := []Extent{{Logical: 0, Physical: 4096, Length: 4096, Flags: tt.flags}}
			got, err := Normalize("/s", raw, 4096, 0)
			if tt.ok {
				if err != nil || len(got) != 1 {
					t.Fatalf("got %v, %v; want the extent accepted", got, err)
				}
				return
			}
			var fe ExtentFlagError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want ExtentFlagError", err)
			}
			if fe.Flag != tt.bad || fe.Path != "/s" || fe.Logical != 0 {
				t.Errorf("got %+v, want flag %v at /s byte 0", fe, tt.bad)
			}
			if name := flagName(tt.bad); !strings.Contains(fe.Error(), name) {
				t.Errorf("message %q does not name %s", fe.Error(), name)
			}
		})
	}
}

func TestFlagsString(t *testing.T) {
	for f, want := range map[Flags]string{
		0:                  "-",
		FIEMAP_EXTENT_LAST: "last",
		FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST: "last|unwritten",
		FIEMAP_EXTENT_SHARED | 0x10000:               "shared|0x10000",
	} {
		if got := f.String(); got != want {
			t.Errorf("Flags(%#x): got %q, want %q", uint32(f), got, want)
		}
	}
}

func TestNormalizeMerge(t *testing.T) {
	const K = 1024
	tests := []struct {
		name string
		raw  []Extent
		size uint64
		want []Extent
	}{
		{
			name: "contiguous in file and on disk merge",
			raw: []Extent{
				{0, 1 << 20, 128 * K, FIEMAP_EXTENT_UNWRITTEN},
				{128 * K, 1<<20 + 128*K, 64 * K, 0},
				{192 * K, 1<<20 + 192*K, 64 * K, FIEMAP_EXTENT_LAST},
			},
			size: 256 * K,
			want: []Extent{{0, 1 << 20, 256 * K, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_LAST}},
		},
		{
			name: "a jump on disk keeps extents apart",
			raw: []Extent{
				{0, 8 * K, 4 * K, 0},
				{4 * K, 40 * K, 4 * K, 0},
				{8 * K, 44 * K, 4 * K, FIEMAP_EXTENT_LAST},
			},
			size: 12 * K,
			want: []Extent{{0, 8 * K, 4 * K, 0}, {4 * K, 40 * K, 8 * K, FIEMAP_EXTENT_LAST}},
		},
		{
			name: "backwards on disk is not contiguous",
			raw:  []Extent{{0, 8 * K, 4 * K, 0}, {4 * K, 4 * K, 4 * K, 0}},
			size: 8 * K,
			want: []Extent{{0, 8 * K, 4 * K, 0}, {4 * K, 4 * K, 4 * K, 0}},
		},
		{
			name: "last block clipped to the size rounded to a sector",
			raw:  []Extent{{0, 8 * K, 8 * K, FIEMAP_EXTENT_LAST}},
			size: 5000,
			want: []Extent{{0, 8 * K, 5120, FIEMAP_EXTENT_LAST}},
		},
		{
			name: "blocks past the end of the file are dropped",
			raw:  []Extent{{0, 8 * K, 4 * K, 0}, {4 * K, 100 * K, 4 * K, FIEMAP_EXTENT_UNWRITTEN | FIEMAP_EXTENT_SHARED}},
			size: 4 * K,
			want: []Extent{{0, 8 * K, 4 * K, 0}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Normalize("/s", tt.raw, tt.size, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestNormalizeHoles(t *testing.T) {
	const K = 1024
	tests := []struct {
		name         string
		raw          []Extent
		size         uint64
		off, length  uint64
		wantOverlaps bool
	}{
		{name: "hole at the start", raw: []Extent{{4 * K, 0, 4 * K, FIEMAP_EXTENT_LAST}}, size: 8 * K, off: 0, length: 4 * K},
		{name: "hole in the middle", raw: []Extent{{0, 0, 4 * K, 0}, {12 * K, 12 * K, 4 * K, 0}}, size: 16 * K, off: 4 * K, length: 8 * K},
		{name: "hole at the end", raw: []Extent{{0, 0, 4 * K, FIEMAP_EXTENT_LAST}}, size: 16 * K, off: 4 * K, length: 12 * K},
		{name: "no extents at all", raw: nil, size: 1 << 20, off: 0, length: 1 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Normalize("/s", tt.raw, tt.size, 0)
			var h HoleError
			if !errors.As(err, &h) {
				t.Fatalf("got %v, want HoleError", err)
			}
			if h.Offset != tt.off || h.Length != tt.length || h.Path != "/s" {
				t.Errorf("got hole %+v, want %d bytes at %d of /s", h, tt.length, tt.off)
			}
		})
	}
	t.Run("overlap", func(t *testing.T) {
		_, err := Normalize("/s", []Extent{{0, 0, 8 * K, 0}, {4 * K, 100 * K, 4 * K, 0}}, 16*K, 0)
		if err == nil || !strings.Contains(err.Error(), "overlaps") {
			t.Fatalf("got %v, want an overlap error", err)
		}
	})
	t.Run("empty file", func(t *testing.T) {
		_, err := Normalize("/s", nil, 0, 0)
		var e EmptyError
		if !errors.As(err, &e) {
			t.Fatalf("got %v, want EmptyError", err)
		}
	})
	t.Run("zero length extent", func(t *testing.T) {
		if _, err := Normalize("/s", []Extent{{0, 0, 0, 0}}, 4*K, 0); err == nil {
			t.Fatal("got no error, want one")
		}
	})
	t.Run("overflow", func(t *testing.T) {
		if _, err := Normalize("/s", []Extent{{0, ^uint64(0) - 10, 4 * K, 0}}, 4*K, 0); err == nil {
			t.Fatal("got no error, want one")
		}
	})
}

func TestNormalizeCap(t *testing.T) {
	// n extents, each one 4 KiB and not contiguous on disk with the next.
	frag := func(n int) []Extent {
		out := make([]Extent, n)
		for i := range out {
			out[i] = Extent{Logical: uint64(i) * 4096, Physical: uint64(i) * 8192, Length: 4096}
		}
		return out
	}
	if got, err := Normalize("/s", frag(10), 10*4096, 10); err != nil || len(got) != 10 {
		t.Fatalf("10 extents with cap 10: got %d, %v; want 10, nil", len(got), err)
	}
	_, err := Normalize("/s", frag(11), 11*4096, 10)
	var tf TooFragmentedError
	if !errors.As(err, &tf) {
		t.Fatalf("11 extents with cap 10: got %v, want TooFragmentedError", err)
	}
	if tf.Max != 10 || tf.Extents != 11 || !strings.Contains(tf.Error(), "fragmented") {
		t.Errorf("got %+v (%v), want Max 10, Extents 11", tf, tf)
	}
	// The cap counts merged extents: a million contiguous 4 KiB raw
	// extents are one.
	raw := make([]Extent, 1<<16)
	for i := range raw {
		raw[i] = Extent{Logical: uint64(i) * 4096, Physical: 1<<30 + uint64(i)*4096, Length: 4096}
	}
	if got, err := Normalize("/s", raw, uint64(len(raw))*4096, 1); err != nil || len(got) != 1 {
		t.Fatalf("contiguous raw extents: got %d, %v; want 1 merged extent", len(got), err)
	}
	if got := newBuilder("/s", 1, 0).max; got != DefaultMaxExtents {
		t.Errorf("default cap: got %d, want %d", got, DefaultMaxExtents)
	}
}

// FuzzNormalize checks Normalize on arbitrary extent lists: no panic, and
// whatever it accepts covers [0, size) contiguously with good flags.
func FuzzNormalize(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 8, 0}, uint64(4096))
	f.Add([]byte{0, 1, 1, 2, 8, 1, 3, 4, 8}, uint64(3*4096))
	f.Add([]byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, spec []byte, size uint64) {
		// Three bytes per extent: logical block, physical block, flag bits.
		var raw []Extent
		for i := 0; i+2 < len(spec); i += 3 {
			raw = append(raw, Extent{
				Logical:  uint64(spec[i]) * 4096,
				Physical: uint64(spec[i+1]) * 4096,
				Length:   4096 * uint64(1+spec[i+2]%4),
				Flags:    Flags(1) << (spec[i+2] >> 3 % 16),
			})
		}
		size %= 1 << 22
		got, err := Normalize("/f", raw, size, 8)
		if err != nil {
			return
		}
		var next uint64
		for _, e := range got {
			if e.Logical != next {
				t.Fatalf("accepted extents are not contiguous at %d: %+v", next, got)
			}
			if _, _, ok := checkFlags(e.Flags); !ok {
				t.Fatalf("accepted extent with flags %v", e.Flags)
			}
			next += e.Length
		}
		if next < size || next >= size+512 {
			t.Fatalf("accepted extents cover %d bytes of a %d-byte file", next, size)
		}
		if len(got) > 8 {
			t.Fatalf("got %d extents past the cap", len(got))
		}
	})
}
