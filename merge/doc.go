// Package merge reads dm-snapshot's persistent exception store (the "COW")
// and merges it back into its origin without the kernel.
//
// # The store
//
// The kernel's persistent store (drivers/md/dm-snap-persistent.c, documented
// in Documentation/admin-guide/device-mapper/snapshot.rst) is a sequence of
// chunks of C sectors, C a power of two, all little endian:
//
//   - chunk 0 is a header: magic "SnAp" (0x70416e53), a valid flag, the format
//     version (1) and C;
//   - metadata area a lives at chunk 1 + a*(E+1), where E = C*512/16 is the
//     number of 16-byte entries {old chunk, new chunk} that fit in a chunk;
//   - the data chunks fill every other chunk from chunk 2 on, so each area is
//     followed by the E data chunks it describes (allocation order; the
//     kernel may commit entries slightly out of that order).
//
// The table ends at the first entry whose new chunk is 0 (chunk 0 is the
// header, so no real entry can point there). When an area is completely full
// the kernel moves on and reads the next area, which it zeroed when the
// previous one filled; a store whose full last area has no successor inside
// the device cannot be loaded. A zeroed header (magic 0) is a store the
// kernel has never used. A kernel merge walks the table backwards and clears
// the entries it has merged, so a half-merged store is simply a shorter one.
//
// ReadStore parses a store from any io.ReaderAt and checks every index
// against the store and origin sizes; it never trusts the table.
//
// # Offline merge
//
// Offline copies every exception's chunk from the store back to its place
// on the origin. It takes the exceptions in origin order, a window of up to
// 64 MiB of chunks at a time: each window's chunks are read from the store
// in store order, with large reads that also take in the few unneeded
// chunks between needed ones, then written out in origin order, runs of
// consecutive origin chunks going out as one write. Runs that only a short
// stretch of unchanged origin bytes separates (FillGap, 32 KiB) are joined
// too: the stretch is read from the origin and written back as it was, so
// that scattered small chunks cost a few large writes rather than one
// small write each. A store that fits in one window is read once in order
// and written once in order. Reads and writes are spread over a few
// workers, each write starting as soon as the reads it needs are done, and
// the origin is flushed once at the end. The last chunk of an origin whose
// size is not a multiple of the chunk size is copied only up to the
// origin's end, as the kernel does.
//
// Copying is idempotent: the store is only read, and a filled gap is
// written with the bytes it already held, so a merge that is killed or
// loses power, even in the middle of a write, can simply run again. Gap
// filling needs what an offline merge needs anyway: nothing else writes
// the origin meanwhile (the volume is torn down, and a block device is
// opened exclusively); it never writes the store's own extents on the
// origin. To avoid redoing everything, a small write-ahead progress record
// names the store (header, entry count and a hash of the table) and how
// far, in origin order, the copy is known to be durable: the origin is
// flushed before each save, so the record never claims more than the disk
// holds. Only when every chunk is durable may the caller mark
// the store invalid (Invalidate), so the kernel will never merge it again.
//
// A store whose valid flag is 0 is refused: the kernel dropped that snapshot
// (it overflowed or hit an I/O error) and would "merge" it as a silent no-op,
// so its exceptions do not describe a complete earlier state.
//
// Raw devices are opened with O_DIRECT so that neither the store nor the
// origin is read through a stale page cache; a store file kept by snapctl is
// read through its extents on the raw device (OpenSegments), never through
// the file.
//
// # Seeded stores
//
// A checkpoint's store may be seeded before the snapshot is taken with an
// exception for every wholly free chunk of the origin's filesystem
// (PlanSeeds, WriteSeeded; see seed.go), so that the kernel copies nothing
// when the filesystem writes into free space. The seeds fill the first
// metadata areas; their data slots are zeros on the COW device
// (CowPieces) and take no room in the store file. An offline merge leaves
// them alone (OfflineOptions.SeededAreas): their "old data" is free space.
package merge
