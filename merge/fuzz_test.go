package merge

import (
	"errors"
	"testing"
)

// FuzzReadStore feeds arbitrary bytes to the reader: it must never panic,
// every error must be about the content, and every store it accepts must
// keep its promises (all indexes inside the store and origin, no metadata
// slots, no duplicates). Run longer with
// go test -run '^$' -fuzz FuzzReadStore -fuzztime 10m ./merge/
func FuzzReadStore(f *testing.F) {
	seed := func(cs uint32, n int, mutate func([]byte)) {
		b, _ := storeImage(f, cs, n)
		if mutate != nil {
			mutate(b)
		}
		f.Add(b, uint32(0), int64(0))
		f.Add(b, cs, int64(3*n+1)*int64(cs)*SectorSize)
	}
	for _, n := range []int{0, 1, 5, 31, 32, 33, 64, 70} {
		seed(1, n, nil) // 512-byte chunks: 32 entries per area, small inputs
	}
	seed(2, 100, nil)
	seed(8, 3, nil)
	seed(1, 10, func(b []byte) { b[4] = 0 })          // invalid
	seed(1, 10, func(b []byte) { b[512+3*16+8] = 1 }) // metadata slot
	seed(1, 40, func(b []byte) { b[512*34+16] = 0 })  // duplicate old across areas
	f.Add(make([]byte, 1024), uint32(1), int64(0))    // fresh
	f.Add([]byte("SnAp"), uint32(0), int64(0))

	f.Fuzz(func(t *testing.T, data []byte, chunkSize uint32, originSize int64) {
		if originSize < 0 {
			originSize = -originSize
		}
		size := int64(len(data))
		s, err := ReadStore(newMem(data), size, Expect{ChunkSize: chunkSize, OriginSize: originSize})
		if err != nil {
			var ce *CorruptError
			var ze *ChunkSizeError
			if !errors.As(err, &ce) && !errors.As(err, &ze) {
				t.Fatalf("got %T %v, want a content error", err, err)
			}
			if s != nil {
				t.Fatalf("got a store along with error %v", err)
			}
			return
		}
		if s.Header.Fresh() {
			if len(s.Exceptions) != 0 {
				t.Fatalf("fresh store with %d exceptions", len(s.Exceptions))
			}
			return
		}
		l := s.Layout()
		chunks := s.Chunks()
		if uint64(len(s.Exceptions)) > chunks || s.Areas == 0 || l.AreaChunk(s.Areas-1) >= chunks {
			t.Fatalf("%d exceptions, %d areas in %d chunks", len(s.Exceptions), s.Areas, chunks)
		}
		if s.UsedChunks() > chunks {
			t.Fatalf("used %d of %d chunks", s.UsedChunks(), chunks)
		}
		cb := l.ChunkBytes()
		olds, news := map[uint64]bool{}, map[uint64]bool{}
		for _, e := range s.Exceptions {
			if e.New < 2 || e.New >= chunks || l.IsMetadata(e.New) {
				t.Fatalf("exception %v: bad new chunk in a %d-chunk store", e, chunks)
			}
			if originSize > 0 && int64(e.Old) >= (originSize+cb-1)/cb {
				t.Fatalf("exception %v: old chunk past an origin of %d bytes", e, originSize)
			}
			if olds[e.Old] || news[e.New] {
				t.Fatalf("exception %v: duplicate", e)
			}
			olds[e.Old], news[e.New] = true, true
		}
	})
}
