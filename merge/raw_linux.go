package merge

import (
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"slices"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// Raw is storage read and written at byte offsets, bypassing the page cache
// where the file allows: a whole file or block device (OpenRaw), or a store
// laid out in segments over raw devices (OpenSegments). It is a Device; its
// methods are safe for concurrent use. Direct I/O needs aligned offsets,
// lengths and memory: Raw bounces unaligned reads and writes of unaligned
// memory through an aligned buffer, and refuses writes at unaligned offsets.
type Raw struct {
	name  string
	files []*rawFile
	segs  []rawSeg
	size  int64
}

type rawFile struct {
	f      *os.File
	path   string
	direct bool
	align  int64 // I/O alignment under O_DIRECT; 1 otherwise
	block  bool
	size   int64
	dev    uint64 // st_rdev of a block device, st_dev of a file
	ino    uint64 // 0 for a block device
}

type rawSeg struct {
	start int64    // offset in the store
	file  *rawFile // nil: a Zero segment
	off   int64    // offset in file
	n     int64
}

// OpenRaw opens a whole file or block device.
func OpenRaw(path string, flags OpenFlags) (*Raw, error) {
	f, err := openRawFile(path, flags)
	if err != nil {
		return nil, err
	}
	return &Raw{name: path, files: []*rawFile{f}, segs: []rawSeg{{file: f, n: f.size}}, size: f.size}, nil
}

// OpenSegments opens the devices a store is laid out on, each once, and
// maps store offsets onto them in the order of segs. Every segment must lie
// inside its device and be sector aligned (block aligned under direct I/O).
// Zero segments read as zeros; a write into one fails with ErrZeroSegment.
func OpenSegments(segs []Segment, flags OpenFlags) (*Raw, error) {
	if len(segs) == 0 {
		return nil, errors.New("open store segments: no segments")
	}
	r := &Raw{name: fmt.Sprintf("%s+%d segments", firstPath(segs), len(segs))}
	byPath := map[string]*rawFile{}
	for i, s := range segs {
		if s.Zero {
			if s.Length <= 0 || s.Length%SectorSize != 0 {
				r.Close()
				return nil, fmt.Errorf("open store segment %d (%d bytes of zeros): empty or not a whole number of sectors", i, s.Length)
			}
			r.segs = append(r.segs, rawSeg{start: r.size, n: s.Length})
			r.size += s.Length
			continue
		}
		f := byPath[s.Path]
		if f == nil {
			var err error
			if f, err = openRawFile(s.Path, flags); err != nil {
				r.Close()
				return nil, err
			}
			byPath[s.Path] = f
			r.files = append(r.files, f)
		}
		a := max(f.align, SectorSize)
		switch {
		case s.Length <= 0 || s.Offset < 0:
			err := fmt.Errorf("open store segment %d (%s at %d, %d bytes): empty or negative", i, s.Path, s.Offset, s.Length)
			r.Close()
			return nil, err
		case s.Offset%a != 0 || s.Length%a != 0:
			err := fmt.Errorf("open store segment %d (%s at %d, %d bytes): not aligned to %d bytes", i, s.Path, s.Offset, s.Length, a)
			r.Close()
			return nil, err
		case s.Offset > f.size || s.Length > f.size-s.Offset:
			err := fmt.Errorf("open store segment %d (%s at %d, %d bytes): past the end of the device (%d bytes)", i, s.Path, s.Offset, s.Length, f.size)
			r.Close()
			return nil, err
		}
		r.segs = append(r.segs, rawSeg{start: r.size, file: f, off: s.Offset, n: s.Length})
		r.size += s.Length
	}
	return r, nil
}

// firstPath names a segmented store by its first device.
func firstPath(segs []Segment) string {
	for _, s := range segs {
		if !s.Zero {
			return s.Path
		}
	}
	return "zeros"
}

func openRawFile(path string, flags OpenFlags) (*rawFile, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	mode := os.O_RDONLY
	if flags&OpenWrite != 0 {
		mode = os.O_RDWR
	}
	rf := &rawFile{path: path, align: 1}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		rf.block = true
		if st != nil {
			rf.dev = uint64(st.Rdev)
		}
		if flags&OpenExclusive != 0 {
			mode |= unix.O_EXCL
		}
		rf.f, err = os.OpenFile(path, mode|unix.O_DIRECT, 0)
		if err != nil {
			return nil, err
		}
		rf.direct = true
		ss, err := unix.IoctlGetInt(int(rf.f.Fd()), unix.BLKSSZGET)
		if err != nil {
			rf.f.Close()
			return nil, fmt.Errorf("get logical block size of %s: %w", path, err)
		}
		rf.align = int64(ss)
		if rf.size, err = rf.f.Seek(0, io.SeekEnd); err != nil {
			rf.f.Close()
			return nil, fmt.Errorf("get size of %s: %w", path, err)
		}
	case fi.Mode().IsRegular():
		if st != nil {
			rf.dev, rf.ino = uint64(st.Dev), st.Ino
		}
		rf.size = fi.Size()
		if flags&OpenDirect != 0 {
			rf.f, err = os.OpenFile(path, mode|unix.O_DIRECT, 0)
			if err == nil {
				// 4 KiB satisfies every filesystem's direct I/O alignment
				// in practice; Raw bounces what does not fit.
				rf.direct, rf.align = true, 4096
				break
			}
			if !errors.Is(err, unix.EINVAL) {
				return nil, err
			}
		}
		if rf.f, err = os.OpenFile(path, mode, 0); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("open %s: not a regular file or block device (%v)", path, fi.Mode().Type())
	}
	return rf, nil
}

// Name is the path the Raw was opened from (the first segment's, for a
// segmented store).
func (r *Raw) Name() string { return r.name }

// Size is the size in bytes: the device's or file's, or the sum of the
// segments.
func (r *Raw) Size() int64 { return r.size }

// Direct reports whether every file of r is read and written with O_DIRECT.
func (r *Raw) Direct() bool {
	for _, f := range r.files {
		if !f.direct {
			return false
		}
	}
	return true
}

// ReadAt reads len(p) bytes at store offset off.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	return r.each(p, off, func(f *rawFile, b []byte, o int64) (int, error) {
		if f == nil {
			clear(b)
			return len(b), nil
		}
		return f.readAt(b, o)
	})
}

// WriteAt writes p at store offset off.
func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	return r.each(p, off, func(f *rawFile, b []byte, o int64) (int, error) {
		if f == nil {
			return 0, fmt.Errorf("write %s at %d: %w", r.name, off, ErrZeroSegment)
		}
		return f.writeAt(b, o)
	})
}

func (r *Raw) each(p []byte, off int64, op func(*rawFile, []byte, int64) (int, error)) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("access %s at %d: negative offset", r.name, off)
	}
	done := 0
	for done < len(p) {
		at := off + int64(done)
		if at >= r.size {
			return done, io.EOF
		}
		i := sort.Search(len(r.segs), func(i int) bool { return r.segs[i].start+r.segs[i].n > at }) // r.segs[i] holds at
		s := r.segs[i]
		n := min(int64(len(p)-done), s.start+s.n-at)
		m, err := op(s.file, p[done:done+int(n)], s.off+at-s.start)
		done += m
		if err != nil {
			return done, err
		}
		if int64(m) < n {
			return done, io.ErrUnexpectedEOF
		}
	}
	return done, nil
}

// ReadvAt fills bufs, in order, from the bytes at store offset off, with
// one preadv per segment it crosses (see vectorDevice).
func (r *Raw) ReadvAt(bufs [][]byte, off int64) error {
	return r.eachVec(bufs, off, func(f *rawFile, part [][]byte, o int64) error {
		if f == nil {
			for _, b := range part {
				clear(b)
			}
			return nil
		}
		return f.readvAt(part, o)
	})
}

// WritevAt writes bufs, in order, at store offset off, with one pwritev per
// segment it crosses.
func (r *Raw) WritevAt(bufs [][]byte, off int64) error {
	return r.eachVec(bufs, off, func(f *rawFile, part [][]byte, o int64) error {
		if f == nil {
			return fmt.Errorf("write %s at %d: %w", r.name, off, ErrZeroSegment)
		}
		return f.writevAt(part, o)
	})
}

// eachVec cuts bufs at the segment boundaries of r and hands each part to
// op with its file offset.
func (r *Raw) eachVec(bufs [][]byte, off int64, op func(*rawFile, [][]byte, int64) error) error {
	if off < 0 {
		return fmt.Errorf("access %s at %d: negative offset", r.name, off)
	}
	var part [][]byte
	for len(bufs) > 0 {
		if off >= r.size {
			return io.ErrUnexpectedEOF
		}
		i := sort.Search(len(r.segs), func(i int) bool { return r.segs[i].start+r.segs[i].n > off }) // r.segs[i] holds off
		s := r.segs[i]
		room := s.start + s.n - off
		part = part[:0]
		var n int64
		for len(bufs) > 0 && n < room {
			b := bufs[0]
			if int64(len(b)) > room-n {
				b = b[:room-n]
				bufs[0] = bufs[0][len(b):]
			} else {
				bufs = bufs[1:]
			}
			part = append(part, b)
			n += int64(len(b))
		}
		if err := op(s.file, part, s.off+off-s.start); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// Sync flushes every file to stable storage.
func (r *Raw) Sync() error {
	var errs []error
	for _, f := range r.files {
		if err := f.f.Sync(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close closes every file.
func (r *Raw) Close() error {
	var errs []error
	for _, f := range r.files {
		if err := f.f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	r.files = nil
	return errors.Join(errs...)
}

// holds reports the byte ranges of r that lie on the same device or file as
// o, in o's offsets (o must be a whole file or device, as OpenRaw opens).
func (r *Raw) holds(o *Raw) []Extent {
	if len(o.files) != 1 {
		return nil
	}
	of := o.files[0]
	var out []Extent
	for _, s := range r.segs {
		if s.file != nil && s.file.dev == of.dev && s.file.ino == of.ino && s.file.block == of.block {
			out = append(out, Extent{Offset: s.off, Length: s.n})
		}
	}
	return out
}

func (f *rawFile) aligned(p []byte, off int64) bool {
	if !f.direct {
		return true
	}
	addr := int64(0)
	if len(p) > 0 {
		addr = int64(reflect.ValueOf(p).Pointer())
	}
	return off%f.align == 0 && int64(len(p))%f.align == 0 && addr%f.align == 0
}

func (f *rawFile) readAt(p []byte, off int64) (int, error) {
	if f.aligned(p, off) {
		return f.f.ReadAt(p, off)
	}
	start := off - off%f.align
	end := off + int64(len(p))
	end += (f.align - end%f.align) % f.align
	buf := DirectBuffer(int(end - start))
	n, err := f.f.ReadAt(buf, start)
	got := max(0, min(int64(n)-(off-start), int64(len(p))))
	copy(p, buf[off-start:off-start+got])
	if got == int64(len(p)) {
		return len(p), nil
	}
	if err == nil {
		err = io.EOF
	}
	return int(got), err
}

func (f *rawFile) writeAt(p []byte, off int64) (int, error) {
	if f.aligned(p, off) {
		return f.f.WriteAt(p, off)
	}
	if off%f.align != 0 || int64(len(p))%f.align != 0 {
		return 0, fmt.Errorf("write %s at %d: %d bytes are not aligned to its %d-byte blocks for direct I/O", f.path, off, len(p), f.align)
	}
	buf := DirectBuffer(len(p))
	copy(buf, p)
	return f.f.WriteAt(buf, off)
}

// iovMax is the most buffers one preadv or pwritev takes (UIO_MAXIOV).
const iovMax = 1024

// readvAt and writevAt move bufs at off in as few system calls as the
// kernel allows, going on after short transfers. Under direct I/O every
// buffer must be aligned; a vector that is not goes through one bounce
// buffer.
func (f *rawFile) readvAt(bufs [][]byte, off int64) error {
	if !f.alignedVec(bufs, off) {
		b := make([]byte, vecLen(bufs))
		if err := readFull(f, b, off); err != nil {
			return err
		}
		for _, p := range bufs {
			b = b[copy(p, b):]
		}
		return nil
	}
	return f.vec(bufs, off, unix.Preadv)
}

func (f *rawFile) writevAt(bufs [][]byte, off int64) error {
	if !f.alignedVec(bufs, off) {
		b := make([]byte, 0, vecLen(bufs))
		for _, p := range bufs {
			b = append(b, p...)
		}
		_, err := f.writeAt(b, off)
		return err
	}
	return f.vec(bufs, off, unix.Pwritev)
}

// ReadAt makes a rawFile an io.ReaderAt for readFull.
func (f *rawFile) ReadAt(p []byte, off int64) (int, error) { return f.readAt(p, off) }

func (f *rawFile) alignedVec(bufs [][]byte, off int64) bool {
	for _, b := range bufs {
		if !f.aligned(b, off) {
			return false
		}
		off += int64(len(b))
	}
	return true
}

func (f *rawFile) vec(bufs [][]byte, off int64, op func(int, [][]byte, int64) (int, error)) error {
	rc, err := f.f.SyscallConn()
	if err != nil {
		return err
	}
	bufs = slices.Clone(bufs) // trimmed below as bytes move
	for len(bufs) > 0 {
		var n int
		var ioErr error
		cerr := rc.Control(func(fd uintptr) {
			for {
				n, ioErr = op(int(fd), bufs[:min(len(bufs), iovMax)], off)
				if ioErr != unix.EINTR {
					return
				}
			}
		})
		if cerr != nil {
			return cerr
		}
		if ioErr != nil {
			return &os.PathError{Op: "vector I/O", Path: f.path, Err: ioErr}
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		off += int64(n)
		for n > 0 {
			if k := min(n, len(bufs[0])); k < len(bufs[0]) {
				bufs[0] = bufs[0][k:]
				n = 0
			} else {
				bufs = bufs[1:]
				n -= k
			}
		}
	}
	return nil
}

// pageBuf is page-aligned memory outside the Go heap, as direct I/O needs.
// The pages are not touched up front: the first read into them faults them
// in, spread over the workers that do the reads.
type pageBuf struct {
	b   []byte
	all []byte // the whole mapping
}

// hugePage is the size of a transparent huge page on x86-64 and arm64 (4K
// pages). A large buffer aligned to it and marked for huge pages costs one
// fault and one zeroing per 2 MiB instead of per 4 KiB.
const hugePage = 2 << 20

func alignedBuf(n int) (pageBuf, error) {
	if n == 0 {
		return pageBuf{}, nil
	}
	size := n
	if n >= hugePage {
		size += hugePage // room to align the start
	}
	all, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return pageBuf{}, fmt.Errorf("allocate %d-byte I/O buffer: %w", n, err)
	}
	b := all[:n]
	if n >= hugePage {
		addr := int(reflect.ValueOf(all).Pointer())
		skip := (hugePage - addr%hugePage) % hugePage
		b = all[skip : skip+n]
		_ = unix.Madvise(b, unix.MADV_HUGEPAGE) // a hint; without it, small pages
	}
	return pageBuf{b: b, all: all}, nil
}

func (p pageBuf) free() {
	if p.all != nil {
		_ = unix.Munmap(p.all)
	}
}
