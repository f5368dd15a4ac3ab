package bow

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// bruteGrantable is the definition the index must agree with, by a scan of
// every request in flight: no granted request and no earlier waiting
// request overlaps r, reads not counting against reads.
func bruteGrantable(locks []*lockReq, r *lockReq) bool {
	for _, o := range locks {
		if o == r || !o.granted && o.ticket > r.ticket || o.shared && r.shared {
			continue
		}
		if r.overlaps(o) {
			return false
		}
	}
	return true
}

// checkLocks verifies the lock table against the requests in flight: the
// index holds exactly their spans and is a valid treap with correct
// subtree ends; waiters follow the live block 0; every waiter the scan
// finds grantable has been signalled; every other waiter is hung on a
// live request that blocks it.
func checkLocks(t tbLite, e *Engine) {
	t.Helper()
	in := map[*inode]bool{}
	var walk func(n *inode, lo, hi *inode, pri uint64) uint64
	walk = func(n *inode, lo, hi *inode, pri uint64) uint64 {
		if n == nil {
			return 0
		}
		if lo != nil && !lo.before(n) || hi != nil && !n.before(hi) {
			t.Fatalf("index node [%d,%d) #%d out of order", n.lo, n.hi, n.id)
		}
		if n.pri > pri {
			t.Fatalf("index node [%d,%d) #%d: priority above its parent's", n.lo, n.hi, n.id)
		}
		if in[n] {
			t.Fatalf("index node [%d,%d) #%d reached twice", n.lo, n.hi, n.id)
		}
		in[n] = true
		m := max(n.hi, walk(n.left, lo, n, n.pri), walk(n.right, n, hi, n.pri))
		if n.maxHi != m {
			t.Fatalf("index node [%d,%d) #%d: got maxHi %d, want %d", n.lo, n.hi, n.id, n.maxHi, m)
		}
		return m
	}
	walk(e.lt.idx.root, nil, nil, ^uint64(0))
	if len(in) != e.lt.idx.n {
		t.Fatalf("index: got %d nodes, count says %d", len(in), e.lt.idx.n)
	}
	want := 0
	has := func(r *lockReq, n *inode, s span, what string) {
		want++
		if !in[n] || n.req != r || n.span != s {
			t.Fatalf("request %d: %s span [%d,%d) not indexed (in %v, node span [%d,%d))", r.ticket, what, s.lo, s.hi, in[n], n.lo, n.hi)
		}
	}
	for i, r := range e.locks {
		if r.slot != i {
			t.Fatalf("request %d: got slot %d, want %d", r.ticket, r.slot, i)
		}
		has(r, &r.mainN, r.main, "main")
		if r.zero {
			has(r, r.zeroN, span{0, 1}, "block 0")
		}
		if len(r.extraN) != len(r.extra) {
			t.Fatalf("request %d: %d extra spans, %d nodes", r.ticket, len(r.extra), len(r.extraN))
		}
		for j, s := range r.extra {
			has(r, r.extraN[j], s, "extra")
		}
	}
	if want != len(in) {
		t.Fatalf("index: got %d nodes, requests have %d spans", len(in), want)
	}
	for _, r := range e.locks {
		if r.granted {
			continue
		}
		if r.track && r.zero != e.wantZero(r) {
			t.Fatalf("waiter %d on [%d,%d): holds block 0 %v, live block 0 is %d", r.ticket, r.main.lo, r.main.hi, r.zero, e.zero.Load())
		}
		brute := bruteGrantable(e.locks, r)
		if got := e.grantable(r); got != brute {
			t.Fatalf("waiter %d on [%d,%d): grantable %v, scan says %v", r.ticket, r.main.lo, r.main.hi, got, brute)
		}
		if brute && !r.ready {
			t.Fatalf("waiter %d on [%d,%d) is grantable but was not woken", r.ticket, r.main.lo, r.main.hi)
		}
		if r.ready {
			continue
		}
		o := r.blocker
		if o == nil || o.slot < 0 || !r.blockedBy(o) || !r.overlaps(o) {
			t.Fatalf("waiter %d on [%d,%d) hangs on %v, which does not block it", r.ticket, r.main.lo, r.main.hi, o)
		}
		if !slices.Contains(o.hung, hangRef{r, r.gen}) {
			t.Fatalf("waiter %d is not in the list of its blocker %d", r.ticket, o.ticket)
		}
	}
}

// TestLockTableModel drives the lock table with random requests (shared
// and exclusive, tracking block 0 or not), engine-held locks, backup spans
// added to granted requests, moves of the live block 0, releases, and
// woken waiters taking their turn in any order, and after every step
// checks it against the scan of checkLocks.
func TestLockTableModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		e := &Engine{}
		e.zero.Store(rapid.Uint64Range(1, 40).Draw(t, "zero"))
		e.mu.Lock()
		defer e.mu.Unlock()
		drawSpan := func(t *rapid.T) span {
			lo := rapid.Uint64Range(0, 40).Draw(t, "lo")
			return span{lo, lo + rapid.Uint64Range(1, 8).Draw(t, "n")}
		}
		pick := func(t *rapid.T, keep func(*lockReq) bool) *lockReq {
			var rs []*lockReq
			for _, r := range e.locks {
				if keep(r) {
					rs = append(rs, r)
				}
			}
			if len(rs) == 0 {
				t.Skip("no such request")
			}
			return rapid.SampledFrom(rs).Draw(t, "req")
		}
		granted := func(r *lockReq) bool { return r.granted }
		actions := map[string]func(*rapid.T){
			"request": func(t *rapid.T) {
				s := drawSpan(t)
				r := e.enqueue(s.lo, s.hi)
				r.shared = rapid.Bool().Draw(t, "shared")
				r.track = !r.shared && rapid.Bool().Draw(t, "track")
				if r.track {
					e.setZero(r, e.wantZero(r)) // as tryGrant will
				}
				want := bruteGrantable(e.locks, r)
				if got := e.tryGrant(r); got != want {
					t.Fatalf("request %d on [%d,%d): granted %v, scan says %v", r.ticket, s.lo, s.hi, got, want)
				}
			},
			"hold": func(t *rapid.T) {
				s := drawSpan(t)
				e.holdLocked(s.lo, s.hi)
			},
			"extend": func(t *rapid.T) {
				e.extend(pick(t, granted), drawSpan(t))
			},
			"moveZero": func(t *rapid.T) {
				// As plan does: a granted write over the live block 0
				// moves it to a block it adds to its spans.
				r := pick(t, func(r *lockReq) bool { return r.granted && r.zero })
				old, now := e.zero.Load(), rapid.Uint64Range(1, 48).Draw(t, "to")
				e.extend(r, span{now, now + 1})
				e.zero.Store(now)
				e.zeroMoved(old, now)
			},
			"release": func(t *rapid.T) {
				e.releaseLocked(pick(t, granted))
			},
			"run": func(t *rapid.T) {
				// A woken waiter's goroutine gets the mutex.
				r := pick(t, func(r *lockReq) bool { return r.ready })
				want := bruteGrantable(e.locks, r)
				if got := e.tryGrant(r); got != want {
					t.Fatalf("woken waiter %d: granted %v, scan says %v", r.ticket, got, want)
				}
			},
			"": func(t *rapid.T) { checkLocks(t, e) },
		}
		actions["request2"] = actions["request"]
		actions["release2"] = actions["release"]
		actions["run2"] = actions["run"]
		t.Repeat(actions)
	})
}

// TestLockWakeups runs scripts against the lock table and counts the
// signals each waiter gets: one when it can go, none for releases that do
// not concern it. Steps: "lock|read NAME LO HI" (granted at once), "wait|
// waitread NAME LO HI" (must wait), "release NAME", "run NAME" (a woken
// waiter takes its lock), "want NAME WAKES", "zero BLOCK" (the live block
// 0 is there), "move NAME BLOCK" (granted NAME moves the live block 0);
// "lockz" and "waitz" follow the live block 0, as checkpoint writes do.
func TestLockWakeups(t *testing.T) {
	tests := []struct {
		name  string
		steps []string
	}{
		{"release elsewhere", []string{
			"lock a 0 10", "lock b 100 110", "wait w 5 6",
			"release b", "want w 0", "release a", "want w 1", "run w"}},
		{"still blocked by a second holder", []string{
			"lock a 0 10", "lock b 10 20", "wait w 5 15",
			"release a", "want w 0", "release b", "want w 1", "run w"}},
		{"queue on one block wakes one at a time", []string{
			"lock a 5 6", "wait w1 5 6", "wait w2 5 6", "wait w3 0 8",
			"release a", "want w1 1", "want w2 0", "want w3 0",
			"run w1", "release w1", "want w2 1", "want w3 0",
			"run w2", "release w2", "want w3 1", "run w3"}},
		{"readers behind a writer all go", []string{
			"lock a 0 10", "waitread r1 1 2", "waitread r2 1 3", "waitread r3 9 12", "wait w 1 2",
			"release a", "want r1 1", "want r2 1", "want r3 1", "want w 0",
			"run r1", "run r2", "run r3", "release r1", "release r3", "want w 0", "release r2", "want w 1", "run w"}},
		{"a later request does not overtake an earlier waiter", []string{
			"lock a 0 4", "wait w 2 8", "wait x 6 7", "release a", "want w 1", "want x 0",
			"run w", "release w", "want x 1", "run x"}},
		{"block 0 follows the live block 0", []string{
			"zero 50", "lockz p 50 51", "lock q 66 67",
			"waitz w 40 60", "waitz y 65 75", "wait x 0 1",
			"move p 70", "want w 0", "want x 0", "want y 0",
			"release q", "want y 0", "release p", "want w 1", "want y 1", "want x 0",
			"run w", "run y", "release y", "want x 1", "run x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &Engine{}
			e.mu.Lock()
			defer e.mu.Unlock()
			reqs := map[string]*lockReq{}
			for _, step := range tt.steps {
				f := strings.Fields(step)
				num := func(i int) uint64 {
					n, err := strconv.ParseUint(f[i], 10, 64)
					if err != nil {
						t.Fatalf("step %q: %v", step, err)
					}
					return n
				}
				switch f[0] {
				case "lock", "lockz", "read", "wait", "waitz", "waitread":
					r := e.enqueue(num(2), num(3))
					r.shared = strings.HasSuffix(f[0], "read")
					r.track = strings.HasSuffix(f[0], "z")
					reqs[f[1]] = r
					if got, want := e.tryGrant(r), !strings.HasPrefix(f[0], "wait"); got != want {
						t.Fatalf("step %q: got granted %v, want %v", step, got, want)
					}
				case "release":
					e.releaseLocked(reqs[f[1]])
				case "run":
					r := reqs[f[1]]
					if ready := r.ready; !ready || !e.tryGrant(r) {
						t.Fatalf("step %q: got woken %v granted %v, want both", step, ready, r.granted)
					}
				case "want":
					if got := reqs[f[1]].wakes; got != int(num(2)) {
						t.Fatalf("step %q: got %d wakeups, want %d", step, got, num(2))
					}
				case "zero":
					e.zero.Store(num(1))
				case "move":
					r, now := reqs[f[1]], num(2)
					old := e.zero.Load()
					e.extend(r, span{now, now + 1})
					e.zero.Store(now)
					e.zeroMoved(old, now)
				default:
					t.Fatalf("bad step %q", step)
				}
				checkLocks(t, e)
			}
			if len(e.locks) != 0 && !slices.ContainsFunc(e.locks, func(r *lockReq) bool { return r.granted }) {
				t.Fatalf("%d waiters left with nothing granted", len(e.locks))
			}
		})
	}
}

// TestLockWaiterSleeps shows, with real goroutines, that a blocked waiter
// sleeps through a hundred lock and unlock cycles elsewhere and is woken
// exactly once, by the release of the lock it waits for.
func TestLockWaiterSleeps(t *testing.T) {
	e := &Engine{}
	e.mu.Lock()
	a := e.lockRange(0, 10)
	e.mu.Unlock()
	done := make(chan *lockReq)
	go func() {
		e.mu.Lock()
		r := e.lockRange(5, 6)
		e.mu.Unlock()
		done <- r
	}()
	var w *lockReq
	for w == nil {
		e.mu.Lock()
		if len(e.locks) == 2 {
			w = e.locks[1]
		}
		e.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	for i := uint64(0); i < 100; i++ {
		e.mu.Lock()
		r := e.lockRange(10+i, 11+i)
		e.mu.Unlock()
		e.unlock(r)
	}
	e.mu.Lock()
	wakes := w.wakes
	e.mu.Unlock()
	if wakes != 0 {
		t.Fatalf("got %d wakeups from unrelated releases, want 0", wakes)
	}
	select {
	case <-done:
		t.Fatal("waiter on [5,6) granted while [0,10) is held")
	default:
	}
	e.unlock(a)
	select {
	case r := <-done:
		if r != w || r.wakes != 1 {
			t.Fatalf("got %d wakeups, want 1", r.wakes)
		}
		e.unlock(r)
	case <-time.After(10 * time.Second):
		t.Fatal("waiter not granted 10 s after the release")
	}
}

// TestLockConcurrent has goroutines take random shared and exclusive
// locks, some tracking a live block 0 that moves, and checks with
// per-block counters that no two conflicting holders overlap and that
// every request is granted (run it with -race).
func TestLockConcurrent(t *testing.T) {
	const blocks, workers, ops = 64, 8, 400
	e := &Engine{}
	e.zero.Store(30)
	var writers, readers [blocks]atomic.Int32
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < ops; i++ {
				lo := rng.Uint64N(blocks - 1)
				hi := lo + 1 + rng.Uint64N(min(8, blocks-lo-1))
				shared := rng.IntN(3) == 0
				e.mu.Lock()
				r := e.enqueue(lo, hi)
				r.shared = shared
				e.waitGrant(r, !shared)
				if r.zero && rng.IntN(4) == 0 {
					// Move the live block 0 as plan does.
					old, now := e.zero.Load(), 1+rng.Uint64N(blocks-1)
					e.extend(r, span{now, now + 1})
					e.zero.Store(now)
					e.zeroMoved(old, now)
				}
				e.mu.Unlock()
				bad := false
				for b := lo; b < hi; b++ {
					if shared {
						bad = readers[b].Add(1) < 1 || writers[b].Load() != 0 || bad
					} else {
						bad = writers[b].Add(1) != 1 || readers[b].Load() != 0 || bad
					}
				}
				if bad {
					errc <- fmt.Errorf("request on [%d,%d) shared %v granted over a conflicting holder", lo, hi, shared)
				}
				time.Sleep(time.Duration(rng.IntN(20)) * time.Microsecond)
				for b := lo; b < hi; b++ {
					if shared {
						readers[b].Add(-1)
					} else {
						writers[b].Add(-1)
					}
				}
				e.unlock(r)
			}
		}(w)
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(60 * time.Second):
		t.Fatal("lock requests not granted after 60 s")
	}
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.locks) != 0 || e.lt.idx.n != 0 {
		t.Fatalf("got %d requests and %d indexed spans at rest, want 0", len(e.locks), e.lt.idx.n)
	}
}

// oldLocks is the lock table this index replaced, kept as the benchmark's
// baseline: a slice scanned per check, one condition variable broadcast on
// every release.
type oldLocks struct {
	mu     sync.Mutex
	cond   *sync.Cond
	locks  []*oldReq
	ticket uint64
	wakes  atomic.Int64
}

type oldReq struct {
	main    span
	ticket  uint64
	granted bool
}

func (l *oldLocks) grantable(r *oldReq) bool {
	for _, o := range l.locks {
		if o == r || !o.granted && o.ticket > r.ticket {
			continue
		}
		if r.main.lo < o.main.hi && o.main.lo < r.main.hi {
			return false
		}
	}
	return true
}

func (l *oldLocks) lock(lo, hi uint64) *oldReq {
	l.mu.Lock()
	l.ticket++
	r := &oldReq{main: span{lo, hi}, ticket: l.ticket}
	l.locks = append(l.locks, r)
	for !l.grantable(r) {
		l.cond.Wait()
		l.wakes.Add(1)
	}
	r.granted = true
	l.mu.Unlock()
	return r
}

func (l *oldLocks) unlock(r *oldReq) {
	l.mu.Lock()
	for i, o := range l.locks {
		if o == r {
			last := len(l.locks) - 1
			l.locks[i] = l.locks[last]
			l.locks[last] = nil
			l.locks = l.locks[:last]
			break
		}
	}
	l.cond.Broadcast()
	l.mu.Unlock()
}

// BenchmarkRangeLock measures one lock and unlock of a free range while n
// other requests are in flight, with the index and with the slice it
// replaced (oldLocks) in the same run: "held" has n disjoint locks held;
// "waiters" has n/2 held and n/2 goroutines waiting behind them, which the
// old table wakes on every release. Reported: new-ns/op, old-ns/op,
// old/new, and the waiters' wakeups per operation.
func BenchmarkRangeLock(b *testing.B) {
	for _, n := range []int{16, 256, 1024} {
		for _, waiting := range []bool{false, true} {
			name := fmt.Sprintf("inflight=%d/held", n)
			if waiting {
				name = fmt.Sprintf("inflight=%d/waiters", n)
			}
			b.Run(name, func(b *testing.B) { benchRangeLock(b, n, waiting) })
		}
	}
}

func benchRangeLock(b *testing.B, n int, waiting bool) {
	held := n
	if waiting {
		held = n / 2
	}
	// Held locks are on even blocks 0, 2, 4...; the measured lock takes an
	// odd block in the middle, overlapping none.
	at := uint64(held) | 1

	e := &Engine{}
	var heldNew []*lockReq
	e.mu.Lock()
	for i := 0; i < held; i++ {
		heldNew = append(heldNew, e.lockRange(uint64(2*i), uint64(2*i+1)))
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	if waiting {
		for i := 0; i < n-held; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				e.mu.Lock()
				r := e.lockRange(uint64(2*i), uint64(2*i+1))
				e.mu.Unlock()
				e.unlock(r)
			}(i)
		}
		for {
			e.mu.Lock()
			k := len(e.locks)
			e.mu.Unlock()
			if k == n {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	var wakes0 int
	e.mu.Lock()
	for _, r := range e.locks {
		wakes0 += r.wakes
	}
	e.mu.Unlock()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		e.mu.Lock()
		r := e.lockRange(at, at+1)
		e.mu.Unlock()
		e.unlock(r)
	}
	newNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	var wakesNew int
	e.mu.Lock()
	for _, r := range e.locks {
		wakesNew += r.wakes
	}
	wakesNew -= wakes0
	for _, r := range heldNew {
		e.releaseLocked(r)
	}
	e.mu.Unlock()
	wg.Wait()

	l := &oldLocks{}
	l.cond = sync.NewCond(&l.mu)
	var heldOld []*oldReq
	for i := 0; i < held; i++ {
		heldOld = append(heldOld, l.lock(uint64(2*i), uint64(2*i+1)))
	}
	if waiting {
		for i := 0; i < n-held; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				l.unlock(l.lock(uint64(2*i), uint64(2*i+1)))
			}(i)
		}
		for {
			l.mu.Lock()
			k := len(l.locks)
			l.mu.Unlock()
			if k == n {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
	}
	wakesOld0 := l.wakes.Load()
	b.StartTimer()
	start = time.Now()
	for i := 0; i < b.N; i++ {
		l.unlock(l.lock(at, at+1))
	}
	oldNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)
	b.StopTimer()
	wakesOld := l.wakes.Load() - wakesOld0
	for _, r := range heldOld {
		l.unlock(r)
	}
	wg.Wait()

	b.ReportMetric(newNs, "new-ns/op")
	b.ReportMetric(oldNs, "old-ns/op")
	b.ReportMetric(oldNs/newNs, "old/new")
	if waiting {
		b.ReportMetric(float64(wakesNew)/float64(b.N), "new-wakeups/op")
		b.ReportMetric(float64(wakesOld)/float64(b.N), "old-wakeups/op")
	}
}
