package merge

import (
	"context"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/snapctl/snapctl/freespace"
)

// TestZeroSegments reads a store laid out over a file and Zero segments:
// zeros where they are, the file's bytes elsewhere, writes into zeros
// refused with ErrZeroSegment and nothing written.
func TestZeroSegments(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	ab := randBytes(rng, 16384)
	writeFile(t, a, ab)
	segs := []Segment{{Path: a, Offset: 0, Length: 4096}, {Zero: true, Length: 8192}, {Path: a, Offset: 4096, Length: 12288}}
	want := slices.Concat(ab[:4096], make([]byte, 8192), ab[4096:])
	for _, flags := range []OpenFlags{OpenWrite, OpenWrite | OpenDirect} {
		r, err := OpenSegments(segs, flags)
		if err != nil {
			t.Fatal(err)
		}
		if r.Size() != int64(len(want)) {
			t.Fatalf("size %d, want %d", r.Size(), len(want))
		}
		for _, rd := range []struct{ off, n int }{{0, len(want)}, {4000, 200}, {8192, 4096}, {12000, 500}} {
			got := make([]byte, rd.n)
			for i := range got {
				got[i] = 0xff
			}
			if n, err := r.ReadAt(got, int64(rd.off)); err != nil || n != rd.n {
				t.Fatalf("ReadAt(%d at %d) = %d, %v", rd.n, rd.off, n, err)
			}
			if !slices.Equal(got, want[rd.off:rd.off+rd.n]) {
				t.Errorf("ReadAt(%d at %d): other bytes", rd.n, rd.off)
			}
		}
		// The vector path the offline merge takes: a read across all
		// three segments clears what lies in the zeros.
		vec := [][]byte{make([]byte, 2048), make([]byte, 8192), make([]byte, 6144)}
		for _, b := range vec {
			for i := range b {
				b[i] = 0xff
			}
		}
		if err := r.ReadvAt(vec, 2048); err != nil {
			t.Fatalf("ReadvAt across the zeros: %v", err)
		}
		if got := slices.Concat(vec...); !slices.Equal(got, want[2048:2048+len(got)]) {
			t.Error("ReadvAt across the zeros: other bytes")
		}
		if err := r.WritevAt([][]byte{make([]byte, 4096)}, 4096); !errors.Is(err, ErrZeroSegment) {
			t.Errorf("vector write into zeros: got %v, want ErrZeroSegment", err)
		}
		if _, err := r.WriteAt(make([]byte, 4096), 4096); !errors.Is(err, ErrZeroSegment) {
			t.Errorf("write into zeros: got %v, want ErrZeroSegment", err)
		}
		if _, err := r.WriteAt(pattern4k(7), 12288); err != nil {
			t.Errorf("write after the zeros: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, a)[4096:8192]; !slices.Equal(got, pattern4k(7)) {
			t.Error("the write after the zeros did not land at file byte 4096")
		}
		writeFile(t, a, ab)
	}
	if _, err := OpenSegments([]Segment{{Zero: true, Length: 100}}, 0); err == nil {
		t.Error("zeros of 100 bytes: no error")
	}
}

func pattern4k(seed byte) []byte {
	b := make([]byte, 4096)
	for i := range b {
		b[i] = seed + byte(i)
	}
	return b
}

// TestSeededStoreOnSegments writes a seeded store file and reads it
// through raw segments composed as the COW device is: the file's pieces
// and Zero segments from CowPieces.
func TestSeededStoreOnSegments(t *testing.T) {
	l := Layout{ChunkSize: 8}
	cb := l.ChunkBytes()
	p := PlanSeeds(l, []freespace.Run{{Start: 50, Count: 700}, {Start: 1000, Count: 90}}, SeedOptions{})
	fileChunks := p.FileChunks(100)
	path := filepath.Join(t.TempDir(), "store")
	writeFile(t, path, make([]byte, int64(fileChunks)*cb))
	f, err := OpenRaw(path, OpenWrite|OpenDirect)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteSeeded(context.Background(), f, p); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var segs []Segment
	for _, c := range p.CowPieces(fileChunks) {
		if c.Zero {
			segs = append(segs, Segment{Zero: true, Length: int64(c.Chunks) * cb})
		} else {
			segs = append(segs, Segment{Path: path, Offset: int64(c.FileChunk) * cb, Length: int64(c.Chunks) * cb})
		}
	}
	r, err := OpenSegments(segs, OpenDirect)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	st, err := ReadStore(r, r.Size(), Expect{ChunkSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(st.Exceptions)) != p.Seeds || p.Seeds != 768 {
		t.Errorf("read %d exceptions, want %d seeds (768)", len(st.Exceptions), p.Seeds)
	}
}
