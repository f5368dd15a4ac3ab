package merge

import "fmt"

// vectorDevice is a Device that moves one contiguous range of its bytes
// to or from several buffers in one request (preadv, pwritev). The offline
// merge uses it to read store chunks straight into their slots and to
// write changed chunks and the unchanged bytes between them in one write,
// without copying them in memory: the data is only ever touched by the
// kernel. That matters most where a first touch of a page from user space
// is expensive, as in user-mode Linux, where it costs more than the I/O.
type vectorDevice interface {
	// ReadvAt fills bufs, in order, from the bytes at off.
	ReadvAt(bufs [][]byte, off int64) error
	// WritevAt writes bufs, in order, as the bytes at off.
	WritevAt(bufs [][]byte, off int64) error
}

// readv fills bufs from d at off: in one request where d can, else with one
// read through a buffer of their total size.
func readv(d Device, bufs [][]byte, off int64) error {
	if len(bufs) == 1 {
		return readFull(d, bufs[0], off)
	}
	if v, ok := d.(vectorDevice); ok {
		return v.ReadvAt(bufs, off)
	}
	b := make([]byte, vecLen(bufs))
	if err := readFull(d, b, off); err != nil {
		return err
	}
	for _, p := range bufs {
		b = b[copy(p, b):]
	}
	return nil
}

// writev writes bufs to d at off as one write.
func writev(d Device, bufs [][]byte, off int64) error {
	if len(bufs) == 1 {
		return writeFull(d, bufs[0], off)
	}
	if v, ok := d.(vectorDevice); ok {
		return v.WritevAt(bufs, off)
	}
	b := make([]byte, 0, vecLen(bufs))
	for _, p := range bufs {
		b = append(b, p...)
	}
	return writeFull(d, b, off)
}

func writeFull(d Device, p []byte, off int64) error {
	n, err := d.WriteAt(p, off)
	if err == nil && n < len(p) {
		err = fmt.Errorf("short write: %d of %d bytes", n, len(p))
	}
	return err
}

func vecLen(bufs [][]byte) int64 {
	var n int64
	for _, p := range bufs {
		n += int64(len(p))
	}
	return n
}

// appendVec appends p to bufs, extending the last buffer instead when p
// follows it directly in memory (two slots next to each other).
func appendVec(bufs [][]byte, p []byte) [][]byte {
	if n := len(bufs); n > 0 && len(p) > 0 {
		last := bufs[n-1]
		if cap(last) >= len(last)+len(p) && &last[:len(last)+1][len(last)] == &p[0] {
			bufs[n-1] = last[:len(last)+len(p)]
			return bufs
		}
	}
	return append(bufs, p)
}
