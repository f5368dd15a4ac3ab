package bow

// ordMap is an ordered map from uint64 keys to values, a treap: a binary
// search tree on the keys that is also a heap on random priorities, which
// keeps it balanced in expectation. Every operation is O(log n).
type ordMap[V any] struct {
	root *tnode[V]
	n    int
	pris xorshift
}

type tnode[V any] struct {
	key         uint64
	val         V
	pri         uint64
	left, right *tnode[V]
}

func (m *ordMap[V]) len() int { return m.n }

// xorshift draws treap priorities; they need not be unpredictable. The
// zero value is ready to use.
type xorshift uint64

func (x *xorshift) next() uint64 {
	if *x == 0 {
		*x = 0x9e3779b97f4a7c15
	}
	*x ^= *x << 13
	*x ^= *x >> 7
	*x ^= *x << 17
	return uint64(*x)
}

// find returns the node with key k, or nil.
func (m *ordMap[V]) find(k uint64) *tnode[V] {
	t := m.root
	for t != nil {
		switch {
		case k < t.key:
			t = t.left
		case k > t.key:
			t = t.right
		default:
			return t
		}
	}
	return nil
}

// floor returns the node with the greatest key <= k, or nil.
func (m *ordMap[V]) floor(k uint64) *tnode[V] {
	var best *tnode[V]
	for t := m.root; t != nil; {
		if t.key <= k {
			best = t
			t = t.right
		} else {
			t = t.left
		}
	}
	return best
}

// higher returns the node with the least key > k, or nil.
func (m *ordMap[V]) higher(k uint64) *tnode[V] {
	var best *tnode[V]
	for t := m.root; t != nil; {
		if t.key > k {
			best = t
			t = t.left
		} else {
			t = t.right
		}
	}
	return best
}

// ceil returns the node with the least key >= k, or nil.
func (m *ordMap[V]) ceil(k uint64) *tnode[V] {
	if n := m.find(k); n != nil {
		return n
	}
	return m.higher(k)
}

func (m *ordMap[V]) max() *tnode[V] {
	t := m.root
	for t != nil && t.right != nil {
		t = t.right
	}
	return t
}

// set inserts k or replaces its value.
func (m *ordMap[V]) set(k uint64, v V) {
	if n := m.find(k); n != nil {
		n.val = v
		return
	}
	m.root = tinsert(m.root, &tnode[V]{key: k, val: v, pri: m.pris.next()})
	m.n++
}

// del removes k and reports whether it was present.
func (m *ordMap[V]) del(k uint64) bool {
	var found bool
	m.root = tdelete(m.root, k, &found)
	if found {
		m.n--
	}
	return found
}

// clear removes every key.
func (m *ordMap[V]) clear() { m.root, m.n = nil, 0 }

// ascend calls fn for the keys >= from in increasing order until fn
// returns false. fn must not modify the map.
func (m *ordMap[V]) ascend(from uint64, fn func(k uint64, v V) bool) {
	tascend(m.root, from, fn)
}

func tascend[V any](t *tnode[V], from uint64, fn func(uint64, V) bool) bool {
	for t != nil {
		if t.key < from {
			t = t.right
			continue
		}
		if !tascend(t.left, from, fn) || !fn(t.key, t.val) {
			return false
		}
		t = t.right
	}
	return true
}

func tinsert[V any](t, n *tnode[V]) *tnode[V] {
	if t == nil {
		return n
	}
	if n.pri > t.pri {
		n.left, n.right = tsplit(t, n.key)
		return n
	}
	if n.key < t.key {
		t.left = tinsert(t.left, n)
	} else {
		t.right = tinsert(t.right, n)
	}
	return t
}

// tsplit splits t into the keys < k and the keys > k; k itself is absent.
func tsplit[V any](t *tnode[V], k uint64) (l, r *tnode[V]) {
	if t == nil {
		return nil, nil
	}
	if t.key < k {
		t.right, r = tsplit(t.right, k)
		return t, r
	}
	l, t.left = tsplit(t.left, k)
	return l, t
}

// tmerge joins a and b where every key of a is below every key of b.
func tmerge[V any](a, b *tnode[V]) *tnode[V] {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.pri > b.pri:
		a.right = tmerge(a.right, b)
		return a
	default:
		b.left = tmerge(a, b.left)
		return b
	}
}

func tdelete[V any](t *tnode[V], k uint64, found *bool) *tnode[V] {
	if t == nil {
		return nil
	}
	switch {
	case k < t.key:
		t.left = tdelete(t.left, k, found)
	case k > t.key:
		t.right = tdelete(t.right, k, found)
	default:
		*found = true
		return tmerge(t.left, t.right)
	}
	return t
}
