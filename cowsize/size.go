package cowsize

import (
	"fmt"
	"math"
	"math/bits"

	"github.com/snapctl/snapctl/merge"
)

// Chunk sizes, in bytes. The kernel takes the chunk size in 512-byte
// sectors; snapctl accepts powers of two from MinChunk to MaxChunk.
const (
	SectorSize   = merge.SectorSize
	MinChunk     = 4 << 10
	MaxChunk     = 512 << 10
	DefaultChunk = 4 << 10
)

// MaxBytes is the largest size, offset or store handled: 2^63-1 bytes, the
// largest size a file or block device can report.
const MaxBytes = math.MaxInt64

const headerChunks = 1

// Size is the exception store needed for a change set.
type Size struct {
	ChunkSize      uint32 // bytes per chunk
	ChangedChunks  uint64 // N: distinct origin chunks the change writes
	MetadataChunks uint64 // the header plus 1 + N/E exception areas
	TotalChunks    uint64 // ChangedChunks + MetadataChunks
	Bytes          uint64 // TotalChunks * ChunkSize, at most MaxBytes
}

// ChunkSectors is the chunk size in 512-byte sectors, as a snapshot table
// line wants it.
func (s Size) ChunkSectors() uint32 { return s.ChunkSize / SectorSize }

// Areas is the number of exception areas in the store.
func (s Size) Areas() uint64 { return s.MetadataChunks - headerChunks }

// ChunkSizeError reports a chunk size that is not a power of two from
// MinChunk to MaxChunk bytes.
type ChunkSizeError struct {
	Bytes uint64
}

func (e ChunkSizeError) Error() string {
	return fmt.Sprintf("chunk size %d bytes: want a power of two from 4 KiB to 512 KiB (4096..524288 bytes)", e.Bytes)
}

// ChunkBelowBlockError reports a chunk size smaller than the logical block
// size of the device the store or the origin sits on.
type ChunkBelowBlockError struct {
	Device     string
	ChunkBytes uint32
	BlockBytes uint32
}

func (e ChunkBelowBlockError) Error() string {
	return fmt.Sprintf("chunk size %d bytes is smaller than the logical block size %d bytes of %q", e.ChunkBytes, e.BlockBytes, e.Device)
}

// TooLargeError reports a size, offset or count past MaxBytes.
type TooLargeError struct {
	What string // what was being computed, e.g. "store for 5 chunks of 4096 bytes"
}

func (e TooLargeError) Error() string { return e.What + " exceeds 2^63-1 bytes" }

// StoreTooSmallError reports a store smaller than the header and the first
// exception area, which every persistent store needs.
type StoreTooSmallError struct {
	Bytes, MinBytes uint64
}

func (e StoreTooSmallError) Error() string {
	return fmt.Sprintf("store of %d bytes is smaller than the %d bytes of header and first exception area", e.Bytes, e.MinBytes)
}

// CheckChunk returns ChunkSizeError unless chunkBytes is a power of two from
// MinChunk to MaxChunk. It takes a uint64 so a parsed flag can be checked
// before it is narrowed.
func CheckChunk(chunkBytes uint64) error {
	if chunkBytes < MinChunk || chunkBytes > MaxChunk || bits.OnesCount64(chunkBytes) != 1 {
		return ChunkSizeError{Bytes: chunkBytes}
	}
	return nil
}

// CheckBlockSize returns ChunkBelowBlockError when chunkBytes is smaller than
// the logical block size of device (the caller reads it, e.g. with
// BLKSSZGET). The kernel refuses such a snapshot.
func CheckBlockSize(device string, chunkBytes, logicalBlockBytes uint32) error {
	if chunkBytes < logicalBlockBytes {
		return ChunkBelowBlockError{Device: device, ChunkBytes: chunkBytes, BlockBytes: logicalBlockBytes}
	}
	return nil
}

// ExceptionsPerArea is E, the number of exceptions one metadata area of a
// chunk holds (merge.Layout.PerArea, the store format's geometry).
func ExceptionsPerArea(chunkBytes uint32) uint64 {
	return merge.Layout{ChunkSize: chunkBytes / SectorSize}.PerArea()
}

// ForChunks returns the exact store for n distinct changed chunks:
// n + 2 + floor(n/E) chunks. It fails with ChunkSizeError or TooLargeError.
func ForChunks(n uint64, chunkBytes uint32) (Size, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return Size{}, err
	}
	meta := headerChunks + 1 + n/ExceptionsPerArea(chunkBytes)
	total, carry := bits.Add64(n, meta, 0)
	if carry != 0 {
		return Size{}, tooLarge(n, chunkBytes)
	}
	b, err := chunkBytesOf(total, chunkBytes)
	if err != nil {
		return Size{}, tooLarge(n, chunkBytes)
	}
	return Size{ChunkSize: chunkBytes, ChangedChunks: n, MetadataChunks: meta, TotalChunks: total, Bytes: b}, nil
}

func tooLarge(n uint64, chunkBytes uint32) error {
	return TooLargeError{What: fmt.Sprintf("store for %d changed chunks of %d bytes", n, chunkBytes)}
}

// chunkBytesOf returns chunks*chunkBytes or an error past MaxBytes.
func chunkBytesOf(chunks uint64, chunkBytes uint32) (uint64, error) {
	hi, lo := bits.Mul64(chunks, uint64(chunkBytes))
	if hi != 0 || lo > MaxBytes {
		return 0, TooLargeError{What: fmt.Sprintf("%d chunks of %d bytes", chunks, chunkBytes)}
	}
	return lo, nil
}

// Capacity returns how many distinct chunks a store of storeBytes holds:
// the largest N with ForChunks(N).Bytes <= storeBytes. Bytes past the last
// whole chunk are never used. It fails with StoreTooSmallError below two
// chunks, TooLargeError past MaxBytes and ChunkSizeError.
func Capacity(storeBytes uint64, chunkBytes uint32) (uint64, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return 0, err
	}
	if storeBytes > MaxBytes {
		return 0, TooLargeError{What: fmt.Sprintf("store of %d bytes", storeBytes)}
	}
	minChunks := uint64(headerChunks + 1)
	chunks := storeBytes / uint64(chunkBytes)
	if chunks < minChunks {
		return 0, StoreTooSmallError{Bytes: storeBytes, MinBytes: minChunks * uint64(chunkBytes)}
	}
	// Past the header and the first area, the chunks repeat in groups of
	// E data chunks followed by one area: the last of each group of E+1 is
	// an area that only pays off once the group's E data chunks are used.
	e := ExceptionsPerArea(chunkBytes)
	m := chunks - minChunks
	q, r := m/(e+1), m%(e+1)
	return q*e + min(r, e-1), nil
}

// WithMargin returns the store size with percent headroom added to s.Bytes,
// rounded up to whole chunks: (TotalChunks + ceil(TotalChunks*percent/100))
// chunks. It fails with TooLargeError past MaxBytes.
func (s Size) WithMargin(percent uint64) (uint64, error) {
	tooBig := TooLargeError{What: fmt.Sprintf("store of %d bytes with a %d%% margin", s.Bytes, percent)}
	hi, lo := bits.Mul64(s.TotalChunks, percent)
	if hi >= 100 {
		return 0, tooBig
	}
	extra, rem := bits.Div64(hi, lo, 100)
	var carry uint64
	if rem != 0 {
		extra, carry = bits.Add64(extra, 1, 0)
	}
	total, carry2 := bits.Add64(s.TotalChunks, extra, 0)
	if carry|carry2 != 0 {
		return 0, tooBig
	}
	b, err := chunkBytesOf(total, s.ChunkSize)
	if err != nil {
		return 0, tooBig
	}
	return b, nil
}
