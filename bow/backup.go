package bow

import (
	"fmt"
	"sync"
)

const (
	// dataWriters bounds the goroutines writing one batch's data.
	dataWriters = 8
	// maxQueued bounds the writes waiting for a group commit, and with
	// them the range locks they hold.
	maxQueued = 512
)

// copyTask is one backup: n blocks from src to dst. sum says whether the
// log entry carries a checksum (not for moves of the live block 0, whose
// contents keep changing).
type copyTask struct {
	src, dst, n uint64
	sum         bool
}

// plan is what a checkpoint write must do before its data may land.
type plan struct {
	copies  []copyTask
	setZero bool   // the live block 0 moves to zero
	zero    uint64 // its new block
}

// plan decides, for a granted write to blocks [lo, hi), which blocks to
// back up where, and updates the range map as if it were done: free blocks
// become changed, blocks that need a backup become changed and their
// destinations backups. Either the whole plan fits in free space (keeping
// enough in reserve for the log blocks its entries will fill) or nothing
// changes and the result is NoSpaceError. Destinations are added to r, so no
// other request touches them until the backup is logged. Called with mu
// held.
func (e *Engine) plan(r *lockReq, lo, hi uint64) (plan, error) {
	var pl plan
	if e.broken != nil {
		return pl, BrokenError{Device: e.name, Cause: e.broken}
	}
	type seg struct {
		s, e uint64
		k    kind
	}
	var segs []seg
	var need uint64
	e.rm.each(max(lo, 1), hi, func(s, en uint64, k kind) {
		segs = append(segs, seg{s, en, k})
		if k != kindChanged {
			need += en - s
		}
	})
	avail := e.availLocked()
	nospace := func() error {
		return NoSpaceError{Device: e.name, Needed: int64(need) * e.bs, Free: int64(avail) * e.bs}
	}
	if need == 0 {
		return pl, nil
	}
	if need > avail {
		return pl, nospace()
	}
	type undo struct {
		s, e uint64
		k    kind
	}
	var undos []undo
	set := func(s, en uint64, k kind) {
		e.rm.each(s, en, func(a, b uint64, old kind) { undos = append(undos, undo{a, b, old}) })
		e.rm.set(s, en, k)
	}
	oldZero := e.zero.Load()
	rollback := func() error {
		for i := len(undos) - 1; i >= 0; i-- {
			e.rm.set(undos[i].s, undos[i].e, undos[i].k)
		}
		e.zero.Store(oldZero)
		return nospace()
	}
	// Free blocks first, so that no backup lands inside this write.
	for _, g := range segs {
		if g.k == kindFree {
			set(g.s, g.e, kindChanged)
		}
	}
	for _, g := range segs {
		switch g.k {
		case kindLiveZero:
			d, _, ok := e.rm.takeFree(1)
			if !ok {
				return pl, rollback()
			}
			set(d, d+1, kindLiveZero)
			set(g.s, g.e, kindChanged)
			pl.copies = append(pl.copies, copyTask{src: g.s, dst: d, n: 1})
			pl.setZero, pl.zero = true, d
			e.zero.Store(d)
		case kindUnchanged, kindBackup:
			for s := g.s; s < g.e; {
				d, de, ok := e.rm.takeFree(min(g.e-s, e.piece))
				if !ok {
					return pl, rollback()
				}
				n := de - d
				set(d, de, kindBackup)
				set(s, s+n, kindChanged)
				pl.copies = append(pl.copies, copyTask{src: s, dst: d, n: n, sum: true})
				s += n
			}
		case kindLog:
			rollback()
			return plan{}, fmt.Errorf("plan write to %s: block %d holds the log", e.name, g.s)
		}
	}
	if e.rm.nfree < e.logCopies(len(pl.copies)) {
		return plan{}, rollback()
	}
	e.pending += len(pl.copies)
	for _, c := range pl.copies {
		e.extend(r, span{c.dst, c.dst + c.n})
		e.st.backups++
		e.st.backedUp += int64(c.n) * e.bs
	}
	if pl.setZero {
		e.zeroMoved(oldZero, pl.zero)
	}
	return pl, nil
}

// copyOut performs the backups of a plan and returns their log entries.
func (e *Engine) copyOut(pl plan) ([]Entry, error) {
	ents := make([]Entry, 0, len(pl.copies))
	chunk := uint64(copyChunk / e.bs)
	buf := make([]byte, min(chunk, maxCopyBlocks(pl))*uint64(e.bs))
	for _, c := range pl.copies {
		sum := uint32(c.src)
		for done := uint64(0); done < c.n; {
			k := min(c.n-done, chunk)
			b := buf[:k*uint64(e.bs)]
			if _, err := e.dev.ReadAt(b, int64(c.src+done)*e.bs); err != nil {
				return nil, err
			}
			if c.sum {
				sum = crcUpdate(sum, b)
			}
			if _, err := e.dev.WriteAt(b, int64(c.dst+done)*e.bs); err != nil {
				return nil, err
			}
			done += k
		}
		if !c.sum {
			sum = 0
		}
		ents = append(ents, Entry{Source: c.src * e.spb, Dest: c.dst * e.spb, Size: uint32(c.n * uint64(e.bs)), Checksum: sum})
	}
	return ents, nil
}

func maxCopyBlocks(pl plan) uint64 {
	var m uint64
	for _, c := range pl.copies {
		m = max(m, c.n)
	}
	return m
}

// commitItem is one write's share of a group commit: the log entries of
// its backups, and the data to write once they are durable.
type commitItem struct {
	entries []Entry
	setZero bool
	zero    uint64
	req     *lockReq // released once the data is written
	data    []byte
	off     int64
	lo, hi  uint64
	err     error
	done    chan struct{} // closed when complete, for write-through
}

// submit queues it for the next group commit, starting the committer if
// none is running. It waits while too much acknowledged data is queued.
func (e *Engine) submit(it *commitItem) {
	n := int64(len(it.data))
	e.cmu.Lock()
	for e.opts.WriteBack > 0 && e.buffered > 0 && (e.buffered+n > e.opts.WriteBack || e.submitted-e.completed >= maxQueued) {
		e.ccond.Wait()
	}
	e.buffered += n
	e.submitted++
	e.queue = append(e.queue, it)
	if !e.leading {
		e.leading = true
		go e.runCommits()
	}
	e.cmu.Unlock()
}

// runCommits is the group commit. It takes everything queued, flushes once
// so that all their backups are durable, appends all the entries, writes
// the log block and flushes again; then it writes the items' data and
// releases their locks. Writes arriving meanwhile queue up for the next
// round, so concurrent writers share flushes.
func (e *Engine) runCommits() {
	e.cmu.Lock()
	for len(e.queue) > 0 {
		batch := e.queue
		e.queue = nil
		e.cmu.Unlock()
		err := e.writeBatch(batch)
		if err != nil {
			e.setBroken(err)
		}
		// The items' ranges are disjoint (each holds its lock), so their
		// data is written in parallel.
		var n int64
		var wg sync.WaitGroup
		sem := make(chan struct{}, dataWriters)
		for _, it := range batch {
			n += int64(len(it.data))
			wg.Add(1)
			sem <- struct{}{}
			go func(it *commitItem) {
				defer wg.Done()
				it.err = err
				if it.err == nil {
					if it.err = e.writeData(it.data, it.off, it.lo, it.hi); it.err != nil {
						e.setBroken(it.err)
					}
				}
				e.unlock(it.req)
				if it.done != nil {
					close(it.done)
				}
				<-sem
			}(it)
		}
		wg.Wait()
		e.cmu.Lock()
		e.buffered -= n
		e.completed += uint64(len(batch))
		e.ccond.Broadcast()
	}
	e.leading = false
	e.cmu.Unlock()
}

type logCopy struct {
	block uint64
	data  []byte
	lock  *lockReq
}

// writeBatch appends a batch of entries to the log durably. When the log
// block fills, its contents are copied to a free block (kept in reserve by
// plan), the sequence number goes up and the new log block starts with an
// entry that restores the old one into block 0. The copies are flushed
// before block 0 is overwritten.
func (e *Engine) writeBatch(batch []*commitItem) error {
	if err := e.fl.flush(e.dev); err != nil {
		return err
	}
	var copies []logCopy
	e.mu.Lock()
	for _, it := range batch {
		for _, ent := range it.entries {
			if e.logCount >= e.logCap {
				s, _, ok := e.rm.takeFree(1)
				if !ok {
					e.mu.Unlock()
					return fmt.Errorf("extend log on %s: no free block left for a full log block", e.name)
				}
				e.rm.set(s, s+1, kindBackup)
				old := append([]byte(nil), e.logBuf...)
				copies = append(copies, logCopy{block: s, data: old, lock: e.holdLocked(s, s+1)})
				e.logSeq++
				e.logCount = 0
				e.putLogHeader()
				e.appendEntry(Entry{Source: 0, Dest: s * e.spb, Size: uint32(e.bs), Checksum: Checksum(0, old)})
				e.st.backups++
				e.st.backedUp += e.bs
			}
			e.appendEntry(ent)
			e.pending--
		}
		if it.setZero {
			e.logZero = it.zero
			e.putLogHeader()
		}
	}
	buf := append([]byte(nil), e.logBuf...)
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		for _, c := range copies {
			e.releaseLocked(c.lock)
		}
		e.mu.Unlock()
	}()
	for _, c := range copies {
		if _, err := e.dev.WriteAt(c.data, int64(c.block)*e.bs); err != nil {
			return err
		}
	}
	if len(copies) > 0 {
		if err := e.fl.flush(e.dev); err != nil {
			return err
		}
	}
	if _, err := e.dev.WriteAt(buf, 0); err != nil {
		return err
	}
	return e.fl.flush(e.dev)
}

// putLogHeader rewrites the header of logBuf for the current count,
// sequence and live block 0. Called with mu held.
func (e *Engine) putLogHeader() {
	putHeader(e.logBuf, Header{
		Magic:      Magic,
		Version:    Version,
		HeaderSize: HeaderSize,
		BlockSize:  uint32(e.bs),
		Count:      uint32(e.logCount),
		Sequence:   e.logSeq,
		Sector0:    e.logZero * e.spb,
	})
}

// appendEntry adds ent to logBuf. Called with mu held and room left.
func (e *Engine) appendEntry(ent Entry) {
	putEntry(e.logBuf[HeaderSize+e.logCount*EntrySize:], ent)
	e.logCount++
	e.st.entries++
	putHeaderCount(e.logBuf, uint32(e.logCount))
}
