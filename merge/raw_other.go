//go:build !linux

package merge

import "github.com/snapctl/snapctl/internal/platform"

// Outside Linux there is no raw device access: OpenRaw and OpenSegments
// return platform.ErrUnsupported. The store format reader and the offline
// merge over any Device still build and test.

// Raw is a raw device or store (Linux only).
type Raw struct{}

// OpenRaw returns platform.ErrUnsupported outside Linux.
func OpenRaw(path string, flags OpenFlags) (*Raw, error) { return nil, platform.ErrUnsupported }

// OpenSegments returns platform.ErrUnsupported outside Linux.
func OpenSegments(segs []Segment, flags OpenFlags) (*Raw, error) {
	return nil, platform.ErrUnsupported
}

func (r *Raw) Name() string                             { return "" }
func (r *Raw) Size() int64                              { return 0 }
func (r *Raw) Direct() bool                             { return false }
func (r *Raw) ReadAt(p []byte, off int64) (int, error)  { return 0, platform.ErrUnsupported }
func (r *Raw) WriteAt(p []byte, off int64) (int, error) { return 0, platform.ErrUnsupported }
func (r *Raw) Sync() error                              { return platform.ErrUnsupported }
func (r *Raw) Close() error                             { return nil }
func (r *Raw) holds(o *Raw) []Extent                    { return nil }

// pageBuf is a buffer for direct I/O: plain heap memory outside Linux.
type pageBuf struct{ b []byte }

func alignedBuf(n int) (pageBuf, error) { return pageBuf{b: make([]byte, n)}, nil }

func (p pageBuf) free() {}

func (r *Raw) ReadvAt(bufs [][]byte, off int64) error  { return platform.ErrUnsupported }
func (r *Raw) WritevAt(bufs [][]byte, off int64) error { return platform.ErrUnsupported }
