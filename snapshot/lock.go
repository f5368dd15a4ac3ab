package snapshot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"syscall"
)

// BusyError is a volume another snapctl process is working on right now.
type BusyError struct {
	Volume string
	Holder string // "pid N: snapctl ..." as the holder wrote it
}

func (e *BusyError) Error() string {
	if e.Holder == "" {
		return fmt.Sprintf("volume %q is busy: another snapctl is working on it", e.Volume)
	}
	return fmt.Sprintf("volume %q is busy: %s is working on it", e.Volume, e.Holder)
}

// volumeLock is an exclusive flock on a volume's lock file; the holder
// writes its pid and command line into the file so others can name it.
type volumeLock struct {
	name string
	f    *os.File
}

func lockVolume(dir, name, command string) (*volumeLock, error) {
	p := filepath.Join(dir, name+".lock")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock volume %q: %w", name, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(p)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &BusyError{Volume: name, Holder: strings.TrimSpace(string(holder))}
		}
		return nil, fmt.Errorf("lock volume %q: %w", name, err)
	}
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d: %s\n", os.Getpid(), command)
	}
	return &volumeLock{name: name, f: f}, nil
}

func (l *volumeLock) unlock() {
	if l == nil || l.f == nil {
		return
	}
	l.f.Truncate(0)
	syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	l.f.Close()
	l.f = nil
}

// UnsafeStateDirError is a state directory others could write, or one that
// lives on a device snapctl snapshots.
type UnsafeStateDirError struct {
	Dir    string
	Reason string
}

func (e *UnsafeStateDirError) Error() string {
	return fmt.Sprintf("state directory %s: %s", e.Dir, e.Reason)
}

// openStateDir creates the state directory 0700 if needed and refuses one
// that is a symlink or writable by others.
func openStateDir(dir string) error {
	if !filepath.IsAbs(dir) {
		return &UnsafeStateDirError{Dir: dir, Reason: "must be an absolute path"}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory %s: %w", dir, err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(dir, &st); err != nil {
		return fmt.Errorf("state directory %s: %w", dir, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return &UnsafeStateDirError{Dir: dir, Reason: "is not a directory (a symlink is refused)"}
	}
	if st.Mode&0o022 != 0 {
		return &UnsafeStateDirError{Dir: dir, Reason: fmt.Sprintf("is writable by group or others (mode %o); run: chmod 700 %s", st.Mode&0o777, dir)}
	}
	return nil
}
