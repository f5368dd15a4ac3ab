package serve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/control"
	"github.com/snapctl/snapctl/bow/nbd"
)

// Config says what to serve and how. Device and one of NBD and Listen are
// required; the zero value of everything else picks a default.
type Config struct {
	// Device is the block device or image file the engine runs on.
	Device string
	// NBD is the kernel NBD device to serve on, /dev/nbdN.
	NBD string
	// Listen serves NBD clients (newstyle handshake) on unix:PATH or
	// tcp:HOST:PORT instead of a kernel device. A TCP address must be
	// loopback unless TrustedNetwork is set.
	Listen string
	// TrustedNetwork allows a TCP Listen address that other hosts can
	// reach: NBD has no authentication.
	TrustedNetwork bool
	// Resolve looks up a Listen host name for the loopback check; nil uses
	// the system's resolver.
	Resolve Resolver

	// BlockSize is the engine's and the device's block size; 0 takes the
	// block size of a checkpoint on the device, else 4096.
	BlockSize int64
	// OnFull says what a write does when free space for backups runs out.
	OnFull bow.FullPolicy
	// LowSpace is the percentage of the device below which free space for
	// backups counts as low (OnLowSpace); 0 never.
	LowSpace float64
	// OnLowSpace is called when free space falls below LowSpace.
	OnLowSpace func(bow.Status)
	// OnAutoCommit is called when the checkpoint was committed because
	// free space ran out (OnFull bow.FullCommit).
	OnAutoCommit func(bow.Status)
	// StatePath is the file that keeps a checkpoint's range map across a
	// clean stop; "" keeps none (a checkpoint then does not survive a
	// restart of the server).
	StatePath string

	// Control is the control socket; "" is control.DefaultSocket(Device).
	Control string
	// Timeout lets the kernel fail a request the server has not answered in
	// this time; 0 waits forever.
	Timeout time.Duration
	// Workers is the number of NBD requests handled at once; 0 is 16.
	Workers int
	// Runner is the command line of the helper process that runs the
	// kernel side of the NBD device (nbd.BindOptions.Runner): a program
	// whose body is nbd.RunDevice. A program usually re-executes itself
	// ("/proc/self/exe" and an argument its main answers by calling
	// nbd.RunDevice), as snapctl does with its hidden "bow nbd-run".
	// Empty runs it on a thread of this process, which a SIGKILL of the
	// process under load can deadlock.
	Runner []string
	// Harden locks the process's memory and marks it an I/O flusher
	// (nbd.Harden), so that serving the kernel device never waits on
	// writeback to that device. It changes the whole process: leave it off
	// where that is not wanted, and when serving only Listen clients.
	Harden bool
	// Log receives warnings (and debug records, if its handler takes
	// them); nil discards them.
	Log *slog.Logger
}

// StatePath is where a server keeps the range map of dev's checkpoint
// under stateDir: stateDir/bow/<dev's absolute path with / as _>.map.
func StatePath(stateDir, dev string) string {
	abs, err := filepath.Abs(dev)
	if err != nil {
		abs = dev
	}
	name := strings.ReplaceAll(strings.TrimPrefix(abs, "/"), "/", "_")
	return filepath.Join(stateDir, "bow", name+".map")
}

// StoppedError reports a device the kernel let go of while it was being
// served (nbd-client -d, or a dead connection). The checkpoint log on the
// device is intact.
type StoppedError struct {
	NBD string
	Err error
}

func (e StoppedError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("serve %s: the kernel disconnected the device", e.NBD)
	}
	return fmt.Sprintf("serve %s: the device stopped: %v", e.NBD, e.Err)
}

func (e StoppedError) Unwrap() error { return e.Err }

// Result is how a server ended.
type Result struct {
	Device    string
	State     bow.State // the engine's state when it closed
	StatePath string    // where a checkpoint's range map was saved
}

// Server is a bow device being served. It is the control.Handler of its
// control socket.
type Server struct {
	cfg  Config
	log  *slog.Logger
	dev  *bow.File
	e    *bow.Engine
	srv  *nbd.Server
	bind *nbd.Binding
	ln   net.Listener
	lnWG sync.WaitGroup
	ctl  *control.Listener
	done chan struct{} // closed when the front end stops by itself

	stopOnce sync.Once
	res      Result
	err      error
}

// Start opens the device, starts the engine, serves it on the kernel
// device or the listen address and opens the control socket, in that
// order: a server that answers on its control socket is serving. ctx
// bounds the start only; stop the server with Stop.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if (cfg.NBD == "") == (cfg.Listen == "") {
		return nil, fmt.Errorf("serve %s: want exactly one of an NBD device and a listen address", cfg.Device)
	}
	var lnNet, lnAddr string
	if cfg.Listen != "" {
		var err error
		if lnNet, lnAddr, err = ParseAddress(cfg.Listen); err != nil {
			return nil, fmt.Errorf("serve %s: %w", cfg.Device, err)
		}
		if lnNet == "tcp" && !cfg.TrustedNetwork {
			if err := CheckLoopback(ctx, lnAddr, cfg.Resolve); err != nil {
				return nil, fmt.Errorf("serve %s: %w", cfg.Device, err)
			}
		}
	}
	if cfg.LowSpace < 0 || cfg.LowSpace > 100 {
		return nil, fmt.Errorf("serve %s: low-space threshold %v%%: want 0 to 100", cfg.Device, cfg.LowSpace)
	}
	if cfg.Control == "" {
		cfg.Control = control.DefaultSocket(cfg.Device)
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.StatePath != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.StatePath), 0o700); err != nil {
			return nil, fmt.Errorf("serve %s: state directory: %w", cfg.Device, err)
		}
	}
	if err := control.ClearStale(cfg.Control); err != nil {
		return nil, err
	}

	d, err := bow.OpenFile(cfg.Device)
	if err != nil {
		return nil, err
	}
	opts := bow.Options{
		BlockSize:    cfg.BlockSize,
		OnFull:       cfg.OnFull,
		StatePath:    cfg.StatePath,
		OnLowSpace:   cfg.OnLowSpace,
		OnAutoCommit: cfg.OnAutoCommit,
	}
	if cfg.LowSpace > 0 {
		opts.LowSpace = int64(float64(d.Size()) * cfg.LowSpace / 100)
	}
	e, err := bow.Open(d, opts)
	if err != nil {
		d.Close()
		return nil, err
	}
	s := &Server{cfg: cfg, log: log, dev: d, e: e, done: make(chan struct{}), res: Result{Device: cfg.Device, StatePath: cfg.StatePath}}
	s.srv = nbd.NewServer(e, nbd.Options{Workers: cfg.Workers, BlockSize: int(e.BlockSize()), Log: log})
	if cfg.Harden {
		if err := nbd.Harden(); err != nil {
			log.Debug("bow: hardening the server process (best effort)", "err", err)
		}
	}
	// From here on a failure must close the engine, which saves the map of
	// an active checkpoint again.
	if cfg.NBD != "" {
		b, err := nbd.Bind(ctx, cfg.NBD, s.srv, nbd.BindOptions{BlockSize: e.BlockSize(), Timeout: cfg.Timeout, Runner: cfg.Runner})
		if err != nil {
			return nil, errors.Join(err, s.closeEngine())
		}
		s.bind = b
		go func() {
			<-b.Done()
			close(s.done)
		}()
	} else {
		if err := s.listen(lnNet, lnAddr); err != nil {
			return nil, errors.Join(err, s.closeEngine())
		}
	}
	ctl, err := control.Listen(cfg.Control, s)
	if err != nil {
		return nil, errors.Join(err, s.stopFront(context.WithoutCancel(ctx)), s.closeEngine())
	}
	s.ctl = ctl
	return s, nil
}

// listen serves NBD clients on the address.
func (s *Server) listen(network, addr string) error {
	if network == "unix" {
		if err := control.ClearStale(addr); err != nil {
			return err
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("listen on %s:%s: %w", network, addr, err)
	}
	s.ln = l
	s.lnWG.Add(1)
	go func() {
		defer s.lnWG.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			s.lnWG.Add(1)
			go func() {
				defer s.lnWG.Done()
				if err := s.srv.ServeClient(conn, "bow"); err != nil {
					s.log.Warn("bow: NBD client", "err", err)
				}
			}()
		}
	}()
	return nil
}

// Engine returns the engine being served.
func (s *Server) Engine() *bow.Engine { return s.e }

// Control returns the control socket's path.
func (s *Server) Control() string { return s.cfg.Control }

// Done is closed when the device stopped by itself (the kernel let go of
// it); Stop is still needed then.
func (s *Server) Done() <-chan struct{} { return s.done }

var _ control.Handler = (*Server)(nil)

// Status reports the engine's and the server's state, as the control
// socket does.
func (s *Server) Status() *control.Status {
	return &control.Status{
		Status:    s.e.Status(),
		NBD:       s.cfg.NBD,
		Listen:    s.cfg.Listen,
		PID:       os.Getpid(),
		StatePath: s.cfg.StatePath,
		Server:    s.srv.Stats(),
	}
}

// Checkpoint takes a checkpoint: from trim to checkpoint state (see
// bow.Engine.SetState for ctx).
func (s *Server) Checkpoint(ctx context.Context) error { return s.e.Checkpoint(ctx) }

// Commit commits the checkpoint: from checkpoint to committed state (see
// bow.Engine.SetState for ctx).
func (s *Server) Commit(ctx context.Context) error { return s.e.Commit(ctx) }

// disconnectTimeout bounds the kernel's disconnect when Stop's ctx has no
// deadline.
const disconnectTimeout = 30 * time.Second

// stopFront stops the kernel device or the listener.
func (s *Server) stopFront(ctx context.Context) error {
	if s.bind != nil {
		select {
		case <-s.bind.Done():
			return nil
		default:
		}
		if mnt := mountedAt(s.cfg.NBD); mnt != "" {
			s.log.Warn("bow: the filesystem on the device is still mounted; it will see I/O errors", "device", s.cfg.NBD, "mountpoint", mnt)
		}
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, disconnectTimeout)
			defer cancel()
		}
		return s.bind.Disconnect(ctx)
	}
	if s.ln != nil {
		s.ln.Close()
		s.lnWG.Wait()
	}
	return nil
}

// closeEngine closes the engine, which saves the map of an active
// checkpoint, and the device.
func (s *Server) closeEngine() error {
	var errs []error
	if err := s.e.Close(); err != nil {
		errs = append(errs, fmt.Errorf("stop %s: %w", s.cfg.Device, err))
	}
	s.res.State = s.e.State()
	if err := s.dev.Close(); err != nil {
		errs = append(errs, fmt.Errorf("stop %s: %w", s.cfg.Device, err))
	}
	return errors.Join(errs...)
}

// Stop stops serving, in the order the package doc describes: the front
// end, the control socket, then the engine. ctx bounds the kernel's
// disconnect (30 s if it has no deadline); past it the connection is cut.
// Calls after the first return the first's result.
func (s *Server) Stop(ctx context.Context) (Result, error) {
	s.stopOnce.Do(func() {
		frontErr := s.stopFront(ctx)
		s.ctl.Close()
		flushErr := s.e.Flush()
		if errors.Is(flushErr, bow.ErrClosed) {
			flushErr = nil
		}
		s.err = errors.Join(frontErr, flushErr, s.closeEngine())
	})
	return s.res, s.err
}

// Run starts the server, calls serving (if not nil) once it serves, and
// serves until ctx ends, then stops it (the disconnect bounded by 30 s). A
// device the kernel let go of first stops the server with StoppedError.
func Run(ctx context.Context, cfg Config, serving func(*Server)) (Result, error) {
	s, err := Start(ctx, cfg)
	if err != nil {
		return Result{Device: cfg.Device}, err
	}
	if serving != nil {
		serving(s)
	}
	stopCtx := context.WithoutCancel(ctx)
	select {
	case <-ctx.Done():
		s.log.Debug("bow: stopping", "cause", context.Cause(ctx))
		return s.Stop(stopCtx)
	case <-s.Done():
		res, err := s.Stop(stopCtx)
		return res, errors.Join(StoppedError{NBD: cfg.NBD}, err)
	}
}
