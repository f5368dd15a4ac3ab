package merge

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
)

// memDev is a Device in memory. Writes past its end fail, which catches a
// merge writing beyond the origin.
type memDev struct {
	mu    sync.Mutex
	b     []byte
	syncs int
}

func newMem(b []byte) *memDev { return &memDev{b: slices.Clone(b)} }

func (m *memDev) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off > int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memDev) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, fmt.Errorf("write %d bytes at %d: past the end (%d bytes)", len(p), off, len(m.b))
	}
	return copy(m.b[off:], p), nil
}

func (m *memDev) Size() int64 { return int64(len(m.b)) }

func (m *memDev) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncs++
	return nil
}

func (m *memDev) bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.b)
}

var errDead = errors.New("device lost power")

// crashDev models a disk with a volatile write cache that loses power after
// a number of writes: writes since the last Sync may or may not survive.
type crashDev struct {
	mu         sync.Mutex
	durable    []byte
	volatile   []byte
	pending    []pendingWrite
	writesLeft int
	dead       bool
}

type pendingWrite struct {
	off int64
	b   []byte
}

func newCrash(b []byte, writes int) *crashDev {
	return &crashDev{durable: slices.Clone(b), volatile: slices.Clone(b), writesLeft: writes}
}

func (c *crashDev) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return 0, errDead
	}
	n := copy(p, c.volatile[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (c *crashDev) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead || c.writesLeft == 0 {
		c.dead = true
		return 0, errDead
	}
	if off+int64(len(p)) > int64(len(c.volatile)) {
		return 0, fmt.Errorf("write past the end")
	}
	c.writesLeft--
	copy(c.volatile[off:], p)
	c.pending = append(c.pending, pendingWrite{off, slices.Clone(p)})
	return len(p), nil
}

func (c *crashDev) Size() int64 { return int64(len(c.volatile)) }

func (c *crashDev) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errDead
	}
	copy(c.durable, c.volatile)
	c.pending = nil
	return nil
}

// afterPowerCut is what the disk holds after the power came back: the
// durable image plus a random subset of the sectors written since the last
// flush, so a write may be torn anywhere between its sectors.
func (c *crashDev) afterPowerCut(rng *rand.Rand) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := slices.Clone(c.durable)
	for _, w := range c.pending {
		switch rng.IntN(3) {
		case 0: // lost
		case 1: // whole
			copy(b[w.off:], w.b)
		default: // torn
			for s := 0; s < len(w.b); s += SectorSize {
				if rng.IntN(2) == 0 {
					copy(b[w.off+int64(s):], w.b[s:min(s+SectorSize, len(w.b))])
				}
			}
		}
	}
	return b
}

// scenario is a snapshot's life in memory: the origin as it was when the
// snapshot was taken (pre), the origin after writes changed some chunks
// (post), and the store the kernel would hold (the pre-image of each
// changed chunk, in first-write order). Merging the store into post must
// give back pre; pre is computed without any of the merge code.
type scenario struct {
	chunkSize uint32
	pre, post []byte
	store     []byte
	ex        []Exception
}

// newScenario changes n chunks of an origin of originSize bytes: random
// ones, with runs of consecutive chunks mixed in, always including the last
// (possibly partial) chunk when n > 0.
func newScenario(rng *rand.Rand, chunkSize uint32, originSize int64, n int) *scenario {
	l := Layout{ChunkSize: chunkSize}
	cb := l.ChunkBytes()
	originChunks := int((originSize + cb - 1) / cb)
	if n > originChunks {
		panic("more exceptions than origin chunks")
	}
	s := &scenario{chunkSize: chunkSize, pre: randBytes(rng, int(originSize))}
	s.post = slices.Clone(s.pre)
	used := map[uint64]bool{}
	var olds []uint64
	add := func(c uint64) {
		if !used[c] && len(olds) < n {
			used[c] = true
			olds = append(olds, c)
		}
	}
	if n > 0 {
		add(uint64(originChunks - 1))
	}
	for len(olds) < n {
		c := uint64(rng.IntN(originChunks))
		if rng.IntN(4) == 0 { // a run of consecutive chunks
			for k := range uint64(1 + rng.IntN(20)) {
				if c+k < uint64(originChunks) {
					add(c + k)
				}
			}
			continue
		}
		add(c)
	}
	chunks := l.DataChunk(uint64(n))
	s.store = make([]byte, int64(chunks)*cb)
	for i, old := range olds {
		e := Exception{Old: old, New: l.DataChunk(uint64(i))}
		s.ex = append(s.ex, e)
		data := randBytes(rng, int(cb)) // bytes past the origin's end stay random
		start := int64(old) * cb
		end := min(start+cb, originSize)
		copy(data, s.pre[start:end])
		copy(s.store[int64(e.New)*cb:], data)
		copy(s.post[start:end], randBytes(rng, int(end-start)))
	}
	// The kernel may commit neighbouring exceptions out of allocation order.
	for i := 0; i+1 < len(s.ex); i++ {
		if rng.IntN(8) == 0 {
			s.ex[i], s.ex[i+1] = s.ex[i+1], s.ex[i]
		}
	}
	if err := WriteStore(newMemAt(s.store), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: chunkSize}, s.ex); err != nil {
		panic(err)
	}
	return s
}

// memAt writes into a fixed slice.
type memAt []byte

func newMemAt(b []byte) memAt { return memAt(b) }

func (m memAt) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m)) {
		return 0, fmt.Errorf("write past the end")
	}
	return copy(m[off:], p), nil
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8 && i+k < n; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func sum(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b))[:16] }

// firstDiff returns the first differing byte offset, or -1.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

// sparse is a large, mostly zero image kept as 4 KiB pages.
type sparse struct {
	pages map[int64][]byte
	size  int64
}

const pageLen = 4096

func newSparse(size int64) *sparse { return &sparse{pages: map[int64][]byte{}, size: size} }

func (s *sparse) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("write past the end")
	}
	for i := 0; i < len(p); {
		pg, in := (off+int64(i))/pageLen, int((off+int64(i))%pageLen)
		if s.pages[pg] == nil {
			if allZero(p[i:min(len(p), i+pageLen-in)]) {
				i += pageLen - in
				continue
			}
			s.pages[pg] = make([]byte, pageLen)
		}
		i += copy(s.pages[pg][in:], p[i:])
	}
	return len(p), nil
}

func (s *sparse) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) && off+int64(n) < s.size {
		pg, in := (off+int64(n))/pageLen, int((off+int64(n))%pageLen)
		k := min(len(p)-n, pageLen-in, int(s.size-off-int64(n)))
		if b := s.pages[pg]; b != nil {
			copy(p[n:n+k], b[in:])
		} else {
			clear(p[n : n+k])
		}
		n += k
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
