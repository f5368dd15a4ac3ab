package merge

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"golang.org/x/sync/errgroup"
)

// Device is storage the offline merge reads and writes at byte offsets: the
// origin, or the raw bytes of a store. Raw is one; tests use memory.
type Device interface {
	io.ReaderAt
	io.WriterAt
	Size() int64
	Sync() error
}

// OfflineOptions tune an offline merge. The zero value works but is not
// restartable (no ProgressFile) and leaves the store valid.
type OfflineOptions struct {
	// ChunkSize is the chunk size in sectors the caller expects (from the
	// state record or snapshot table); 0 accepts the header's.
	ChunkSize uint32

	// ProgressFile is where the write-ahead progress record lives. A rerun
	// with the same file resumes where the durable copy got to; "" makes
	// every run start from the beginning. The file is left in place when
	// the merge completes (a rerun then reports AlreadyDone once the store
	// is invalidated); the caller removes it when the volume is finished.
	ProgressFile string

	// Progress, when set, is called from one goroutine at a time with the
	// bytes copied so far (including those a resumed run skipped) and the
	// total.
	Progress func(done, total int64)

	// Invalidate marks the store invalid (valid = 0) once every chunk is
	// durable on the origin, so that no kernel will ever merge it again.
	Invalidate bool

	// Workers is the number of concurrent copies (default 4).
	Workers int

	// MaxIO caps the bytes of one read or write (default 1 MiB; at least one
	// chunk).
	MaxIO int

	// CheckpointBytes is how much is copied between progress records, each
	// of which costs a flush of the origin (default 256 MiB; negative: only
	// at the end).
	CheckpointBytes int64

	// Window is how many bytes of chunks are held in memory at once: the
	// exceptions are taken in origin order, Window bytes of chunks at a
	// time, read from the store in store order and written in origin
	// order (default 64 MiB; never more than CheckpointBytes). A store
	// larger than the window is read more scattered; a larger window reads
	// it in fewer, larger pieces.
	Window int64

	// FillGap is the largest stretch of unchanged origin bytes between two
	// changed chunks that the merge reads from the origin and writes back
	// as it was, so that both chunks go out in one write of at most MaxIO
	// (negative: never). Scattered small chunks then cost a few large
	// writes instead of one small write each. Filling pays while a request
	// costs more than moving the gap's bytes twice, so by default the merge
	// measures the store device before it starts (see calibrateFill):
	// about 32-60 KiB on a virtio disk, which joins 4 and 16 KiB chunks and
	// not 64 KiB ones, and more on user-mode Linux's ubd, where a request
	// costs half a millisecond; 32 KiB where it cannot measure
	// (a store smaller than two MaxIO reads, or not a Raw). It relies on
	// what an offline merge needs anyway: nothing else writes the origin
	// while it runs (OfflinePaths opens a block device exclusively). A
	// gap never spans a Protect range. Reads of the store likewise read
	// through up to 2*FillGap of chunks they do not need to join two
	// reads into one.
	FillGap int64

	// Protect lists origin byte ranges the merge must never write: the
	// store's own extents when it lives on the origin device. OfflinePaths
	// adds them itself.
	Protect []Extent

	// SeededAreas is the number of seeded metadata areas at the start of
	// the store (SeedPlan.Areas): their exceptions are seeds, whose data
	// is nothing to restore, and are not copied.
	SeededAreas uint64
}

// OfflineResult describes a finished offline merge.
type OfflineResult struct {
	Store       *Store
	Total       int64 // bytes the merge writes to the origin, all runs together
	Copied      int64 // bytes copied by this run
	Resumed     int   // exceptions skipped because a progress record showed them durable
	Writes      int   // origin writes issued by this run
	Filled      int64 // unchanged origin bytes this run read and wrote back to join writes (FillGap)
	FillGap     int64 // the FillGap this run used (measured, unless OfflineOptions set it)
	AlreadyDone bool  // an earlier run finished and invalidated the store; nothing was done
	Invalidated bool  // this run marked the store invalid
	Seeded      int   // seeds (exceptions in the first SeededAreas areas) left alone
}

const (
	defaultWorkers         = 4
	defaultMaxIO           = 1 << 20
	defaultCheckpointBytes = 256 << 20
	defaultWindow          = 64 << 20
	defaultFillGap         = 32 << 10
)

// readGapFactor scales FillGap for reads of the store: joining two reads
// through unneeded chunks costs only the reading of them, where joining
// two writes costs reading and writing the gap.
const readGapFactor = 2

// Offline merges store into origin: it reads and checks the whole store
// first (nothing is written if anything is wrong), then copies every
// exception's chunk back to its origin chunk, flushes the origin, records
// completion, and, if asked, invalidates the store.
//
// It refuses a fresh store (ErrFreshStore) and an invalid one
// (ErrInvalidStore), unless the progress record shows that this very store
// was already merged completely, in which case it reports AlreadyDone.
func Offline(ctx context.Context, origin, store Device, opts OfflineOptions) (*OfflineResult, error) {
	oname, sname := nameOf(origin, "origin"), nameOf(store, "store")
	h, err := ReadHeader(store, store.Size())
	if err != nil {
		return nil, fmt.Errorf("read store %s: %w", sname, err)
	}
	if h.Fresh() {
		return nil, fmt.Errorf("merge %s into %s: %w", sname, oname, ErrFreshStore)
	}
	st, err := ReadStore(store, store.Size(), Expect{ChunkSize: opts.ChunkSize, OriginSize: origin.Size()})
	if err != nil {
		return nil, fmt.Errorf("read store %s: %w", sname, err)
	}
	work, seeded := withoutSeeds(st, opts.SeededAreas)
	id := identify(work, origin.Size())
	var rec *progress
	if opts.ProgressFile != "" {
		if rec, err = loadProgress(opts.ProgressFile); err != nil {
			return nil, err
		}
		if rec != nil && (rec.Store != id || rec.Done < 0 || rec.Done > len(work.Exceptions)) {
			rec = nil // another store's record: start over, which is always safe
		}
	}

	c := newCopier(origin, store, work, opts)
	res := &OfflineResult{Store: st, Total: c.total, Seeded: seeded}
	if !st.Header.Valid {
		if rec != nil && rec.Complete {
			res.AlreadyDone = true
			return res, nil
		}
		return nil, fmt.Errorf("merge %s into %s: %w", sname, oname, ErrInvalidStore)
	}
	if err := c.checkProtected(opts.Protect); err != nil {
		return nil, fmt.Errorf("merge %s into %s: %w", sname, oname, err)
	}
	start := 0
	if rec != nil {
		start = rec.Done
		res.Resumed = start
	}
	if rec == nil || !rec.Complete {
		if err := c.run(ctx, start, id, res); err != nil {
			return res, fmt.Errorf("merge %s into %s: %w", sname, oname, err)
		}
	} else if opts.Progress != nil {
		opts.Progress(c.total, c.total)
	}
	if opts.Invalidate {
		if err := Invalidate(store); err != nil {
			return res, err
		}
		res.Invalidated = true
	}
	return res, nil
}

// Invalidate marks a store invalid (valid = 0 in its header) and flushes it,
// so the kernel will neither use nor merge it again. Call it only once the
// merge is durable. It rewrites the first block of the header as it is
// apart from the flag, and is a no-op for a store that is already invalid.
func Invalidate(store Device) error {
	name := nameOf(store, "store")
	h, err := ReadHeader(store, store.Size())
	if err != nil {
		return fmt.Errorf("invalidate store %s: %w", name, err)
	}
	if h.Fresh() {
		return fmt.Errorf("invalidate store %s: %w", name, ErrFreshStore)
	}
	if !h.Valid {
		return nil
	}
	buf, err := alignedBuf(int(min(Layout{h.ChunkSize}.ChunkBytes(), areaReadLen)))
	if err != nil {
		return fmt.Errorf("invalidate store %s: %w", name, err)
	}
	defer buf.free()
	if err := readFull(store, buf.b, 0); err != nil {
		return fmt.Errorf("invalidate store %s: read header: %w", name, err)
	}
	binary.LittleEndian.PutUint32(buf.b[4:], 0)
	if _, err := store.WriteAt(buf.b, 0); err != nil {
		return fmt.Errorf("invalidate store %s: write header: %w", name, err)
	}
	if err := store.Sync(); err != nil {
		return fmt.Errorf("invalidate store %s: flush: %w", name, err)
	}
	return nil
}

// OfflinePaths opens the origin (exclusively, when it is a block device, so
// that it fails with EBUSY while mounted or held by device-mapper) and the
// store segments, with direct I/O, and runs Offline. A single segment with
// Length 0 stands for a whole file or device. Store extents that lie on the
// origin device are protected from the copy.
func OfflinePaths(ctx context.Context, origin string, store []Segment, opts OfflineOptions) (_ *OfflineResult, err error) {
	o, err := OpenRaw(origin, OpenWrite|OpenExclusive)
	if err != nil {
		return nil, fmt.Errorf("open origin: %w", err)
	}
	defer func() { err = errors.Join(err, o.Close()) }()
	flags := OpenDirect
	if opts.Invalidate {
		flags |= OpenWrite
	}
	var s *Raw
	if len(store) == 1 && store[0].Offset == 0 && store[0].Length == 0 {
		s, err = OpenRaw(store[0].Path, flags)
	} else {
		s, err = OpenSegments(store, flags)
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	defer func() { err = errors.Join(err, s.Close()) }()
	opts.Protect = append(slices.Clone(opts.Protect), s.holds(o)...)
	return Offline(ctx, o, s, opts)
}

func nameOf(d any, def string) string {
	if n, ok := d.(interface{ Name() string }); ok {
		return n.Name()
	}
	return def
}

// copier copies the exceptions window by window. The exceptions are
// sorted by origin chunk and cut into windows of at most Window bytes, so
// each window covers one stretch of the origin; the progress record counts
// exceptions in this order. A window's chunks are read from the store in
// store order, chunks a few unneeded ones apart in one read, into a buffer
// that holds them in store order; then written in origin order, in spans
// of up to MaxIO bytes: a span is a run of consecutive origin chunks, or
// several such runs joined through the unchanged origin bytes between them
// (at most FillGap each), which it reads from the origin first. Each span
// is written as soon as the reads it needs are done. A store that fits in
// one window is thus read once in order and written once in order.
//
// The data is never copied in memory: a read fills the chunks' slots
// directly (preadv), and a write takes the chunks from their slots and the
// gaps from the span's fill buffer (pwritev), see vectorDevice.
type copier struct {
	origin, store Device
	ex            []Exception // sorted by Old
	cb            int64       // chunk bytes
	originSize    int64
	maxChunks     int    // per read or write
	fillChunks    uint64 // longest gap filled, in chunks
	readGap       uint64 // longest stretch of unneeded store chunks read to join two reads
	window        int    // chunks per window
	total         int64
	protect       []Extent // sorted, disjoint
	autoFill      bool     // FillGap left to calibrateFill
	opts          OfflineOptions
}

func (c *copier) setFillGap(gap int64) {
	c.opts.FillGap = gap
	c.fillChunks, c.readGap = 0, 0
	if gap > 0 {
		c.fillChunks = uint64(gap / c.cb)
		c.readGap = uint64(readGapFactor * gap / c.cb)
	}
}

func newCopier(origin, store Device, st *Store, opts OfflineOptions) *copier {
	if opts.Workers <= 0 {
		opts.Workers = defaultWorkers
	}
	if opts.MaxIO <= 0 {
		opts.MaxIO = defaultMaxIO
	}
	if opts.CheckpointBytes == 0 {
		opts.CheckpointBytes = defaultCheckpointBytes
	}
	if opts.Window <= 0 {
		opts.Window = defaultWindow
	}
	autoFill := opts.FillGap == 0
	if autoFill {
		opts.FillGap = defaultFillGap
	}
	c := &copier{
		origin:     origin,
		store:      store,
		ex:         slices.Clone(st.Exceptions),
		cb:         st.Layout().ChunkBytes(),
		originSize: origin.Size(),
		opts:       opts,
	}
	c.maxChunks = max(1, opts.MaxIO/int(c.cb))
	c.autoFill = autoFill
	c.setFillGap(opts.FillGap)
	window := opts.Window
	if opts.CheckpointBytes > 0 {
		window = min(window, opts.CheckpointBytes) // checkpoints fall between windows
	}
	c.window = int(max(1, window/c.cb))
	slices.SortFunc(c.ex, func(a, b Exception) int { return cmp.Compare(a.Old, b.Old) })
	for _, e := range c.ex {
		c.total += c.writeLen(e)
	}
	return c
}

// writeLen is how much of chunk e.Old the origin holds: the whole chunk but
// for a short last one.
func (c *copier) writeLen(e Exception) int64 {
	start := int64(e.Old) * c.cb
	return min(start+c.cb, c.originSize) - start
}

// checkProtected refuses exceptions that would write a protected range and
// keeps the ranges, sorted and coalesced, so that no filled gap crosses one.
func (c *copier) checkProtected(protect []Extent) error {
	if len(protect) == 0 {
		return nil
	}
	p := slices.Clone(protect)
	slices.SortFunc(p, func(a, b Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	// Coalesce overlapping ranges so that a sweep cannot step past one.
	merged := p[:1]
	for _, x := range p[1:] {
		last := &merged[len(merged)-1]
		if x.Offset <= last.Offset+last.Length {
			last.Length = max(last.Length, x.Offset+x.Length-last.Offset)
			continue
		}
		merged = append(merged, x)
	}
	c.protect = merged
	j := 0
	for _, e := range c.ex { // by Old
		start := int64(e.Old) * c.cb
		end := start + c.writeLen(e)
		for j < len(merged) && merged[j].Offset+merged[j].Length <= start {
			j++
		}
		if j < len(merged) && merged[j].Offset < end {
			return &OverlapError{Exception: e, Extent: merged[j]}
		}
	}
	return nil
}

// protected reports whether origin bytes [off, off+n) touch a protected
// range.
func (c *copier) protected(off, n int64) bool {
	i, _ := slices.BinarySearchFunc(c.protect, off, func(x Extent, off int64) int {
		return cmp.Compare(x.Offset+x.Length, off+1) // first range ending after off
	})
	return i < len(c.protect) && c.protect[i].Offset < off+n
}

// run copies c.ex[start:] window by window and, every CheckpointBytes,
// flushes the origin and then records the windows done before the flush;
// so the record only ever claims copies the flush made durable. A window's
// writes all end before the next window starts, and gaps lie between
// chunks of one window, which holds every exception in its stretch of the
// origin: so what a fill reads is never a chunk the merge still has to
// write, nor one another write is changing.
func (c *copier) run(ctx context.Context, start int, id identity, res *OfflineResult) error {
	var done int64
	for _, e := range c.ex[:start] {
		done += c.writeLen(e)
	}
	var mu sync.Mutex // serialises Progress and the counters
	report := func(n, filled int64, writes int) {
		mu.Lock()
		defer mu.Unlock()
		done += n
		res.Copied += n
		res.Filled += filled
		res.Writes += writes
		if c.opts.Progress != nil {
			c.opts.Progress(done, c.total)
		}
	}
	report(0, 0, 0)

	buf, err := alignedBuf(min(c.window, len(c.ex)-start) * int(c.cb))
	if err != nil {
		return err
	}
	defer buf.free()
	scratch := make(chan pageBuf, c.opts.Workers)
	for range c.opts.Workers {
		b, err := alignedBuf(c.maxChunks * int(c.cb))
		if err != nil {
			return err
		}
		defer b.free()
		scratch <- b
	}
	if c.autoFill {
		sb := <-scratch
		c.calibrateFill(sb.b)
		scratch <- sb
		c.autoFill = false
	}
	res.FillGap = c.opts.FillGap
	// The sink takes the unneeded store chunks a read goes through; what
	// lands there is never looked at, so the readers share it.
	sink, err := alignedBuf(int(c.readGap) * int(c.cb))
	if err != nil {
		return err
	}
	defer sink.free()

	saved := start // c.ex[:saved] is recorded as durable
	var sinceCheckpoint int64
	checkpoint := func(upTo int, final bool) error {
		if err := c.origin.Sync(); err != nil {
			return fmt.Errorf("flush origin: %w", err)
		}
		if c.opts.ProgressFile == "" {
			return nil
		}
		err := saveProgress(c.opts.ProgressFile, progress{
			Format: progressFormat, Store: id, Done: upTo, Total: len(c.ex), Complete: final,
		})
		if err == nil {
			saved = upTo
		}
		return err
	}
	for i := start; i < len(c.ex); {
		j := min(i+c.window, len(c.ex))
		err := ctx.Err()
		if err == nil {
			err = c.copyWindow(ctx, i, j, buf.b, scratch, sink, report)
		}
		if err != nil {
			// Record the windows done so a rerun redoes less: only after
			// a successful flush, and never instead of the first error.
			if i > saved && c.opts.ProgressFile != "" {
				if cerr := checkpoint(i, false); cerr != nil && !errors.Is(cerr, err) {
					err = errors.Join(err, fmt.Errorf("record progress after failure: %w", cerr))
				}
			}
			return err
		}
		for _, e := range c.ex[i:j] {
			sinceCheckpoint += c.writeLen(e)
		}
		i = j
		if c.opts.CheckpointBytes > 0 && sinceCheckpoint >= c.opts.CheckpointBytes && i < len(c.ex) {
			sinceCheckpoint = 0
			if err := checkpoint(i, false); err != nil {
				return err
			}
		}
	}
	return checkpoint(len(c.ex), true)
}

// span is one origin write: the chunks of exceptions idx (sorted by origin
// chunk) at origin bytes [off, off+n), and the origin ranges fill, which
// hold the gaps between them, read before the write. Gaps that only a few
// changed bytes separate are read together: one read of a few extra bytes
// costs less than one more read.
type span struct {
	idx    []int
	off, n int64
	fill   []Extent // origin ranges read first, in order
	filled int64    // gap bytes: the part of the write that changes nothing
	data   int64    // changed bytes: the chunks' part
}

// spans cuts idx, exception indexes sorted by origin chunk, into writes: a
// span goes on to the next chunk while the span stays within maxChunks
// chunks and the gap before it is at most fillChunks and touches no
// protected range.
func (c *copier) spans(idx []int) []span {
	var out []span
	for r := 0; r < len(idx); {
		first := c.ex[idx[r]]
		sp := span{off: int64(first.Old) * c.cb, data: c.writeLen(first)}
		s := r + 1
		for ; s < len(idx); s++ {
			prev, next := c.ex[idx[s-1]], c.ex[idx[s]]
			gap := next.Old - prev.Old - 1
			if next.Old-first.Old >= uint64(c.maxChunks) || gap > c.fillChunks {
				break
			}
			if gap > 0 {
				g := Extent{Offset: int64(prev.Old+1) * c.cb, Length: int64(gap) * c.cb}
				if c.protected(g.Offset, g.Length) {
					break
				}
				sp.filled += g.Length
				if n := len(sp.fill); n > 0 && g.Offset-(sp.fill[n-1].Offset+sp.fill[n-1].Length) <= int64(c.fillChunks)*c.cb {
					sp.fill[n-1].Length = g.Offset + g.Length - sp.fill[n-1].Offset
				} else {
					sp.fill = append(sp.fill, g)
				}
			}
			sp.data += c.writeLen(next)
		}
		last := c.ex[idx[s-1]]
		sp.idx = idx[r:s]
		sp.n = int64(last.Old)*c.cb + c.writeLen(last) - sp.off
		out = append(out, sp)
		r = s
	}
	return out
}

// copyWindow copies c.ex[i:j], a stretch of the exceptions in origin
// order, through buf, which holds their chunks in store order. It reads
// the store in store order, joining chunks that little separates into one
// read (the unneeded chunks in between land in sink), and writes each span
// as soon as the reads it needs are done, Workers reads and writes at a
// time; a span with gaps reads them into a buffer from scratch. Spans are
// disjoint, so their writes and fill reads never overlap.
func (c *copier) copyWindow(ctx context.Context, i, j int, buf []byte, scratch chan pageBuf, sink pageBuf, report func(data, filled int64, writes int)) error {
	// Slots: the window's chunks sit in buf in store order.
	byNew := make([]int, j-i)
	for k := range byNew {
		byNew[k] = i + k
	}
	slices.SortFunc(byNew, func(a, b int) int { return cmp.Compare(c.ex[a].New, c.ex[b].New) })
	slot := make([]int32, j-i)
	for q, k := range byNew {
		slot[k-i] = int32(q)
	}
	slotOf := func(k int) []byte { return buf[int64(slot[k-i])*c.cb:][:c.cb] }

	// The reads: byNew[reads[r]:reads[r+1]] with one read of the store
	// chunks from the first to the last, those between them unneeded.
	reads := []int{0}
	readOf := make([]int32, j-i) // read of each exception
	for q := 1; q < len(byNew); q++ {
		first, prev, next := c.ex[byNew[reads[len(reads)-1]]], c.ex[byNew[q-1]], c.ex[byNew[q]]
		if next.New-first.New >= uint64(c.maxChunks) || next.New-prev.New-1 > c.readGap {
			reads = append(reads, q)
		}
		readOf[byNew[q]-i] = int32(len(reads) - 1)
	}
	reads = append(reads, len(byNew))

	order := make([]int, j-i)
	for k := range order {
		order[k] = i + k
	}
	spans := c.spans(order)

	// Each span waits for the distinct reads its chunks come from.
	waiting := make([]int32, len(spans))
	waiters := make([][]int32, len(reads)-1)
	for s, sp := range spans {
		for _, k := range sp.idx {
			r := readOf[k-i]
			if w := waiters[r]; len(w) > 0 && w[len(w)-1] == int32(s) {
				continue // s already waits for r
			}
			waiters[r] = append(waiters[r], int32(s))
			waiting[s]++
		}
	}
	ready := make(chan int, len(spans)) // never blocks a reader
	var mu sync.Mutex

	read := func(r int) error {
		qs := byNew[reads[r]:reads[r+1]]
		first, last := c.ex[qs[0]], c.ex[qs[len(qs)-1]]
		// The chunks land in their slots, which follow one another; the
		// unneeded chunks between them go to the sink.
		var iov [][]byte
		for q, k := range qs {
			if q > 0 {
				if gap := int64(c.ex[k].New-c.ex[qs[q-1]].New-1) * c.cb; gap > 0 {
					iov = append(iov, sink.b[:gap])
				}
			}
			iov = appendVec(iov, buf[int64(reads[r]+q)*c.cb:][:c.cb])
		}
		if err := readv(c.store, iov, int64(first.New)*c.cb); err != nil {
			return fmt.Errorf("read store chunks %d-%d: %w", first.New, last.New, err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, s := range waiters[r] {
			if waiting[s]--; waiting[s] == 0 {
				ready <- int(s)
			}
		}
		return nil
	}
	write := func(sp span) error {
		first, last := c.ex[sp.idx[0]], c.ex[sp.idx[len(sp.idx)-1]]
		// The write takes each chunk from its slot and the bytes between
		// chunks from a scratch buffer that holds the span's origin range
		// as the fill reads found it.
		var sb pageBuf
		if len(sp.fill) > 0 {
			sb = <-scratch
			defer func() { scratch <- sb }()
			for _, f := range sp.fill {
				if err := readFull(c.origin, sb.b[f.Offset-sp.off:][:f.Length], f.Offset); err != nil {
					return fmt.Errorf("read origin chunks %d-%d between changed chunks: %w",
						f.Offset/c.cb, (f.Offset+f.Length)/c.cb-1, err)
				}
			}
		}
		var iov [][]byte
		at := sp.off // origin offset of the next byte of the write
		for _, k := range sp.idx {
			o := int64(c.ex[k].Old) * c.cb
			if o > at {
				iov = append(iov, sb.b[at-sp.off:o-sp.off])
			}
			iov = appendVec(iov, slotOf(k)[:c.writeLen(c.ex[k])])
			at = o + c.writeLen(c.ex[k])
		}
		if err := writev(c.origin, iov, sp.off); err != nil {
			return fmt.Errorf("write origin chunks %d-%d at byte %d: %w", first.Old, last.Old, sp.off, err)
		}
		report(sp.data, sp.filled, 1)
		return nil
	}

	// Dispatch: a ready write first, else the next read, else wait.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Workers)
	next := 0
dispatch:
	for started := 0; started < len(spans); {
		if gctx.Err() != nil {
			break
		}
		var s int
		select {
		case s = <-ready:
		default:
			if next < len(reads)-1 {
				r := next
				next++
				g.Go(func() error { return read(r) })
				continue
			}
			select {
			case s = <-ready:
			case <-gctx.Done():
				break dispatch
			}
		}
		sp := spans[s]
		g.Go(func() error { return write(sp) })
		started++
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
