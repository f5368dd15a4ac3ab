package merge

import (
	"time"
)

// Bounds of a measured FillGap: below minFillGap filling never loses much
// on any disk measured; above maxFillGap a window's writes would be mostly
// unchanged bytes.
const (
	minFillGap = 32 << 10
	maxFillGap = 512 << 10
)

// calibrateFill measures what one request costs on the store device
// against what one byte costs, and sets FillGap to the gap whose two
// transfers (read from the origin, written back) cost as much as the
// request a fill saves: cost(n) = a + b*n per read, from the fastest of a
// few reads of one block and of MaxIO bytes (the fastest, because on a
// shared machine a slow sample says more about the neighbours), and a
// filled byte costing 3b, as a write costs about twice a read on a disk
// (on user-mode Linux's ubd, whose bytes are the host's memory copies,
// about the same: there the gap comes out smaller than it could be). The
// reads only read store bytes, into buf (at least MaxIO bytes): nothing is
// written. It leaves FillGap alone where the store is too small to measure.
func (c *copier) calibrateFill(buf []byte) {
	if _, ok := c.store.(*Raw); !ok {
		return // memory, in tests: nothing to measure
	}
	small, large := int64(4096), int64(c.maxChunks)*c.cb
	if c.store.Size() < 2*large || large < 16*small || int64(len(buf)) < large {
		return
	}
	fastest := func(n int64, reps int) time.Duration {
		best := time.Duration(1<<63 - 1)
		for r := range reps {
			// Distinct offsets, so no cache below answers twice.
			off := (int64(r) * (large + small)) % (c.store.Size() - large)
			off -= off % small
			t0 := time.Now()
			if readFull(c.store, buf[:n], off) != nil {
				return 0
			}
			best = min(best, time.Since(t0))
		}
		return best
	}
	ts, tl := fastest(small, 16), fastest(large, 4)
	if ts <= 0 || tl <= ts {
		return
	}
	perByte := float64(tl-ts) / float64(large-small)
	perReq := float64(ts) - perByte*float64(small)
	if perReq <= 0 {
		c.setFillGap(minFillGap)
		return
	}
	gap := int64(perReq / perByte / 3)
	c.setFillGap(min(max(gap, minFillGap), maxFillGap))
}
