package cowsize

import (
	"errors"
	"testing"
)

// TestSeeded checks the seeded store file size against hand counts: with 4
// KiB chunks E = 256, so 3 seeded areas and 255 real chunks take the
// header, 3 seeded metadata chunks, area 3 and 255 data chunks = 260
// chunks; 256 real chunks need area 4 as well: 262.
func TestSeeded(t *testing.T) {
	for _, c := range []struct {
		areas, real uint64
		chunk       uint32
		total, meta uint64
	}{
		{0, 0, 4096, 2, 2},           // an ordinary empty store
		{0, 1000, 4096, 1005, 5},     // ForChunks(1000)
		{3, 255, 4096, 260, 5},       // 1 + 3 + 1 + 255
		{3, 256, 4096, 262, 6},       // area 4 must exist at N = E
		{207, 0, 4096, 209, 209},     // the measured 256 MiB ext4: header, 207 seeded, area 207
		{207, 2048, 4096, 2265, 217}, // + 2048 data + 8 more areas (2048/256)
		{1, 2047, 8192, 2053, 6},     // E = 512: header, 1 seeded, areas 1-4, 2047 data
	} {
		got, err := Seeded(c.areas, c.real, c.chunk)
		if err != nil {
			t.Fatal(err)
		}
		if got.TotalChunks != c.total || got.MetadataChunks != c.meta || got.Bytes != c.total*uint64(c.chunk) || got.ChangedChunks != c.real {
			t.Errorf("Seeded(%d, %d, %d) = %+v, want %d chunks (%d metadata)", c.areas, c.real, c.chunk, got, c.total, c.meta)
		}
	}
	if _, err := Seeded(1, 1, 1000); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("chunk 1000: got %v, want ChunkSizeError", err)
	}
	if _, err := Seeded(^uint64(0), 1, 4096); !errors.As(err, new(TooLargeError)) {
		t.Errorf("huge: got %v, want TooLargeError", err)
	}
	if _, err := Seeded(1<<52, 0, 4096); !errors.As(err, new(TooLargeError)) {
		t.Errorf("2^52 areas of 4 KiB: got %v, want TooLargeError", err)
	}
}
