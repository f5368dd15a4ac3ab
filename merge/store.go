package merge

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"

	"github.com/snapctl/snapctl/dmtable"
)

// Expect carries what the caller knows independently of the store, so that
// ReadStore can check the store against it.
type Expect struct {
	ChunkSize  uint32 // sectors; 0 accepts the header's
	OriginSize int64  // bytes; 0 skips the check of old chunks against the origin
}

// Store is a parsed exception store.
type Store struct {
	Header Header
	Size   int64 // bytes of the store device or file

	// Exceptions in table order (area by area, entry by entry).
	Exceptions []Exception

	// Areas is how many metadata areas the table occupies, counting the
	// last one, which is partly filled or empty (0 for a fresh store).
	Areas uint64
}

// Layout is the store's geometry.
func (s *Store) Layout() Layout { return Layout{ChunkSize: s.Header.ChunkSize} }

// Chunks is the number of whole chunks in the store.
func (s *Store) Chunks() uint64 {
	if s.Header.ChunkSize == 0 {
		return 0
	}
	return uint64(s.Size / s.Layout().ChunkBytes())
}

// UsedChunks is the number of chunks from the start of the store up to the
// last one in use, data or metadata: what the kernel reports as allocated.
func (s *Store) UsedChunks() uint64 {
	if s.Header.Fresh() {
		return 0
	}
	used := uint64(2)
	if s.Areas > 0 {
		used = max(used, s.Layout().AreaChunk(s.Areas-1)+1)
	}
	for _, e := range s.Exceptions {
		used = max(used, e.New+1)
	}
	return used
}

// ReadHeader reads and checks the header of a store of size bytes. A zeroed
// header (a store the kernel has never used) is returned without error;
// see Header.Fresh.
func ReadHeader(r io.ReaderAt, size int64) (Header, error) {
	if size < headerLen {
		return Header{}, corrupt(ErrTruncated, -1, -1, "store is %d bytes, shorter than its %d-byte header", size, headerLen)
	}
	var b [headerLen]byte
	if err := readFull(r, b[:], 0); err != nil {
		return Header{}, fmt.Errorf("read store header: %w", err)
	}
	h := Header{
		Magic:     binary.LittleEndian.Uint32(b[0:]),
		Version:   binary.LittleEndian.Uint32(b[8:]),
		ChunkSize: binary.LittleEndian.Uint32(b[12:]),
	}
	valid := binary.LittleEndian.Uint32(b[4:])
	if h.Magic == 0 {
		return h, nil
	}
	if h.Magic != Magic {
		return h, corrupt(ErrBadMagic, -1, -1, "magic %#08x, want %#08x (\"SnAp\"): not a persistent snapshot store", h.Magic, Magic)
	}
	if h.Version != Version {
		return h, corrupt(ErrBadVersion, -1, -1, "version %d, want %d", h.Version, Version)
	}
	if valid > 1 {
		return h, corrupt(ErrBadValid, -1, -1, "valid flag %d, want 0 or 1", valid)
	}
	h.Valid = valid == 1
	if !dmtable.ValidChunkSectors(uint64(h.ChunkSize)) {
		return h, corrupt(ErrBadChunkSize, -1, -1, "chunk size %d sectors, want a power of two up to %d", h.ChunkSize, dmtable.MaxChunkSectors)
	}
	if cb := int64(h.ChunkSize) * SectorSize; size/cb < 2 {
		return h, corrupt(ErrTruncated, -1, -1, "store is %d bytes, shorter than the header and first metadata area (2 chunks of %d bytes)", size, cb)
	}
	return h, nil
}

// areaReadLen caps a single read of a metadata area, so that a huge chunk
// size in a damaged header cannot make the reader allocate a huge buffer.
const areaReadLen = 64 << 10

// ReadStore reads the store of size bytes from r and checks all of it: the
// header, every metadata area and every exception, against the store's size
// and what the caller expects. It never returns an exception whose chunks lie
// outside the store (or the origin, when its size is given), on a metadata
// slot, or that shares its old or new chunk with another exception. Errors
// about the content are *CorruptError or *ChunkSizeError; I/O errors are
// returned wrapped.
//
// A store marked invalid is parsed like any other; check Header.Valid. A
// fresh (zeroed) store yields no exceptions.
func ReadStore(r io.ReaderAt, size int64, want Expect) (*Store, error) {
	h, err := ReadHeader(r, size)
	if err != nil {
		return nil, err
	}
	s := &Store{Header: h, Size: size}
	if h.Fresh() {
		if want.ChunkSize != 0 && size/(int64(want.ChunkSize)*SectorSize) < 2 {
			return nil, corrupt(ErrTruncated, -1, -1, "store is %d bytes, shorter than the header and first metadata area (2 chunks of %d bytes)",
				size, int64(want.ChunkSize)*SectorSize)
		}
		return s, nil
	}
	if want.ChunkSize != 0 && want.ChunkSize != h.ChunkSize {
		return nil, &ChunkSizeError{Header: h.ChunkSize, Expected: want.ChunkSize}
	}
	l := s.Layout()
	cb := l.ChunkBytes()
	chunks := s.Chunks()
	perArea := l.PerArea()
	var originChunks uint64
	if want.OriginSize > 0 {
		originChunks = uint64((want.OriginSize + cb - 1) / cb)
	}

	buf := make([]byte, min(cb, areaReadLen))
	var ahead areaReader
	for a := uint64(0); ; a++ {
		// Every area before this one is full, and each takes E+1 chunks,
		// so a cannot exceed chunks and AreaChunk cannot overflow.
		loc := l.AreaChunk(a)
		if loc >= chunks {
			return nil, corrupt(ErrTruncated, int64(a), -1,
				"metadata area %d would be chunk %d, but the store has %d chunks: the previous area is full, so the kernel reads this one",
				a, loc, chunks)
		}
		first, err := ahead.area(r, l, a, chunks, len(buf))
		if err != nil {
			return nil, fmt.Errorf("read metadata area %d at byte %d: %w", a, int64(loc)*cb, err)
		}
		full := true
		for i := uint64(0); i < perArea && full; {
			off := int64(loc)*cb + int64(i*entryLen)
			n := min(int64(len(buf)), int64((perArea-i)*entryLen))
			b := buf[:n]
			if i == 0 {
				b = first[:n]
			} else if err := readFull(r, b, off); err != nil {
				return nil, fmt.Errorf("read metadata area %d at byte %d: %w", a, off, err)
			}
			for p := int64(0); p < n; p, i = p+entryLen, i+1 {
				e := Exception{
					Old: binary.LittleEndian.Uint64(b[p:]),
					New: binary.LittleEndian.Uint64(b[p+8:]),
				}
				if e.New == 0 {
					full = false
					break
				}
				if err := checkEntry(l, e, chunks, originChunks, want.OriginSize); err != nil {
					err.Area, err.Entry = int64(a), int64(i)
					return nil, err
				}
				s.Exceptions = append(s.Exceptions, e)
			}
		}
		if !full {
			s.Areas = a + 1
			break
		}
	}
	if err := checkDuplicates(s.Exceptions, perArea); err != nil {
		return nil, err
	}
	return s, nil
}

// areaReadAhead is the most metadata areas ReadStore reads at once. The
// areas lie E+1 chunks apart, so each is a read of its own, and one after
// the other they cost a device round trip each: a 10 GiB store of 4 KiB
// chunks has 5,120 areas. The batches grow 1, 2, 4, ... up to this, so a
// small store reads no area it does not need.
const areaReadAhead = 16

// areaReader reads the first piece (up to areaReadLen bytes) of the next
// few metadata areas concurrently, as io.ReaderAt allows. An area past the
// table is read for nothing, and its read error is never reported.
type areaReader struct {
	from  uint64 // the first area of the batch
	bufs  [][]byte
	errs  []error
	batch int
	mem   []byte
}

// area returns the first n bytes of area a, which must be inside the store.
func (ar *areaReader) area(r io.ReaderAt, l Layout, a, chunks uint64, n int) ([]byte, error) {
	if a < ar.from || a >= ar.from+uint64(len(ar.bufs)) {
		ar.batch = min(max(1, 2*ar.batch), areaReadAhead)
		if len(ar.mem) < ar.batch*n {
			ar.mem = make([]byte, ar.batch*n)
		}
		ar.from, ar.bufs, ar.errs = a, ar.bufs[:0], ar.errs[:0]
		for k := uint64(0); k < uint64(ar.batch) && l.AreaChunk(a+k) < chunks; k++ {
			ar.bufs = append(ar.bufs, ar.mem[int(k)*n:][:n])
			ar.errs = append(ar.errs, nil)
		}
		var wg sync.WaitGroup
		for k := range ar.bufs {
			wg.Go(func() {
				off := int64(l.AreaChunk(a+uint64(k))) * l.ChunkBytes()
				ar.errs[k] = readFull(r, ar.bufs[k], off)
			})
		}
		wg.Wait()
	}
	return ar.bufs[a-ar.from], ar.errs[a-ar.from]
}

func checkEntry(l Layout, e Exception, chunks, originChunks uint64, originSize int64) *CorruptError {
	bad := func(kind error, format string, args ...any) *CorruptError {
		return &CorruptError{Kind: kind, Detail: fmt.Sprintf("exception %v: ", e) + fmt.Sprintf(format, args...)}
	}
	switch {
	case e.New >= chunks:
		return bad(ErrPastStore, "new chunk %d is past the end of the store (%d chunks)", e.New, chunks)
	case l.IsMetadata(e.New):
		return bad(ErrMetadataSlot, "new chunk %d holds metadata area %d", e.New, (e.New-1)/(l.PerArea()+1))
	case originChunks > 0 && e.Old >= originChunks:
		return bad(ErrPastOrigin, "old chunk %d starts past the end of the origin (%d bytes, %d chunks)", e.Old, originSize, originChunks)
	}
	return nil
}

// checkDuplicates rejects two exceptions for the same origin chunk or the
// same store chunk. The kernel never writes either; a store that has one is
// damaged, and which copy wins would depend on the order of the copies.
func checkDuplicates(ex []Exception, perArea uint64) error {
	type keyed struct {
		key uint64
		pos int
	}
	keys := make([]keyed, len(ex))
	for _, pick := range []struct {
		kind error
		name string
		get  func(Exception) uint64
	}{
		{ErrDuplicateOld, "old", func(e Exception) uint64 { return e.Old }},
		{ErrDuplicateNew, "new", func(e Exception) uint64 { return e.New }},
	} {
		for i, e := range ex {
			keys[i] = keyed{pick.get(e), i}
		}
		slices.SortFunc(keys, func(a, b keyed) int {
			return cmp.Or(cmp.Compare(a.key, b.key), cmp.Compare(a.pos, b.pos))
		})
		for i := 1; i < len(keys); i++ {
			if keys[i].key != keys[i-1].key {
				continue
			}
			first, dup := uint64(keys[i-1].pos), uint64(keys[i].pos)
			return corrupt(pick.kind, int64(dup/perArea), int64(dup%perArea),
				"exception %v repeats %s chunk %d of exception %v (area %d entry %d)",
				ex[dup], pick.name, keys[i].key, ex[first], first/perArea, first%perArea)
		}
	}
	return nil
}

// readFull reads len(p) bytes at off; a short read is an error even when
// the reader says nothing more than io.EOF.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return err
}
