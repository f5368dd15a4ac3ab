package bow

// lockIndex is an interval index over the spans of the range locks in
// flight, granted or waiting: a treap ordered by span start (ties broken
// by insertion order) in which every node also keeps the greatest end in
// its subtree. Finding the spans that overlap [lo, hi) skips every subtree
// whose greatest end is at or below lo and every node that starts at or
// after hi, so it costs O(log n) expected when nothing overlaps and at most
// O((k+1) log n) for k overlapping spans; insertion and removal are
// O(log n) expected.
type lockIndex struct {
	root *inode
	n    int
	ids  uint64
	pris xorshift
}

// inode is one span of one request. A request embeds the node of its
// main span, so taking a lock allocates no node of its own.
type inode struct {
	span
	id          uint64 // insertion order
	pri         uint64
	maxHi       uint64 // greatest hi in this subtree
	req         *lockReq
	left, right *inode
}

func (a *inode) before(b *inode) bool {
	return a.lo < b.lo || a.lo == b.lo && a.id < b.id
}

// fix recomputes maxHi from the children.
func (a *inode) fix() {
	m := a.hi
	if a.left != nil && a.left.maxHi > m {
		m = a.left.maxHi
	}
	if a.right != nil && a.right.maxHi > m {
		m = a.right.maxHi
	}
	a.maxHi = m
}

// insert adds node n for span s of r. n must not be in the index.
func (x *lockIndex) insert(n *inode, s span, r *lockReq) {
	x.ids++
	*n = inode{span: s, id: x.ids, pri: x.pris.next(), maxHi: s.hi, req: r}
	x.root = iinsert(x.root, n)
	x.n++
}

// remove takes n, which must be in the index, out of it.
func (x *lockIndex) remove(n *inode) {
	var found bool
	x.root = iremove(x.root, n, &found)
	if found {
		x.n--
	}
	n.left, n.right, n.req = nil, nil, nil
}

// overlapping calls fn for every node whose span overlaps s, in order of
// span start, until fn returns false. fn must not modify the index.
func (x *lockIndex) overlapping(s span, fn func(*inode) bool) {
	if s.lo < s.hi {
		ioverlap(x.root, s, fn)
	}
}

func ioverlap(t *inode, s span, fn func(*inode) bool) bool {
	for t != nil && t.maxHi > s.lo {
		if !ioverlap(t.left, s, fn) {
			return false
		}
		if t.lo >= s.hi {
			return true // t and everything after it start past s
		}
		if t.hi > s.lo && t.lo < t.hi && !fn(t) {
			return false
		}
		t = t.right
	}
	return true
}

func iinsert(t, n *inode) *inode {
	if t == nil {
		return n
	}
	if n.pri > t.pri {
		n.left, n.right = isplit(t, n)
		n.fix()
		return n
	}
	if n.before(t) {
		t.left = iinsert(t.left, n)
	} else {
		t.right = iinsert(t.right, n)
	}
	t.fix()
	return t
}

// isplit splits t into the nodes before n and the nodes after it.
func isplit(t, n *inode) (l, r *inode) {
	if t == nil {
		return nil, nil
	}
	if t.before(n) {
		t.right, r = isplit(t.right, n)
		t.fix()
		return t, r
	}
	l, t.left = isplit(t.left, n)
	t.fix()
	return l, t
}

// imerge joins a and b where every node of a comes before every node of b.
func imerge(a, b *inode) *inode {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.pri > b.pri:
		a.right = imerge(a.right, b)
		a.fix()
		return a
	default:
		b.left = imerge(a, b.left)
		b.fix()
		return b
	}
}

func iremove(t, n *inode, found *bool) *inode {
	if t == nil {
		return nil
	}
	if t == n {
		*found = true
		return imerge(t.left, t.right)
	}
	if n.before(t) {
		t.left = iremove(t.left, n, found)
	} else {
		t.right = iremove(t.right, n, found)
	}
	t.fix()
	return t
}
