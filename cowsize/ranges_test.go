package cowsize

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{"0", 0, ""},
		{"4096", 4096, ""},
		{"007", 7, ""},
		{"4K", 4096, ""},
		{"4k", 4096, ""},
		{"4KiB", 4096, ""},
		{"1M", 1 << 20, ""},
		{"3G", 3 << 30, ""},
		{"2T", 2 << 40, ""},
		{"2tib", 2 << 40, ""},
		{"9223372036854775807", MaxBytes, ""},
		{"8388607T", 8388607 << 40, ""},
		{"9223372036854775808", 0, "exceeds 2^63-1"},
		{"99999999999999999999999", 0, "exceeds 2^63-1"},
		{"8388608T", 0, "exceeds 2^63-1"},
		{"-1", 0, "negative"},
		{"-4K", 0, "negative"},
		{"", 0, "not a number"},
		{"K", 0, "not a number"},
		{"+5", 0, "not a number"},
		{"0x10", 0, "unknown suffix"},
		{"1.5M", 0, "unknown suffix"},
		{"4KB", 0, "unknown suffix"},
		{"4P", 0, "unknown suffix"},
		{"12abc", 0, "unknown suffix"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBytes(tt.in)
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Errorf("got %d, %v, want %d", got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %d, %v, want an error containing %q", got, err, tt.wantErr)
			}
		})
	}
}

func TestParseRanges(t *testing.T) {
	in := "# update plan\n" +
		"\n" +
		"0 4096\n" +
		"  1M   8K   # the kernel\n" +
		"\t4096\t0\n" + // zero length: allowed, touches nothing
		"100 1\r\n" +
		"#\n" +
		"2G 1G"
	want := []Range{{0, 4096}, {1 << 20, 8 << 10}, {4096, 0}, {100, 1}, {2 << 30, 1 << 30}}
	got, err := ParseRanges(strings.NewReader(in))
	if err != nil {
		t.Fatalf("ParseRanges: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, empty := range []string{"", "\n\n", "# nothing\n   \n"} {
		got, err := ParseRanges(strings.NewReader(empty))
		if err != nil || len(got) != 0 {
			t.Errorf("ParseRanges(%q): got %v, %v, want no ranges", empty, got, err)
		}
	}
}

func TestParseRangesErrors(t *testing.T) {
	tests := []struct {
		name, in string
		line     int
		want     string
		tooLarge bool
	}{
		{"garbage", "0 10\nhello world\n", 2, "offset", false},
		{"binary", "\x00\x01\x02 \xff\n", 1, "offset", false},
		{"one field", "0 10\n\n4096\n", 3, "got 1", false},
		{"three fields", "0 10 20\n", 1, "got 3", false},
		{"comma", "0,10\n", 1, "got 1", false},
		{"negative offset", "# x\n-4096 10\n", 2, "negative", false},
		{"negative length", "0 -1\n", 1, "length", false},
		{"offset overflow", "99999999999999999999 1\n", 1, "exceeds 2^63-1", true},
		{"length overflow", "0 9223372036854775808\n", 1, "exceeds 2^63-1", true},
		{"end overflow", "1 1\n9223372036854775807 1\n", 2, "exceeds 2^63-1", true},
		{"suffix overflow", "8388607T 1T\n", 1, "exceeds 2^63-1", true},
		{"bad suffix", "4X 1\n", 1, "unknown suffix", false},
		{"too long", "0 1\n" + strings.Repeat(" ", maxLine+1) + "\n", 2, "longer than", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseRanges(strings.NewReader(tt.in))
			var le RangeLineError
			if !errors.As(err, &le) {
				t.Fatalf("got %v, want RangeLineError", err)
			}
			if le.Line != tt.line {
				t.Errorf("got line %d, want %d (%v)", le.Line, tt.line, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("line %d: ", tt.line)) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %q, want it to name line %d and contain %q", err, tt.line, tt.want)
			}
			if got := errors.As(err, new(TooLargeError)); got != tt.tooLarge {
				t.Errorf("errors.As(TooLargeError) = %v, want %v", got, tt.tooLarge)
			}
		})
	}
}

func TestParseRangesReadError(t *testing.T) {
	boom := errors.New("boom")
	_, err := ParseRanges(iotest.ErrReader(boom))
	if !errors.Is(err, boom) || errors.As(err, new(RangeLineError)) {
		t.Errorf("got %v, want the read error, not RangeLineError", err)
	}
}

// bruteTouched counts touched chunks with a set, for small inputs.
func bruteTouched(ranges []Range, c uint64) uint64 {
	set := map[uint64]bool{}
	for _, r := range ranges {
		for b := r.Offset; b < r.Offset+r.Length; b++ {
			set[b/c] = true
		}
	}
	return uint64(len(set))
}

func TestTouched(t *testing.T) {
	const k = 4096
	tests := []struct {
		name   string
		ranges []Range
		want   uint64
	}{
		{"none", nil, 0},
		{"zero length", []Range{{100, 0}, {k, 0}}, 0},
		{"one byte", []Range{{5, 1}}, 1},
		{"whole chunk", []Range{{k, k}}, 1},
		{"partial both ends", []Range{{k - 1, k + 2}}, 3},
		{"last byte of a chunk", []Range{{k - 1, 1}}, 1},
		{"straddles", []Range{{k - 1, 2}}, 2},
		{"duplicates", []Range{{0, k}, {0, k}, {10, 1}}, 1},
		{"overlap unsorted", []Range{{10 * k, 3 * k}, {0, 1}, {11 * k, 5 * k}}, 7},
		{"adjacent", []Range{{0, k}, {k, k}, {2 * k, 1}}, 3},
		{"gap", []Range{{0, 1}, {2 * k, 1}}, 2},
		{"contained", []Range{{0, 10 * k}, {3 * k, k}}, 10},
		{"at the top", []Range{{MaxBytes - 1, 1}}, 1},
		{"everything", []Range{{0, MaxBytes}}, MaxBytes/k + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Touched(tt.ranges, k)
			if err != nil || got != tt.want {
				t.Errorf("got %d, %v, want %d", got, err, tt.want)
			}
		})
	}
	if _, err := Touched([]Range{{MaxBytes, 1}}, k); !errors.As(err, new(TooLargeError)) {
		t.Errorf("range past 2^63-1: got %v, want TooLargeError", err)
	}
	if _, err := Touched(nil, 1000); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("chunk 1000: got %v, want ChunkSizeError", err)
	}
}

func TestTouchedRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 300 {
		c := chunkSizes[i%2] // 4K and 8K keep the brute force cheap
		ranges := make([]Range, rng.IntN(12))
		for j := range ranges {
			ranges[j] = Range{Offset: rng.Uint64N(40 << 10), Length: rng.Uint64N(20 << 10)}
		}
		got, err := Touched(ranges, c)
		if err != nil {
			t.Fatal(err)
		}
		if want := bruteTouched(ranges, uint64(c)); got != want {
			t.Fatalf("ranges %v chunk %d: got %d, want %d", ranges, c, got, want)
		}
	}
}

func TestForRanges(t *testing.T) {
	// 1000 distinct 4 KiB chunks written in overlapping pieces: the
	// DESIGN example, 1005 chunks.
	var b strings.Builder
	b.WriteString("# first 500 chunks, twice\n0 2000K\n1000K 1000K\n")
	b.WriteString("# 500 more, unaligned: 4000K-1 .. 6000K touches chunks 999..1499\n")
	b.WriteString("4095999 2048001\n")
	s, err := ForRanges(strings.NewReader(b.String()), 4096)
	if err != nil {
		t.Fatalf("ForRanges: %v", err)
	}
	// chunks 0..499 and 999..1499: 500 + 501
	if s.ChangedChunks != 1001 || s.TotalChunks != 1006 || s.Bytes != 1006*4096 {
		t.Errorf("got %+v, want 1001 changed, 1006 total chunks", s)
	}
	s, err = ForRanges(strings.NewReader(""), 8192)
	if err != nil || s.ChangedChunks != 0 || s.TotalChunks != 2 || s.Bytes != 16384 {
		t.Errorf("empty list: got %+v, %v, want 2 chunks of 8 KiB", s, err)
	}
	if _, err := ForRanges(strings.NewReader("0 1\n"), 6000); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("chunk 6000: got %v, want ChunkSizeError", err)
	}
	if _, err := ForRanges(strings.NewReader("0 1\nx\n"), 4096); !errors.As(err, new(RangeLineError)) {
		t.Errorf("bad line: got %v, want RangeLineError", err)
	}
}

func FuzzParseRanges(f *testing.F) {
	for _, s := range []string{
		"", "0 4096\n", "# c\n\n1M 8K # x\n", "-1 2", "9223372036854775807 1",
		"8388607T 1023G", "4k 4KiB\r\n", "0 0", "1 2 3", "\x00", "0x10 1", "1 1\n1 1\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		ranges, err := ParseRanges(strings.NewReader(in))
		if err != nil {
			var le RangeLineError
			if !errors.As(err, &le) || le.Line < 1 {
				t.Fatalf("got %v, want RangeLineError with a line number", err)
			}
			return
		}
		var sum uint64
		var b strings.Builder
		for _, r := range ranges {
			if r.Offset > MaxBytes || r.Length > MaxBytes-r.Offset {
				t.Fatalf("range %+v ends past 2^63-1", r)
			}
			if r.Length > 0 {
				sum += (r.Length+4095)/4096 + 1 // at most ceil(len/C)+1 chunks
			}
			fmt.Fprintf(&b, "%d %d\n", r.Offset, r.Length)
		}
		n, err := Touched(ranges, 4096)
		if err != nil {
			t.Fatalf("Touched: %v", err)
		}
		if n > sum {
			t.Fatalf("got %d chunks from ranges %v", n, ranges)
		}
		again, err := ParseRanges(strings.NewReader(b.String()))
		if err != nil || !slices.Equal(again, ranges) {
			t.Fatalf("reparse: got %v, %v, want %v", again, err, ranges)
		}
	})
}
