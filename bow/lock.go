package bow

// Range locks. Every write and discard holds an exclusive lock on the
// blocks it touches until its data is on the device; in checkpoint state
// reads hold a shared one (a write whose data waits for its backups to be
// logged must still be what a read returns). Requests take a ticket on
// arrival and are granted in ticket order among those that conflict, so
// overlapping writes apply in arrival order while disjoint ones run in
// parallel. A request is granted all its blocks at once, and a granted
// request never waits for another lock, so there is no deadlock. The table
// holds only requests in flight, so scanning it costs O(requests in
// flight), never O(device).

type span struct{ lo, hi uint64 }

type lockReq struct {
	main    span
	zero    bool   // also holds block 0 (it moves the live block 0)
	extra   []span // backup destinations, granted with the request
	ticket  uint64
	granted bool
	shared  bool // a read: conflicts only with writes
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

// enqueue adds a waiting request for [lo, hi). Called with mu held.
func (e *Engine) enqueue(lo, hi uint64) *lockReq {
	e.ticket++
	r := &lockReq{main: span{lo, hi}, ticket: e.ticket}
	e.locks = append(e.locks, r)
	return r
}

// grantable reports whether no granted request and no earlier waiting
// request overlaps r.
func (e *Engine) grantable(r *lockReq) bool {
	for _, o := range e.locks {
		if o == r || !o.granted && o.ticket > r.ticket || o.shared && r.shared {
			continue
		}
		if r.overlaps(o) {
			return false
		}
	}
	return true
}

// waitGrant waits, with mu held (released while waiting), until r can be
// granted. With trackZero, a request whose range holds the live block 0
// also takes block 0, so that no block-0 I/O runs while it moves.
func (e *Engine) waitGrant(r *lockReq, trackZero bool) {
	for {
		if trackZero {
			z := e.zero.Load()
			r.zero = r.main.lo > 0 && z >= r.main.lo && z < r.main.hi
		}
		if e.grantable(r) {
			r.granted = true
			return
		}
		e.cond.Wait()
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

// releaseLocked drops r and wakes the waiters. Called with mu held.
func (e *Engine) releaseLocked(r *lockReq) {
	for i, o := range e.locks {
		if o == r {
			last := len(e.locks) - 1
			e.locks[i] = e.locks[last]
			e.locks[last] = nil
			e.locks = e.locks[:last]
			break
		}
	}
	e.cond.Broadcast()
}

func (e *Engine) unlock(r *lockReq) {
	e.mu.Lock()
	e.releaseLocked(r)
	e.mu.Unlock()
}
