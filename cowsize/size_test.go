package cowsize

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/snapctl/snapctl/merge"
)

var chunkSizes = []uint32{4 << 10, 8 << 10, 64 << 10, 512 << 10}

// kernelChunks models the kernel's persistent store allocator independently
// of the formula: data chunks are handed out from chunk 2 in order, stepping
// over every metadata slot, and when an area fills the next area is zeroed
// at once. It returns how many chunks the store must have for n exceptions.
func kernelChunks(n, e uint64) uint64 {
	need := uint64(2) // header and area 0
	next, area, entries := uint64(2), uint64(0), uint64(0)
	for range n {
		need = max(need, next+1)
		next++
		if next%(e+1) == 1 {
			next++
		}
		entries++
		if entries == e {
			area++
			entries = 0
			need = max(need, 1+area*(e+1)+1)
		}
	}
	return need
}

func TestForChunksDesignExamples(t *testing.T) {
	tests := []struct {
		n, chunks, bytes uint64
	}{
		{255, 257, 257 * 4096},
		{256, 259, 259 * 4096},
		{1000, 1005, 4116480},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			s, err := ForChunks(tt.n, 4096)
			if err != nil {
				t.Fatalf("ForChunks(%d): %v", tt.n, err)
			}
			if s.TotalChunks != tt.chunks || s.Bytes != tt.bytes {
				t.Errorf("got %d chunks, %d bytes, want %d chunks, %d bytes", s.TotalChunks, s.Bytes, tt.chunks, tt.bytes)
			}
			if s.ChunkSectors() != 8 {
				t.Errorf("got %d sectors per chunk, want 8", s.ChunkSectors())
			}
		})
	}
}

func boundaryNs(e uint64) []uint64 {
	return []uint64{0, 1, e - 1, e, e + 1, 2*e - 1, 2 * e, 2*e + 1, 5*e - 1, 5 * e, 5*e + 1}
}

func TestForChunksBoundaries(t *testing.T) {
	for _, c := range chunkSizes {
		e := ExceptionsPerArea(c)
		if e != uint64(c)/16 {
			t.Fatalf("got E=%d for %d-byte chunks, want %d", e, c, c/16)
		}
		for _, n := range boundaryNs(e) {
			t.Run(fmt.Sprintf("chunk=%d/N=%d", c, n), func(t *testing.T) {
				s, err := ForChunks(n, c)
				if err != nil {
					t.Fatalf("ForChunks: %v", err)
				}
				want := kernelChunks(n, e)
				if s.TotalChunks != want {
					t.Errorf("got %d chunks, want %d (kernel model)", s.TotalChunks, want)
				}
				if s.ChangedChunks != n || s.MetadataChunks != 2+n/e || s.TotalChunks != n+s.MetadataChunks {
					t.Errorf("got changed %d metadata %d total %d, want %d, %d, %d", s.ChangedChunks, s.MetadataChunks, s.TotalChunks, n, 2+n/e, n+2+n/e)
				}
				if s.Areas() != 1+n/e {
					t.Errorf("got %d areas, want %d", s.Areas(), 1+n/e)
				}
				if s.Bytes != s.TotalChunks*uint64(c) || s.ChunkSize != c {
					t.Errorf("got %d bytes for chunk %d, want %d", s.Bytes, s.ChunkSize, s.TotalChunks*uint64(c))
				}
			})
		}
	}
}

// TestForChunksKernelModel sweeps every N up to a few areas for the smallest
// chunk size against the allocator model.
func TestForChunksKernelModel(t *testing.T) {
	e := ExceptionsPerArea(4096)
	for n := uint64(0); n <= 4*e+3; n++ {
		s, err := ForChunks(n, 4096)
		if err != nil {
			t.Fatalf("ForChunks(%d): %v", n, err)
		}
		if want := kernelChunks(n, e); s.TotalChunks != want {
			t.Fatalf("N=%d: got %d chunks, want %d", n, s.TotalChunks, want)
		}
	}
}

// TestForChunksLayout checks the formula against the store's layout (merge,
// the format's home): the smallest store for n exceptions ends where the
// (n+1)-th data chunk would be.
func TestForChunksLayout(t *testing.T) {
	for _, cb := range chunkSizes {
		l := merge.Layout{ChunkSize: cb / SectorSize}
		e := l.PerArea()
		for _, n := range []uint64{0, 1, e - 1, e, e + 1, 2*e - 1, 2 * e, 3*e + 7} {
			s, err := ForChunks(n, cb)
			if err != nil {
				t.Fatal(err)
			}
			if want := l.DataChunk(n); s.TotalChunks != want {
				t.Errorf("chunk %d, N=%d: got %d chunks, want %d (merge.Layout.DataChunk)", cb, n, s.TotalChunks, want)
			}
		}
	}
}

func TestForChunksTooLarge(t *testing.T) {
	for _, c := range chunkSizes {
		t.Run(fmt.Sprint(c), func(t *testing.T) {
			limit, err := Capacity(MaxBytes, c)
			if err != nil {
				t.Fatalf("Capacity(MaxBytes): %v", err)
			}
			s, err := ForChunks(limit, c)
			if err != nil {
				t.Fatalf("ForChunks(%d) at the limit: %v", limit, err)
			}
			if s.Bytes > MaxBytes {
				t.Errorf("got %d bytes, want at most %d", s.Bytes, uint64(MaxBytes))
			}
			for _, n := range []uint64{limit + 1, math.MaxUint64 / uint64(c), math.MaxUint64 - 1, math.MaxUint64} {
				_, err := ForChunks(n, c)
				var tl TooLargeError
				if !errors.As(err, &tl) {
					t.Errorf("ForChunks(%d): got %v, want TooLargeError", n, err)
				}
			}
		})
	}
}

func TestCheckChunk(t *testing.T) {
	tests := []struct {
		bytes uint64
		ok    bool
	}{
		{0, false}, {1, false}, {512, false}, {2048, false}, {4095, false},
		{4096, true}, {6144, false}, {8192, true}, {16384, true}, {65536, true},
		{256 << 10, true}, {512 << 10, true}, {(512 << 10) + 4096, false}, {1 << 20, false},
		{1 << 40, false}, {math.MaxUint64, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.bytes), func(t *testing.T) {
			err := CheckChunk(tt.bytes)
			var ce ChunkSizeError
			if tt.ok && err != nil {
				t.Errorf("got %v, want nil", err)
			}
			if !tt.ok && (!errors.As(err, &ce) || ce.Bytes != tt.bytes) {
				t.Errorf("got %v, want ChunkSizeError{%d}", err, tt.bytes)
			}
		})
	}
	if _, err := ForChunks(1, 3000); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("ForChunks with a 3000-byte chunk: got %v, want ChunkSizeError", err)
	}
	if _, err := Capacity(1<<20, 1<<20); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("Capacity with a 1 MiB chunk: got %v, want ChunkSizeError", err)
	}
}

func TestCheckBlockSize(t *testing.T) {
	tests := []struct {
		chunk, block uint32
		ok           bool
	}{
		{4096, 512, true}, {4096, 4096, true}, {4096, 8192, false}, {65536, 65536, true}, {8192, 16384, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d/%d", tt.chunk, tt.block), func(t *testing.T) {
			err := CheckBlockSize("/dev/vdb", tt.chunk, tt.block)
			var be ChunkBelowBlockError
			if tt.ok != (err == nil) {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			if !tt.ok && (!errors.As(err, &be) || be.Device != "/dev/vdb" || be.BlockBytes != tt.block) {
				t.Errorf("got %#v, want ChunkBelowBlockError naming /dev/vdb and %d", err, tt.block)
			}
		})
	}
}

// checkRoundTrip asserts bytes(Capacity(S)) <= S < bytes(Capacity(S)+1).
func checkRoundTrip(t *testing.T, s uint64, c uint32) {
	t.Helper()
	n, err := Capacity(s, c)
	if err != nil {
		t.Fatalf("Capacity(%d, %d): %v", s, c, err)
	}
	got, err := ForChunks(n, c)
	if err != nil {
		t.Fatalf("ForChunks(%d, %d): %v", n, c, err)
	}
	if got.Bytes > s {
		t.Fatalf("Capacity(%d, %d) = %d, which needs %d bytes", s, c, n, got.Bytes)
	}
	next, err := ForChunks(n+1, c)
	if err == nil && next.Bytes <= s {
		t.Fatalf("Capacity(%d, %d) = %d, but %d chunks fit (%d bytes)", s, c, n, n+1, next.Bytes)
	}
}

func TestCapacity(t *testing.T) {
	for _, c := range chunkSizes {
		t.Run(fmt.Sprint(c), func(t *testing.T) {
			e := ExceptionsPerArea(c)
			for _, n := range boundaryNs(e) {
				s, err := ForChunks(n, c)
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := Capacity(s.Bytes, c); got != n {
					t.Errorf("Capacity(bytes(%d)) = %d, want %d", n, got, n)
				}
				for _, d := range []int64{-int64(c) - 1, -int64(c), -1, 1, int64(c) - 1, int64(c), int64(c) + 1} {
					if v := int64(s.Bytes) + d; v >= 2*int64(c) {
						checkRoundTrip(t, uint64(v), c)
					}
				}
			}
			rng := rand.New(rand.NewPCG(1, uint64(c)))
			for range 2000 {
				checkRoundTrip(t, 2*uint64(c)+rng.Uint64N(MaxBytes-2*uint64(c)), c)
				checkRoundTrip(t, 2*uint64(c)+rng.Uint64N(uint64(c)*e*8), c)
			}
			checkRoundTrip(t, MaxBytes, c)
		})
	}
}

func TestCapacityRefuses(t *testing.T) {
	tests := []struct {
		bytes uint64
		want  any
	}{
		{0, StoreTooSmallError{}},
		{4096, StoreTooSmallError{}},
		{8191, StoreTooSmallError{}},
		{MaxBytes + 1, TooLargeError{}},
		{math.MaxUint64, TooLargeError{}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.bytes), func(t *testing.T) {
			_, err := Capacity(tt.bytes, 4096)
			switch tt.want.(type) {
			case StoreTooSmallError:
				var e StoreTooSmallError
				if !errors.As(err, &e) || e.MinBytes != 8192 {
					t.Errorf("got %v, want StoreTooSmallError with MinBytes 8192", err)
				}
			case TooLargeError:
				if !errors.As(err, new(TooLargeError)) {
					t.Errorf("got %v, want TooLargeError", err)
				}
			}
		})
	}
	if n, err := Capacity(8192, 4096); err != nil || n != 0 {
		t.Errorf("Capacity(8192): got %d, %v, want 0, nil", n, err)
	}
}

func TestWithMargin(t *testing.T) {
	s1005, _ := ForChunks(1000, 4096) // 1005 chunks
	tests := []struct {
		name    string
		s       Size
		percent uint64
		want    uint64
		tooBig  bool
	}{
		{"zero", s1005, 0, 1005 * 4096, false},
		{"10% rounds up", s1005, 10, (1005 + 101) * 4096, false}, // 100.5 -> 101
		{"20% exact", s1005, 20, (1005 + 201) * 4096, false},
		{"1%", s1005, 1, (1005 + 11) * 4096, false}, // 10.05 -> 11
		{"100%", s1005, 100, 2010 * 4096, false},
		{"1000%", s1005, 1000, 11055 * 4096, false},
		{"huge percent", s1005, math.MaxUint64, 0, true},
		{"past 2^63", Size{ChunkSize: 4096, TotalChunks: MaxBytes / 4096, Bytes: MaxBytes / 4096 * 4096}, 1, 0, true},
		{"wraps", Size{ChunkSize: 4096, TotalChunks: math.MaxUint64 / 2, Bytes: 0}, 199, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.s.WithMargin(tt.percent)
			if tt.tooBig {
				if !errors.As(err, new(TooLargeError)) {
					t.Errorf("got %d, %v, want TooLargeError", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %d, %v, want %d", got, err, tt.want)
			}
		})
	}
}
