package bow

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// On-disk constants of the checkpoint log, shared with Android's dm-bow and
// vold so that a log written by either side restores with the other.
const (
	// SectorSize is the unit of Entry.Source, Entry.Dest and Header.Sector0.
	SectorSize = 512
	// Magic marks block 0 as holding a live checkpoint log ("BOW").
	Magic uint32 = 0x00574f42
	// PartialMagic marks block 0 as holding a log whose restore has begun
	// ("WOB"); its Count is truncated to the entries still to be replayed.
	PartialMagic uint32 = 0x00424f57
	// Version is the only header version defined.
	Version uint16 = 0x0100
	// HeaderSize is the size of the encoded Header in bytes.
	HeaderSize = 28
	// EntrySize is the size of one encoded Entry in bytes.
	EntrySize = 24
	// MinBlockSize and MaxBlockSize bound the block size of the engine.
	MinBlockSize = 512
	MaxBlockSize = 4096
)

// Header is the fixed part of a log block.
type Header struct {
	Magic      uint32 `json:"magic"`
	Version    uint16 `json:"version"`
	HeaderSize uint16 `json:"header_size"`
	BlockSize  uint32 `json:"block_size"`
	Count      uint32 `json:"count"`
	Sequence   uint32 `json:"sequence"`
	// Sector0 is where the live contents of block 0 are kept while the log
	// occupies block 0, in 512-byte sectors.
	Sector0 uint64 `json:"sector0"`
}

// Entry records one backup: Size bytes that lived at Source were copied to
// Dest before Source was overwritten. Restore copies them back.
type Entry struct {
	Source   uint64 `json:"source"` // sectors
	Dest     uint64 `json:"dest"`   // sectors
	Size     uint32 `json:"size"`   // bytes, a multiple of the block size
	Checksum uint32 `json:"checksum"`
}

// LogBlock is one decoded log block: a header and its Count entries.
type LogBlock struct {
	Header
	Entries []Entry
}

// ValidBlockSize reports whether n is a block size the engine and the log
// support: a power of two from 512 to 4096.
func ValidBlockSize(n int64) bool {
	return n >= MinBlockSize && n <= MaxBlockSize && bits.OnesCount64(uint64(n)) == 1
}

// Capacity is the number of entries that fit in a log block of size bs.
func Capacity(bs int) int { return (bs - HeaderSize) / EntrySize }

// ParseHeader decodes the first HeaderSize bytes of b. It checks only that
// enough bytes are present and that the magic is Magic or PartialMagic.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("parse log header: %d bytes, want at least %d", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	h.Magic = le.Uint32(b[0:])
	h.Version = le.Uint16(b[4:])
	h.HeaderSize = le.Uint16(b[6:])
	h.BlockSize = le.Uint32(b[8:])
	h.Count = le.Uint32(b[12:])
	h.Sequence = le.Uint32(b[16:])
	h.Sector0 = le.Uint64(b[20:])
	if h.Magic != Magic && h.Magic != PartialMagic {
		return h, errNoMagic
	}
	return h, nil
}

var errNoMagic = fmt.Errorf("no bow log magic")

// ParseLogBlock decodes a whole log block. b must hold at least the block
// size named in its header. Structural problems (block size, header size,
// a count that overflows the block) are errors; the meaning of the entries
// is checked by Validate.
func ParseLogBlock(b []byte) (LogBlock, error) {
	h, err := ParseHeader(b)
	if err != nil {
		return LogBlock{Header: h}, err
	}
	lb := LogBlock{Header: h}
	if !ValidBlockSize(int64(h.BlockSize)) {
		return lb, fmt.Errorf("parse log block: block size %d is not a power of two from %d to %d", h.BlockSize, MinBlockSize, MaxBlockSize)
	}
	if int64(len(b)) < int64(h.BlockSize) {
		return lb, fmt.Errorf("parse log block: %d bytes, block size %d", len(b), h.BlockSize)
	}
	if h.HeaderSize < HeaderSize {
		return lb, fmt.Errorf("parse log block: header size %d, want at least %d", h.HeaderSize, HeaderSize)
	}
	if uint64(h.HeaderSize)+uint64(h.Count)*EntrySize > uint64(h.BlockSize) {
		return lb, fmt.Errorf("parse log block: %d entries after a %d-byte header overflow a %d-byte block", h.Count, h.HeaderSize, h.BlockSize)
	}
	lb.Entries = make([]Entry, h.Count)
	le := binary.LittleEndian
	for i := range lb.Entries {
		p := b[int(h.HeaderSize)+i*EntrySize:]
		lb.Entries[i] = Entry{
			Source:   le.Uint64(p[0:]),
			Dest:     le.Uint64(p[8:]),
			Size:     le.Uint32(p[16:]),
			Checksum: le.Uint32(p[20:]),
		}
	}
	return lb, nil
}

// Encode returns the block-sized encoding of l. Count is taken from
// len(l.Entries); HeaderSize, when zero, defaults to the standard 28 bytes.
// Unused bytes are zero.
func (l LogBlock) Encode() ([]byte, error) {
	bs := int64(l.BlockSize)
	if !ValidBlockSize(bs) {
		return nil, fmt.Errorf("encode log block: block size %d is not a power of two from %d to %d", bs, MinBlockSize, MaxBlockSize)
	}
	hs := int(l.HeaderSize)
	if hs == 0 {
		hs = HeaderSize
	}
	if hs < HeaderSize || int64(hs+len(l.Entries)*EntrySize) > bs {
		return nil, fmt.Errorf("encode log block: %d entries after a %d-byte header do not fit in %d bytes", len(l.Entries), hs, bs)
	}
	b := make([]byte, bs)
	h := l.Header
	h.HeaderSize = uint16(hs)
	h.Count = uint32(len(l.Entries))
	putHeader(b, h)
	for i, e := range l.Entries {
		putEntry(b[hs+i*EntrySize:], e)
	}
	return b, nil
}

func putHeader(b []byte, h Header) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], h.Magic)
	le.PutUint16(b[4:], h.Version)
	le.PutUint16(b[6:], h.HeaderSize)
	le.PutUint32(b[8:], h.BlockSize)
	le.PutUint32(b[12:], h.Count)
	le.PutUint32(b[16:], h.Sequence)
	le.PutUint64(b[20:], h.Sector0)
}

func putEntry(b []byte, e Entry) {
	le := binary.LittleEndian
	le.PutUint64(b[0:], e.Source)
	le.PutUint64(b[8:], e.Dest)
	le.PutUint32(b[16:], e.Size)
	le.PutUint32(b[20:], e.Checksum)
}

// Checksum is the checksum dm-bow stores for a backup of data taken from
// block index block (the source sector divided by the sectors per block):
// the reflected CRC-32 with the IEEE polynomial, started from the block
// index instead of all ones and without the final inversion, run over the
// data block after block. A stored checksum of 0 means "not checked".
func Checksum(block uint64, data []byte) uint32 {
	return crcUpdate(uint32(block), data)
}

// crcUpdate continues a dm-bow checksum over more data. hash/crc32 inverts
// on the way in and out; undoing both leaves the bare register update.
func crcUpdate(crc uint32, data []byte) uint32 {
	return ^crc32.Update(^crc, crc32.IEEETable, data)
}

func putHeaderCount(b []byte, n uint32) { binary.LittleEndian.PutUint32(b[12:], n) }

func putHeaderMagic(b []byte, m uint32) { binary.LittleEndian.PutUint32(b[0:], m) }
