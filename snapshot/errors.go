package snapshot

import (
	"errors"
	"fmt"

	"github.com/snapctl/snapctl/dmtable"
)

// InterruptedError is a volume whose last operation was cut short (killed,
// power cut). Activate, or the same command again, finishes or undoes it.
type InterruptedError struct {
	Volume  string
	Phase   Phase
	Step    string
	Command string
	Err     error // why it stopped, when known
}

func (e *InterruptedError) Error() string {
	s := fmt.Sprintf("volume %q has an interrupted operation (%s, at step %s, started by %q)", e.Volume, e.Phase, e.Step, e.Command)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *InterruptedError) Unwrap() error { return e.Err }

// WrongPhaseError is an operation that does not apply to the volume's phase.
type WrongPhaseError struct {
	Volume string
	Op     string
	Phase  Phase
	Mode   Mode
}

func (e *WrongPhaseError) Error() string {
	switch e.Phase {
	case PhaseAttached:
		return fmt.Sprintf("%s %q: the volume has no snapshot (it is only attached)", e.Op, e.Volume)
	case PhasePrepared:
		return fmt.Sprintf("%s %q: the volume is already prepared (%s mode)", e.Op, e.Volume, e.Mode)
	}
	return fmt.Sprintf("%s %q: not possible while the volume is %s", e.Op, e.Volume, e.Phase)
}

// InUseError is an operation that would change the content under an open
// device (a mounted filesystem).
type InUseError struct {
	Volume    string
	Device    string
	OpenCount int32
	Op        string
}

func (e *InUseError) Error() string {
	return fmt.Sprintf("%s %q: %s is open (%d holders, a mounted filesystem?); its content would change underneath", e.Op, e.Volume, e.Device, e.OpenCount)
}

// StoreUnusableError is a store the kernel invalidated or found full: its
// snapshot no longer holds a complete earlier image and must not be merged.
type StoreUnusableError struct {
	Volume string
	State  dmtable.SnapshotState // SnapshotInvalid, SnapshotOverflow or SnapshotMergeFailed
	// Header, when set, is what is wrong with the store's header (State is
	// then SnapshotInvalid): the kernel reported the snapshot healthy, but
	// its store would merge as nothing.
	Header string
}

func (e *StoreUnusableError) Error() string {
	why := e.State.String()
	if e.Header != "" {
		why = e.Header
	}
	switch {
	case e.Header != "":
	case e.State == dmtable.SnapshotOverflow:
		return fmt.Sprintf("volume %q: the store is full (Overflow): writes to the snapshot failed, so it does not hold the complete update; it must not be merged", e.Volume)
	case e.State == dmtable.SnapshotMergeFailed:
		return fmt.Sprintf("volume %q: the kernel reports Merge failed (an I/O error during the merge); the merge stopped part way and the store is kept", e.Volume)
	}
	return fmt.Sprintf("volume %q: the store is invalid (%s): the kernel dropped the snapshot because the store ran full or an I/O error hit the store or the origin (the kernel log says which: \"Unable to allocate exception\" or \"Error reading/writing\"); its earlier image is lost and merging it would do nothing", e.Volume, why)
}

// DeviceChangedError is an origin whose path now names another device than
// the one recorded (renumbered after a reboot, or replaced).
type DeviceChangedError struct {
	Volume   string
	Path     string
	Recorded string
	Now      string
}

func (e *DeviceChangedError) Error() string {
	return fmt.Sprintf("volume %q: origin %s was %s when recorded and is %s now; refusing to map a different device", e.Volume, e.Path, e.Recorded, e.Now)
}

// NoSpaceError is a store that does not fit its filesystem.
type NoSpaceError struct {
	Path       string
	Need, Free uint64
}

func (e *NoSpaceError) Error() string {
	return fmt.Sprintf("store %s needs %d bytes, its filesystem has %d free", e.Path, e.Need, e.Free)
}

// StoreOnOriginError is a store placed where it must not be.
type StoreOnOriginError struct {
	Path   string
	Reason string
}

func (e *StoreOnOriginError) Error() string { return fmt.Sprintf("store %s: %s", e.Path, e.Reason) }

// Refusal says which request a RefusedError refused, for a caller that
// tells its user what to do instead (the CLI turns it into a hint naming
// its flags).
type Refusal int

const (
	// RefusedOther is a refusal the Reason and Hint describe.
	RefusedOther Refusal = iota
	// RefusedOtherOrigin: the volume is attached to another origin than the
	// one given (Device).
	RefusedOtherOrigin
	// RefusedNoOrigin: the volume is not attached and no origin was given.
	RefusedNoOrigin
	// RefusedOriginTooSmall: the origin is smaller than one chunk.
	RefusedOriginTooSmall
	// RefusedNoStorePath: no store path was given.
	RefusedNoStorePath
	// RefusedStoreExists: the store path exists already.
	RefusedStoreExists
	// RefusedStoreDirShared: the store's directory is writable by everyone.
	RefusedStoreDirShared
	// RefusedSkipFreeUpdate: free-space seeding asked for in update mode.
	RefusedSkipFreeUpdate
	// RefusedSkipFreeUnmounted: free-space seeding asked for, and no
	// filesystem is mounted on the volume (Device).
	RefusedSkipFreeUnmounted
	// RefusedSkipFreeUnsupported: free-space seeding asked for, and the
	// volume's filesystem cannot report its free space (Device).
	RefusedSkipFreeUnsupported
)

// RefusedError is a request snapctl will not carry out as given: the reason
// says what is wrong with it. Nothing was changed.
type RefusedError struct {
	Volume string
	Op     string
	Kind   Refusal
	Reason string
	// Device is the device the request named, where Kind is about one.
	Device string
	Hint   string // what to do instead, for RefusedOther
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s %q: %s", e.Op, e.Volume, e.Reason)
}

// OriginBusyError is an origin device something else holds open exclusively:
// a filesystem mounted on it directly, or another device-mapper device.
type OriginBusyError struct {
	Volume string
	Path   string
	Err    error
}

func (e *OriginBusyError) Error() string {
	return fmt.Sprintf("volume %q: origin %s is in use (a filesystem mounted on it directly, or another device holds it): %v", e.Volume, e.Path, e.Err)
}
func (e *OriginBusyError) Unwrap() error { return e.Err }

// ErrNoStoreSize is an update-mode prepare given neither a store size nor a
// change set to size the store from: in update mode the store must hold the
// whole update, which the filesystem's free space says nothing about.
var ErrNoStoreSize = errors.New("update mode needs a store size, or a change set (byte ranges or the new image) to size the store from")

// ErrLoopFixedSize is a grow of a store behind a loop device, whose size is
// fixed once the device is set up.
var ErrLoopFixedSize = errors.New("a store on a loop device cannot grow (the loop device's size is fixed)")

// NotActiveError is an operation that needs the volume's devices, on a
// volume whose devices are not there (after deactivate, or a reboot).
type NotActiveError struct{ Volume string }

func (e *NotActiveError) Error() string {
	return fmt.Sprintf("volume %q is not active (its devices are not there)", e.Volume)
}
