package merge

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/snapctl/snapctl/dmtable"
)

// WriteStore lays out a store the way the kernel would: the header in chunk
// 0 and the exceptions, in order, in metadata areas 0, 1, ... When the last
// area is exactly full the next one is written as zeros, as the kernel does.
// Each metadata chunk is written whole; data chunks are left to the caller
// (at New * ChunkBytes). It writes whatever it is given, valid or not, so
// tests can build damaged stores; Layout.DataChunk gives the kernel's choice
// of new chunks.
func WriteStore(w io.WriterAt, h Header, ex []Exception) error {
	l := Layout{ChunkSize: h.ChunkSize}
	if !dmtable.ValidChunkSectors(uint64(h.ChunkSize)) {
		return fmt.Errorf("write store: chunk size %d sectors is not a power of two up to %d", h.ChunkSize, dmtable.MaxChunkSectors)
	}
	cb := l.ChunkBytes()
	chunk := make([]byte, cb)
	hb, _ := h.MarshalBinary()
	copy(chunk, hb)
	if _, err := w.WriteAt(chunk, 0); err != nil {
		return fmt.Errorf("write store header: %w", err)
	}
	perArea := l.PerArea()
	for a := uint64(0); a <= uint64(len(ex))/perArea; a++ {
		clear(chunk)
		for i := uint64(0); i < perArea && a*perArea+i < uint64(len(ex)); i++ {
			e := ex[a*perArea+i]
			binary.LittleEndian.PutUint64(chunk[i*entryLen:], e.Old)
			binary.LittleEndian.PutUint64(chunk[i*entryLen+8:], e.New)
		}
		if _, err := w.WriteAt(chunk, int64(l.AreaChunk(a))*cb); err != nil {
			return fmt.Errorf("write metadata area %d: %w", a, err)
		}
	}
	return nil
}
