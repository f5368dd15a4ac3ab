package bow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// Options configure an Engine.
type Options struct {
	// BlockSize is the unit of tracking and backup: a power of two from 512
	// to 4096; 0 means 4096. A device that already holds a checkpoint keeps
	// the block size of its log.
	BlockSize int64
	// OnFull says what a write does when there is no free space left for
	// its backups.
	OnFull FullPolicy
	// LowSpace is a threshold in bytes: when the free space left for backups
	// drops below it, OnLowSpace is called once (again after it has risen
	// above). 0 disables the warning.
	LowSpace int64
	// OnLowSpace is called from the writing goroutine, without engine locks
	// held. It must not change the engine's state.
	OnLowSpace func(Status)
	// OnAutoCommit is called after a write found no free space and the
	// FullCommit policy committed the checkpoint.
	OnAutoCommit func(Status)
	// StatePath is the file where Close saves the range map of an active
	// checkpoint and where Open looks for it. It must not live on the
	// device itself. Empty disables saving: a checkpoint then survives only
	// as a log for Restore.
	StatePath string
	// PassThrough opens a device without a checkpoint in the committed
	// state: no tracking, discards passed down.
	PassThrough bool
	// WriteBack bounds the bytes of acknowledged checkpoint writes whose
	// data waits for their backups to be logged (the next group commit,
	// which runs in the background); reads see them, and Flush, state
	// changes and Close wait for them. 0 means 32 MiB; a negative value
	// makes every write wait for its log (write-through).
	WriteBack int64
}

// Engine is a userspace dm-bow: a block device that, once checkpointed,
// backs up every block it is about to overwrite into space that was free at
// the checkpoint and logs the backup in block 0, so that Restore can put
// the device back exactly as it was. It is safe for concurrent use; writes
// to disjoint ranges proceed in parallel and share flushes.
type Engine struct {
	dev    Device
	name   string
	opts   Options
	bs     int64
	spb    uint64 // sectors per block
	blocks uint64
	logCap int
	piece  uint64 // most blocks per log entry

	// tr is held for reading by every I/O and for writing by state changes
	// and Close, which thereby wait for I/O in flight to finish.
	tr     sync.RWMutex
	state  atomic.Int32
	closed bool

	// mu guards the range map, the lock table, the log and the counters.
	// It is never held across device I/O.
	mu       sync.Mutex
	rm       *rangeMap
	locks    []*lockReq // range locks in flight, granted or waiting
	lt       lockTable  // their spans indexed, and the waiters to wake
	ticket   uint64
	zero     atomic.Uint64 // block holding the live block 0 (checkpoint)
	logBuf   []byte        // the log block as last handed to the device
	logCount int
	logSeq   uint32
	logZero  uint64 // the live block 0 as the log records it
	pending  int    // entries planned but not yet in logBuf
	broken   error
	lowWarn  bool
	st       counters

	cmu       sync.Mutex // guards the group-commit fields below
	ccond     *sync.Cond // signalled when a batch completes
	queue     []*commitItem
	leading   bool
	submitted uint64 // items queued so far
	completed uint64 // items whose data is on the device
	buffered  int64  // data bytes of queued items

	fl     flusher
	writes atomic.Uint64
	reads  atomic.Uint64
}

type counters struct {
	backups, discards, entries uint64
	backedUp                   int64
	committedOnFull            bool
}

// Status is a snapshot of the engine's state and counters.
type Status struct {
	Device    string     `json:"device"`
	State     State      `json:"state"`
	BlockSize int64      `json:"block_size"`
	Size      int64      `json:"size"`
	OnFull    FullPolicy `json:"on_full"`
	// FreeBytes is the free space still available for backups; space held
	// back for future log blocks is not counted.
	FreeBytes int64 `json:"free_bytes"`
	// BackedUpBytes counts every byte copied into a backup, including
	// copies of full log blocks and moves of the live block 0.
	BackedUpBytes     int64  `json:"backed_up_bytes"`
	LogBlocks         int    `json:"log_blocks"`
	LogEntries        uint64 `json:"log_entries"`
	Writes            uint64 `json:"writes"`
	Reads             uint64 `json:"reads"`
	Backups           uint64 `json:"backups"`
	Discards          uint64 `json:"discards"`
	Flushes           uint64 `json:"flushes"`
	InFlight          int    `json:"in_flight"`
	LowSpace          bool   `json:"low_space"`
	LowSpaceThreshold int64  `json:"low_space_threshold,omitempty"`
	CommittedOnFull   bool   `json:"committed_on_full,omitempty"`
	Broken            string `json:"broken,omitempty"`
}

const (
	defaultBlockSize = 4096
	defaultWriteBack = 32 << 20
	maxEntryBytes    = 4 << 20   // largest backup one log entry describes
	copyChunk        = 256 << 10 // buffer for copying backups
)

// Open starts an engine on dev. A device without a checkpoint log starts
// in StateTrim (StateCommitted with Options.PassThrough). A device with a
// log resumes its checkpoint from the range map saved at Options.StatePath
// by a clean Close; without a matching map Open fails with NeedsRestoreError,
// and with an interrupted restore with RestoreInProgressError. The saved map
// is removed once loaded, so that only a clean Close can leave one behind.
// The engine does not close dev.
func Open(dev Device, opts Options) (*Engine, error) {
	name := deviceName(dev)
	bs := opts.BlockSize
	if bs == 0 {
		bs = defaultBlockSize
	}
	if !ValidBlockSize(bs) {
		return nil, BlockSizeError{Size: bs}
	}
	size := dev.Size()
	if size < 2*MinBlockSize {
		return nil, DeviceTooSmallError{Device: name, Size: size, BlockSize: bs}
	}
	var hb [HeaderSize]byte
	if _, err := dev.ReadAt(hb[:], 0); err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	h, herr := ParseHeader(hb[:])
	hasLog := herr == nil
	if hasLog {
		if h.Magic == PartialMagic {
			return nil, RestoreInProgressError{Device: name}
		}
		lbs := int64(h.BlockSize)
		if !ValidBlockSize(lbs) {
			return nil, NeedsRestoreError{Device: name, Reason: fmt.Sprintf("its log header names block size %d", lbs)}
		}
		if opts.BlockSize != 0 && opts.BlockSize != lbs {
			return nil, BlockSizeError{Size: opts.BlockSize, Log: lbs}
		}
		bs = lbs
	}
	if size < 2*bs {
		return nil, DeviceTooSmallError{Device: name, Size: size, BlockSize: bs}
	}
	e := &Engine{
		dev:    dev,
		name:   name,
		opts:   opts,
		bs:     bs,
		spb:    uint64(bs / SectorSize),
		blocks: uint64(size / bs),
		logCap: Capacity(int(bs)),
		piece:  uint64(maxEntryBytes / bs),
		logBuf: make([]byte, bs),
	}
	e.ccond = sync.NewCond(&e.cmu)
	if e.opts.WriteBack == 0 {
		e.opts.WriteBack = defaultWriteBack
	}
	e.rm = newRangeMap(e.blocks)
	if hasLog {
		if opts.PassThrough {
			return nil, NeedsRestoreError{Device: name, Reason: "pass-through was asked for"}
		}
		if opts.StatePath == "" {
			return nil, NeedsRestoreError{Device: name, Reason: "no state file is configured"}
		}
		if err := e.loadState(); err != nil {
			return nil, err
		}
		if err := removeDurably(opts.StatePath); err != nil {
			return nil, fmt.Errorf("open %s: retire saved state: %w", name, err)
		}
		e.state.Store(int32(StateCheckpoint))
		return e, nil
	}
	if opts.StatePath != "" {
		// A map without a log is stale: the checkpoint was restored or
		// committed by other means.
		if err := removeDurably(opts.StatePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("open %s: remove stale state: %w", name, err)
		}
	}
	if opts.PassThrough {
		e.state.Store(int32(StateCommitted))
	}
	return e, nil
}

// Size returns the usable size in bytes: whole blocks only.
func (e *Engine) Size() int64 { return int64(e.blocks) * e.bs }

// BlockSize returns the block size in bytes.
func (e *Engine) BlockSize() int64 { return e.bs }

// State returns the current state.
func (e *Engine) State() State { return State(e.state.Load()) }

// Name returns the name of the underlying device.
func (e *Engine) Name() string { return e.name }

func (e *Engine) checkRange(op string, off int64, n int) error {
	if off < 0 || int64(n) > e.Size() || off > e.Size()-int64(n) {
		return fmt.Errorf("%s %s at %d+%d: beyond the end at %d: %w", op, e.name, off, n, e.Size(), syscall.EINVAL)
	}
	return nil
}

// blockSpan returns the blocks [lo, hi) touched by n bytes at off.
func (e *Engine) blockSpan(off int64, n int64) (lo, hi uint64) {
	return uint64(off / e.bs), uint64((off + n + e.bs - 1) / e.bs)
}

// ReadAt reads len(p) bytes at off. In checkpoint state block 0 reads its
// live contents from where they are kept.
func (e *Engine) ReadAt(p []byte, off int64) (int, error) {
	e.tr.RLock()
	defer e.tr.RUnlock()
	if e.closed {
		return 0, ErrClosed
	}
	if err := e.checkRange("read", off, len(p)); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	e.reads.Add(1)
	lo, hi := e.blockSpan(off, int64(len(p)))
	if e.State() == StateCheckpoint {
		e.mu.Lock()
		r := e.lockShared(lo, hi)
		e.mu.Unlock()
		defer e.unlock(r)
	}
	if off%e.bs == 0 && int64(len(p))%e.bs == 0 {
		if err := e.physRead(p, lo); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	buf := make([]byte, int64(hi-lo)*e.bs)
	if err := e.physRead(buf, lo); err != nil {
		return 0, err
	}
	return copy(p, buf[off-int64(lo)*e.bs:]), nil
}

// WriteAt writes p at off. In checkpoint state the old contents of every
// block it overwrites that still matter are backed up and logged durably
// first. Writes overlapping each other are applied in the order they
// arrive; unaligned writes read, modify and write whole blocks.
func (e *Engine) WriteAt(p []byte, off int64) (int, error) {
	for {
		e.tr.RLock()
		if e.closed {
			e.tr.RUnlock()
			return 0, ErrClosed
		}
		if err := e.checkRange("write", off, len(p)); err != nil {
			e.tr.RUnlock()
			return 0, err
		}
		if len(p) == 0 {
			e.tr.RUnlock()
			return 0, nil
		}
		var err error
		full := false
		if e.State() == StateCheckpoint {
			err, full = e.writeCheckpoint(p, off)
		} else {
			err = e.writePlain(p, off)
		}
		e.tr.RUnlock()
		if full && e.opts.OnFull == FullCommit {
			if cerr := e.commitOnFull(); cerr != nil {
				return 0, errors.Join(err, cerr)
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		e.writes.Add(1)
		return len(p), nil
	}
}

// writePlain writes in trim or committed state. In trim state blocks it
// touches stop being free.
func (e *Engine) writePlain(p []byte, off int64) error {
	lo, hi := e.blockSpan(off, int64(len(p)))
	e.mu.Lock()
	r := e.lockRange(lo, hi)
	if e.State() == StateTrim && e.rm.nfree > 0 {
		var free [][2]uint64
		e.rm.each(lo, hi, func(s, en uint64, k kind) {
			if k == kindFree {
				free = append(free, [2]uint64{s, en})
			}
		})
		for _, f := range free {
			e.rm.set(f[0], f[1], kindUnchanged)
		}
	}
	e.mu.Unlock()
	defer e.unlock(r)
	return e.writeData(p, off, lo, hi)
}

// writeCheckpoint writes in checkpoint state. full reports that the write
// failed for lack of free space and changed nothing.
func (e *Engine) writeCheckpoint(p []byte, off int64) (err error, full bool) {
	lo, hi := e.blockSpan(off, int64(len(p)))
	e.mu.Lock()
	r := e.enqueue(lo, hi)
	e.waitGrant(r, true)
	pl, err := e.plan(r, lo, hi)
	if err != nil {
		e.releaseLocked(r)
		e.mu.Unlock()
		var ns NoSpaceError
		return err, errors.As(err, &ns)
	}
	low := e.lowSpaceLocked()
	e.mu.Unlock()
	if low != nil && e.opts.OnLowSpace != nil {
		e.opts.OnLowSpace(*low)
	}
	if len(pl.copies) == 0 {
		defer e.unlock(r)
		return e.writeData(p, off, lo, hi), false
	}
	ents, err := e.copyOut(pl)
	if err != nil {
		e.setBroken(err)
		e.unlock(r)
		return err, false
	}
	// The data may land only once the backups are logged durably. The
	// group commit writes it and releases the lock; until then reads of
	// the range wait for it.
	it := &commitItem{entries: ents, setZero: pl.setZero, zero: pl.zero, req: r, off: off, lo: lo, hi: hi}
	if e.opts.WriteBack < 0 {
		it.data = p
		it.done = make(chan struct{})
		e.submit(it)
		<-it.done
		return it.err, false
	}
	it.data = append([]byte(nil), p...)
	e.submit(it)
	return nil, false
}

// writeData writes p at off to blocks [lo, hi) the caller has locked,
// reading partial first and last blocks first.
func (e *Engine) writeData(p []byte, off int64, lo, hi uint64) error {
	if off%e.bs == 0 && int64(len(p))%e.bs == 0 {
		return e.physWrite(p, lo)
	}
	buf := make([]byte, int64(hi-lo)*e.bs)
	head := off - int64(lo)*e.bs
	end := head + int64(len(p))
	readFirst := head != 0 || end < e.bs
	if readFirst {
		if err := e.physRead(buf[:e.bs], lo); err != nil {
			return err
		}
	}
	if end%e.bs != 0 && !(hi-1 == lo && readFirst) {
		if err := e.physRead(buf[len(buf)-int(e.bs):], hi-1); err != nil {
			return err
		}
	}
	copy(buf[head:], p)
	return e.physWrite(buf, lo)
}

// physRead and physWrite move whole blocks starting at block lo, sending
// block 0 to its live location in checkpoint state.
func (e *Engine) physRead(b []byte, lo uint64) error {
	if lo == 0 && e.State() == StateCheckpoint {
		if _, err := e.dev.ReadAt(b[:e.bs], int64(e.zero.Load())*e.bs); err != nil {
			return err
		}
		b, lo = b[e.bs:], 1
		if len(b) == 0 {
			return nil
		}
	}
	_, err := e.dev.ReadAt(b, int64(lo)*e.bs)
	return err
}

func (e *Engine) physWrite(b []byte, lo uint64) error {
	if lo == 0 && e.State() == StateCheckpoint {
		if _, err := e.dev.WriteAt(b[:e.bs], int64(e.zero.Load())*e.bs); err != nil {
			return err
		}
		b, lo = b[e.bs:], 1
		if len(b) == 0 {
			return nil
		}
	}
	_, err := e.dev.WriteAt(b, int64(lo)*e.bs)
	return err
}

// Discard reports bytes the filesystem no longer uses. Only whole blocks
// inside the range count. In trim state they become free space for
// backups and are not passed down. In checkpoint state blocks that were
// changed since the checkpoint become free again (their checkpoint-time
// contents, if any, are already backed up); discards of anything else are
// ignored, since those blocks still hold data a restore needs. In
// committed state the discard is passed down.
func (e *Engine) Discard(off, length int64) error {
	e.tr.RLock()
	defer e.tr.RUnlock()
	if e.closed {
		return ErrClosed
	}
	if length < 0 || length > int64(1<<62) {
		return fmt.Errorf("discard %s at %d+%d: %w", e.name, off, length, syscall.EINVAL)
	}
	if err := e.checkRange("discard", off, int(length)); err != nil {
		return err
	}
	lo := uint64((off + e.bs - 1) / e.bs)
	hi := uint64((off + length) / e.bs)
	if lo >= hi {
		return nil
	}
	e.mu.Lock()
	e.st.discards++
	r := e.lockRange(lo, hi)
	switch e.State() {
	case StateTrim:
		e.rm.set(lo, hi, kindFree)
	case StateCheckpoint:
		var changed [][2]uint64
		e.rm.each(lo, hi, func(s, en uint64, k kind) {
			if k == kindChanged {
				changed = append(changed, [2]uint64{s, en})
			}
		})
		for _, c := range changed {
			e.rm.set(c[0], c[1], kindFree)
		}
		e.lowSpaceLocked()
	case StateCommitted:
		e.mu.Unlock()
		err := e.dev.Discard(int64(lo)*e.bs, int64(hi-lo)*e.bs)
		e.unlock(r)
		return err
	}
	e.releaseLocked(r)
	e.mu.Unlock()
	return nil
}

// Flush makes every write that completed before it durable. Concurrent
// flushes, and the flushes of concurrent checkpoint writes, are shared.
func (e *Engine) Flush() error {
	e.tr.RLock()
	defer e.tr.RUnlock()
	if e.closed {
		return ErrClosed
	}
	if err := e.drain(); err != nil {
		return err
	}
	return e.fl.flush(e.dev)
}

// drain waits until every write queued so far has its data on the device,
// and reports a failure of the background commits.
func (e *Engine) drain() error { return e.drainCtx(context.Background()) }

// drainCtx is drain that gives up, with ctx's error, when ctx ends first.
func (e *Engine) drainCtx(ctx context.Context) error {
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() {
			e.cmu.Lock()
			e.ccond.Broadcast()
			e.cmu.Unlock()
		})
		defer stop()
	}
	e.cmu.Lock()
	target := e.submitted
	for e.completed < target {
		if err := ctx.Err(); err != nil {
			e.cmu.Unlock()
			return err
		}
		e.ccond.Wait()
	}
	e.cmu.Unlock()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broken != nil {
		return BrokenError{Device: e.name, Cause: e.broken}
	}
	return nil
}

// Checkpoint moves from trim to checkpoint state: the contents of every
// block not free now become what Restore brings back. See SetState for
// ctx.
func (e *Engine) Checkpoint(ctx context.Context) error { return e.SetState(ctx, StateCheckpoint) }

// Commit moves from checkpoint to committed state: the checkpoint is
// dropped, block 0 gets its live contents back and the engine passes
// everything through. See SetState for ctx.
func (e *Engine) Commit(ctx context.Context) error { return e.SetState(ctx, StateCommitted) }

// SetState moves to state s, which must be the next state. It waits for
// I/O in flight to finish and holds new I/O until it is done. If ctx ends
// while it waits, it returns ctx's error and nothing has changed; once the
// change has begun (a few block writes and flushes) it is carried through.
func (e *Engine) SetState(ctx context.Context, s State) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.tr.Lock()
	defer e.tr.Unlock()
	if e.closed {
		return ErrClosed
	}
	cur := e.State()
	if s != cur+1 {
		return TransitionError{From: cur, To: s}
	}
	if err := e.drainCtx(ctx); err != nil {
		return err
	}
	if s == StateCheckpoint {
		return e.startCheckpoint()
	}
	return e.finishCheckpoint()
}

// commitOnFull commits after a write ran out of space under FullCommit.
func (e *Engine) commitOnFull() error {
	e.tr.Lock()
	if e.closed {
		e.tr.Unlock()
		return ErrClosed
	}
	if e.State() != StateCheckpoint {
		e.tr.Unlock()
		return nil // someone else committed meanwhile
	}
	err := e.drain()
	if err == nil {
		err = e.finishCheckpoint()
	}
	if err == nil {
		e.mu.Lock()
		e.st.committedOnFull = true
		e.mu.Unlock()
	}
	e.tr.Unlock()
	if err == nil && e.opts.OnAutoCommit != nil {
		e.opts.OnAutoCommit(e.Status())
	}
	return err
}

// startCheckpoint carves block 0 out for the log, copies its contents to a
// free block where they live on, backs them up into another free block and
// writes the first log block. Called with tr held for writing.
func (e *Engine) startCheckpoint() error {
	if err := e.fl.flush(e.dev); err != nil {
		return err
	}
	e.mu.Lock()
	if e.broken != nil {
		e.mu.Unlock()
		return BrokenError{Device: e.name, Cause: e.broken}
	}
	_, _, k0 := e.rm.at(0)
	e.rm.set(0, 1, kindLog)
	live, _, ok1 := e.rm.takeFree(1)
	if ok1 {
		e.rm.set(live, live+1, kindLiveZero)
	}
	backup, _, ok2 := e.rm.takeFree(1)
	if ok2 {
		e.rm.set(backup, backup+1, kindBackup)
	}
	rollback := func() {
		if ok2 {
			e.rm.set(backup, backup+1, kindFree)
		}
		if ok1 {
			e.rm.set(live, live+1, kindFree)
		}
		e.rm.set(0, 1, k0)
	}
	if !ok1 || !ok2 {
		free := int64(e.rm.nfree) * e.bs
		rollback()
		e.mu.Unlock()
		return NoSpaceError{Device: e.name, Needed: 2 * e.bs, Free: free}
	}
	e.mu.Unlock()
	fail := func(err error) error {
		e.mu.Lock()
		rollback()
		e.mu.Unlock()
		return err
	}
	data := make([]byte, e.bs)
	if _, err := e.dev.ReadAt(data, 0); err != nil {
		return fail(err)
	}
	if _, err := e.dev.WriteAt(data, int64(live)*e.bs); err != nil {
		return fail(err)
	}
	if _, err := e.dev.WriteAt(data, int64(backup)*e.bs); err != nil {
		return fail(err)
	}
	if err := e.fl.flush(e.dev); err != nil {
		return fail(err)
	}
	crashPoint("checkpoint: block 0 copied to its live block and its backup", -1, -1)
	e.mu.Lock()
	clear(e.logBuf)
	e.logCount, e.logSeq, e.pending = 0, 0, 0
	e.logZero = live
	e.putLogHeader()
	e.appendEntry(Entry{Source: 0, Dest: backup * e.spb, Size: uint32(e.bs), Checksum: Checksum(0, data)})
	e.st.backups++
	e.st.backedUp += e.bs
	buf := append([]byte(nil), e.logBuf...)
	e.mu.Unlock()
	if _, err := e.dev.WriteAt(buf, 0); err != nil {
		// Block 0 may now be half a log: only a restore can tell.
		e.setBroken(err)
		return err
	}
	if err := e.fl.flush(e.dev); err != nil {
		e.setBroken(err)
		return err
	}
	crashPoint("checkpoint: log written in block 0", -1, -1)
	e.zero.Store(live)
	e.state.Store(int32(StateCheckpoint))
	e.mu.Lock()
	low := e.lowSpaceLocked()
	e.mu.Unlock()
	if low != nil && e.opts.OnLowSpace != nil {
		e.opts.OnLowSpace(*low)
	}
	return nil
}

// finishCheckpoint copies the live block 0 home, which drops the log.
// Called with tr held for writing, so no I/O or commit is in flight.
func (e *Engine) finishCheckpoint() error {
	e.mu.Lock()
	broken := e.broken
	e.mu.Unlock()
	if broken != nil {
		return BrokenError{Device: e.name, Cause: broken}
	}
	data := make([]byte, e.bs)
	if _, err := e.dev.ReadAt(data, int64(e.zero.Load())*e.bs); err != nil {
		return err
	}
	if _, err := e.dev.WriteAt(data, 0); err != nil {
		e.setBroken(err)
		return err
	}
	if err := e.fl.flush(e.dev); err != nil {
		e.setBroken(err)
		return err
	}
	crashPoint("commit: block 0 home, the log dropped", -1, -1)
	e.state.Store(int32(StateCommitted))
	if e.opts.StatePath != "" {
		if err := removeDurably(e.opts.StatePath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("commit %s: remove saved state: %w", e.name, err)
		}
	}
	return nil
}

// Close waits for I/O in flight, flushes and, in checkpoint state, saves
// the range map to Options.StatePath so that Open can resume. It does not
// close the device.
func (e *Engine) Close() error {
	e.tr.Lock()
	defer e.tr.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	derr := e.drain()
	if err := e.fl.flush(e.dev); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	e.mu.Lock()
	broken := e.broken
	e.mu.Unlock()
	if e.State() == StateCheckpoint && e.opts.StatePath != "" && broken == nil {
		return e.saveState()
	}
	return nil
}

// Status returns a snapshot of the engine's state and counters.
func (e *Engine) Status() Status {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.statusLocked()
}

func (e *Engine) statusLocked() Status {
	s := Status{
		Device:            e.name,
		State:             e.State(),
		BlockSize:         e.bs,
		Size:              e.Size(),
		OnFull:            e.opts.OnFull,
		BackedUpBytes:     e.st.backedUp,
		LogEntries:        e.st.entries,
		Writes:            e.writes.Load(),
		Reads:             e.reads.Load(),
		Backups:           e.st.backups,
		Discards:          e.st.discards,
		Flushes:           e.fl.count.Load(),
		InFlight:          len(e.locks),
		LowSpace:          e.lowWarn,
		LowSpaceThreshold: e.opts.LowSpace,
		CommittedOnFull:   e.st.committedOnFull,
	}
	if e.broken != nil {
		s.Broken = e.broken.Error()
	}
	if s.State == StateCheckpoint {
		s.LogBlocks = int(e.logSeq) + 1
		s.FreeBytes = int64(e.availLocked()) * e.bs
	} else {
		s.FreeBytes = int64(e.rm.nfree) * e.bs
	}
	return s
}

func (e *Engine) setBroken(err error) {
	e.mu.Lock()
	if e.broken == nil {
		e.broken = err
	}
	e.mu.Unlock()
}

// availLocked is the free space left for backups, in blocks.
func (e *Engine) availLocked() uint64 {
	r := e.logCopies(0)
	if r >= e.rm.nfree {
		return 0
	}
	return e.rm.nfree - r
}

// lowSpaceLocked updates the low-space flag and returns the status to
// report when it has just been raised.
func (e *Engine) lowSpaceLocked() *Status {
	if e.opts.LowSpace <= 0 || e.State() != StateCheckpoint {
		return nil
	}
	if int64(e.availLocked())*e.bs >= e.opts.LowSpace {
		e.lowWarn = false
		return nil
	}
	if e.lowWarn {
		return nil
	}
	e.lowWarn = true
	s := e.statusLocked()
	return &s
}

// logCopies is the number of full log blocks that will have to be backed
// up to append the pending entries plus extra more. Each needs one free
// block, which planning keeps in reserve.
func (e *Engine) logCopies(extra int) uint64 {
	p := e.pending + extra
	room := e.logCap - e.logCount
	if p <= room {
		return 0
	}
	per := e.logCap - 1
	return uint64((p - room + per - 1) / per)
}

// Trim is Discard under the name the NBD front end uses.
func (e *Engine) Trim(off, length int64) error { return e.Discard(off, length) }
