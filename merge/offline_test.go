package merge

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestOfflineRestoresPreImage(t *testing.T) {
	type tc struct {
		cs         uint32
		n          int
		originSize int64
		opts       OfflineOptions
	}
	var cases []tc
	for _, cs := range []uint32{8, 32, 128} { // 4K, 16K, 64K
		cb := int64(cs) * SectorSize
		e := int(Layout{ChunkSize: cs}.PerArea())
		ns := []int{0, 1, 7, 300}
		if cs <= 32 {
			ns = append(ns, e-1, e, 2*e, 2*e+3) // exactly full areas, several areas
		}
		for _, n := range ns {
			cases = append(cases, tc{cs, n, int64(n+n/2+3)*cb + 1536, OfflineOptions{}})
		}
	}
	cases = append(cases,
		tc{8, 600, 1000 * 4096, OfflineOptions{Workers: 1, MaxIO: 1}}, // chunk by chunk
		tc{8, 600, 700 * 4096, OfflineOptions{Workers: 7, MaxIO: 3 * 4096}},
		tc{32, 300, 301 * 16384, OfflineOptions{Workers: 2, MaxIO: 64 << 20}}, // nearly every chunk
	)
	rng := rand.New(rand.NewPCG(3, 4))
	for _, c := range cases {
		t.Run(fmt.Sprintf("C=%d/n=%d/origin=%d/w=%d/io=%d", c.cs, c.n, c.originSize, c.opts.Workers, c.opts.MaxIO), func(t *testing.T) {
			sc := newScenario(rng, c.cs, c.originSize, c.n)
			origin, store := newMem(sc.post), newMem(sc.store)
			var calls, lastDone int64
			c.opts.ChunkSize = c.cs
			c.opts.Progress = func(done, total int64) {
				calls++
				if done < lastDone || done > total {
					t.Errorf("progress went from %d to %d of %d", lastDone, done, total)
				}
				lastDone = done
			}
			res, err := Offline(context.Background(), origin, store, c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if d := firstDiff(origin.bytes(), sc.pre); d >= 0 {
				t.Fatalf("origin differs from the pre-image at byte %d (chunk %d)", d, int64(d)/(int64(c.cs)*SectorSize))
			}
			if res.Copied != res.Total || lastDone != res.Total {
				t.Errorf("got copied %d, last progress %d, want both %d", res.Copied, lastDone, res.Total)
			}
			if !slices.Equal(store.bytes(), sc.store) {
				t.Error("store was written without Invalidate")
			}
			if origin.syncs != 1 {
				t.Errorf("got %d origin flushes, want 1", origin.syncs)
			}
		})
	}
}

// TestOfflineCoalesces checks that runs of consecutive chunks go out as one
// write, split only at MaxIO.
func TestOfflineCoalesces(t *testing.T) {
	const cs = 8
	l := Layout{ChunkSize: cs}
	var ex []Exception
	for i := range 100 { // origin chunks 50..149, store chunks in order
		ex = append(ex, Exception{Old: uint64(50 + i), New: l.DataChunk(uint64(i))})
	}
	store := make([]byte, int64(l.DataChunk(100))*4096)
	if err := WriteStore(newMemAt(store), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ maxIO, want int }{{1 << 20, 1}, {40 * 4096, 3}, {4096, 100}} {
		res, err := Offline(context.Background(), newMem(make([]byte, 200*4096)), newMem(store), OfflineOptions{MaxIO: tc.maxIO})
		if err != nil {
			t.Fatal(err)
		}
		if res.Writes != tc.want {
			t.Errorf("MaxIO %d: got %d writes, want %d", tc.maxIO, res.Writes, tc.want)
		}
	}
}

func TestOfflineRefusesBadStores(t *testing.T) {
	const cs = 8
	put := func(b []byte, off int, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	put32 := func(b []byte, off int, v uint32) { binary.LittleEndian.PutUint32(b[off:], v) }
	a0 := 4096
	for _, tc := range []struct {
		name   string
		mutate func(sc *scenario) []byte
		opts   OfflineOptions
		want   error
	}{
		{"bad magic", func(sc *scenario) []byte { put32(sc.store, 0, 0xdeadbeef); return sc.store }, OfflineOptions{}, ErrBadMagic},
		{"valid=0", func(sc *scenario) []byte { put32(sc.store, 4, 0); return sc.store }, OfflineOptions{}, ErrInvalidStore},
		{"version 2", func(sc *scenario) []byte { put32(sc.store, 8, 2); return sc.store }, OfflineOptions{}, ErrBadVersion},
		{"fresh", func(sc *scenario) []byte { clear(sc.store[:16]); return sc.store }, OfflineOptions{}, ErrFreshStore},
		{"chunk size mismatch", func(sc *scenario) []byte { return sc.store }, OfflineOptions{ChunkSize: 16}, ErrChunkSizeMismatch},
		{"entry into a metadata slot", func(sc *scenario) []byte { put(sc.store, a0+40*16+8, 258); return sc.store }, OfflineOptions{}, ErrMetadataSlot},
		{"entry past the end", func(sc *scenario) []byte {
			put(sc.store, 258*4096+43*16+8, uint64(len(sc.store)/4096))
			return sc.store
		}, OfflineOptions{}, ErrPastStore},
		{"old chunk past the origin", func(sc *scenario) []byte { put(sc.store, a0+16, 1<<40); return sc.store }, OfflineOptions{}, ErrPastOrigin},
		{"duplicate old chunk", func(sc *scenario) []byte {
			put(sc.store, a0+250*16, binary.LittleEndian.Uint64(sc.store[a0+10*16:]))
			return sc.store
		}, OfflineOptions{}, ErrDuplicateOld},
		{"truncated file", func(sc *scenario) []byte { return sc.store[:len(sc.store)-5*4096-7] }, OfflineOptions{}, ErrPastStore},
		{"truncated in area 1", func(sc *scenario) []byte { return sc.store[:258*4096+100] }, OfflineOptions{}, ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			sc := newScenario(rng, cs, 900*4096, 400)
			storeBytes := tc.mutate(sc)
			origin, store := newMem(sc.post), newMem(storeBytes)
			before, storeBefore := sum(sc.post), sum(storeBytes)
			dir := t.TempDir()
			tc.opts.ProgressFile = filepath.Join(dir, "progress.json")
			tc.opts.Invalidate = true
			_, err := Offline(context.Background(), origin, store, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			t.Log(err)
			if got := sum(origin.bytes()); got != before {
				t.Errorf("origin checksum %s after the refusal, want %s (untouched)", got, before)
			}
			if got := sum(store.bytes()); got != storeBefore {
				t.Errorf("store checksum %s after the refusal, want %s (untouched)", got, storeBefore)
			}
			if _, err := os.Stat(tc.opts.ProgressFile); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("progress file: got %v, want none written", err)
			}
		})
	}
}

func TestOfflineProtectsStoreExtents(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	sc := newScenario(rng, 8, 300*4096, 50)
	old := sc.ex[17].Old
	origin := newMem(sc.post)
	_, err := Offline(context.Background(), origin, newMem(sc.store), OfflineOptions{
		Protect: []Extent{{Offset: 0, Length: 512}, {Offset: int64(old)*4096 + 4096 - 512, Length: 8192}},
	})
	var oe *OverlapError
	if !errors.As(err, &oe) || oe.Exception.Old != old {
		t.Fatalf("got %v, want an OverlapError for old chunk %d", err, old)
	}
	if !slices.Equal(origin.bytes(), sc.post) {
		t.Error("origin written despite the overlap")
	}
}

// TestOfflineRestartAfterPowerCut cuts the power after k origin writes, for
// many k, with writes since the last flush surviving at random, then reruns
// the merge on what the disk held: the result must be the pre-image.
func TestOfflineRestartAfterPowerCut(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	for _, cs := range []uint32{8, 32} {
		sc := newScenario(rng, cs, 700*int64(cs)*SectorSize, 400)
		cb := int64(cs) * SectorSize
		for _, cut := range []int{0, 1, 2, 5, 13, 40, 100, 170, 250, 10000} {
			t.Run(fmt.Sprintf("C=%d/cut=%d", cs, cut), func(t *testing.T) {
				progress := filepath.Join(t.TempDir(), "progress.json")
				image := sc.post
				opts := OfflineOptions{ChunkSize: cs, ProgressFile: progress, CheckpointBytes: 30 * cb, Workers: 3, MaxIO: 4 * int(cb), Invalidate: true}
				store := newMem(sc.store)
				for attempt := 0; ; attempt++ {
					dev := newCrash(image, cut)
					res, err := Offline(context.Background(), dev, store, opts)
					if err == nil {
						if attempt > 0 && cut > 0 && res.Resumed == 0 && !res.AlreadyDone {
							t.Logf("attempt %d started over", attempt)
						}
						image = dev.durable
						break
					}
					if !errors.Is(err, errDead) {
						t.Fatalf("attempt %d: %v", attempt, err)
					}
					if attempt > 100 {
						t.Fatal("no progress after 100 power cuts")
					}
					image = dev.afterPowerCut(rng)
					cut += 60 // each boot gets further
				}
				if d := firstDiff(image, sc.pre); d >= 0 {
					t.Fatalf("origin differs from the pre-image at byte %d", d)
				}
				h, err := ReadHeader(store, store.Size())
				if err != nil || h.Valid {
					t.Fatalf("store header %+v, %v: want valid=false after the merge", h, err)
				}
				// Once more, as after a crash right after invalidating.
				res, err := Offline(context.Background(), newMem(image), store, opts)
				if err != nil || !res.AlreadyDone {
					t.Fatalf("rerun after completion: got %+v, %v; want AlreadyDone", res, err)
				}
			})
		}
	}
}

func TestOfflineResumes(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	sc := newScenario(rng, 8, 1000*4096, 500)
	recPath := filepath.Join(t.TempDir(), "progress.json")
	opts := OfflineOptions{ProgressFile: recPath, CheckpointBytes: 4096, Workers: 1, MaxIO: 4096}

	// The first run dies after 30 writes, with everything flushed before.
	dev := newCrash(sc.post, 30)
	if _, err := Offline(context.Background(), dev, newMem(sc.store), opts); !errors.Is(err, errDead) {
		t.Fatalf("got %v, want the injected failure", err)
	}
	var rec progress
	b, err := os.ReadFile(recPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.Done < 25 || rec.Done > 30 || rec.Complete {
		t.Fatalf("progress record says %d done (complete %v), want 25..30 after 30 single-chunk writes", rec.Done, rec.Complete)
	}
	origin := newMem(dev.durable)
	opts.CheckpointBytes = 0
	res, err := Offline(context.Background(), origin, newMem(sc.store), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != rec.Done || res.Writes != 500-rec.Done {
		t.Errorf("got resumed %d with %d writes, want %d and %d", res.Resumed, res.Writes, rec.Done, 500-rec.Done)
	}
	if !slices.Equal(origin.bytes(), sc.pre) {
		t.Error("origin differs from the pre-image")
	}

	// A record written for another store is ignored: everything is copied.
	other := newScenario(rng, 8, 1000*4096, 500)
	res, err = Offline(context.Background(), newMem(other.post), newMem(other.store), opts)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed != 0 || res.Writes != 500 {
		t.Errorf("other store: got resumed %d, %d writes; want 0 and 500", res.Resumed, res.Writes)
	}
}

func TestOfflineCancel(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	sc := newScenario(rng, 8, 1000*4096, 500)
	progress := filepath.Join(t.TempDir(), "progress.json")
	ctx, cancel := context.WithCancel(context.Background())
	origin := newMem(sc.post)
	n := 0
	_, err := Offline(ctx, origin, newMem(sc.store), OfflineOptions{
		ProgressFile: progress, Workers: 1, MaxIO: 4096, CheckpointBytes: 10 * 4096,
		Progress: func(done, total int64) {
			if n++; n == 50 {
				cancel()
			}
		},
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	res, err := Offline(context.Background(), origin, newMem(sc.store), OfflineOptions{ProgressFile: progress})
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed < 40 {
		t.Errorf("got resumed %d, want the ~49 chunks copied before the cancel recorded", res.Resumed)
	}
	if !slices.Equal(origin.bytes(), sc.pre) {
		t.Error("origin differs from the pre-image")
	}
}

func TestInvalidate(t *testing.T) {
	b, _ := storeImage(t, 8, 10)
	rest := slices.Clone(b)
	store := newMem(b)
	if err := Invalidate(store); err != nil {
		t.Fatal(err)
	}
	got := store.bytes()
	if v := binary.LittleEndian.Uint32(got[4:]); v != 0 {
		t.Errorf("got valid %d, want 0", v)
	}
	binary.LittleEndian.PutUint32(got[4:], 1)
	if !slices.Equal(got, rest) || store.syncs != 1 {
		t.Errorf("invalidate changed more than the flag, or flushed %d times (want 1)", store.syncs)
	}
	if err := Invalidate(newMem(make([]byte, 8192))); !errors.Is(err, ErrFreshStore) {
		t.Errorf("fresh store: got %v, want ErrFreshStore", err)
	}
}

// TestOfflineFullArea64K merges a store with 64 KiB chunks whose first area
// is exactly full (4096 exceptions, 256 MiB), so the kernel layout has an
// empty second area. The data is a pattern of chunk numbers, cheap to make
// and to check.
func TestOfflineFullArea64K(t *testing.T) {
	const cs = 128
	l := Layout{ChunkSize: cs}
	cb := l.ChunkBytes()
	n := int(l.PerArea())
	originChunks := n + 64
	fill := func(b []byte, tag, chunk uint64) {
		for i := 0; i < len(b); i += 8 {
			binary.LittleEndian.PutUint64(b[i:], tag<<56|chunk<<20|uint64(i))
		}
	}
	origin := make([]byte, int64(originChunks)*cb)
	store := make([]byte, int64(l.DataChunk(uint64(n)))*cb)
	rng := rand.New(rand.NewPCG(15, 16))
	olds := rng.Perm(originChunks)[:n]
	ex := make([]Exception, n)
	for i, old := range olds {
		ex[i] = Exception{Old: uint64(old), New: l.DataChunk(uint64(i))}
		fill(store[int64(ex[i].New)*cb:][:cb], 1, uint64(old)) // pre-image
	}
	for c := range originChunks {
		fill(origin[int64(c)*cb:][:cb], 2, uint64(c)) // after the writes
	}
	if err := WriteStore(newMemAt(store), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
		t.Fatal(err)
	}
	if s := store[int64(l.AreaChunk(1))*cb:][:cb]; !allZero(s) {
		t.Fatal("area 1 not zeroed")
	}
	o := &memDev{b: origin}
	res, err := Offline(context.Background(), o, &memDev{b: store}, OfflineOptions{ChunkSize: cs})
	if err != nil {
		t.Fatal(err)
	}
	if res.Store.Areas != 2 || len(res.Store.Exceptions) != n {
		t.Fatalf("got %d exceptions in %d areas, want %d in 2", len(res.Store.Exceptions), res.Store.Areas, n)
	}
	changed := make([]bool, originChunks)
	for _, old := range olds {
		changed[old] = true
	}
	want := make([]byte, cb)
	for c := range originChunks {
		tag := uint64(2)
		if changed[c] {
			tag = 1
		}
		fill(want, tag, uint64(c))
		if !slices.Equal(origin[int64(c)*cb:][:cb], want) {
			t.Fatalf("origin chunk %d: want the %s", c, map[uint64]string{1: "pre-image", 2: "unchanged data"}[tag])
		}
	}
}
