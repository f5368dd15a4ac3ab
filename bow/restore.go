package bow

import (
	"context"
	"errors"
	"fmt"
)

// RestoreOptions tune Restore.
type RestoreOptions struct {
	// DryRun validates the log chain and reports what a restore would do
	// without writing anything.
	DryRun bool
	// RollForwardOnCorruption keeps the current contents when the chain
	// fails validation: the live block 0 is copied home, which drops the
	// checkpoint (an offline commit). Without it a corrupt chain is refused.
	RollForwardOnCorruption bool
	// Progress, when set, is called after each entry is replayed with the
	// bytes copied back so far and in all.
	Progress func(done, total int64)
}

// RestoreSummary reports what Restore did.
type RestoreSummary struct {
	Device        string `json:"device"`
	BlockSize     int64  `json:"block_size"`
	LogBlocks     int    `json:"log_blocks"`
	Entries       int    `json:"entries"`
	Bytes         int64  `json:"bytes"`
	Resumed       bool   `json:"resumed"`
	DryRun        bool   `json:"dry_run"`
	RolledForward bool   `json:"rolled_forward"`
	Problem       string `json:"problem,omitempty"`
}

// LogInfo describes one log block of a chain.
type LogInfo struct {
	Sequence uint32 `json:"sequence"`
	Partial  bool   `json:"partial"` // marked as being restored
	Entries  int    `json:"entries"`
	Bytes    int64  `json:"bytes"`
	// Block is where the log block is found now: 0 for the newest, a
	// backup block for older ones.
	Block uint64 `json:"block"`
}

// Info is what Inspect finds on a device.
type Info struct {
	Device     string    `json:"device"`
	Size       int64     `json:"size"`
	Header     Header    `json:"header"`
	InProgress bool      `json:"restore_in_progress"`
	Logs       []LogInfo `json:"logs"` // newest first
	Entries    int       `json:"entries"`
	Bytes      int64     `json:"backed_up_bytes"`
	Valid      bool      `json:"valid"`
	Problem    string    `json:"problem,omitempty"`
}

// Inspect reads the log chain of dev and validates it without writing.
// The error is NoLogError without a log and CorruptLogError when validation
// fails; Info describes as much of the chain as could be read.
func Inspect(ctx context.Context, dev Device) (Info, error) {
	c, err := openChain(ctx, dev)
	info := Info{Device: deviceName(dev), Size: dev.Size()}
	if err != nil {
		return info, err
	}
	info.Header = c.top
	info.InProgress = c.top.Magic == PartialMagic
	err = c.validate()
	info.Logs, info.Entries, info.Bytes = c.logs, c.entries, c.bytes
	info.Valid = err == nil
	if err != nil {
		info.Problem = err.Error()
	}
	return info, err
}

// Restore puts dev back to its contents at the checkpoint. It validates the
// whole chain first (magics, block sizes, sequence numbers, bounds, sizes
// and checksums, following the chain exactly as the restore will move the
// data); a chain that fails is refused with CorruptLogError and nothing is
// written, unless RollForwardOnCorruption asks to keep the current contents
// instead. The replay copies every backup back to its source, newest entry
// first, block 0 last, and marks its progress in block 0 (magic "WOB", a
// truncated count) whenever going on would destroy data a repeat needs, so
// a restore killed at any point finishes when run again. Restore is
// compatible with logs written by Android's dm-bow and restores by vold.
//
// If ctx ends, Restore stops at the next entry, flushes what it copied and
// returns ctx's error (wrapped); the device is then as after a kill: it
// needs Restore again, which finishes the job.
func Restore(ctx context.Context, dev Device, opts RestoreOptions) (RestoreSummary, error) {
	sum := RestoreSummary{Device: deviceName(dev), DryRun: opts.DryRun}
	c, err := openChain(ctx, dev)
	if err != nil {
		return sum, err
	}
	sum.BlockSize = c.bs
	sum.Resumed = c.top.Magic == PartialMagic
	verr := c.validate()
	sum.LogBlocks, sum.Entries, sum.Bytes = len(c.logs), c.entries, c.bytes
	if verr != nil {
		// Only a damaged chain is rolled forward: an I/O error while
		// checking it says nothing about the log, and dropping the
		// checkpoint for it would throw away a restorable earlier state.
		var corrupt CorruptLogError
		if !opts.RollForwardOnCorruption || opts.DryRun || ctx.Err() != nil || !errors.As(verr, &corrupt) {
			return sum, verr
		}
		if err := rollForward(dev, c.top); err != nil {
			return sum, errors.Join(verr, err)
		}
		sum.RolledForward = true
		sum.Problem = verr.Error()
		return sum, nil
	}
	if opts.DryRun {
		return sum, nil
	}
	return sum, c.replay(opts.Progress)
}

// RollForward drops the checkpoint on dev and keeps its current contents:
// the live block 0 is copied home over the log. It is the offline
// equivalent of Engine.Commit for a device whose engine is gone. It
// writes one block: ctx is checked before it starts.
func RollForward(ctx context.Context, dev Device) error {
	c, err := openChain(ctx, dev)
	if err != nil {
		return err
	}
	return rollForward(dev, c.top)
}

func rollForward(dev Device, top Header) error {
	name := deviceName(dev)
	if top.Magic != Magic {
		return RestoreInProgressError{Device: name}
	}
	bs := int64(top.BlockSize)
	spb := uint64(bs / SectorSize)
	blocks := uint64(dev.Size() / bs)
	if !ValidBlockSize(bs) || top.Sector0%spb != 0 || top.Sector0 == 0 || top.Sector0/spb >= blocks {
		return CorruptLogError{Device: name, Sequence: int64(top.Sequence), Entry: -1,
			Reason: fmt.Sprintf("the live block 0 is at sector %d, block size %d: cannot roll forward", top.Sector0, bs)}
	}
	data := make([]byte, bs)
	if _, err := dev.ReadAt(data, int64(top.Sector0)*SectorSize); err != nil {
		return fmt.Errorf("roll forward %s: %w", name, err)
	}
	if _, err := dev.WriteAt(data, 0); err != nil {
		return fmt.Errorf("roll forward %s: %w", name, err)
	}
	if err := dev.Flush(); err != nil {
		return fmt.Errorf("roll forward %s: %w", name, err)
	}
	return nil
}

// chain walks the log chain of a device.
type chain struct {
	ctx    context.Context // checked before each entry
	dev    Device
	name   string
	top    Header
	bs     int64
	spb    uint64
	blocks uint64

	logs    []LogInfo
	entries int
	bytes   int64
}

func openChain(ctx context.Context, dev Device) (*chain, error) {
	name := deviceName(dev)
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read log on %s: %w", name, err)
	}
	if dev.Size() < HeaderSize {
		return nil, NoLogError{Device: name}
	}
	var hb [HeaderSize]byte
	if _, err := dev.ReadAt(hb[:], 0); err != nil {
		return nil, fmt.Errorf("read log on %s: %w", name, err)
	}
	top, err := ParseHeader(hb[:])
	if err != nil {
		return nil, NoLogError{Device: name}
	}
	c := &chain{ctx: ctx, dev: dev, name: name, top: top, bs: int64(top.BlockSize)}
	if ValidBlockSize(c.bs) {
		c.spb = uint64(c.bs / SectorSize)
		c.blocks = uint64(dev.Size() / c.bs)
	}
	return c, nil
}

func (c *chain) corrupt(seq int64, entry int, format string, args ...any) error {
	return CorruptLogError{Device: c.name, Sequence: seq, Entry: entry, Reason: fmt.Sprintf(format, args...)}
}

// checkEntry checks what can be checked of an entry without data and
// returns it in blocks.
func (c *chain) checkEntry(seq int64, i int, e Entry) (src, dst, n uint64, err error) {
	bs := uint64(c.bs)
	if e.Size == 0 || uint64(e.Size)%bs != 0 {
		return 0, 0, 0, c.corrupt(seq, i, "size %d is not a positive multiple of the block size %d", e.Size, bs)
	}
	if e.Source%c.spb != 0 || e.Dest%c.spb != 0 {
		return 0, 0, 0, c.corrupt(seq, i, "source %d or destination %d is not on a block boundary", e.Source, e.Dest)
	}
	src, dst, n = e.Source/c.spb, e.Dest/c.spb, uint64(e.Size)/bs
	if src >= c.blocks || n > c.blocks-src || dst >= c.blocks || n > c.blocks-dst {
		return 0, 0, 0, c.corrupt(seq, i, "%d blocks from %d to %d run past the end of the device (%d blocks)", n, dst, src, c.blocks)
	}
	if dst == 0 {
		return 0, 0, 0, c.corrupt(seq, i, "backup stored in block 0")
	}
	if src < dst+n && dst < src+n {
		return 0, 0, 0, c.corrupt(seq, i, "source %d and backup %d overlap", src, dst)
	}
	if i == 0 && (src != 0 || n != 1) {
		return 0, 0, 0, c.corrupt(seq, i, "first entry does not restore block 0")
	}
	if i > 0 && src == 0 {
		return 0, 0, 0, c.corrupt(seq, i, "entry restores block 0 out of turn")
	}
	return src, dst, n, nil
}

// checkLog checks a log block found at sequence seq.
func (c *chain) checkLog(b []byte, seq int64, top bool) (LogBlock, error) {
	lb, err := ParseLogBlock(b)
	if err != nil {
		return lb, c.corrupt(seq, -1, "%v", err)
	}
	switch {
	case lb.Magic != Magic && !(top && lb.Magic == PartialMagic):
		return lb, c.corrupt(seq, -1, "bad magic %#x", lb.Magic)
	case int64(lb.BlockSize) != c.bs:
		return lb, c.corrupt(seq, -1, "block size %d, newest log block says %d", lb.BlockSize, c.bs)
	case int64(lb.Sequence) != seq:
		return lb, c.corrupt(seq, -1, "sequence %d where %d was expected", lb.Sequence, seq)
	case lb.Count == 0:
		return lb, c.corrupt(seq, -1, "no entries")
	}
	return lb, nil
}

// validate follows the chain the way replay will, reading every backup
// from where it will be when replay reaches it, and checks everything.
// It never writes.
func (c *chain) validate() error {
	if !ValidBlockSize(c.bs) {
		return c.corrupt(int64(c.top.Sequence), -1, "block size %d is not a power of two from %d to %d", c.bs, MinBlockSize, MaxBlockSize)
	}
	if uint64(c.top.Sequence) >= c.blocks {
		return c.corrupt(int64(c.top.Sequence), -1, "sequence %d needs more log blocks than the device has", c.top.Sequence)
	}
	rel := newReloc(c.blocks)
	buf := make([]byte, copyChunk)
	blk := make([]byte, c.bs)
	for seq := int64(c.top.Sequence); seq >= 0; seq-- {
		at := rel.phys(0)
		if err := c.readBlocks(blk, at); err != nil {
			return err
		}
		lb, err := c.checkLog(blk, seq, seq == int64(c.top.Sequence))
		if err != nil {
			return err
		}
		li := LogInfo{Sequence: lb.Sequence, Partial: lb.Magic == PartialMagic, Entries: len(lb.Entries), Block: at}
		for i := len(lb.Entries) - 1; i >= 0; i-- {
			if err := c.ctx.Err(); err != nil {
				return fmt.Errorf("validate log on %s: %w", c.name, err)
			}
			e := lb.Entries[i]
			src, dst, n, err := c.checkEntry(seq, i, e)
			if err != nil {
				return err
			}
			if e.Checksum != 0 {
				sum := uint32(src)
				for done := uint64(0); done < n; {
					k := min(n-done, uint64(len(buf))/uint64(c.bs))
					b := buf[:k*uint64(c.bs)]
					if err := rel.read(c, b, dst+done); err != nil {
						return err
					}
					sum = crcUpdate(sum, b)
					done += k
				}
				if sum != e.Checksum {
					return c.corrupt(seq, i, "checksum %#08x, backup holds %#08x", e.Checksum, sum)
				}
			}
			rel.move(src, dst, n)
			li.Bytes += int64(e.Size)
		}
		c.logs = append(c.logs, li)
		c.entries += li.Entries
		c.bytes += li.Bytes
	}
	return nil
}

func (c *chain) readBlocks(b []byte, block uint64) error {
	if _, err := c.dev.ReadAt(b, int64(block)*c.bs); err != nil {
		return fmt.Errorf("read %s at block %d: %w", c.name, block, err)
	}
	return nil
}

func (c *chain) writeBlocks(b []byte, block uint64) error {
	if _, err := c.dev.WriteAt(b, int64(block)*c.bs); err != nil {
		return fmt.Errorf("restore %s at block %d: %w", c.name, block, err)
	}
	return nil
}

func (c *chain) flush() error {
	if err := c.dev.Flush(); err != nil {
		return fmt.Errorf("restore %s: %w", c.name, err)
	}
	return nil
}

// replay copies the backups home, newest first. Before it overwrites a
// block that an entry replayed since the last mark read from, it records
// in block 0 that the entries after the current one are done, so that a
// repeated restore never replays an entry whose backup is gone.
func (c *chain) replay(progress func(done, total int64)) error {
	blk := make([]byte, c.bs)
	buf := make([]byte, copyChunk)
	var done int64
	// A log that still says BOW must never sit over replayed blocks: a
	// server would resume that checkpoint, and a roll forward would keep
	// it, each over a mix of both images. So the restore marks itself
	// begun (WOB, every entry of the newest log block still to do) before
	// its first copy; from then on only a restore is accepted.
	if c.top.Magic == Magic {
		seq := int64(c.top.Sequence)
		if err := c.readBlocks(blk, 0); err != nil {
			return err
		}
		lb, err := c.checkLog(blk, seq, true)
		if err != nil {
			return fmt.Errorf("restore %s after validation: %w", c.name, err)
		}
		if err := c.mark(blk, len(lb.Entries)); err != nil {
			return err
		}
		crashPoint("restore: block 0 marked WOB before the first copy", int(seq), len(lb.Entries))
	}
	for seq := int64(c.top.Sequence); seq >= 0; seq-- {
		if err := c.readBlocks(blk, 0); err != nil {
			return err
		}
		lb, err := c.checkLog(blk, seq, true)
		if err != nil {
			return fmt.Errorf("restore %s after validation: %w", c.name, err)
		}
		var used spanSet
		for i := len(lb.Entries) - 1; i >= 0; i-- {
			if err := c.ctx.Err(); err != nil {
				// Between two entries, as a kill at a step boundary:
				// a repeated restore goes on from here.
				return errors.Join(fmt.Errorf("restore %s: stopped before the end; restore again to finish: %w", c.name, err), c.flush())
			}
			e := lb.Entries[i]
			src, dst, n, err := c.checkEntry(seq, i, e)
			if err != nil {
				return fmt.Errorf("restore %s after validation: %w", c.name, err)
			}
			if used.overlaps(src, src+n) {
				if err := c.mark(blk, i+1); err != nil {
					return err
				}
				crashPoint("restore: block 0 marked WOB, count cut to this entry", int(seq), i+1)
				used.clear()
			}
			used.add(dst, dst+n)
			if i == 0 {
				// Everything replayed so far must be durable before
				// block 0 moves on to the older log (or to its own
				// contents, which ends the restore).
				if err := c.flush(); err != nil {
					return err
				}
			}
			if err := c.copyBack(e, src, dst, n, buf, i == 0 && seq > 0); err != nil {
				return err
			}
			if i == 0 {
				if err := c.flush(); err != nil {
					return err
				}
			}
			switch {
			case i > 0:
				crashPoint("restore: entry copied back", int(seq), i)
			case seq > 0:
				crashPoint("restore: older log block back in block 0, marked WOB", int(seq)-1, -1)
			default:
				crashPoint("restore: block 0 home, restore done", -1, -1)
			}
			done += int64(e.Size)
			if progress != nil {
				progress(done, c.bytes)
			}
		}
	}
	return nil
}

// mark rewrites block 0 as a partially restored log with count entries
// left, between flushes.
func (c *chain) mark(blk []byte, count int) error {
	if err := c.flush(); err != nil {
		return err
	}
	m := append([]byte(nil), blk...)
	putHeaderMagic(m, PartialMagic)
	putHeaderCount(m, uint32(count))
	if err := c.writeBlocks(m, 0); err != nil {
		return err
	}
	return c.flush()
}

// copyBack copies one backup home after checking its checksum again. An
// older log block being put back into block 0 is marked partial on the
// way, so that a restart knows the restore has begun.
func (c *chain) copyBack(e Entry, src, dst, n uint64, buf []byte, olderLog bool) error {
	per := uint64(len(buf)) / uint64(c.bs)
	if e.Checksum != 0 {
		sum := uint32(src)
		for done := uint64(0); done < n; {
			k := min(n-done, per)
			b := buf[:k*uint64(c.bs)]
			if err := c.readBlocks(b, dst+done); err != nil {
				return err
			}
			sum = crcUpdate(sum, b)
			done += k
		}
		if sum != e.Checksum {
			return fmt.Errorf("restore %s after validation: %w", c.name,
				c.corrupt(-1, 0, "backup of block %d changed under the restore (checksum %#08x, now %#08x)", src, e.Checksum, sum))
		}
		if n <= per {
			// buf still holds the data.
			return c.writeBack(buf[:n*uint64(c.bs)], src, olderLog)
		}
	}
	for done := uint64(0); done < n; {
		k := min(n-done, per)
		b := buf[:k*uint64(c.bs)]
		if err := c.readBlocks(b, dst+done); err != nil {
			return err
		}
		if err := c.writeBack(b, src+done, olderLog); err != nil {
			return err
		}
		done += k
	}
	return nil
}

func (c *chain) writeBack(b []byte, block uint64, olderLog bool) error {
	if olderLog {
		if h, err := ParseHeader(b); err == nil && h.Magic == Magic {
			putHeaderMagic(b, PartialMagic)
		}
	}
	return c.writeBlocks(b, block)
}

// reloc maps each block to the block its contents will come from once the
// entries seen so far have been replayed: block b reads from
// val + (b - key) of the greatest key <= b.
type reloc struct {
	m      ordMap[uint64]
	blocks uint64
}

func newReloc(blocks uint64) *reloc {
	r := &reloc{blocks: blocks}
	r.m.set(0, 0)
	return r
}

func (r *reloc) phys(b uint64) uint64 {
	n := r.m.floor(b)
	return n.val + (b - n.key)
}

// read reads blocks starting at b as they will be after the replay so far.
func (r *reloc) read(c *chain, p []byte, b uint64) error {
	for len(p) > 0 {
		n := r.m.floor(b)
		run := uint64(len(p)) / uint64(c.bs)
		if nx := r.m.higher(b); nx != nil {
			run = min(run, nx.key-b)
		}
		k := run * uint64(c.bs)
		if err := c.readBlocks(p[:k], n.val+(b-n.key)); err != nil {
			return err
		}
		p, b = p[k:], b+run
	}
	return nil
}

// move records that blocks [to, to+n) will hold what [from, from+n) holds.
func (r *reloc) move(to, from, n uint64) {
	type piece struct{ key, val uint64 }
	var ps []piece
	for i := uint64(0); i < n; {
		f := from + i
		nd := r.m.floor(f)
		ps = append(ps, piece{to + i, nd.val + (f - nd.key)})
		run := n - i
		if nx := r.m.higher(f); nx != nil {
			run = min(run, nx.key-f)
		}
		i += run
	}
	end := to + n
	var tail *piece
	if end < r.blocks {
		tail = &piece{end, r.phys(end)}
	}
	for nd := r.m.ceil(to); nd != nil && nd.key <= end; nd = r.m.ceil(to) {
		r.m.del(nd.key)
	}
	for _, p := range ps {
		r.m.set(p.key, p.val)
	}
	if tail != nil {
		r.m.set(tail.key, tail.val)
	}
}

// spanSet is a set of disjoint block ranges.
type spanSet struct{ m ordMap[uint64] } // start -> end

func (s *spanSet) overlaps(lo, hi uint64) bool {
	if hi == 0 {
		return false
	}
	n := s.m.floor(hi - 1)
	return n != nil && n.val > lo
}

func (s *spanSet) add(lo, hi uint64) {
	if n := s.m.floor(lo); n != nil && n.val >= lo {
		lo = n.key
		hi = max(hi, n.val)
	}
	for n := s.m.ceil(lo); n != nil && n.key <= hi; n = s.m.ceil(lo) {
		hi = max(hi, n.val)
		s.m.del(n.key)
	}
	s.m.set(lo, hi)
}

func (s *spanSet) clear() { s.m.clear() }
