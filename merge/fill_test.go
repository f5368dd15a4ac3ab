package merge

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"
)

// TestSpans checks how the writes of a window are cut: runs of adjacent
// origin chunks, joined through gaps of at most FillGap that touch no
// protected range, at most MaxIO long; the fill reads cover every gap and
// join across short runs of changed chunks.
func TestSpans(t *testing.T) {
	const k = 4096 // chunk bytes (8 sectors)
	type want struct {
		off, n int64
		fill   []Extent
		filled int64
	}
	for _, tc := range []struct {
		name       string
		olds       []uint64
		originSize int64 // default 64 chunks
		opts       OfflineOptions
		protect    []Extent
		want       []want
	}{
		{"adjacent run", []uint64{10, 11, 12}, 0, OfflineOptions{}, nil,
			[]want{{10 * k, 3 * k, nil, 0}}},
		{"one-chunk gap filled", []uint64{10, 12}, 0, OfflineOptions{FillGap: k}, nil,
			[]want{{10 * k, 3 * k, []Extent{{11 * k, k}}, k}}},
		{"gap as long as FillGap", []uint64{10, 13}, 0, OfflineOptions{FillGap: 2 * k}, nil,
			[]want{{10 * k, 4 * k, []Extent{{11 * k, 2 * k}}, 2 * k}}},
		{"gap longer than FillGap", []uint64{10, 13}, 0, OfflineOptions{FillGap: 2*k - 1}, nil,
			[]want{{10 * k, k, nil, 0}, {13 * k, k, nil, 0}}},
		{"filling off", []uint64{10, 12}, 0, OfflineOptions{FillGap: -1}, nil,
			[]want{{10 * k, k, nil, 0}, {12 * k, k, nil, 0}}},
		{"default fills 32 KiB", []uint64{0, 9, 19}, 0, OfflineOptions{}, nil,
			[]want{{0, 10 * k, []Extent{{k, 8 * k}}, 8 * k}, {19 * k, k, nil, 0}}},
		{"MaxIO counts the gaps", []uint64{0, 2, 4, 6, 8}, 0, OfflineOptions{FillGap: k, MaxIO: 4 * k}, nil,
			[]want{{0, 3 * k, []Extent{{k, k}}, k}, {4 * k, 3 * k, []Extent{{5 * k, k}}, k}, {8 * k, k, nil, 0}}},
		{"gap on a protected range", []uint64{10, 12}, 0, OfflineOptions{FillGap: k}, []Extent{{11*k + 512, 512}},
			[]want{{10 * k, k, nil, 0}, {12 * k, k, nil, 0}}},
		{"protected range elsewhere", []uint64{10, 12}, 0, OfflineOptions{FillGap: k}, []Extent{{9 * k, k}, {13 * k, 8 * k}},
			[]want{{10 * k, 3 * k, []Extent{{11 * k, k}}, k}}},
		{"fill reads join across a short run", []uint64{10, 12, 13, 15}, 0, OfflineOptions{FillGap: 2 * k}, nil,
			[]want{{10 * k, 6 * k, []Extent{{11 * k, 4 * k}}, 2 * k}}},
		{"fill reads split at a long run", []uint64{10, 12, 13, 14, 16}, 0, OfflineOptions{FillGap: 2*k - 1}, nil,
			[]want{{10 * k, 7 * k, []Extent{{11 * k, k}, {15 * k, k}}, 2 * k}}},
		{"short last chunk", []uint64{10, 12}, 12*k + 1024, OfflineOptions{FillGap: k}, nil,
			[]want{{10 * k, 2*k + 1024, []Extent{{11 * k, k}}, k}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := Layout{ChunkSize: 8}
			ex := make([]Exception, len(tc.olds))
			for i, o := range tc.olds {
				ex[len(ex)-1-i] = Exception{Old: o, New: l.DataChunk(uint64(i))} // store order unlike origin order
			}
			size := cmp.Or(tc.originSize, 64*k)
			c := newCopier(newMem(make([]byte, size)), nil, &Store{Header: Header{ChunkSize: 8}, Exceptions: ex}, tc.opts)
			if err := c.checkProtected(tc.protect); err != nil {
				t.Fatal(err)
			}
			idx := make([]int, len(ex))
			for i := range idx {
				idx[i] = i
			}
			var got []want
			for _, sp := range c.spans(idx) {
				got = append(got, want{sp.off, sp.n, sp.fill, sp.filled})
			}
			if d := gocmp.Diff(tc.want, got, gocmp.AllowUnexported(want{})); d != "" {
				t.Errorf("spans (-want +got):\n%s", d)
			}
		})
	}
}

// watchDev is an origin that checks every write: it must not touch a
// protected range, and wherever it lands outside the changed chunks it
// must write the bytes that are already there.
type watchDev struct {
	*memDev
	cb      int64
	changed map[uint64]bool
	protect []Extent

	mu       sync.Mutex
	writes   int
	outside  int64 // bytes written outside changed chunks
	problems []string
}

func (w *watchDev) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	w.writes++
	for _, x := range w.protect {
		if off < x.Offset+x.Length && x.Offset < off+int64(len(p)) {
			w.problems = append(w.problems, fmt.Sprintf("write at %d (+%d) touches protected range %+v", off, len(p), x))
		}
	}
	cur := make([]byte, len(p))
	w.memDev.ReadAt(cur, off)
	for i := 0; i < len(p); {
		chunk := uint64((off + int64(i)) / w.cb)
		n := int(min(int64(len(p)-i), int64(chunk+1)*w.cb-off-int64(i)))
		if !w.changed[chunk] {
			w.outside += int64(n)
			if !slices.Equal(p[i:i+n], cur[i:i+n]) {
				w.problems = append(w.problems, fmt.Sprintf("write at %d changes unchanged origin chunk %d", off, chunk))
			}
		}
		i += n
	}
	w.mu.Unlock()
	return w.memDev.WriteAt(p, off)
}

// countDev counts the reads that start on a data chunk of a store.
type countDev struct {
	Device
	l     Layout
	mu    sync.Mutex
	reads int
}

func (c *countDev) ReadAt(p []byte, off int64) (int, error) {
	if !c.l.IsMetadata(uint64(off / c.l.ChunkBytes())) {
		c.mu.Lock()
		c.reads++
		c.mu.Unlock()
	}
	return c.Device.ReadAt(p, off)
}

// TestOfflineFillGap merges one scattered store with FillGap, MaxIO,
// Workers and Window varied: the result is the pre-image every time, no
// write touches a protected range or changes a byte outside the changed
// chunks, filling joins writes exactly when it is on, and Filled counts
// the bytes written outside the changed chunks.
func TestOfflineFillGap(t *testing.T) {
	const cs, k = 8, 4096
	rng := rand.New(rand.NewPCG(41, 42))
	sc := newScenario(rng, cs, 600*k+2048, 250)
	changed := map[uint64]bool{}
	for _, e := range sc.ex {
		changed[e.Old] = true
	}
	// Protect a few unchanged chunks between changed ones.
	var protect []Extent
	for c := uint64(1); c < 599 && len(protect) < 4; c++ {
		if !changed[c] && changed[c-1] && changed[c+1] {
			protect = append(protect, Extent{Offset: int64(c) * k, Length: k})
		}
	}
	if len(protect) == 0 {
		t.Fatal("scenario has no single unchanged chunk between changed ones")
	}
	for _, tc := range []struct {
		name string
		opts OfflineOptions
		fill bool // some gap is filled
	}{
		{"off", OfflineOptions{FillGap: -1}, false},
		{"default", OfflineOptions{}, true},
		{"one chunk", OfflineOptions{FillGap: k}, true},
		{"below a chunk", OfflineOptions{FillGap: k - 1}, false},
		{"1 MiB, small MaxIO", OfflineOptions{FillGap: 1 << 20, MaxIO: 8 * k}, true},
		{"1 MiB, one worker", OfflineOptions{FillGap: 1 << 20, Workers: 1}, true},
		{"small windows", OfflineOptions{FillGap: 4 * k, Window: 40 * k, Workers: 7}, true},
		{"windows of one chunk", OfflineOptions{FillGap: 4 * k, Window: 1}, false},
		{"protected", OfflineOptions{FillGap: 8 * k, Protect: protect}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			origin := &watchDev{memDev: newMem(sc.post), cb: k, changed: changed, protect: tc.opts.Protect}
			tc.opts.ChunkSize = cs
			res, err := Offline(context.Background(), origin, newMem(sc.store), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			if d := firstDiff(origin.bytes(), sc.pre); d >= 0 {
				t.Fatalf("origin differs from the pre-image at byte %d", d)
			}
			for _, p := range origin.problems {
				t.Error(p)
			}
			if res.Filled != origin.outside {
				t.Errorf("got Filled %d, want the %d bytes written outside changed chunks", res.Filled, origin.outside)
			}
			if got := res.Filled > 0; got != tc.fill {
				t.Errorf("got Filled %d, want filling %v", res.Filled, tc.fill)
			}
			if res.Writes != origin.writes || res.Copied != res.Total {
				t.Errorf("got %d writes (device saw %d), copied %d of %d", res.Writes, origin.writes, res.Copied, res.Total)
			}
			if tc.fill {
				tc.opts.FillGap = -1
				unfilled, err := Offline(context.Background(), newMem(sc.post), newMem(sc.store), tc.opts)
				if err != nil {
					t.Fatal(err)
				}
				if res.Writes >= unfilled.Writes {
					t.Errorf("got %d writes, want fewer than the %d without filling", res.Writes, unfilled.Writes)
				}
			}
		})
	}
}

// TestOfflineJoinsStoreReads lays the needed store chunks out every other
// chunk (a window of every second exception, as a store larger than the
// window gives): reads join through the unneeded chunks in between, and
// through metadata areas, unless filling is off.
func TestOfflineJoinsStoreReads(t *testing.T) {
	const cs, k = 1, 512 // 32 entries per area: many areas
	l := Layout{ChunkSize: cs}
	n := 200
	rng := rand.New(rand.NewPCG(43, 44))
	pre := randBytes(rng, 2*n*k)
	post := randBytes(rng, len(pre))
	store := randBytes(rng, int(int64(l.DataChunk(uint64(n)))*k))
	var ex []Exception
	for i := range n {
		// Exception i restores origin chunk 2*i; a window of 100 chunks
		// takes every second store chunk when origin order is i%2, i/2.
		old := uint64(2 * (i%2*n/2 + i/2))
		e := Exception{Old: old, New: l.DataChunk(uint64(i))}
		ex = append(ex, e)
		copy(store[int64(e.New)*k:][:k], pre[int64(old)*k:])
	}
	want := slices.Clone(post)
	for _, e := range ex {
		copy(want[int64(e.Old)*k:][:k], pre[int64(e.Old)*k:])
	}
	if err := WriteStore(newMemAt(store), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		fillGap       int64
		minRd, maxRd  int
		windowChunks  int64
		wantFilledAny bool
	}{
		// Two windows of 100 exceptions, each reading every second
		// chunk of the store: joined, one read per MaxIO (64 chunks of
		// 512 bytes in 32 KiB) or metadata area; alone, 200 reads.
		{"joined", 4 * k, 2, 12, 100, true},
		{"off", -1, 200, 200, 100, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := &countDev{Device: newMem(store), l: l}
			origin := newMem(post)
			res, err := Offline(context.Background(), origin, st, OfflineOptions{FillGap: tc.fillGap, Window: tc.windowChunks * k, MaxIO: 32 << 10})
			if err != nil {
				t.Fatal(err)
			}
			if d := firstDiff(origin.bytes(), want); d >= 0 {
				t.Fatalf("origin differs at byte %d", d)
			}
			if got := st.reads; got < tc.minRd || got > tc.maxRd {
				t.Errorf("got %d reads of store chunks, want %d to %d", got, tc.minRd, tc.maxRd)
			}
			if got := res.Filled > 0; got != tc.wantFilledAny {
				t.Errorf("got Filled %d, want filling %v", res.Filled, tc.wantFilledAny)
			}
		})
	}
}

// TestOfflineFillPowerCutEveryWrite cuts the power after every number of
// origin writes a merge issues, with gap filling, several windows and
// checkpoints, and writes since the last flush surviving whole, torn at
// sector boundaries or lost; the merge then runs again on what the disk
// held, as often as it takes. The result must be the pre-image.
func TestOfflineFillPowerCutEveryWrite(t *testing.T) {
	const cs, k = 8, 4096
	rng := rand.New(rand.NewPCG(45, 46))
	sc := newScenario(rng, cs, 400*k, 160)
	opts := OfflineOptions{
		ChunkSize: cs, FillGap: 3 * k, MaxIO: 16 * k, Workers: 3,
		Window: 30 * k, CheckpointBytes: 60 * k, Invalidate: true,
	}
	clean, err := Offline(context.Background(), newMem(sc.post), newMem(sc.store), opts)
	if err != nil {
		t.Fatal(err)
	}
	if clean.Filled == 0 {
		t.Fatal("the scenario fills no gap")
	}
	resumed := 0
	for cut := 0; cut <= clean.Writes; cut++ {
		t.Run(fmt.Sprintf("cut=%d", cut), func(t *testing.T) {
			opts := opts
			opts.ProgressFile = filepath.Join(t.TempDir(), "progress.json")
			image, store := sc.post, newMem(sc.store)
			next := cut
			for attempt := 0; ; attempt++ {
				dev := newCrash(image, next)
				res, err := Offline(context.Background(), dev, store, opts)
				if err == nil {
					image = dev.durable
					break
				}
				if !errors.Is(err, errDead) {
					t.Fatalf("attempt %d: %v", attempt, err)
				}
				if attempt > 50 {
					t.Fatal("no progress after 50 power cuts")
				}
				if attempt > 0 && res != nil && res.Resumed > 0 {
					resumed++
				}
				image = dev.afterPowerCut(rng)
				next = 1 + rng.IntN(clean.Writes) // later boots die anywhere too
			}
			if d := firstDiff(image, sc.pre); d >= 0 {
				t.Fatalf("origin differs from the pre-image at byte %d (chunk %d)", d, d/k)
			}
		})
	}
	if resumed == 0 {
		t.Error("no rerun resumed from a progress record")
	}
}

// failAt fails every read that starts at or after byte from.
type failAt struct {
	r    io.ReaderAt
	from int64
}

var errUnreadable = errors.New("unreadable")

func (f failAt) ReadAt(p []byte, off int64) (int, error) {
	if off >= f.from {
		return 0, errUnreadable
	}
	return f.r.ReadAt(p, off)
}

// TestReadStoreReadAhead checks that reading metadata areas ahead, in
// parallel, changes nothing: a failing read of an area past the end of the
// table is never reported, one of an area in the table is.
func TestReadStoreReadAhead(t *testing.T) {
	const cs = 1 // 32 entries per area
	l := Layout{ChunkSize: cs}
	cb := l.ChunkBytes()
	for _, tc := range []struct {
		name     string
		n        int    // exceptions
		failArea uint64 // first unreadable area
		want     error
	}{
		{"one area", 5, 1, nil},
		{"areas read in batches of 1, 2, 4", 6*32 + 3, 7, nil},
		{"full last area", 7 * 32, 8, nil},
		{"batch of 16", 40*32 + 1, 41, nil},
		{"unreadable area in the table", 40*32 + 1, 20, errUnreadable},
		{"unreadable first area", 3, 0, errUnreadable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ex := make([]Exception, tc.n)
			for i := range ex {
				ex[i] = Exception{Old: uint64(i), New: l.DataChunk(uint64(i))}
			}
			// Room for 40 more areas after the table, all unreadable.
			size := (int64(l.DataChunk(uint64(tc.n))) + 40*33) * cb
			img := newSparse(size)
			if err := WriteStore(img, Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
				t.Fatal(err)
			}
			st, err := ReadStore(failAt{img, int64(l.AreaChunk(tc.failArea)) * cb}, size, Expect{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && !slices.Equal(st.Exceptions, ex) {
				t.Errorf("got %d exceptions, want the %d written", len(st.Exceptions), len(ex))
			}
		})
	}
}
