package bow

import "sync"

// Range locks. Every write and discard holds an exclusive lock on the
// blocks it touches until its data is on the device; in checkpoint state
// reads hold a shared one (a write whose data waits for its backups to be
// logged must still be what a read returns). Requests take a ticket on
// arrival and are granted in ticket order among those that conflict, so
// overlapping writes apply in arrival order while disjoint ones run in
// parallel. A request is granted all its blocks at once, and a granted
// request never waits for another lock, so there is no deadlock.
//
// The spans of every request in flight are kept in an interval index
// (lockIndex), so finding the requests that overlap one costs O(log n)
// plus the overlaps, never a scan of the table. A waiting request hangs on
// one request that blocks it, the one with the latest ticket, and sleeps
// on its own condition variable. Only what can unblock it re-examines it:
// the release of that blocker, or a span leaving the blocker or the waiter
// (block 0, when the live block 0 moves). The re-examination runs in the
// goroutine that caused it, under mu: a waiter still blocked is hung on its
// next blocker without being woken, and only a waiter that nothing blocks
// any more is signalled. It then checks again and takes the lock itself,
// so granting stays atomic with what its caller does next under mu (plan).

type span struct{ lo, hi uint64 }

type lockReq struct {
	main    span
	zero    bool   // also holds block 0 (it moves the live block 0)
	extra   []span // backup destinations, granted with the request
	ticket  uint64
	granted bool
	shared  bool // a read: conflicts only with writes
	track   bool // while waiting, zero follows where the live block 0 is

	slot   int // index in Engine.locks; -1 once released
	mainN  inode
	zeroN  *inode // allocated when first needed
	extraN []*inode

	cond    sync.Cond // signalled when nothing blocks the request any more
	blocker *lockReq  // the request it waits for, when not ready
	gen     uint64    // counts hangs, to tell stale entries of hung apart
	hung    []hangRef // requests that may be waiting for this one
	ready   bool      // signalled, has not checked again yet
	wakes   int       // signals sent (for tests)
}

// hangRef names a waiter hung on a request; it is stale once the waiter
// has hung elsewhere (its gen moved on).
type hangRef struct {
	r   *lockReq
	gen uint64
}

// lockTable is the engine's index of range locks and the re-examinations
// waiting to be done. Guarded by Engine.mu.
type lockTable struct {
	idx  lockIndex
	work []hangRef
}

func (r *lockReq) each(fn func(span) bool) bool {
	if !fn(r.main) {
		return false
	}
	if r.zero && !fn(span{0, 1}) {
		return false
	}
	for _, s := range r.extra {
		if !fn(s) {
			return false
		}
	}
	return true
}

func (r *lockReq) overlaps(o *lockReq) bool {
	hit := false
	r.each(func(a span) bool {
		o.each(func(b span) bool {
			hit = a.lo < b.hi && b.lo < a.hi
			return !hit
		})
		return !hit
	})
	return hit
}

// blockedBy reports whether o, if it overlaps waiting r, keeps r waiting: it
// is granted or arrived earlier, and not both are reads.
func (r *lockReq) blockedBy(o *lockReq) bool {
	return o != r && (o.granted || o.ticket < r.ticket) && !(o.shared && r.shared)
}

// enqueue adds a waiting request for [lo, hi). Called with mu held.
func (e *Engine) enqueue(lo, hi uint64) *lockReq {
	e.ticket++
	r := &lockReq{main: span{lo, hi}, ticket: e.ticket, slot: len(e.locks)}
	r.cond.L = &e.mu
	e.locks = append(e.locks, r)
	e.lt.idx.insert(&r.mainN, r.main, r)
	return r
}

// blocker returns the request that keeps r waiting with the latest
// ticket, or nil when r can be granted: no granted request and no earlier
// waiting request overlaps r (reads do not keep reads waiting).
func (e *Engine) blocker(r *lockReq) *lockReq {
	var best *lockReq
	r.each(func(s span) bool {
		e.lt.idx.overlapping(s, func(n *inode) bool {
			if o := n.req; r.blockedBy(o) && (best == nil || o.ticket > best.ticket) {
				best = o
			}
			return true
		})
		return true
	})
	return best
}

// grantable reports whether no granted request and no earlier waiting
// request overlaps r.
func (e *Engine) grantable(r *lockReq) bool { return e.blocker(r) == nil }

// wantZero reports whether r's range holds the live block 0 (block 0
// itself is the log's, not the live one).
func (e *Engine) wantZero(r *lockReq) bool {
	z := e.zero.Load()
	return r.main.lo > 0 && z >= r.main.lo && z < r.main.hi
}

// setZero makes r hold block 0 or not. Dropping it may unblock the
// requests hung on r, which are queued for a second look.
func (e *Engine) setZero(r *lockReq, z bool) {
	if r.zero == z {
		return
	}
	r.zero = z
	if z {
		if r.zeroN == nil {
			r.zeroN = new(inode)
		}
		e.lt.idx.insert(r.zeroN, span{0, 1}, r)
		return
	}
	e.lt.idx.remove(r.zeroN)
	e.lt.work = append(e.lt.work, r.hung...)
	r.hung = nil
}

// hang makes w wait for o.
func (e *Engine) hang(w, o *lockReq) {
	w.blocker = o
	w.gen++
	o.hung = append(o.hung, hangRef{w, w.gen})
}

// tryGrant is a waiting r's own check: it grants r, or hangs it on a
// blocker and reports false. Called with mu held.
func (e *Engine) tryGrant(r *lockReq) bool {
	r.ready = false
	if r.track {
		e.setZero(r, e.wantZero(r))
	}
	o := e.blocker(r)
	if o != nil {
		e.hang(r, o)
	} else {
		r.granted, r.blocker = true, nil
	}
	e.settle()
	return o == nil
}

// settle re-examines the queued waiters, signalling those that nothing
// blocks any more and hanging the others on their next blocker.
func (e *Engine) settle() {
	for i := 0; i < len(e.lt.work); i++ {
		h := e.lt.work[i]
		w := h.r
		if w.gen != h.gen || w.granted || w.slot < 0 {
			continue
		}
		if w.track {
			e.setZero(w, e.wantZero(w))
		}
		if w.ready {
			continue
		}
		if o := e.blocker(w); o != nil {
			e.hang(w, o)
			continue
		}
		w.blocker, w.ready = nil, true
		w.wakes++
		w.cond.Signal()
	}
	clear(e.lt.work)
	e.lt.work = e.lt.work[:0]
}

// waitGrant waits, with mu held (released while waiting), until r can be
// granted. With trackZero, a request whose range holds the live block 0
// also takes block 0, so that no block-0 I/O runs while it moves.
func (e *Engine) waitGrant(r *lockReq, trackZero bool) {
	r.track = trackZero
	for !e.tryGrant(r) {
		r.cond.Wait()
	}
}

// lockRange enqueues and waits for [lo, hi). Called with mu held.
func (e *Engine) lockRange(lo, hi uint64) *lockReq {
	r := e.enqueue(lo, hi)
	e.waitGrant(r, false)
	return r
}

// lockShared enqueues and waits for a shared lock on [lo, hi).
func (e *Engine) lockShared(lo, hi uint64) *lockReq {
	r := e.enqueue(lo, hi)
	r.shared = true
	e.waitGrant(r, false)
	return r
}

// holdLocked records a granted lock the engine itself holds (a log block
// being backed up). Called with mu held.
func (e *Engine) holdLocked(lo, hi uint64) *lockReq {
	r := e.enqueue(lo, hi)
	r.granted = true
	return r
}

// extend adds s to the spans granted r holds (a backup destination).
// Called with mu held.
func (e *Engine) extend(r *lockReq, s span) {
	n := new(inode)
	r.extra = append(r.extra, s)
	r.extraN = append(r.extraN, n)
	e.lt.idx.insert(n, s, r)
}

// zeroMoved re-examines, after the live block 0 moved from block old to
// block now, the waiters whose range holds either: they take or drop
// block 0. Called with mu held.
func (e *Engine) zeroMoved(old, now uint64) {
	for _, b := range [2]uint64{old, now} {
		e.lt.idx.overlapping(span{b, b + 1}, func(n *inode) bool {
			if w := n.req; n == &w.mainN && w.track && !w.granted {
				e.lt.work = append(e.lt.work, hangRef{w, w.gen})
			}
			return true
		})
	}
	e.settle()
}

// releaseLocked drops r and re-examines the requests waiting for it.
// Called with mu held.
func (e *Engine) releaseLocked(r *lockReq) {
	if r.slot < 0 {
		return
	}
	e.lt.idx.remove(&r.mainN)
	if r.zero {
		e.lt.idx.remove(r.zeroN)
	}
	for _, n := range r.extraN {
		e.lt.idx.remove(n)
	}
	last := len(e.locks) - 1
	e.locks[r.slot] = e.locks[last]
	e.locks[r.slot].slot = r.slot
	e.locks[last] = nil
	e.locks = e.locks[:last]
	r.slot = -1
	e.lt.work = append(e.lt.work, r.hung...)
	r.hung = nil
	e.settle()
}

func (e *Engine) unlock(r *lockReq) {
	e.mu.Lock()
	e.releaseLocked(r)
	e.mu.Unlock()
}
