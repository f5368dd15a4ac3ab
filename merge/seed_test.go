package merge

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/snapctl/snapctl/freespace"
)

// kernelTable is a model of the kernel's table of completed exceptions,
// built as dm_insert_exception in drivers/md/dm-snap.c builds it: buckets
// chosen by old_chunk >> 8, each kept in old-chunk order; a new exception
// whose old and new chunks both follow (or precede) those of an existing
// one, counted with its followers, joins it instead of taking an object.
type kernelTable struct {
	mask    uint64
	buckets map[uint64][]*kernelException
}

type kernelException struct{ old, new, count uint64 }

func newKernelTable(hashSize uint64) *kernelTable {
	return &kernelTable{mask: hashSize - 1, buckets: map[uint64][]*kernelException{}}
}

func (t *kernelTable) insert(old, new uint64) {
	b := (old >> 8) & t.mask
	l := t.buckets[b]
	at := len(l)
	for i, e := range l {
		if old == e.old+e.count+1 && new == e.new+e.count+1 {
			e.count++
			return
		}
		if old == e.old-1 && new == e.new-1 {
			e.count++
			e.old--
			e.new--
			return
		}
		if old < e.old {
			at = i
			break
		}
	}
	t.buckets[b] = slices.Insert(l, at, &kernelException{old: old, new: new})
}

func (t *kernelTable) objects() uint64 {
	var n uint64
	for _, l := range t.buckets {
		n += uint64(len(l))
	}
	return n
}

// randomRuns makes disjoint, non-touching runs of free chunks below limit,
// some long, some of a single chunk.
func randomRuns(rng *rand.Rand, limit uint64) []freespace.Run {
	var out []freespace.Run
	for c := rng.Uint64N(40); c < limit; {
		n := 1 + rng.Uint64N(3)
		if rng.IntN(3) == 0 {
			n = 1 + rng.Uint64N(2000)
		}
		n = min(n, limit-c)
		out = append(out, freespace.Run{Start: c, Count: n})
		c += n + 1 + rng.Uint64N(50)
	}
	return out
}

// TestSeedObjectsMatchKernel checks PlanSeeds' count of dm_exception
// objects against a model of the kernel's insertion, fed the seeds in
// store order, for random free maps, chunk sizes and hash table sizes.
func TestSeedObjectsMatchKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for i := range 60 {
		cs := []uint32{1, 8, 8, 16, 64}[i%5]
		l := Layout{ChunkSize: cs}
		free := randomRuns(rng, 20000+rng.Uint64N(200000))
		budget := uint64(0)
		if i%3 == 0 {
			budget = 1000 + rng.Uint64N(100000)
		}
		p := PlanSeeds(l, free, SeedOptions{MaxKernelBytes: budget})
		for _, hash := range []uint64{64, 1 << 10, 1 << 18} {
			kt := newKernelTable(hash)
			var n uint64
			err := p.seeds(func(i, old uint64) error {
				kt.insert(old, l.DataChunk(i))
				n++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n != p.Seeds || kt.objects() != p.Objects {
				t.Fatalf("case %d (C=%d, hash %d): plan says %d seeds in %d objects, kernel model holds %d in %d",
					i, cs, hash, p.Seeds, p.Objects, n, kt.objects())
			}
		}
		if p.KernelBytes != p.Objects*ExceptionBytes {
			t.Errorf("KernelBytes %d, want %d objects * %d", p.KernelBytes, p.Objects, ExceptionBytes)
		}
	}
}

// TestPlanSeeds checks the choice: largest runs first, whole areas only,
// the budget kept, the default budget when none is given.
func TestPlanSeeds(t *testing.T) {
	l := Layout{ChunkSize: 8} // E = 256
	free := []freespace.Run{
		{Start: 10, Count: 100},    // small
		{Start: 1000, Count: 600},  // largest
		{Start: 5000, Count: 300},  // second
		{Start: 9000, Count: 50},   // smallest
		{Start: 20000, Count: 100}, // small, later
	}
	p := PlanSeeds(l, free, SeedOptions{})
	// 1150 free chunks: 4 whole areas (1024 seeds): 600 + 300 + 100 of the
	// first 100-run by size (stable: start 10) + 24 of the next (20000).
	want := []freespace.Run{{Start: 10, Count: 100}, {Start: 1000, Count: 600}, {Start: 5000, Count: 300}, {Start: 20000, Count: 24}}
	if p.Areas != 4 || p.Seeds != 1024 || !slices.Equal(p.Runs, want) {
		t.Fatalf("got %d areas, %d seeds, runs %v; want 4, 1024, %v", p.Areas, p.Seeds, p.Runs, want)
	}
	if p.TableBytes != 4*TableBytesPerArea {
		t.Errorf("TableBytes %d, want %d", p.TableBytes, 4*TableBytesPerArea)
	}
	// A budget that one more area would break.
	one := PlanSeeds(l, free, SeedOptions{MaxKernelBytes: 1})
	if one.Areas != 0 || len(one.Runs) != 0 || one.Objects != 0 {
		t.Errorf("1-byte budget: got %+v, want nothing seeded", one)
	}
	for areas := uint64(1); areas <= 4; areas++ {
		q := PlanSeeds(l, free, SeedOptions{MaxKernelBytes: 1 << 40})
		q2 := PlanSeeds(l, free, SeedOptions{MaxKernelBytes: q.KernelBytes + q.TableBytes})
		if q2.Areas != q.Areas {
			t.Errorf("budget exactly the cost of %d areas: got %d", q.Areas, q2.Areas)
		}
	}
	// Under budget pressure the largest run goes first.
	b := PlanSeeds(l, free, SeedOptions{MaxKernelBytes: 6*ExceptionBytes + TableBytesPerArea})
	if b.Areas != 1 || !slices.Equal(b.Runs, []freespace.Run{{Start: 1000, Count: 256}}) {
		t.Errorf("one area's budget: got %d areas, runs %v; want the first 256 of the largest run", b.Areas, b.Runs)
	}
	if b.KernelBytes+b.TableBytes > 6*ExceptionBytes+TableBytesPerArea {
		t.Errorf("over budget: %+v", b)
	}
	// Fewer free chunks than one area: nothing.
	if p := PlanSeeds(l, []freespace.Run{{Start: 0, Count: 255}}, SeedOptions{}); p.Areas != 0 || p.Runs != nil {
		t.Errorf("255 free chunks: got %+v, want nothing", p)
	}
	// Overlapping and touching input runs are joined first.
	j := PlanSeeds(l, []freespace.Run{{Start: 0, Count: 200}, {Start: 200, Count: 56}, {Start: 100, Count: 10}}, SeedOptions{})
	if j.Areas != 1 || !slices.Equal(j.Runs, []freespace.Run{{Start: 0, Count: 256}}) || j.Objects != 1 {
		t.Errorf("joined runs: got %+v", j)
	}
}

// TestCowPieces checks the logical COW layout against a hand count: with E
// = 256, logical chunks 0-1 are file chunks 0-1 (header, area 0), 2-257
// zeros, 258 file chunk 2 (area 1), 259-514 zeros, then file chunks 3 on.
func TestCowPieces(t *testing.T) {
	p := SeedPlan{ChunkSectors: 8, Areas: 2, Seeds: 512}
	got := p.CowPieces(10)
	want := []CowPiece{{Chunks: 2}, {Chunks: 256, Zero: true}, {Chunks: 8, FileChunk: 2}, {Chunks: 256, Zero: true}}
	want[2] = CowPiece{Chunks: 1, FileChunk: 2}
	want = append(want, CowPiece{Chunks: 7, FileChunk: 3})
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	var logical uint64
	for _, c := range got {
		logical += c.Chunks
	}
	if logical != 10+2*256 {
		t.Errorf("logical size %d chunks, want file chunks + Areas*E = %d", logical, 10+2*256)
	}
	if z := (SeedPlan{ChunkSectors: 8}).CowPieces(5); !slices.Equal(z, []CowPiece{{Chunks: 5}}) {
		t.Errorf("no seeds: got %+v, want the file as one piece", z)
	}
	if p.FileChunks(0) != 4 || p.FileChunks(256) != 4+256+1 {
		t.Errorf("FileChunks: got %d and %d, want 4 and 261", p.FileChunks(0), p.FileChunks(256))
	}
}

// logicalCow is the COW device the kernel sees over a seeded store file:
// the file's chunks and zero pieces laid out by CowPieces.
type logicalCow struct {
	file   *memDev
	pieces []CowPiece
	cb     int64
}

func (d *logicalCow) Size() int64 {
	var n uint64
	for _, p := range d.pieces {
		n += p.Chunks
	}
	return int64(n) * d.cb
}

func (d *logicalCow) Sync() error { return d.file.Sync() }

func (d *logicalCow) do(p []byte, off int64, write bool) (int, error) {
	done := 0
	var at int64
	for _, pc := range d.pieces {
		n := int64(pc.Chunks) * d.cb
		for done < len(p) && off+int64(done) >= at && off+int64(done) < at+n {
			o := off + int64(done) - at
			k := min(int64(len(p)-done), n-o)
			switch {
			case pc.Zero && write:
				return done, ErrZeroSegment
			case pc.Zero:
				clear(p[done : done+int(k)])
			case write:
				if _, err := d.file.WriteAt(p[done:done+int(k)], int64(pc.FileChunk)*d.cb+o); err != nil {
					return done, err
				}
			default:
				if _, err := d.file.ReadAt(p[done:done+int(k)], int64(pc.FileChunk)*d.cb+o); err != nil {
					return done, err
				}
			}
			done += int(k)
		}
		at += n
	}
	if done < len(p) {
		return done, io.EOF
	}
	return done, nil
}

func (d *logicalCow) ReadAt(p []byte, off int64) (int, error)  { return d.do(p, off, false) }
func (d *logicalCow) WriteAt(p []byte, off int64) (int, error) { return d.do(p, off, true) }

// seededStore writes a seeded store for free into memory, with room for
// real real exceptions, and returns the plan and the logical COW.
func seededStore(t *testing.T, l Layout, free []freespace.Run, real uint64) (SeedPlan, *logicalCow) {
	t.Helper()
	p := PlanSeeds(l, free, SeedOptions{})
	if p.Areas == 0 {
		t.Fatal("nothing to seed")
	}
	fileChunks := p.FileChunks(real)
	file := newMem(make([]byte, int64(fileChunks)*l.ChunkBytes()))
	// Garbage where the empty area goes: WriteSeeded must zero it.
	for i := range l.ChunkBytes() {
		file.b[int64(1+p.Areas)*l.ChunkBytes()+i] = 0xa5
	}
	if err := WriteSeeded(context.Background(), file, p); err != nil {
		t.Fatal(err)
	}
	if file.syncs != 2 {
		t.Errorf("got %d flushes, want 2 (metadata, then header)", file.syncs)
	}
	return p, &logicalCow{file: file, pieces: p.CowPieces(fileChunks), cb: l.ChunkBytes()}
}

// TestWriteSeededReadBack writes a seeded store and reads it back through
// the logical COW with ReadStore: every seed, in order, at its data slot.
func TestWriteSeededReadBack(t *testing.T) {
	for _, cs := range []uint32{1, 8, 32} {
		t.Run(fmt.Sprintf("C=%d", cs), func(t *testing.T) {
			l := Layout{ChunkSize: cs}
			rng := rand.New(rand.NewPCG(uint64(cs), 1))
			free := randomRuns(rng, 40*l.PerArea()+rng.Uint64N(l.PerArea()))
			p, cow := seededStore(t, l, free, 10)
			st, err := ReadStore(cow, cow.Size(), Expect{ChunkSize: cs})
			if err != nil {
				t.Fatal(err)
			}
			if !st.Header.Valid || st.Areas != p.Areas+1 || uint64(len(st.Exceptions)) != p.Seeds {
				t.Fatalf("got valid %v, %d areas, %d exceptions; want valid, %d areas, %d", st.Header.Valid, st.Areas, len(st.Exceptions), p.Areas+1, p.Seeds)
			}
			var want []Exception
			_ = p.seeds(func(i, old uint64) error {
				want = append(want, Exception{Old: old, New: l.DataChunk(i)})
				return nil
			})
			if !slices.Equal(st.Exceptions, want) {
				t.Fatal("exceptions differ from the plan")
			}
			if got, want := st.UsedChunks(), l.AreaChunk(p.Areas)+1; got != want {
				t.Errorf("used chunks %d, want %d: up to area %d's metadata", got, want, p.Areas)
			}
		})
	}
}

// TestOfflineSkipsSeeds builds a seeded store, adds real exceptions after
// the seeded areas as the kernel would (area Areas on), and merges it
// offline: only the real exceptions are copied, the seeded chunks of the
// origin are left as they are.
func TestOfflineSkipsSeeds(t *testing.T) {
	l := Layout{ChunkSize: 8}
	cb := l.ChunkBytes()
	e := l.PerArea()
	rng := rand.New(rand.NewPCG(5, 6))
	const originChunks = 4000
	free := []freespace.Run{{Start: 100, Count: 900}, {Start: 2000, Count: 700}}
	const real = 300 // spans two areas past the seeds
	p, cow := seededStore(t, l, free, real)
	post := randBytes(rng, originChunks*int(cb))
	pre := slices.Clone(post)
	seeded := map[uint64]bool{}
	_ = p.seeds(func(_, old uint64) error { seeded[old] = true; return nil })
	// Real exceptions: origin chunks outside the seeds, in store order
	// from area Areas on; their saved data is the pre-image.
	var ex []Exception
	for old := uint64(0); len(ex) < real; old += 3 {
		if seeded[old] {
			continue
		}
		n := l.DataChunk(p.Seeds + uint64(len(ex)))
		ex = append(ex, Exception{Old: old, New: n})
		data := randBytes(rng, int(cb))
		copy(pre[int64(old)*cb:], data)
		if _, err := cow.WriteAt(data, int64(n)*cb); err != nil {
			t.Fatal(err)
		}
	}
	for a := uint64(0); a <= uint64(len(ex))/e; a++ {
		chunk := make([]byte, cb)
		for i := uint64(0); i < e && a*e+i < uint64(len(ex)); i++ {
			x := ex[a*e+i]
			putEntry(chunk[i*entryLen:], x)
		}
		if _, err := cow.WriteAt(chunk, int64(l.AreaChunk(p.Areas+a))*cb); err != nil {
			t.Fatal(err)
		}
	}
	origin := newMem(post)
	res, err := Offline(context.Background(), origin, cow, OfflineOptions{ChunkSize: 8, SeededAreas: p.Areas})
	if err != nil {
		t.Fatal(err)
	}
	if uint64(res.Seeded) != p.Seeds || res.Total != real*cb || res.Copied != real*cb {
		t.Errorf("got seeded %d, total %d, copied %d; want %d, %d, %d", res.Seeded, res.Total, res.Copied, p.Seeds, real*cb, real*cb)
	}
	if d := firstDiff(origin.bytes(), pre); d >= 0 {
		t.Fatalf("origin differs from the pre-image at chunk %d (seeded: %v)", int64(d)/cb, seeded[uint64(int64(d)/cb)])
	}
	// Without SeededAreas the seeds are copied: zeros over free space.
	origin = newMem(post)
	res, err = Offline(context.Background(), origin, cow, OfflineOptions{ChunkSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res.Seeded != 0 || res.Total != int64(real+p.Seeds)*cb {
		t.Errorf("no SeededAreas: got seeded %d, total %d; want 0, %d", res.Seeded, res.Total, int64(real+p.Seeds)*cb)
	}
}

func putEntry(b []byte, e Exception) {
	for i := range 8 {
		b[i] = byte(e.Old >> (8 * i))
		b[8+i] = byte(e.New >> (8 * i))
	}
}

// TestWriteSeededRefuses checks the plan and store checks and that a
// cancelled context stops the writes before the header.
func TestWriteSeededRefuses(t *testing.T) {
	l := Layout{ChunkSize: 8}
	p := PlanSeeds(l, []freespace.Run{{Start: 0, Count: 3000}}, SeedOptions{})
	small := newMem(make([]byte, int64(p.Areas+1)*l.ChunkBytes()))
	if err := WriteSeeded(context.Background(), small, p); err == nil {
		t.Error("store one chunk short: no error")
	}
	bad := p
	bad.Seeds--
	if err := WriteSeeded(context.Background(), newMem(make([]byte, 1<<20)), bad); err == nil {
		t.Error("inconsistent plan: no error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	m := newMem(make([]byte, int64(p.FileChunks(0))*l.ChunkBytes()))
	if err := WriteSeeded(ctx, m, p); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: got %v, want context.Canceled", err)
	}
	if h, _ := ReadHeader(m, m.Size()); !h.Fresh() {
		t.Error("cancelled write left a header")
	}
}
