package bow

import (
	"errors"
	"fmt"
	"syscall"
)

// ErrClosed is returned for I/O on a closed engine.
var ErrClosed = errors.New("bow engine is closed")

// ErrTransition reports a state change that is not one step forward.
type ErrTransition struct {
	From, To State
}

func (e ErrTransition) Error() string {
	return fmt.Sprintf("change bow state from %v to %v: only %v is allowed next", e.From, e.To, e.From+1)
}

// ErrNoSpace reports that a write in checkpoint state needed more free
// space for backups than is left. The write did not happen and the
// checkpoint is still complete. It wraps ENOSPC.
type ErrNoSpace struct {
	Device string
	Needed int64 // bytes the write needed
	Free   int64 // bytes that were left
}

func (e ErrNoSpace) Error() string {
	return fmt.Sprintf("back up on %s: need %d bytes of free space, %d left: %v", e.Device, e.Needed, e.Free, syscall.ENOSPC)
}

func (e ErrNoSpace) Unwrap() error { return syscall.ENOSPC }

// ErrBlockSize reports a block size that is not a power of two from 512 to
// 4096, or one that differs from the block size of an existing log.
type ErrBlockSize struct {
	Size int64
	Log  int64 // block size of the log on the device; 0 if none
}

func (e ErrBlockSize) Error() string {
	if e.Log != 0 {
		return fmt.Sprintf("block size %d: the checkpoint on the device uses %d", e.Size, e.Log)
	}
	return fmt.Sprintf("block size %d: want a power of two from %d to %d", e.Size, MinBlockSize, MaxBlockSize)
}

// ErrDeviceTooSmall reports a device with fewer than two blocks.
type ErrDeviceTooSmall struct {
	Device    string
	Size      int64
	BlockSize int64
}

func (e ErrDeviceTooSmall) Error() string {
	return fmt.Sprintf("open %s: %d bytes is less than two %d-byte blocks", e.Device, e.Size, e.BlockSize)
}

// ErrNeedsRestore reports a device that holds a checkpoint log the engine
// cannot resume: no saved range map matches it (the engine was not shut
// down cleanly, or its state file is gone). The checkpoint must be restored
// or rolled forward offline.
type ErrNeedsRestore struct {
	Device string
	Reason string
}

func (e ErrNeedsRestore) Error() string {
	return fmt.Sprintf("open %s: device holds a bow checkpoint that cannot be resumed (%s); restore it or roll it forward", e.Device, e.Reason)
}

// ErrRestoreInProgress reports a device whose restore was interrupted; it
// must be finished with Restore before the device is used.
type ErrRestoreInProgress struct {
	Device string
}

func (e ErrRestoreInProgress) Error() string {
	return fmt.Sprintf("open %s: a bow restore was interrupted and must be finished", e.Device)
}

// ErrNoLog reports a device without a checkpoint log where one is needed.
type ErrNoLog struct {
	Device string
}

func (e ErrNoLog) Error() string {
	return fmt.Sprintf("read log on %s: no bow checkpoint log in block 0", e.Device)
}

// ErrCorruptLog reports a log chain that fails validation. Nothing was
// written. Sequence and Entry locate the problem (Entry is -1 for a
// problem with the log block itself).
type ErrCorruptLog struct {
	Device   string
	Sequence int64
	Entry    int
	Reason   string
}

func (e ErrCorruptLog) Error() string {
	where := fmt.Sprintf("log block %d", e.Sequence)
	if e.Entry >= 0 {
		where += fmt.Sprintf(" entry %d", e.Entry)
	}
	return fmt.Sprintf("validate log on %s: %s: %s", e.Device, where, e.Reason)
}

// ErrBroken reports an engine that stopped accepting writes after a device
// error left its bookkeeping out of step with the device. The log on the
// device is still valid up to its last durable write: restore it.
type ErrBroken struct {
	Device string
	Cause  error
}

func (e ErrBroken) Error() string {
	return fmt.Sprintf("bow on %s stopped after a device error: %v", e.Device, e.Cause)
}

func (e ErrBroken) Unwrap() error { return e.Cause }
