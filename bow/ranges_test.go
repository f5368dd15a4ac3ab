package bow

import (
	"math/rand/v2"
	"testing"
)

func TestOrdMap(t *testing.T) {
	var m ordMap[int]
	ref := map[uint64]int{}
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		k := r.Uint64N(500)
		switch r.IntN(3) {
		case 0, 1:
			m.set(k, i)
			ref[k] = i
		case 2:
			_, in := ref[k]
			if got := m.del(k); got != in {
				t.Fatalf("del %d: got %v, want %v", k, got, in)
			}
			delete(ref, k)
		}
		if m.len() != len(ref) {
			t.Fatalf("len: got %d, want %d", m.len(), len(ref))
		}
		q := r.Uint64N(520)
		var fl, hi *uint64
		for k := range ref {
			if k <= q && (fl == nil || k > *fl) {
				kk := k
				fl = &kk
			}
			if k > q && (hi == nil || k < *hi) {
				kk := k
				hi = &kk
			}
		}
		if n := m.floor(q); (n == nil) != (fl == nil) || n != nil && n.key != *fl {
			t.Fatalf("floor(%d) wrong", q)
		}
		if n := m.higher(q); (n == nil) != (hi == nil) || n != nil && n.key != *hi {
			t.Fatalf("higher(%d) wrong", q)
		}
	}
	prev, count := uint64(0), 0
	m.ascend(0, func(k uint64, v int) bool {
		if count > 0 && k <= prev {
			t.Fatalf("ascend out of order: %d after %d", k, prev)
		}
		if ref[k] != v {
			t.Fatalf("value of %d: got %d, want %d", k, v, ref[k])
		}
		prev = k
		count++
		return true
	})
	if count != len(ref) {
		t.Fatalf("ascend visited %d, want %d", count, len(ref))
	}
}

// TestRangeMap checks the run map against one kind per block.
func TestRangeMap(t *testing.T) {
	const n = 300
	r := rand.New(rand.NewPCG(3, 4))
	rm := newRangeMap(n)
	ref := make([]kind, n)
	for i := 0; i < 5000; i++ {
		lo := r.Uint64N(n)
		hi := lo + 1 + r.Uint64N(min(40, n-lo))
		k := kind(r.IntN(int(numKinds)))
		rm.set(lo, hi, k)
		for b := lo; b < hi; b++ {
			ref[b] = k
		}
		if err := rm.check(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		var free uint64
		for b := uint64(0); b < n; b++ {
			if _, _, got := rm.at(b); got != ref[b] {
				t.Fatalf("step %d: block %d: got %v, want %v", i, b, got, ref[b])
			}
			if ref[b] == kindFree {
				free++
			}
		}
		if rm.nfree != free {
			t.Fatalf("step %d: free count got %d, want %d", i, rm.nfree, free)
		}
		if s, e, ok := rm.takeFree(5); ok {
			if e-s > 5 || e <= s {
				t.Fatalf("takeFree(5) gave [%d,%d)", s, e)
			}
			for b := s; b < e; b++ {
				if ref[b] != kindFree {
					t.Fatalf("takeFree gave block %d of kind %v", b, ref[b])
				}
			}
			if e < n && ref[e] == kindFree {
				t.Fatalf("takeFree did not take the top of a run: block %d after it is free", e)
			}
		} else if free != 0 {
			t.Fatalf("takeFree found nothing, %d blocks free", free)
		}
	}
}
