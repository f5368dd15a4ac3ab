package merge

import (
	"encoding/binary"
	"fmt"
)

// On-disk constants of the persistent exception store.
const (
	// Magic is the header's magic number, "SnAp" read as a little-endian u32.
	Magic = 0x70416e53
	// Version is the only store format version the kernel knows.
	Version = 1
	// SectorSize is the unit of the chunk size. The chunk sizes the kernel
	// takes are dmtable.ValidChunkSectors.
	SectorSize = 512

	headerLen = 16 // magic, valid, version, chunk size: four u32
	entryLen  = 16 // old chunk, new chunk: two u64
)

// Header is the store's first chunk.
type Header struct {
	Magic     uint32
	Valid     bool   // false once the kernel dropped the snapshot
	Version   uint32 // 1
	ChunkSize uint32 // sectors
}

// Fresh reports a zeroed header: a store the kernel has never activated.
func (h Header) Fresh() bool { return h.Magic == 0 }

// MarshalBinary encodes the header's 16 bytes.
func (h Header) MarshalBinary() ([]byte, error) {
	b := make([]byte, headerLen)
	binary.LittleEndian.PutUint32(b[0:], h.Magic)
	if h.Valid {
		binary.LittleEndian.PutUint32(b[4:], 1)
	}
	binary.LittleEndian.PutUint32(b[8:], h.Version)
	binary.LittleEndian.PutUint32(b[12:], h.ChunkSize)
	return b, nil
}

// Exception maps one origin chunk to the store chunk holding its saved data.
type Exception struct {
	Old uint64 `json:"old"` // chunk on the origin
	New uint64 `json:"new"` // chunk in the store
}

func (e Exception) String() string { return fmt.Sprintf("%d->%d", e.Old, e.New) }

// Layout is the geometry a chunk size gives a store. All chunk numbers are
// store chunks counted from the header (chunk 0).
type Layout struct {
	ChunkSize uint32 // sectors, a power of two
}

// ChunkBytes is the chunk size in bytes.
func (l Layout) ChunkBytes() int64 { return int64(l.ChunkSize) * SectorSize }

// PerArea is E, the number of exceptions one metadata area holds.
func (l Layout) PerArea() uint64 { return uint64(l.ChunkSize) * SectorSize / entryLen }

// AreaChunk is the chunk holding metadata area a.
func (l Layout) AreaChunk(a uint64) uint64 { return 1 + a*(l.PerArea()+1) }

// IsMetadata reports whether chunk c is the header or a metadata area.
func (l Layout) IsMetadata(c uint64) bool { return c == 0 || (c-1)%(l.PerArea()+1) == 0 }

// DataChunk is the chunk the kernel hands out for the n-th exception
// (counting from 0) of a store filled in order: chunk 2 first, skipping each
// metadata area.
func (l Layout) DataChunk(n uint64) uint64 {
	e := l.PerArea()
	return l.AreaChunk(n/e) + 1 + n%e
}
