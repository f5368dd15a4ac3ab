package bow

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrClosed is returned for I/O on a closed engine.
var ErrClosed = errors.New("bow engine is closed")

// TransitionError reports a state change that is not one step forward.
type TransitionError struct {
	From, To State
}

func (e TransitionError) Error() string {
	return fmt.Sprintf("change bow state from %v to %v: only %v is allowed next", e.From, e.To, e.From+1)
}

// NoSpaceError reports that a write in checkpoint state needed more free
// space for backups than is left. The write did not happen and the
// checkpoint is still complete. It wraps ENOSPC.
type NoSpaceError struct {
	Device string
	Needed int64 // bytes the write needed
	Free   int64 // bytes that were left
}

func (e NoSpaceError) Error() string {
	return fmt.Sprintf("back up on %s: need %d bytes of free space, %d left: %v", e.Device, e.Needed, e.Free, syscall.ENOSPC)
}

func (e NoSpaceError) Unwrap() error { return syscall.ENOSPC }

// BlockSizeError reports a block size that is not a power of two from 512 to
// 4096, or one that differs from the block size of an existing log.
type BlockSizeError struct {
	Size int64
	Log  int64 // block size of the log on the device; 0 if none
}

func (e BlockSizeError) Error() string {
	if e.Log != 0 {
		return fmt.Sprintf("block size %d: the checkpoint on the device uses %d", e.Size, e.Log)
	}
	return fmt.Sprintf("block size %d: want a power of two from %d to %d", e.Size, MinBlockSize, MaxBlockSize)
}

// DeviceTooSmallError reports a device with fewer than two blocks.
type DeviceTooSmallError struct {
	Device    string
	Size      int64
	BlockSize int64
}

func (e DeviceTooSmallError) Error() string {
	return fmt.Sprintf("open %s: %d bytes is less than two %d-byte blocks", e.Device, e.Size, e.BlockSize)
}

// NeedsRestoreError reports a device that holds a checkpoint log the engine
// cannot resume: no saved range map matches it (the engine was not shut
// down cleanly, or its state file is gone). The checkpoint must be restored
// or rolled forward offline.
type NeedsRestoreError struct {
	Device string
	Reason string
}

func (e NeedsRestoreError) Error() string {
	return fmt.Sprintf("open %s: device holds a bow checkpoint that cannot be resumed (%s); restore it or roll it forward", e.Device, e.Reason)
}

// RestoreInProgressError reports a device whose restore was interrupted; it
// must be finished with Restore before the device is used.
type RestoreInProgressError struct {
	Device string
}

func (e RestoreInProgressError) Error() string {
	return fmt.Sprintf("open %s: a bow restore was interrupted and must be finished", e.Device)
}

// NoLogError reports a device without a checkpoint log where one is needed.
type NoLogError struct {
	Device string
}

func (e NoLogError) Error() string {
	return fmt.Sprintf("read log on %s: no bow checkpoint log in block 0", e.Device)
}

// CorruptLogError reports a log chain that fails validation. Nothing was
// written. Sequence and Entry locate the problem (Entry is -1 for a
// problem with the log block itself).
type CorruptLogError struct {
	Device   string
	Sequence int64
	Entry    int
	Reason   string
}

func (e CorruptLogError) Error() string {
	where := fmt.Sprintf("log block %d", e.Sequence)
	if e.Entry >= 0 {
		where += fmt.Sprintf(" entry %d", e.Entry)
	}
	return fmt.Sprintf("validate log on %s: %s: %s", e.Device, where, e.Reason)
}

// BrokenError reports an engine that stopped accepting writes after a device
// error left its bookkeeping out of step with the device. The log on the
// device is still valid up to its last durable write: restore it.
type BrokenError struct {
	Device string
	Cause  error
}

func (e BrokenError) Error() string {
	return fmt.Sprintf("bow on %s stopped after a device error: %v", e.Device, e.Cause)
}

func (e BrokenError) Unwrap() error { return e.Cause }
