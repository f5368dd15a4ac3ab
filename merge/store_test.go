package merge

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestLayoutMatchesKernelAllocation(t *testing.T) {
	for _, cs := range []uint32{1, 8, 32, 128} {
		l := Layout{ChunkSize: cs}
		stride := l.PerArea() + 1
		// The kernel's allocator: start at 2, and step over a chunk that
		// lands on a metadata area (next % stride == 1).
		next := uint64(2)
		for n := range uint64(3*l.PerArea() + 7) {
			if got := l.DataChunk(n); got != next {
				t.Fatalf("C=%d: DataChunk(%d) = %d, want %d", cs, n, got, next)
			}
			if l.IsMetadata(next) {
				t.Fatalf("C=%d: data chunk %d reported as metadata", cs, next)
			}
			next++
			if next%stride == 1 {
				next++
			}
		}
	}
}

// storeImage builds a store with n in-order exceptions in the smallest
// store that holds them.
func storeImage(t testing.TB, cs uint32, n int) ([]byte, []Exception) {
	t.Helper()
	l := Layout{ChunkSize: cs}
	ex := make([]Exception, n)
	for i := range ex {
		ex[i] = Exception{Old: uint64(i * 3), New: l.DataChunk(uint64(i))}
	}
	b := make([]byte, int64(l.DataChunk(uint64(n)))*l.ChunkBytes())
	if err := WriteStore(newMemAt(b), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
		t.Fatal(err)
	}
	return b, ex
}

func TestReadStoreRoundTrip(t *testing.T) {
	for _, cs := range []uint32{8, 32, 128} {
		e := int(Layout{ChunkSize: cs}.PerArea())
		for _, n := range []int{0, 1, e - 1, e, e + 1, 2 * e, 3*e + 5} {
			t.Run("", func(t *testing.T) {
				l := Layout{ChunkSize: cs}
				ex := make([]Exception, n)
				for i := range ex {
					ex[i] = Exception{Old: uint64(i * 3), New: l.DataChunk(uint64(i))}
				}
				size := int64(l.DataChunk(uint64(n))) * l.ChunkBytes()
				img := newSparse(size)
				if err := WriteStore(img, Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
					t.Fatal(err)
				}
				s, err := ReadStore(img, size, Expect{ChunkSize: cs, OriginSize: int64(3*n+1) * int64(cs) * SectorSize})
				if err != nil {
					t.Fatalf("C=%d n=%d: %v", cs, n, err)
				}
				if !slices.Equal(s.Exceptions, ex) {
					t.Errorf("C=%d n=%d: got %d exceptions, want %d (or different ones)", cs, n, len(s.Exceptions), len(ex))
				}
				if want := uint64(n/e + 1); s.Areas != want {
					t.Errorf("C=%d n=%d: got %d areas, want %d", cs, n, s.Areas, want)
				}
				if got, want := s.UsedChunks(), s.Chunks(); got != want {
					t.Errorf("C=%d n=%d: got %d used chunks, want %d (the minimal store is full)", cs, n, got, want)
				}
				if !s.Header.Valid || s.Header.ChunkSize != cs {
					t.Errorf("C=%d n=%d: got header %+v", cs, n, s.Header)
				}
			})
		}
	}
}

func TestReadStoreFresh(t *testing.T) {
	b := make([]byte, 8192)
	s, err := ReadStore(newMem(b), int64(len(b)), Expect{})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Header.Fresh() || len(s.Exceptions) != 0 {
		t.Errorf("got %+v, want a fresh store without exceptions", s)
	}
	if _, err := ReadStore(newMem(b), int64(len(b)), Expect{ChunkSize: 16}); !errors.Is(err, ErrTruncated) {
		t.Errorf("fresh 8 KiB store with 8 KiB chunks: got %v, want ErrTruncated", err)
	}
}

func TestReadStoreCorrupt(t *testing.T) {
	const cs = 8 // E = 256
	put := func(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	put32 := func(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
	area := func(a int) int { return int(Layout{ChunkSize: cs}.AreaChunk(uint64(a))) * 4096 }
	for _, tc := range []struct {
		name        string
		n           int
		mutate      func(b []byte) []byte
		want        error
		area, entry int64
		expect      Expect
	}{
		{"bad magic", 10, func(b []byte) []byte { put32(b, 0, 0x12345678); return b }, ErrBadMagic, -1, -1, Expect{}},
		{"version 2", 10, func(b []byte) []byte { put32(b, 8, 2); return b }, ErrBadVersion, -1, -1, Expect{}},
		{"valid 7", 10, func(b []byte) []byte { put32(b, 4, 7); return b }, ErrBadValid, -1, -1, Expect{}},
		{"chunk size 0", 10, func(b []byte) []byte { put32(b, 12, 0); return b }, ErrBadChunkSize, -1, -1, Expect{}},
		{"chunk size 12", 10, func(b []byte) []byte { put32(b, 12, 12); return b }, ErrBadChunkSize, -1, -1, Expect{}},
		{"chunk size 2^22", 10, func(b []byte) []byte { put32(b, 12, 1<<22); return b }, ErrBadChunkSize, -1, -1, Expect{}},
		{"header cut", 10, func(b []byte) []byte { return b[:15] }, ErrTruncated, -1, -1, Expect{}},
		{"first area cut", 10, func(b []byte) []byte { return b[:4096+100] }, ErrTruncated, -1, -1, Expect{}},
		{"new chunk 1", 10, func(b []byte) []byte { put(b, area(0)+3*16+8, 1); return b }, ErrMetadataSlot, 0, 3, Expect{}},
		{"new chunk on area 1", 300, func(b []byte) []byte { put(b, area(1)+5*16+8, 258); return b }, ErrMetadataSlot, 1, 5, Expect{}},
		{"new chunk past the end", 10, func(b []byte) []byte { put(b, area(0)+9*16+8, 12); return b }, ErrPastStore, 0, 9, Expect{}},
		{"new chunk huge", 10, func(b []byte) []byte { put(b, area(0)+8, 1<<63); return b }, ErrPastStore, 0, 0, Expect{}},
		{"old chunk past the origin", 10, func(b []byte) []byte { put(b, area(0)+4*16, 30); return b }, ErrPastOrigin, 0, 4, Expect{OriginSize: 30 * 4096}},
		{"duplicate old", 10, func(b []byte) []byte { put(b, area(0)+7*16, 6); return b }, ErrDuplicateOld, 0, 7, Expect{}},
		{"duplicate old across areas", 300, func(b []byte) []byte { put(b, area(1)+2*16, 0); return b }, ErrDuplicateOld, 1, 2, Expect{}},
		{"duplicate new", 10, func(b []byte) []byte { put(b, area(0)+2*16+8, 2); return b }, ErrDuplicateNew, 0, 2, Expect{}},
		{"full area without successor", 256, func(b []byte) []byte { return b[:len(b)-4096] }, ErrTruncated, 1, -1, Expect{}},
		{"store cut in the data", 300, func(b []byte) []byte { return b[:len(b)-3*4096] }, ErrPastStore, 1, 41, Expect{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, _ := storeImage(t, cs, tc.n)
			b = tc.mutate(b)
			s, err := ReadStore(newMem(b), int64(len(b)), tc.expect)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got store %v, error %v; want %v", s != nil, err, tc.want)
			}
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("got %T, want *CorruptError", err)
			}
			if ce.Area != tc.area || ce.Entry != tc.entry {
				t.Errorf("got area %d entry %d, want area %d entry %d (%v)", ce.Area, ce.Entry, tc.area, tc.entry, err)
			}
			t.Log(err)
		})
	}
}

func TestReadStoreChunkSizeMismatch(t *testing.T) {
	b, _ := storeImage(t, 8, 3)
	_, err := ReadStore(newMem(b), int64(len(b)), Expect{ChunkSize: 16})
	var ce *ChunkSizeError
	if !errors.As(err, &ce) || ce.Header != 8 || ce.Expected != 16 || !errors.Is(err, ErrChunkSizeMismatch) {
		t.Fatalf("got %v, want ChunkSizeError{8, 16}", err)
	}
}

func TestReadStoreInvalidIsParsed(t *testing.T) {
	b, ex := storeImage(t, 8, 5)
	binary.LittleEndian.PutUint32(b[4:], 0)
	s, err := ReadStore(newMem(b), int64(len(b)), Expect{})
	if err != nil {
		t.Fatal(err)
	}
	if s.Header.Valid || len(s.Exceptions) != len(ex) {
		t.Errorf("got valid=%v and %d exceptions, want valid=false and %d", s.Header.Valid, len(s.Exceptions), len(ex))
	}
}

// A kernel merge that stopped half way leaves a table whose last entries
// are cleared; when a whole area was cleared, the full area before it is
// followed by an empty one. Both read as shorter stores.
func TestReadStoreHalfMergedByKernel(t *testing.T) {
	b, ex := storeImage(t, 8, 300)
	a1 := int(Layout{ChunkSize: 8}.AreaChunk(1)) * 4096
	clear(b[a1 : a1+4096])
	s, err := ReadStore(newMem(b), int64(len(b)), Expect{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Exceptions, ex[:256]) || s.Areas != 2 {
		t.Errorf("got %d exceptions in %d areas, want 256 in 2", len(s.Exceptions), s.Areas)
	}
}

func TestReadStoreRandomStoresAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		cs := []uint32{1, 8, 32}[rng.IntN(3)]
		cb := int64(cs) * SectorSize
		n := rng.IntN(600)
		size := int64(n+5)*cb + int64(rng.IntN(int(cb)))
		sc := newScenario(rng, cs, size, n)
		s, err := ReadStore(newMem(sc.store), int64(len(sc.store)), Expect{ChunkSize: cs, OriginSize: size})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(s.Exceptions, sc.ex) {
			t.Fatalf("C=%d n=%d: table differs from the one written", cs, n)
		}
	}
}
