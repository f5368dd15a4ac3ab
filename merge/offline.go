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

// copier copies the sorted exceptions in runs: consecutive origin chunks,
// up to maxChunks, go out in one write; consecutive store chunks within a
// run come in with one read.
type copier struct {
	origin, store Device
	ex            []Exception // sorted by Old
	cb            int64       // chunk bytes
	originSize    int64
	maxChunks     int
	total         int64
	opts          OfflineOptions
}

type run struct{ i, j int } // ex[i:j]

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
	c := &copier{
		origin:     origin,
		store:      store,
		ex:         slices.Clone(st.Exceptions),
		cb:         st.Layout().ChunkBytes(),
		originSize: origin.Size(),
		opts:       opts,
	}
	c.maxChunks = max(1, opts.MaxIO/int(c.cb))
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
	j := 0
	for _, e := range c.ex {
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

func (c *copier) runs(start int) []run {
	var rs []run
	for i := start; i < len(c.ex); {
		j := i + 1
		for j < len(c.ex) && j-i < c.maxChunks && c.ex[j].Old == c.ex[j-1].Old+1 {
			j++
		}
		rs = append(rs, run{i, j})
		i = j
	}
	return rs
}

// copyRun copies one run through buf.
func (c *copier) copyRun(buf []byte, r run) (int64, error) {
	for k := r.i; k < r.j; {
		m := k + 1
		for m < r.j && c.ex[m].New == c.ex[m-1].New+1 {
			m++
		}
		b := buf[int64(k-r.i)*c.cb : int64(m-r.i)*c.cb]
		if err := readFull(c.store, b, int64(c.ex[k].New)*c.cb); err != nil {
			return 0, fmt.Errorf("read store chunks %d-%d: %w", c.ex[k].New, c.ex[m-1].New, err)
		}
		k = m
	}
	n := int64(r.j-r.i-1)*c.cb + c.writeLen(c.ex[r.j-1])
	off := int64(c.ex[r.i].Old) * c.cb
	if _, err := c.origin.WriteAt(buf[:n], off); err != nil {
		return 0, fmt.Errorf("write origin chunks %d-%d at byte %d: %w", c.ex[r.i].Old, c.ex[r.j-1].Old, off, err)
	}
	return n, nil
}

// run copies c.ex[start:] with a few workers. One goroutine (the caller's)
// collects completions in any order, tracks the prefix of runs that are all
// done, and every CheckpointBytes flushes the origin and records that
// prefix; so the record only ever claims copies the flush made durable.
func (c *copier) run(ctx context.Context, start int, id identity, res *OfflineResult) error {
	runs := c.runs(start)
	var done int64
	for _, e := range c.ex[:start] {
		done += c.writeLen(e)
	}
	report := func() {
		if c.opts.Progress != nil {
			c.opts.Progress(done, c.total)
		}
	}
	report()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	next := make(chan int)
	finished := make(chan int, c.opts.Workers)
	sizes := make([]int64, len(runs))
	g.Go(func() error {
		defer close(next)
		for i := range runs {
			select {
			case next <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	var wg sync.WaitGroup
	for range c.opts.Workers {
		wg.Add(1)
		g.Go(func() error {
			defer wg.Done()
			buf, err := alignedBuf(c.maxChunks * int(c.cb))
			if err != nil {
				return err
			}
			defer buf.free()
			for i := range next {
				n, err := c.copyRun(buf.b, runs[i])
				if err != nil {
					return err
				}
				sizes[i] = n
				select {
				case finished <- i:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
	}
	go func() { wg.Wait(); close(finished) }()

	complete := make([]bool, len(runs))
	prefix, saved := 0, 0 // runs[:prefix] are copied; runs[:saved] are recorded
	var sinceCheckpoint int64
	doneAt := func(p int) int { // exceptions covered by runs[:p]
		if p == len(runs) {
			return len(c.ex)
		}
		return runs[p].i
	}
	checkpoint := func(final bool) error {
		p := prefix // taken before the flush: those writes have completed
		if err := c.origin.Sync(); err != nil {
			return fmt.Errorf("flush origin: %w", err)
		}
		if c.opts.ProgressFile == "" {
			return nil
		}
		err := saveProgress(c.opts.ProgressFile, progress{
			Format: progressFormat, Store: id, Done: doneAt(p), Total: len(c.ex), Complete: final,
		})
		if err == nil {
			saved = p
		}
		return err
	}
	var collectErr error
	for i := range finished {
		complete[i] = true
		res.Writes++
		res.Copied += sizes[i]
		done += sizes[i]
		sinceCheckpoint += sizes[i]
		for prefix < len(runs) && complete[prefix] {
			prefix++
		}
		report()
		if collectErr == nil && c.opts.CheckpointBytes > 0 && sinceCheckpoint >= c.opts.CheckpointBytes && prefix > saved {
			sinceCheckpoint = 0
			if err := checkpoint(false); err != nil {
				collectErr = err
				cancel() // stop the workers; keep draining finished
			}
		}
	}
	err := g.Wait()
	if collectErr != nil {
		err = collectErr
	}
	if err != nil {
		// Record what is done so a rerun redoes less. Only after a
		// successful flush, and never instead of the first error.
		if prefix > saved && c.opts.ProgressFile != "" && collectErr == nil {
			if cerr := checkpoint(false); cerr != nil {
				err = errors.Join(err, fmt.Errorf("record progress after failure: %w", cerr))
			}
		}
		return err
	}
	return checkpoint(true)
}
