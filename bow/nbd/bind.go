package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// BusyError reports an NBD device that is already connected to a server.
type BusyError struct {
	Path string
	PID  int // the process serving it, 0 if unknown
}

func (e BusyError) Error() string {
	if e.PID != 0 {
		return fmt.Sprintf("bind %s: already connected (served by process %d)", e.Path, e.PID)
	}
	return fmt.Sprintf("bind %s: already connected", e.Path)
}

func (e BusyError) Unwrap() error { return syscall.EBUSY }

// NotNBDError reports a path that is not a kernel NBD device.
type NotNBDError struct {
	Path   string
	Reason string
}

func (e NotNBDError) Error() string { return fmt.Sprintf("bind %s: %s", e.Path, e.Reason) }

// BindOptions configure Bind.
type BindOptions struct {
	// BlockSize is the device's logical block size: a power of two from
	// 512 to 4096; default 4096. The device's size is the backend's size
	// rounded down to it.
	BlockSize int64
	// Timeout makes the kernel fail a request, and drop the connection,
	// when the server has not answered it in time. 0 leaves the kernel
	// waiting (it logs requests that look stuck).
	Timeout time.Duration
	// Ready is how long Bind waits for the device to come up; default 10 s
	// (a ctx that ends sooner ends the wait sooner).
	Ready time.Duration
	// Runner is the command line of a helper process that runs
	// NBD_DO_IT for the device, handed to it as file descriptor 3: a
	// program whose body is RunDevice. Empty runs NBD_DO_IT on a thread of
	// this process instead, which is only safe when nothing can SIGKILL
	// it (see RunDevice).
	Runner []string
}

// Binding is a kernel NBD device served by a Server over a socket pair.
type Binding struct {
	path string
	fd   int
	conn net.Conn
	done chan struct{}

	mu     sync.Mutex // guards fd against close while in use
	closed bool
	err    error
}

// Bind connects the kernel NBD device at path (/dev/nbdN) to s: it sets the
// block size, the size and the transmission flags, hands the kernel one end
// of a socket pair (NBD_SET_SOCK), starts the device with NBD_DO_IT on a
// thread of its own, and serves the other end. There is no handshake on
// this path. It returns once the device is live; if ctx ends first, it
// cuts the connection and returns ctx's error. The device stays up until
// Disconnect, or until the server or the kernel ends the connection.
func Bind(ctx context.Context, path string, s *Server, opts BindOptions) (*Binding, error) {
	bs := opts.BlockSize
	if bs == 0 {
		bs = 4096
	}
	if bs < 512 || bs > 4096 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("bind %s: block size %d: want a power of two from 512 to 4096: %w", path, bs, syscall.EINVAL)
	}
	blocks := s.Size() / bs
	if blocks < 1 {
		return nil, fmt.Errorf("bind %s: export of %d bytes is smaller than one %d-byte block: %w", path, s.Size(), bs, syscall.EINVAL)
	}
	if opts.Ready <= 0 {
		opts.Ready = 10 * time.Second
	}
	fd, err := openDevice(path)
	if err != nil {
		var nn NotNBDError
		if errors.As(err, &nn) {
			return nil, err
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil, NotNBDError{Path: path, Reason: "no such device (is the nbd module loaded? modprobe nbd)"}
		}
		return nil, fmt.Errorf("bind %s: open: %w", path, err)
	}
	sysDir, err := sysBlockDir(path)
	if err != nil {
		closeFD(fd)
		return nil, err
	}
	if pid, ok := servingPID(sysDir); ok {
		closeFD(fd)
		return nil, BusyError{Path: path, PID: pid}
	}
	ksock, srv, err := socketPair()
	if err != nil {
		closeFD(fd)
		return nil, fmt.Errorf("bind %s: %w", path, err)
	}
	conn, err := net.FileConn(srv)
	srv.Close()
	if err != nil {
		closeFD(ksock)
		closeFD(fd)
		return nil, fmt.Errorf("bind %s: socket: %w", path, err)
	}
	fail := func(step string, err error) (*Binding, error) {
		clearSock(fd)
		closeFD(ksock)
		conn.Close()
		closeFD(fd)
		if errors.Is(err, syscall.EBUSY) {
			return nil, BusyError{Path: path}
		}
		return nil, fmt.Errorf("bind %s: %s: %w", path, step, err)
	}
	if err := setBlockSize(fd, bs); err != nil {
		return fail("NBD_SET_BLKSIZE", err)
	}
	if err := setSizeBlocks(fd, blocks); err != nil {
		return fail("NBD_SET_SIZE_BLOCKS", err)
	}
	if err := setFlags(fd, s.Flags()); err != nil {
		return fail("NBD_SET_FLAGS", err)
	}
	if opts.Timeout > 0 {
		if err := setTimeout(fd, int64((opts.Timeout+time.Second-1)/time.Second)); err != nil {
			return fail("NBD_SET_TIMEOUT", err)
		}
	}
	if err := setSock(fd, ksock); err != nil {
		return fail("NBD_SET_SOCK", err)
	}
	ran := make(chan error, 1)
	if len(opts.Runner) > 0 {
		r, err := startRunner(opts.Runner, fd, path)
		if err != nil {
			return fail("start the NBD_DO_IT helper", err)
		}
		go func() { ran <- r.wait() }()
	} else {
		go func() { ran <- doIt(fd) }()
	}
	closeFD(ksock) // the kernel holds its own reference now

	b := &Binding{path: path, fd: fd, conn: conn, done: make(chan struct{})}
	served := make(chan error, 1)
	go func() {
		err := s.Serve(conn)
		conn.Close() // the kernel waits for the close after NBD_CMD_DISC
		served <- err
	}()
	go b.wait(ran, served)

	ready, cancel := context.WithTimeout(ctx, opts.Ready)
	defer cancel()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if live(sysDir, blocks*bs) {
			return b, nil
		}
		select {
		case <-b.done:
			if b.err != nil {
				return nil, b.err
			}
			return nil, fmt.Errorf("bind %s: NBD_DO_IT: the device stopped at once", path)
		case <-tick.C:
		case <-ready.Done():
			b.conn.Close()
			<-b.done
			if err := ctx.Err(); err != nil {
				return nil, fmt.Errorf("bind %s: %w", path, errors.Join(err, b.err))
			}
			return nil, fmt.Errorf("bind %s: the device did not come up within %v: %w", path, opts.Ready, errors.Join(b.err, syscall.ETIMEDOUT))
		}
	}
}

// wait collects the end of NBD_DO_IT and of the server, then releases the
// device.
func (b *Binding) wait(ran, served chan error) {
	runErr := <-ran
	b.conn.Close() // stop the server if the kernel side ended first
	serveErr := <-served
	b.mu.Lock()
	var errs []error
	if runErr != nil {
		errs = append(errs, fmt.Errorf("NBD_DO_IT on %s: %w", b.path, runErr))
	}
	if serveErr != nil {
		errs = append(errs, fmt.Errorf("serve %s: %w", b.path, serveErr))
	}
	clearSock(b.fd)
	closeFD(b.fd)
	b.closed = true
	b.err = errors.Join(errs...)
	b.mu.Unlock()
	close(b.done)
}

// Path returns the device path.
func (b *Binding) Path() string { return b.path }

// Done is closed when the device has stopped.
func (b *Binding) Done() <-chan struct{} { return b.done }

// Err returns why the device stopped, once Done is closed: nil after a
// clean disconnect.
func (b *Binding) Err() error {
	select {
	case <-b.done:
		return b.err
	default:
		return nil
	}
}

// Disconnect stops the device cleanly: it writes back and flushes the
// kernel's cached writes to the device (fsync), asks the kernel to
// disconnect (NBD_DISCONNECT, which sends NBD_CMD_DISC after the requests in
// flight), waits for the server to finish and the kernel to let go, and
// drops the socket (NBD_CLEAR_SOCK). A filesystem still mounted on the
// device sees I/O errors afterwards: unmount it first. If the kernel has
// not let go when ctx ends, or after 30 s if ctx has no deadline, the
// connection is cut.
func (b *Binding) Disconnect(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var errs []error
	b.mu.Lock()
	if !b.closed {
		if err := syncFD(b.fd); err != nil {
			errs = append(errs, fmt.Errorf("flush %s: %w", b.path, err))
		}
		if err := disconnect(b.fd); err != nil {
			errs = append(errs, fmt.Errorf("disconnect %s: NBD_DISCONNECT: %w", b.path, err))
		}
	}
	b.mu.Unlock()
	select {
	case <-b.done:
	case <-ctx.Done():
		b.conn.Close()
		<-b.done
		errs = append(errs, fmt.Errorf("disconnect %s: the kernel did not let go in time; connection cut: %w", b.path, ctx.Err()))
	}
	errs = append(errs, b.err)
	return errors.Join(errs...)
}

// sysBlockDir is the sysfs directory of the block device at path.
func sysBlockDir(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("bind %s: %w", path, err)
	}
	name := filepath.Base(real)
	if !strings.HasPrefix(name, "nbd") {
		return "", NotNBDError{Path: path, Reason: "not an NBD device (want /dev/nbdN)"}
	}
	return filepath.Join("/sys/block", name), nil
}

// live reports a device that is connected and has its size: the kernel
// creates the pid file before it sets the capacity.
func live(sysDir string, size int64) bool {
	if _, ok := servingPID(sysDir); !ok {
		return false
	}
	b, err := os.ReadFile(filepath.Join(sysDir, "size"))
	if err != nil {
		return false
	}
	sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return err == nil && sectors*512 == size
}

// servingPID reads the pid of the process serving the device from sysfs;
// the file exists only while the device is connected.
func servingPID(sysDir string) (int, bool) {
	b, err := os.ReadFile(filepath.Join(sysDir, "pid"))
	if err != nil {
		return 0, false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid, true
}

// joinErrs is errors.Join that returns a lone error as it is.
func joinErrs(errs []error) error {
	var keep []error
	for _, e := range errs {
		if e != nil {
			keep = append(keep, e)
		}
	}
	if len(keep) == 1 {
		return keep[0]
	}
	return errors.Join(keep...)
}
