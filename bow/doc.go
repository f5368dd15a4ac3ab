// Package bow is a userspace backup-on-write block device: the engine of
// Android's dm-bow (Paul Lawrence, 2018) rebuilt as a Go library, for
// devices with no room for a preallocated snapshot store. The space for
// backups is the space the filesystem is not using.
//
// # States
//
// An Engine runs over a Device (an image file or block device) and moves
// through three states, one step at a time:
//
//   - StateTrim: the filesystem tells the engine what it does not use by
//     discarding it (fstrim). Discarded blocks become free; they are not
//     passed down, so their data is still there. Writes make the blocks they
//     touch in-use again.
//   - StateCheckpoint: the contents of every block that was not free become
//     the checkpoint. Before a write overwrites such a block, the engine
//     copies the old contents into free space (in as many pieces as free
//     space is fragmented), records the copy in a log, and only then lets the
//     write through. Writes into free space just mark it changed. Block 0
//     holds the log; its live contents are kept in a free block and reads
//     and writes of block 0 go there.
//   - StateCommitted: the live block 0 is copied home, the log is gone and
//     the engine passes everything through.
//
// Restore, run offline on the device, undoes everything written since the
// checkpoint; Engine.Commit (or RollForward, offline) keeps it.
//
// # The log
//
// The log is byte-compatible with dm-bow v1.2 and Android's vold, so a
// device checkpointed by either can be restored by the other. Block 0
// holds a 28-byte little-endian header (magic 0x00574f42 "BOW", version
// 0x0100, header size, block size, entry count, sequence number, and the
// sector where the live block 0 is kept) followed by 24-byte entries
// (source and destination in 512-byte sectors, size in bytes, checksum).
// The checksum is the reflected IEEE CRC-32 run without its usual
// inversions, started from the source block number, over the backed-up
// data; 0 means unchecked (used for moves of the live block 0, which keeps
// changing). When the log block is full it is itself backed up like any
// other block, the sequence number goes up, and the new log block's first
// entry restores the old one into block 0, forming a chain back to
// sequence 0, whose first entry restores the original block 0.
//
// Restore walks that chain twice. The first pass changes nothing: it
// follows the entries newest first, keeping a map of where each block's
// contents will be once the entries seen so far are replayed, and checks
// every log block (magic, block size, sequence) and entry (bounds, sizes,
// alignment, checksum of the data as it will be read). Only if everything
// holds does the second pass copy each backup home, newest first, block 0
// last. Before it overwrites a block that an entry replayed since the last
// mark read from, it marks its progress in block 0 (magic "WOB" and a count
// truncated to the entries left), so a restore killed at any point finishes
// when run again, never replaying an entry whose backup it destroyed.
//
// # Durability
//
// For every write that needs backups the engine keeps the order backup,
// then log, then data: the backups are durable before the log block naming
// them is written, and that is durable before the data is issued, so a
// crash at any point leaves a log that restores the checkpoint exactly.
// Writes are grouped: a background group commit takes every write queued
// meanwhile, flushes once so all their backups are durable, appends all
// their entries and writes the log block, flushes again, and then writes
// their data. A write is acknowledged once its backups are copied; reads
// of its range wait until its data is on the device, and Flush waits for
// everything queued before it (Options.WriteBack bounds the queue, or
// turns this off). As with any volatile write cache, what was written but
// not flushed may be lost in a crash; the checkpoint never is. Writes to disjoint ranges run in parallel; overlapping
// ones are applied in arrival order (range locks granted by ticket). No
// lock is held across device I/O except the range lock of the blocks the
// I/O touches.
//
// # Space
//
// Free space is indexed by a balanced tree, as is the map of block kinds,
// so finding space and classifying a write cost O(log n). Backups are
// taken from the top of the device. Every write reserves, besides its own
// backups, the blocks that the log blocks its entries will fill need, so a
// write either fits entirely or fails before touching anything. When free
// space runs out, the OnFull policy fails the write with ENOSPC (the
// checkpoint stays complete) or commits the checkpoint and lets the write
// through; Options.LowSpace warns before that happens.
//
// Discards in checkpoint state free blocks that were changed since the
// checkpoint: their old contents, if they mattered, are already backed up,
// and a later backup stored there is replayed before the older entry that
// restores them. Discards of anything else are ignored, since those blocks
// still hold what a restore needs.
//
// # Restarts
//
// The log alone cannot tell free blocks from changed ones. Close saves the
// engine's block map beside the device (Options.StatePath; atomically,
// with fsyncs) and Open resumes from it when it matches the log in block 0,
// deleting it first so that only a clean Close can leave one. A device with
// a log and no matching map (after a crash) cannot be resumed: Open fails
// with NeedsRestoreError, and the checkpoint is restored or rolled forward
// offline. Trims made in trim state are not saved; fstrim again after a
// restart.
//
// The engine issues only block-aligned I/O to the Device; unaligned
// requests are read, modified and written a block at a time under the
// range lock.
//
// Package bow/serve serves an engine to the kernel as /dev/nbdN (or to NBD
// clients on a socket) and package bow/control steers a running server
// over its control socket; package bow/nbd is the NBD protocol itself.
//
// References: the dm-bow target (drivers/md/dm-bow.c and
// Documentation/device-mapper/dm-bow.txt in the Android common kernel) and
// vold's Checkpoint.cpp (cp_restoreCheckpoint). No code was taken from
// either.
package bow
