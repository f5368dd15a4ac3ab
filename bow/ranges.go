package bow

import "fmt"

// kind is what a run of blocks holds, from the engine's point of view.
type kind uint8

const (
	// kindUnchanged blocks hold data from before the checkpoint that has not
	// been backed up; overwriting them needs a backup first.
	kindUnchanged kind = iota
	// kindFree blocks were discarded before the checkpoint (or re-freed
	// after it): their contents do not matter and they hold backups.
	kindFree
	// kindChanged blocks may be overwritten freely: their checkpoint-time
	// contents are either irrelevant (they were free) or already backed up.
	kindChanged
	// kindBackup blocks hold a backup the log refers to. They were free at
	// the checkpoint, so the filesystem may write them; that backs them up
	// again first.
	kindBackup
	// kindLog is block 0 while a checkpoint is active: it holds the log.
	kindLog
	// kindLiveZero is the block holding the live contents of block 0 while
	// the log occupies block 0 (dm-bow's SECTOR0_CURRENT).
	kindLiveZero
	numKinds
)

var kindNames = [...]string{"unchanged", "free", "changed", "backup", "log", "live-zero"}

func (k kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// rangeMap records the kind of every block of the device as runs: each key
// is the first block of a run that lasts until the next key (or end).
// Adjacent runs always differ in kind. The free runs are also indexed on
// their own so that finding free space never scans the map.
type rangeMap struct {
	runs  ordMap[kind]
	free  ordMap[struct{}] // first blocks of the free runs
	end   uint64
	nfree uint64 // free blocks in total
}

func newRangeMap(blocks uint64) *rangeMap {
	r := &rangeMap{end: blocks}
	r.runs.set(0, kindUnchanged)
	return r
}

// put and remove keep the free index in step with the run map.
func (r *rangeMap) put(start uint64, k kind) {
	if n := r.runs.find(start); n != nil && n.val == kindFree && k != kindFree {
		r.free.del(start)
	}
	if k == kindFree {
		r.free.set(start, struct{}{})
	}
	r.runs.set(start, k)
}

func (r *rangeMap) remove(start uint64) {
	if n := r.runs.find(start); n != nil && n.val == kindFree {
		r.free.del(start)
	}
	r.runs.del(start)
}

// runEnd returns the end of the run starting at start.
func (r *rangeMap) runEnd(start uint64) uint64 {
	if n := r.runs.higher(start); n != nil {
		return n.key
	}
	return r.end
}

// at returns the run containing block b.
func (r *rangeMap) at(b uint64) (start, end uint64, k kind) {
	n := r.runs.floor(b)
	return n.key, r.runEnd(n.key), n.val
}

// each calls fn for every run overlapping [lo, hi), clipped to it.
func (r *rangeMap) each(lo, hi uint64, fn func(s, e uint64, k kind)) {
	for s := lo; s < hi; {
		_, e, k := r.at(s)
		e = min(e, hi)
		fn(s, e, k)
		s = e
	}
}

// set gives every block of [lo, hi) kind k, merging with equal neighbours.
func (r *rangeMap) set(lo, hi uint64, k kind) {
	if lo >= hi {
		return
	}
	if hi < r.end {
		if n := r.runs.floor(hi); n.key != hi {
			r.put(hi, n.val)
		}
	}
	if n := r.runs.floor(lo); n.key != lo {
		r.put(lo, n.val)
	}
	for s := lo; s < hi; {
		n := r.runs.find(s)
		e := r.runEnd(s)
		if n.val == kindFree {
			r.nfree -= e - s
		}
		if s != lo {
			r.remove(s)
		}
		s = e
	}
	r.put(lo, k)
	if k == kindFree {
		r.nfree += hi - lo
	}
	if hi < r.end {
		if n := r.runs.find(hi); n.val == k {
			r.remove(hi)
		}
	}
	if lo > 0 {
		if n := r.runs.floor(lo - 1); n.val == k {
			r.remove(lo)
		}
	}
}

// takeFree returns up to want blocks from the top of the highest free run,
// without changing their kind. Backups go to the top of the device because
// filesystems tend to allocate from the bottom.
func (r *rangeMap) takeFree(want uint64) (s, e uint64, ok bool) {
	n := r.free.max()
	if n == nil || want == 0 {
		return 0, 0, false
	}
	s, e = n.key, r.runEnd(n.key)
	if e-s > want {
		s = e - want
	}
	return s, e, true
}

// count returns the number of blocks of kind k (a scan; for tests and
// status, never on the I/O path).
func (r *rangeMap) count(k kind) uint64 {
	var c uint64
	r.runs.ascend(0, func(s uint64, v kind) bool {
		if v == k {
			c += r.runEnd(s) - s
		}
		return true
	})
	return c
}

// check verifies the invariants; tests call it after every operation.
func (r *rangeMap) check() error {
	var prev kind = numKinds
	var nfree uint64
	var nruns, nfreeRuns int
	var err error
	if r.runs.find(0) == nil {
		return fmt.Errorf("no run at block 0")
	}
	r.runs.ascend(0, func(s uint64, k kind) bool {
		nruns++
		if s >= r.end {
			err = fmt.Errorf("run at %d beyond end %d", s, r.end)
			return false
		}
		if k >= numKinds {
			err = fmt.Errorf("run at %d has %v", s, k)
			return false
		}
		if k == prev {
			err = fmt.Errorf("run at %d has the kind of its predecessor (%v)", s, k)
			return false
		}
		prev = k
		isFree := k == kindFree
		if (r.free.find(s) != nil) != isFree {
			err = fmt.Errorf("run at %d (%v) free index mismatch", s, k)
			return false
		}
		if isFree {
			nfreeRuns++
			nfree += r.runEnd(s) - s
		}
		return true
	})
	if err != nil {
		return err
	}
	if nfree != r.nfree {
		return fmt.Errorf("free count %d, runs hold %d", r.nfree, nfree)
	}
	if r.free.len() != nfreeRuns {
		return fmt.Errorf("free index has %d runs, map has %d", r.free.len(), nfreeRuns)
	}
	return nil
}
