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

	// Window is how many bytes of store chunks are read into memory before
	// they are written out sorted by origin chunk (default 64 MiB; never
	// more than CheckpointBytes).
	Window int64

	// Protect lists origin byte ranges the merge must never write: the
	// store's own extents when it lives on the origin device. OfflinePaths
	// adds them itself.
	Protect []Extent
}

// OfflineResult describes a finished offline merge.
type OfflineResult struct {
	Store       *Store
	Total       int64 // bytes the merge writes to the origin, all runs together
	Copied      int64 // bytes copied by this run
	Resumed     int   // exceptions skipped because a progress record showed them durable
	Writes      int   // origin writes issued by this run
	AlreadyDone bool  // an earlier run finished and invalidated the store; nothing was done
	Invalidated bool  // this run marked the store invalid
}

const (
	defaultWorkers         = 4
	defaultMaxIO           = 1 << 20
	defaultCheckpointBytes = 256 << 20
	defaultWindow          = 64 << 20
)

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
	id := identify(st, origin.Size())
	var rec *progress
	if opts.ProgressFile != "" {
		if rec, err = loadProgress(opts.ProgressFile); err != nil {
			return nil, err
		}
		if rec != nil && (rec.Store != id || rec.Done < 0 || rec.Done > len(st.Exceptions)) {
			rec = nil // another store's record: start over, which is always safe
		}
	}

	c := newCopier(origin, store, st, opts)
	res := &OfflineResult{Store: st, Total: c.total}
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
// sorted by store chunk and cut into windows of at most Window bytes; each
// window is read with large reads of consecutive store chunks (sequential
// on the store), then written sorted by origin chunk, runs of consecutive
// origin chunks going out as one write of up to MaxIO bytes. A store that
// fits in one window is thus read in order and written in order.
type copier struct {
	origin, store Device
	ex            []Exception // sorted by New
	cb            int64       // chunk bytes
	originSize    int64
	maxChunks     int // per read or write
	window        int // chunks per window
	total         int64
	opts          OfflineOptions
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
	c := &copier{
		origin:     origin,
		store:      store,
		ex:         slices.Clone(st.Exceptions),
		cb:         st.Layout().ChunkBytes(),
		originSize: origin.Size(),
		opts:       opts,
	}
	c.maxChunks = max(1, opts.MaxIO/int(c.cb))
	window := opts.Window
	if opts.CheckpointBytes > 0 {
		window = min(window, opts.CheckpointBytes) // checkpoints fall between windows
	}
	c.window = int(max(1, window/c.cb))
	slices.SortFunc(c.ex, func(a, b Exception) int { return cmp.Compare(a.New, b.New) })
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
	byOld := slices.Clone(c.ex)
	slices.SortFunc(byOld, func(a, b Exception) int { return cmp.Compare(a.Old, b.Old) })
	j := 0
	for _, e := range byOld {
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

// run copies c.ex[start:] window by window and, every CheckpointBytes,
// flushes the origin and then records the windows done before the flush;
// so the record only ever claims copies the flush made durable.
func (c *copier) run(ctx context.Context, start int, id identity, res *OfflineResult) error {
	var done int64
	for _, e := range c.ex[:start] {
		done += c.writeLen(e)
	}
	var mu sync.Mutex // serialises Progress and the counters
	report := func(n int64, writes int) {
		mu.Lock()
		defer mu.Unlock()
		done += n
		res.Copied += n
		res.Writes += writes
		if c.opts.Progress != nil {
			c.opts.Progress(done, c.total)
		}
	}
	report(0, 0)

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
			err = c.copyWindow(ctx, i, j, buf.b, scratch, report)
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

// copyWindow copies c.ex[i:j] through buf, where exception k's chunk sits
// at (k-i) chunks: first all reads, then all writes, each spread over the
// workers.
func (c *copier) copyWindow(ctx context.Context, i, j int, buf []byte, scratch chan pageBuf, report func(int64, int)) error {
	at := func(k int) []byte { return buf[int64(k-i)*c.cb : int64(k-i+1)*c.cb] }

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Workers)
	for k := i; k < j && gctx.Err() == nil; {
		m := k + 1
		for m < j && m-k < c.maxChunks && c.ex[m].New == c.ex[m-1].New+1 {
			m++
		}
		k0 := k
		g.Go(func() error {
			b := buf[int64(k0-i)*c.cb : int64(m-i)*c.cb]
			if err := readFull(c.store, b, int64(c.ex[k0].New)*c.cb); err != nil {
				return fmt.Errorf("read store chunks %d-%d: %w", c.ex[k0].New, c.ex[m-1].New, err)
			}
			return nil
		})
		k = m
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	order := make([]int, j-i)
	for k := range order {
		order[k] = i + k
	}
	slices.SortFunc(order, func(a, b int) int { return cmp.Compare(c.ex[a].Old, c.ex[b].Old) })
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(c.opts.Workers)
	for r := 0; r < len(order) && gctx.Err() == nil; {
		s := r + 1
		for s < len(order) && s-r < c.maxChunks && c.ex[order[s]].Old == c.ex[order[s-1]].Old+1 {
			s++
		}
		run := order[r:s]
		g.Go(func() error {
			first, last := c.ex[run[0]], c.ex[run[len(run)-1]]
			n := int64(len(run)-1)*c.cb + c.writeLen(last)
			contiguous := true // in buf
			for q := 1; q < len(run) && contiguous; q++ {
				contiguous = run[q] == run[q-1]+1
			}
			var b []byte
			if contiguous {
				b = buf[int64(run[0]-i)*c.cb:][:n]
			} else {
				sb := <-scratch
				defer func() { scratch <- sb }()
				for q, k := range run {
					copy(sb.b[int64(q)*c.cb:], at(k))
				}
				b = sb.b[:n]
			}
			off := int64(first.Old) * c.cb
			if _, err := c.origin.WriteAt(b, off); err != nil {
				return fmt.Errorf("write origin chunks %d-%d at byte %d: %w", first.Old, last.Old, off, err)
			}
			report(n, 1)
			return nil
		})
		r = s
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return ctx.Err()
}
