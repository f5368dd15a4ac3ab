package nbd

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/internal/platform"
)

// This file is the package's only gate to the kernel: the NBD ioctls of
// include/uapi/linux/nbd.h (all _IO(0xab, n), the argument passed by
// value), the socket pair, and process hardening. _IO numbers differ on
// powerpc (see platform.DirNone).
const (
	nbdIO = platform.DirNone | 0xab<<platform.TypeShift

	NBD_SET_SOCK        = nbdIO // n = 0
	NBD_SET_BLKSIZE     = nbdIO | 1
	NBD_DO_IT           = nbdIO | 3
	NBD_CLEAR_SOCK      = nbdIO | 4
	NBD_SET_SIZE_BLOCKS = nbdIO | 7
	NBD_DISCONNECT      = nbdIO | 8
	NBD_SET_TIMEOUT     = nbdIO | 9
	NBD_SET_FLAGS       = nbdIO | 10
)

// nbdMajor is NBD_MAJOR of include/uapi/linux/major.h.
const nbdMajor = 43

func ioctl(fd int, req uint32, arg uintptr) error {
	return platform.IoctlValue(uintptr(fd), req, arg)
}

// setBlockSize issues NBD_SET_BLKSIZE: the device's logical and physical
// block size.
func setBlockSize(fd int, bs int64) error { return ioctl(fd, NBD_SET_BLKSIZE, uintptr(bs)) }

// setSizeBlocks issues NBD_SET_SIZE_BLOCKS: the size in blocks of the size
// set by NBD_SET_BLKSIZE.
func setSizeBlocks(fd int, n int64) error { return ioctl(fd, NBD_SET_SIZE_BLOCKS, uintptr(n)) }

// setFlags issues NBD_SET_FLAGS with the transmission flags.
func setFlags(fd int, flags uint16) error { return ioctl(fd, NBD_SET_FLAGS, uintptr(flags)) }

// setTimeout issues NBD_SET_TIMEOUT, in seconds.
func setTimeout(fd int, sec int64) error { return ioctl(fd, NBD_SET_TIMEOUT, uintptr(sec)) }

// setSock issues NBD_SET_SOCK: the kernel takes its own reference to the
// socket behind sock.
func setSock(fd, sock int) error { return ioctl(fd, NBD_SET_SOCK, uintptr(sock)) }

// clearSock issues NBD_CLEAR_SOCK: drop the socket and the configuration.
func clearSock(fd int) error { return ioctl(fd, NBD_CLEAR_SOCK, 0) }

// disconnect issues NBD_DISCONNECT: the kernel sends NBD_CMD_DISC.
func disconnect(fd int) error { return ioctl(fd, NBD_DISCONNECT, 0) }

// doIt issues NBD_DO_IT, which starts the device and blocks until its
// connection ends. The kernel waits interruptibly and tears the connection
// down if a signal arrives, so the call runs on a thread of its own with
// every signal blocked; the thread is never handed back to the Go
// scheduler (the goroutine exits still locked, and the runtime retires the
// thread).
func doIt(fd int) error {
	runtime.LockOSThread()
	doingIt.Add(1) // never decremented: the thread stays signal-blind until it exits
	// Every bit of every word: the words are 32 bits on 386 and arm,
	// 64 elsewhere (sigset_t is 1024 bits either way).
	var all unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^all.Val[i]
	}
	if err := unix.PthreadSigmask(unix.SIG_SETMASK, &all, nil); err != nil {
		return fmt.Errorf("block signals for NBD_DO_IT: %w", err)
	}
	return ioctl(fd, NBD_DO_IT, 0)
}

// doingIt counts threads that entered NBD_DO_IT with signals blocked.
var doingIt atomic.Int32

// openDevice opens an NBD device node for the ioctls.
func openDevice(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	reason, err := checkDevice(fd)
	if err == nil && reason != "" {
		err = NotNBDError{Path: path, Reason: reason}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func closeFD(fd int) error { return unix.Close(fd) }

// dupFD duplicates fd, close-on-exec (exec.Cmd's ExtraFiles hands the child
// its own copy).
func dupFD(fd int) (int, error) { return unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0) }

// checkDevice checks that fd is an NBD device: reason says why it is not,
// err is a failed fstat.
func checkDevice(fd int) (reason string, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "not a block device", nil
	}
	if maj := unix.Major(uint64(st.Rdev)); maj != nbdMajor {
		return fmt.Sprintf("not an NBD device (major %d, want %d)", maj, nbdMajor), nil
	}
	return "", nil
}

// syncFD writes back the device's dirty pages and flushes it (fsync on the
// block device node).
func syncFD(fd int) error { return unix.Fsync(fd) }

// socketPair returns a connected pair of unix stream sockets: one for the
// kernel, one for the server.
func socketPair() (kernel int, server *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, fmt.Errorf("create socket pair: %w", err)
	}
	return fds[0], os.NewFile(uintptr(fds[1]), "nbd-server"), nil
}

// Harden prepares the serving process to be the backend of a block device
// it may itself depend on for memory: mlockall(MCL_CURRENT|MCL_FUTURE|
// MCL_ONFAULT) keeps every page it touches out of swap (ONFAULT: without it
// the Go runtime's large untouched reservations would be made resident,
// over 100 MiB), and prctl(PR_SET_IO_FLUSHER) on every thread keeps its
// allocations from waiting on writeback to the device it serves. Both are
// best effort: the error says what did not work; serving works without.
// Call it before Bind: the prctl runs on every thread by signalling it,
// which the signal-blind NBD_DO_IT thread would never answer.
func Harden() error {
	var errs []error
	if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
		errs = append(errs, fmt.Errorf("mlockall: %w", err))
	}
	if doingIt.Load() > 0 {
		// AllThreadsSyscall signals every thread and waits for each to
		// answer; a thread in NBD_DO_IT has signals blocked and never would.
		errs = append(errs, errors.New("prctl(PR_SET_IO_FLUSHER): skipped: call Harden before Bind"))
	} else if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_IO_FLUSHER, 1, 0); errno != 0 {
		errs = append(errs, fmt.Errorf("prctl(PR_SET_IO_FLUSHER): %w", errno))
	}
	return joinErrs(errs)
}
