// Package cowsize computes the exact size of a dm-snapshot persistent
// exception store (the COW) for a given change set.
//
// The kernel's persistent store is cut into chunks of C sectors (512 bytes
// each; C is a power of two). Chunk 0 holds the header. Exceptions are
// recorded in metadata areas of one chunk each; an area holds E = C*512/16
// entries (16 bytes each: the origin chunk and the store chunk). Area a sits
// at chunk 1 + a*(E+1), and each area is followed by the E data chunks it
// describes. The kernel allocates data chunks in order, stepping over the
// metadata slots, and when an area fills it immediately zeroes the next one.
// So a store that must hold N distinct chunks needs
//
//	chunks(N) = N + 2 + floor(N/E)
//
// chunks of C*512 bytes: one header, 1 + floor(N/E) areas, N data chunks.
// Exactly at N = k*E the (k+1)-th area must already fit; one chunk less and
// the N-th exception invalidates (or, with the overflow option, overflows)
// the snapshot. After N exceptions the kernel's status line reports
// TotalChunks*C allocated sectors and MetadataChunks*C metadata sectors.
//
// A change set is what an update will write, counted in distinct chunks of
// the origin: a plain count (ForChunks), a list of byte ranges (ForRanges,
// ParseRanges), or the difference between the current and the new image of
// the device (ForImages, Diff). Capacity is the inverse: how many distinct
// chunks a store of a given size holds.
//
// All arithmetic is checked: sizes up to 2^63-1 bytes are handled, anything
// larger is refused with TooLargeError rather than wrapped around.
//
// See the kernel's Documentation/admin-guide/device-mapper/snapshot.rst for
// the snapshot targets themselves.
package cowsize
