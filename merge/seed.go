package merge

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"

	"github.com/snapctl/snapctl/freespace"
)

// Seeding a store: before a checkpoint's snapshot is taken, every wholly
// free chunk of the origin's filesystem can be given an exception in
// advance, so that the kernel copies nothing when the filesystem later
// writes into free space. Such a store is an ordinary persistent store
// whose first A metadata areas are full of seeds: entry i of area a maps
// the i-th seeded origin chunk of that area to the area's i-th data slot.
// The data slots hold nothing that matters (a rollback that writes them
// back writes over free space), so the COW device the kernel sees maps
// them onto a `zero` target, and the store file holds only the header, the
// A metadata chunks and an ordinary store from area A on; CowPieces gives
// that layout.
//
// The kernel reads the seeds in as exceptions like any other. In memory it
// joins each run of seeds whose old and new chunks both go up by one into
// a single struct dm_exception (dm_insert_exception in
// drivers/md/dm-snap.c; the count of followers lives in the top 8 bits of
// new_chunk, dm-exception-store.h), but only within one hash bucket:
// exception_hash uses old_chunk >> DM_CHUNK_CONSECUTIVE_BITS (8), so a run
// breaks where the old chunk crosses a multiple of 256. New chunks are
// consecutive only within an area (the next area's metadata slot lies
// between), so a run also breaks at every area boundary.

// consecutiveChunks is 1 << DM_CHUNK_CONSECUTIVE_BITS: the kernel joins
// consecutive exceptions only within an aligned block of this many old
// chunks.
const consecutiveChunks = 1 << 8

// ExceptionBytes is sizeof(struct dm_exception) (dm-exception-store.h) on
// this architecture: a struct hlist_bl_node (two pointers) and two chunk_t
// (u64): 32 bytes on 64-bit systems, 24 on 32-bit ones. Its slab cache
// (KMEM_CACHE, no extra alignment) adds nothing per object.
const ExceptionBytes = 2*bits.UintSize/8 + 2*8

// TableBytesPerArea estimates the kernel memory each seeded area costs
// in the COW device's table: two targets (a `linear` for the metadata
// chunk, a `zero` for the data slots), each a struct dm_target (about 80
// bytes on 64-bit), an 8-byte entry in the table's lookup index, and the
// linear target's 16-byte private context. An estimate, not a count: the
// struct varies between kernel versions.
const TableBytesPerArea = 2*(80+8) + 16

// DefaultSeedKernelBytes is the kernel memory seeding may use when
// SeedOptions leaves it open: 16 MiB. The kernel holds every exception of
// a loaded snapshot in unswappable slab memory for as long as the snapshot
// lives, so the budget must suit small machines: 16 MiB is under 1% of a
// 2 GiB system. It is also plenty where seeding pays: free space comes in
// long runs, which the kernel holds at up to 256 seeds per object, so 16
// MiB covers hundreds of GiB of free space at 4 KiB chunks; only a badly
// fragmented filesystem (one object per seed: 2 GiB of free space) reaches
// it, and there the largest runs, which save the most copying, are seeded
// first.
const DefaultSeedKernelBytes = 16 << 20

// SeedOptions tune PlanSeeds.
type SeedOptions struct {
	// MaxKernelBytes caps KernelBytes + TableBytes of the plan (0:
	// DefaultSeedKernelBytes).
	MaxKernelBytes uint64
}

// SeedPlan is the set of origin chunks a store is seeded with.
type SeedPlan struct {
	ChunkSectors uint32
	Areas        uint64          // seeded (full) metadata areas
	Seeds        uint64          // Areas * E
	Objects      uint64          // struct dm_exception objects the kernel holds for the seeds
	KernelBytes  uint64          // Objects * ExceptionBytes
	TableBytes   uint64          // Areas * TableBytesPerArea: the COW table's share (an estimate)
	Runs         []freespace.Run // the seeded origin chunks, ascending, disjoint, not touching
}

// Layout is the plan's store geometry.
func (p SeedPlan) Layout() Layout { return Layout{ChunkSize: p.ChunkSectors} }

// CowPiece is one stretch of the logical COW device: Chunks chunks that
// are either zeros (Zero) or the store file's chunks from FileChunk on.
type CowPiece struct {
	Chunks    uint64 `json:"chunks"`
	Zero      bool   `json:"zero,omitempty"`
	FileChunk uint64 `json:"file_chunk,omitempty"`
}

// PlanSeeds picks the chunks to seed from free, runs of wholly free origin
// chunks (freespace.Chunks with l's chunk size): the largest runs first,
// as many whole areas of E seeds as the kernel-memory budget allows. The
// seeds are the first chunks of each chosen run; a run cut by the budget
// or by the last whole area keeps its start.
func PlanSeeds(l Layout, free []freespace.Run, o SeedOptions) SeedPlan {
	budget := o.MaxKernelBytes
	if budget == 0 {
		budget = DefaultSeedKernelBytes
	}
	p := SeedPlan{ChunkSectors: l.ChunkSize}
	e := l.PerArea()
	if e == 0 {
		return p
	}
	runs := joinRuns(free)
	bySize := slices.Clone(runs)
	slices.SortStableFunc(bySize, func(a, b freespace.Run) int { return cmp.Compare(b.Count, a.Count) })
	plan := func(areas uint64) SeedPlan {
		q := SeedPlan{ChunkSectors: l.ChunkSize, Areas: areas, Seeds: areas * e}
		q.Runs = takeRuns(bySize, q.Seeds)
		q.Objects = exceptionObjects(q.Runs, e)
		q.KernelBytes = q.Objects * ExceptionBytes
		q.TableBytes = areas * TableBytesPerArea
		return q
	}
	// The cost grows with the areas, but not strictly (a shift of the
	// area boundaries can join or split a run): keep lo within budget.
	lo, hi := uint64(0), freespace.Total(runs)/e+1
	for hi-lo > 1 {
		mid := lo + (hi-lo)/2
		if q := plan(mid); q.KernelBytes+q.TableBytes <= budget {
			lo = mid
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return p
	}
	return plan(lo)
}

// joinRuns sorts runs by start and joins those that overlap or touch.
func joinRuns(in []freespace.Run) []freespace.Run {
	rs := slices.Clone(in)
	slices.SortFunc(rs, func(a, b freespace.Run) int { return cmp.Compare(a.Start, b.Start) })
	var out []freespace.Run
	for _, r := range rs {
		if r.Count == 0 {
			continue
		}
		if n := len(out); n > 0 && r.Start <= out[n-1].End() {
			out[n-1].Count = max(out[n-1].End(), r.End()) - out[n-1].Start
			continue
		}
		out = append(out, r)
	}
	return out
}

// takeRuns takes n chunks from runs in their order (largest first), the
// last run cut to its start, and returns them ascending.
func takeRuns(bySize []freespace.Run, n uint64) []freespace.Run {
	var out []freespace.Run
	for _, r := range bySize {
		if n == 0 {
			break
		}
		r.Count = min(r.Count, n)
		n -= r.Count
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b freespace.Run) int { return cmp.Compare(a.Start, b.Start) })
	return out
}

// exceptionObjects counts the struct dm_exception objects the kernel
// builds from seeds laid out in order (the k-th seed at data slot k) from
// runs, ascending, disjoint and not touching: one per stretch of seeds
// that crosses neither an area boundary nor a multiple of 256 old chunks.
func exceptionObjects(runs []freespace.Run, perArea uint64) uint64 {
	var objects, pos uint64
	for _, r := range runs {
		for k := uint64(0); k < r.Count; {
			old := r.Start + k
			n := min(r.Count-k, perArea-pos%perArea, consecutiveChunks-old%consecutiveChunks)
			objects++
			k += n
			pos += n
		}
	}
	return objects
}

// seeds calls fn with every seed of p in store order: its index and its
// origin chunk.
func (p SeedPlan) seeds(fn func(i, old uint64) error) error {
	var i uint64
	for _, r := range p.Runs {
		for k := range r.Count {
			if err := fn(i, r.Start+k); err != nil {
				return err
			}
			i++
		}
	}
	return nil
}

// FileChunks is the size of a store file that holds the seeds and room
// for realChunks real exceptions, in chunks (as cowsize.Seeded counts it):
// the header, the A seeded metadata chunks, then an ordinary store of
// realChunks data chunks from area A on.
func (p SeedPlan) FileChunks(realChunks uint64) uint64 {
	e := p.Layout().PerArea()
	return 1 + p.Areas + 1 + realChunks + realChunks/e
}

// CowPieces lays out the logical COW device over a store file of
// fileChunks chunks (at least Areas + 2): the header and the metadata
// chunk of area a where the kernel looks for them, every seeded area's
// data slots as zeros, and the file's chunks from 1 + Areas on after the
// last seeded area. File chunks that follow each other are one piece.
func (p SeedPlan) CowPieces(fileChunks uint64) []CowPiece {
	e := p.Layout().PerArea()
	var out []CowPiece
	add := func(c CowPiece) {
		if c.Chunks == 0 {
			return
		}
		if n := len(out); n > 0 && !c.Zero && !out[n-1].Zero && out[n-1].FileChunk+out[n-1].Chunks == c.FileChunk {
			out[n-1].Chunks += c.Chunks
			return
		}
		if n := len(out); n > 0 && c.Zero && out[n-1].Zero {
			out[n-1].Chunks += c.Chunks
			return
		}
		out = append(out, c)
	}
	add(CowPiece{Chunks: 1, FileChunk: 0})
	for a := range p.Areas {
		add(CowPiece{Chunks: 1, FileChunk: 1 + a})
		add(CowPiece{Chunks: e, Zero: true})
	}
	if fileChunks > 1+p.Areas {
		add(CowPiece{Chunks: fileChunks - 1 - p.Areas, FileChunk: 1 + p.Areas})
	}
	return out
}

// seedBatch is how many metadata chunks WriteSeeded writes at once.
const seedBatchBytes = 1 << 20

// WriteSeeded writes p's store into the store file's raw bytes: the seeded
// metadata chunks at file chunks 1..Areas, a zeroed metadata chunk for
// area Areas after them (where the kernel records the first real
// exception), a flush, and only then the header (valid, chunk size) and a
// flush, so that a store cut short by a crash has no header the kernel
// would load. The data slots are not written: they live on the COW
// device's zero pieces.
func WriteSeeded(ctx context.Context, store Device, p SeedPlan) error {
	name := nameOf(store, "store")
	l := p.Layout()
	e := l.PerArea()
	cb := l.ChunkBytes()
	if e == 0 {
		return fmt.Errorf("write seeded store %s: chunk size %d sectors", name, p.ChunkSectors)
	}
	if p.Seeds != p.Areas*e || freespace.Total(p.Runs) != p.Seeds {
		return fmt.Errorf("write seeded store %s: plan of %d areas holds %d seeds in runs of %d chunks, want %d", name, p.Areas, p.Seeds, freespace.Total(p.Runs), p.Areas*e)
	}
	if need := int64(p.Areas+2) * cb; store.Size() < need {
		return fmt.Errorf("write seeded store %s: %d bytes, want at least %d for %d seeded areas", name, store.Size(), need, p.Areas)
	}
	perBatch := uint64(max(1, seedBatchBytes/cb))
	buf, err := alignedBuf(int(min(perBatch, p.Areas+1) * uint64(cb)))
	if err != nil {
		return fmt.Errorf("write seeded store %s: %w", name, err)
	}
	defer buf.free()
	var first, n uint64 // areas first..first+n-1 are in buf
	flush := func() error {
		if n == 0 {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := store.WriteAt(buf.b[:int64(n)*cb], int64(1+first)*cb); err != nil {
			return fmt.Errorf("write seeded store %s: metadata of areas %d-%d: %w", name, first, first+n-1, err)
		}
		first += n
		n = 0
		return nil
	}
	err = p.seeds(func(i, old uint64) error {
		a, slot := i/e, i%e
		if a-first == perBatch {
			if err := flush(); err != nil {
				return err
			}
		}
		b := buf.b[int64(a-first)*cb+int64(slot*entryLen):]
		binary.LittleEndian.PutUint64(b, old)
		binary.LittleEndian.PutUint64(b[8:], l.DataChunk(i))
		if slot == e-1 {
			n = a - first + 1
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return err
	}
	// Area Areas: empty, the table ends there.
	zero := buf.b[:cb]
	clear(zero)
	if _, err := store.WriteAt(zero, int64(1+p.Areas)*cb); err != nil {
		return fmt.Errorf("write seeded store %s: empty area %d: %w", name, p.Areas, err)
	}
	if err := store.Sync(); err != nil {
		return fmt.Errorf("write seeded store %s: flush: %w", name, err)
	}
	hb, _ := Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: p.ChunkSectors}.MarshalBinary()
	copy(zero, hb)
	if _, err := store.WriteAt(zero, 0); err != nil {
		return fmt.Errorf("write seeded store %s: header: %w", name, err)
	}
	if err := store.Sync(); err != nil {
		return fmt.Errorf("write seeded store %s: flush: %w", name, err)
	}
	return nil
}

// withoutSeeds returns st without the exceptions in its first areas
// metadata areas (the seeds of a seeded store, which a merge must not
// copy), and how many it left out.
func withoutSeeds(st *Store, areas uint64) (*Store, int) {
	if areas == 0 {
		return st, 0
	}
	limit := st.Layout().AreaChunk(areas) // the first chunk past the seeded areas
	out := *st
	out.Exceptions = make([]Exception, 0, len(st.Exceptions))
	for _, e := range st.Exceptions {
		if e.New >= limit {
			out.Exceptions = append(out.Exceptions, e)
		}
	}
	return &out, len(st.Exceptions) - len(out.Exceptions)
}

// ErrZeroSegment is returned for a write into a Zero segment.
var ErrZeroSegment = errors.New("segment of zeros cannot be written")
