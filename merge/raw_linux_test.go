package merge

import (
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSegmentsMapStoreOffsets(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	ab, bb := randBytes(rng, 16384), randBytes(rng, 12288)
	writeFile(t, a, ab)
	writeFile(t, b, bb)
	segs := []Segment{{Path: a, Offset: 8192, Length: 4096}, {Path: b, Offset: 0, Length: 8192}, {Path: a, Offset: 0, Length: 4096}}
	var want []byte
	for _, s := range segs {
		src := map[string][]byte{a: ab, b: bb}[s.Path]
		want = append(want, src[s.Offset:s.Offset+s.Length]...)
	}
	for _, flags := range []OpenFlags{0, OpenDirect} {
		r, err := OpenSegments(segs, flags)
		if err != nil {
			t.Fatal(err)
		}
		if r.Size() != int64(len(want)) {
			t.Fatalf("got size %d, want %d", r.Size(), len(want))
		}
		for _, rd := range []struct{ off, n int }{{0, 16384}, {0, 16}, {4090, 10}, {4096, 8192}, {12000, 4384}, {100, 16000}, {7, 4096}} {
			got := make([]byte, rd.n)
			if n, err := r.ReadAt(got, int64(rd.off)); err != nil || n != rd.n {
				t.Fatalf("flags %d: ReadAt(%d, %d) = %d, %v", flags, rd.n, rd.off, n, err)
			}
			if !slices.Equal(got, want[rd.off:rd.off+rd.n]) {
				t.Errorf("flags %d: ReadAt(%d, %d) returned other bytes", flags, rd.n, rd.off)
			}
		}
		if n, err := r.ReadAt(make([]byte, 10), int64(len(want))-5); n != 5 || err == nil {
			t.Errorf("flags %d: read across the end: got %d, %v; want 5 and an error", flags, n, err)
		}
		r.Close()
	}

	// Writes land where the segments say.
	r, err := OpenSegments(segs, OpenWrite|OpenDirect)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.Direct() {
		t.Log("filesystem without O_DIRECT: testing buffered I/O only")
	}
	patch := randBytes(rng, 8192)
	if _, err := r.WriteAt(patch, 8192); err != nil { // second half of b's segment, then a's second one
		t.Fatal(err)
	}
	if err := r.Sync(); err != nil {
		t.Fatal(err)
	}
	copy(bb[4096:8192], patch[:4096])
	copy(ab[0:4096], patch[4096:])
	if !slices.Equal(readFile(t, a), ab) || !slices.Equal(readFile(t, b), bb) {
		t.Error("write through segments landed elsewhere")
	}
	if r.Direct() {
		if _, err := r.WriteAt(patch[:100], 3); err == nil {
			t.Error("unaligned direct write: got nil error")
		}
	}
}

func TestOpenSegmentsRejects(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a")
	writeFile(t, a, make([]byte, 8192))
	for _, segs := range [][]Segment{
		nil,
		{{Path: a, Offset: 0, Length: 0}},
		{{Path: a, Offset: 100, Length: 512}},
		{{Path: a, Offset: 4096, Length: 8192}},
		{{Path: filepath.Join(dir, "missing"), Offset: 0, Length: 512}},
	} {
		if r, err := OpenSegments(segs, 0); err == nil {
			r.Close()
			t.Errorf("OpenSegments(%v): got nil error", segs)
		}
	}
}

// scenarioFiles writes a scenario to files: the origin as one file and the
// store scattered over two files in three segments.
func scenarioFiles(t *testing.T, sc *scenario) (origin string, segs []Segment) {
	t.Helper()
	dir := t.TempDir()
	origin = filepath.Join(dir, "origin.img")
	writeFile(t, origin, sc.post)
	cb := int64(sc.chunkSize) * SectorSize
	n := int64(len(sc.store)) / cb
	p1, p2 := n/3*cb, 2*n/3*cb
	f1, f2 := filepath.Join(dir, "disk1"), filepath.Join(dir, "disk2")
	d1 := make([]byte, 3*cb+p1+(int64(len(sc.store))-p2))
	copy(d1[3*cb:], sc.store[:p1])
	copy(d1[3*cb+p1:], sc.store[p2:])
	d2 := make([]byte, cb+p2-p1)
	copy(d2[cb:], sc.store[p1:p2])
	writeFile(t, f1, d1)
	writeFile(t, f2, d2)
	return origin, []Segment{{Path: f1, Offset: 3 * cb, Length: p1}, {Path: f2, Offset: cb, Length: p2 - p1}, {Path: f1, Offset: 3*cb + p1, Length: int64(len(sc.store)) - p2}}
}

func TestOfflinePathsFiles(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	sc := newScenario(rng, 8, 3000*4096, 1200)
	origin, segs := scenarioFiles(t, sc)
	rec := filepath.Join(t.TempDir(), "progress.json")
	res, err := OfflinePaths(context.Background(), origin, segs, OfflineOptions{ChunkSize: 8, ProgressFile: rec, Invalidate: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := firstDiff(readFile(t, origin), sc.pre); d >= 0 {
		t.Fatalf("origin differs from the pre-image at byte %d", d)
	}
	if !res.Invalidated || len(res.Store.Exceptions) != 1200 {
		t.Errorf("got invalidated %v with %d exceptions, want true and 1200", res.Invalidated, len(res.Store.Exceptions))
	}
	if v := binary.LittleEndian.Uint32(readFile(t, segs[0].Path)[segs[0].Offset+4:]); v != 0 {
		t.Errorf("store header valid = %d on disk, want 0", v)
	}
	res, err = OfflinePaths(context.Background(), origin, segs, OfflineOptions{ChunkSize: 8, ProgressFile: rec, Invalidate: true})
	if err != nil || !res.AlreadyDone {
		t.Errorf("rerun: got %+v, %v; want AlreadyDone", res, err)
	}
	// Without the record, an invalidated store is refused.
	if _, err := OfflinePaths(context.Background(), origin, segs, OfflineOptions{}); !errors.Is(err, ErrInvalidStore) {
		t.Errorf("rerun without record: got %v, want ErrInvalidStore", err)
	}
}

func TestOfflinePathsWholeFileStore(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	sc := newScenario(rng, 32, 500*16384+512, 200)
	dir := t.TempDir()
	origin, store := filepath.Join(dir, "origin"), filepath.Join(dir, "cow")
	writeFile(t, origin, sc.post)
	writeFile(t, store, sc.store)
	if _, err := OfflinePaths(context.Background(), origin, []Segment{{Path: store}}, OfflineOptions{ChunkSize: 32}); err != nil {
		t.Fatal(err)
	}
	if d := firstDiff(readFile(t, origin), sc.pre); d >= 0 {
		t.Fatalf("origin differs from the pre-image at byte %d", d)
	}
	if !slices.Equal(readFile(t, store), sc.store) {
		t.Error("store changed without Invalidate")
	}
}

// A store kept on the origin's own device (checkpoint mode) must not be
// overwritten by the merge: OfflinePaths protects its extents.
func TestOfflinePathsStoreOnOrigin(t *testing.T) {
	const cs = 8
	l := Layout{ChunkSize: cs}
	rng := rand.New(rand.NewPCG(27, 28))
	const dataChunks = 400
	for _, hit := range []bool{false, true} {
		sc := newScenario(rng, cs, dataChunks*4096, 100)
		ex := slices.Clone(sc.ex)
		store := sc.store
		storeStart := int64(dataChunks) * 4096
		if hit { // one more exception whose origin chunk lies inside the store
			ex = append(ex, Exception{Old: dataChunks + 3, New: l.DataChunk(uint64(len(ex)))})
			store = make([]byte, int64(l.DataChunk(uint64(len(ex))))*4096)
			copy(store, sc.store)
			if err := WriteStore(newMemAt(store), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
				t.Fatal(err)
			}
		}
		origin := filepath.Join(t.TempDir(), "disk")
		image := append(slices.Clone(sc.post), store...)
		writeFile(t, origin, image)
		segs := []Segment{{Path: origin, Offset: storeStart, Length: int64(len(store))}}
		_, err := OfflinePaths(context.Background(), origin, segs, OfflineOptions{ChunkSize: cs})
		got := readFile(t, origin)
		if hit {
			var oe *OverlapError
			if !errors.As(err, &oe) || oe.Exception.Old != dataChunks+3 {
				t.Fatalf("got %v, want an OverlapError for old chunk %d", err, dataChunks+3)
			}
			if !slices.Equal(got, image) {
				t.Error("origin written despite the overlap")
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := firstDiff(got[:storeStart], sc.pre); d >= 0 || !slices.Equal(got[storeStart:], store) {
			t.Fatalf("got a wrong image (first difference in the data at %d)", d)
		}
	}
}

// TestRawVectors writes and reads vectors of buffers across segment
// boundaries: pieces of page-aligned memory in one request per segment,
// and an unaligned piece through the bounce buffer.
func TestRawVectors(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 28))
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	ab, bb := randBytes(rng, 32768), randBytes(rng, 16384)
	writeFile(t, a, ab)
	writeFile(t, b, bb)
	segs := []Segment{{Path: a, Offset: 16384, Length: 8192}, {Path: b, Offset: 4096, Length: 12288}, {Path: a, Offset: 0, Length: 8192}}
	var want []byte
	for _, s := range segs {
		src := map[string][]byte{a: ab, b: bb}[s.Path]
		want = append(want, src[s.Offset:s.Offset+s.Length]...)
	}
	for _, flags := range []OpenFlags{0, OpenDirect} {
		r, err := OpenSegments(segs, OpenWrite|flags)
		if err != nil {
			t.Fatal(err)
		}
		mem, err := alignedBuf(len(want))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			off    int64
			pieces []int
		}{
			{0, []int{4096, 8192, 4096}},              // crosses the first boundary inside a piece
			{4096, []int{4096, 4096, 12288, 4096}},    // all three segments
			{8192, []int{12288}},                      // exactly the second segment
			{12288, []int{4096, 100, 3996, 4096}},     // unaligned pieces: bounced
			{0, []int{28672}},                         // everything, one piece
			{20480, []int{4096, 4096}},                // the last segment
			{0, []int{4096, 4096, 4096, 4096, 12288}}, // pieces ending on boundaries
		} {
			var bufs [][]byte
			at := 0
			for _, n := range c.pieces {
				bufs = append(bufs, mem.b[at:at+n])
				at += n
			}
			n := int64(at)
			patch := randBytes(rng, at)
			copy(mem.b, patch)
			if err := r.WritevAt(slices.Clone(bufs), c.off); err != nil {
				t.Fatalf("flags %d: WritevAt %v at %d: %v", flags, c.pieces, c.off, err)
			}
			copy(want[c.off:], patch)
			got := make([]byte, len(want))
			if _, err := r.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if d := firstDiff(got, want); d >= 0 {
				t.Fatalf("flags %d: after WritevAt %v at %d: differs at byte %d", flags, c.pieces, c.off, d)
			}
			clear(mem.b)
			if err := r.ReadvAt(slices.Clone(bufs), c.off); err != nil {
				t.Fatalf("flags %d: ReadvAt %v at %d: %v", flags, c.pieces, c.off, err)
			}
			if !slices.Equal(mem.b[:n], want[c.off:c.off+n]) {
				t.Errorf("flags %d: ReadvAt %v at %d returned other bytes", flags, c.pieces, c.off)
			}
		}
		if err := r.ReadvAt([][]byte{mem.b[:4096], mem.b[4096:8192]}, int64(len(want))-4096); err == nil {
			t.Errorf("flags %d: ReadvAt across the end: got nil error", flags)
		}
		mem.free()
		r.Close()
	}
}

// TestOfflinePathsVectors merges through files (direct I/O where the
// filesystem has it) with settings that make every kind of vector: reads
// of the store through unneeded chunks into the sink (small windows),
// writes of chunks and filled gaps together, across segment boundaries.
func TestOfflinePathsVectors(t *testing.T) {
	rng := rand.New(rand.NewPCG(29, 30))
	sc := newScenario(rng, 8, 3000*4096, 1200)
	for _, opts := range []OfflineOptions{
		{FillGap: 64 << 10, Window: 64 << 10},
		{FillGap: 1 << 20, MaxIO: 64 << 10, Workers: 3},
		{FillGap: 4096, Window: 1 << 20, Workers: 1},
	} {
		origin, segs := scenarioFiles(t, sc)
		opts.ChunkSize = 8
		res, err := OfflinePaths(context.Background(), origin, segs, opts)
		if err != nil {
			t.Fatal(err)
		}
		if d := firstDiff(readFile(t, origin), sc.pre); d >= 0 {
			t.Fatalf("%+v: origin differs from the pre-image at byte %d", opts, d)
		}
		if res.Filled == 0 {
			t.Errorf("%+v: nothing filled", opts)
		}
	}
}

// TestCalibrateFill measures FillGap on a store file large enough for it
// and keeps it within bounds; a FillGap the caller set, and a store in
// memory, are left as they are.
func TestCalibrateFill(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cow")
	writeFile(t, path, randBytes(rand.New(rand.NewPCG(31, 33)), 4<<20))
	store, err := OpenRaw(path, OpenDirect)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	st := &Store{Header: Header{ChunkSize: 8}, Size: store.Size()}
	buf, err := alignedBuf(defaultMaxIO)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.free()
	for _, tc := range []struct {
		name  string
		store Device
		gap   int64
		want  func(int64) bool
	}{
		{"measured", store, 0, func(g int64) bool { return g >= minFillGap && g <= maxFillGap }},
		{"set", store, 12 << 10, func(g int64) bool { return g == 12<<10 }},
		{"in memory", newMem(make([]byte, 4<<20)), 0, func(g int64) bool { return g == defaultFillGap }},
	} {
		c := newCopier(newMem(make([]byte, 1<<20)), tc.store, st, OfflineOptions{FillGap: tc.gap})
		if c.autoFill {
			c.calibrateFill(buf.b)
		}
		if !tc.want(c.opts.FillGap) {
			t.Errorf("%s: FillGap %d", tc.name, c.opts.FillGap)
		}
		if c.fillChunks != uint64(c.opts.FillGap/4096) || c.readGap != uint64(readGapFactor*c.opts.FillGap/4096) {
			t.Errorf("%s: FillGap %d gives %d fill and %d read chunks", tc.name, c.opts.FillGap, c.fillChunks, c.readGap)
		}
		t.Logf("%s: FillGap %d KiB", tc.name, c.opts.FillGap>>10)
	}
}
