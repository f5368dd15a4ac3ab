package merge

import "reflect"

// DirectBuffer returns n bytes of page-aligned memory from the Go heap,
// which does not move: a buffer direct I/O (O_DIRECT) accepts. The heap is
// cheaper than a mapping of its own for small, short-lived buffers: no
// system calls, no TLB shootdown when it goes. Raw uses it to bounce
// unaligned reads and writes.
func DirectBuffer(n int) []byte {
	const page = 4096
	b := make([]byte, n+page)
	skip := (page - int(reflect.ValueOf(b).Pointer()%page)) % page
	return b[skip : skip+n]
}
