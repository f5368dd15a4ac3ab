package cowsize

import (
	"fmt"
	"math/bits"
)

// Seeded returns the exact size of the store file of a seeded store
// (merge.SeedPlan): the header, the metadata chunks of its areas seeded
// areas (their data slots take no room in the file), then an ordinary
// store from area `areas` on with room for realChunks real exceptions:
//
//	areas + chunks(realChunks) = areas + realChunks + 2 + floor(realChunks/E)
//
// ChangedChunks is realChunks; MetadataChunks counts the header, the
// seeded areas and the 1 + floor(realChunks/E) areas of the real
// exceptions. It fails with ChunkSizeError or TooLargeError.
func Seeded(areas, realChunks uint64, chunkBytes uint32) (Size, error) {
	s, err := ForChunks(realChunks, chunkBytes)
	if err != nil {
		return Size{}, err
	}
	tooBig := TooLargeError{What: fmt.Sprintf("seeded store of %d areas and %d changed chunks of %d bytes", areas, realChunks, chunkBytes)}
	meta, c1 := bits.Add64(s.MetadataChunks, areas, 0)
	total, c2 := bits.Add64(s.TotalChunks, areas, 0)
	if c1|c2 != 0 {
		return Size{}, tooBig
	}
	b, err := chunkBytesOf(total, chunkBytes)
	if err != nil {
		return Size{}, tooBig
	}
	s.MetadataChunks, s.TotalChunks, s.Bytes = meta, total, b
	return s, nil
}
