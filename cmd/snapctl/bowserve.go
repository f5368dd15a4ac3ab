package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/nbd"
)

// The bow server: `snapctl bow serve` runs the engine on a device and
// serves it to the kernel as /dev/nbdN; `snapctl bow checkpoint|commit|
// status` talk to it over a unix socket, one JSON request and one JSON
// response per connection.

func init() {
	for _, c := range []func(*app) *cobra.Command{newBowServeCmd, newBowCheckpointCmd, newBowCommitCmd, newBowStatusCmd} {
		registerBowSubcommand(c)
	}
	registerClassifier(classifyBowServe)
}

// defaultControlDir holds the control sockets of running bow servers.
const defaultControlDir = "/run/snapctl"

// controlPath is the default control socket for device dev.
func controlPath(dev string) string {
	return filepath.Join(defaultControlDir, "bow-"+filepath.Base(dev)+".sock")
}

// bowStatePath is where the engine keeps the range map of a checkpoint
// across a clean restart: in the state directory, never on the device.
func bowStatePath(stateDir, dev string) string {
	abs, err := filepath.Abs(dev)
	if err != nil {
		abs = dev
	}
	name := strings.ReplaceAll(strings.TrimPrefix(abs, "/"), "/", "_")
	return filepath.Join(stateDir, "bow", name+".map")
}

// serveStatus is what `snapctl bow status` reports: the engine's status
// and the server's.
type serveStatus struct {
	bow.Status
	NBD       string    `json:"nbd,omitempty"`
	Listen    string    `json:"listen,omitempty"`
	PID       int       `json:"pid"`
	StatePath string    `json:"state_path,omitempty"`
	Server    nbd.Stats `json:"server"`
}

// controlRequest and controlResponse are the control protocol.
type controlRequest struct {
	Op string `json:"op"` // "status", "checkpoint" or "commit"
}

type controlResponse struct {
	OK     bool         `json:"ok"`
	Status *serveStatus `json:"status,omitempty"`
	Error  string       `json:"error,omitempty"`
	Code   int          `json:"code,omitempty"` // exit code for the error
	Hint   string       `json:"hint,omitempty"`
}

// controlError is an error the server reported over the control socket.
type controlError struct {
	Msg  string
	Code int
	Hint string
}

func (e controlError) Error() string { return e.Msg }

// errNoServer reports a control socket nobody answers on.
type errNoServer struct {
	Socket string
	Err    error
}

func (e errNoServer) Error() string {
	return fmt.Sprintf("contact bow server at %s: %v", e.Socket, e.Err)
}

func (e errNoServer) Unwrap() error { return e.Err }

// errControlBusy reports a control socket a running server answers on.
type errControlBusy struct{ Socket string }

func (e errControlBusy) Error() string {
	return fmt.Sprintf("listen on %s: another bow server answers there", e.Socket)
}

// errStoppedEarly reports a device the kernel let go of while serving.
type errStoppedEarly struct {
	NBD string
	Err error
}

func (e errStoppedEarly) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("serve %s: the kernel disconnected the device", e.NBD)
	}
	return fmt.Sprintf("serve %s: the device stopped: %v", e.NBD, e.Err)
}

func (e errStoppedEarly) Unwrap() error { return e.Err }

// engineBackend exports a bow engine over NBD: a trim is a discard.
type engineBackend struct{ *bow.Engine }

func (b engineBackend) Trim(off, length int64) error { return b.Discard(off, length) }

type serveFlags struct {
	nbdPath   string
	listen    string
	blockSize int64
	onFull    string
	control   string
	lowSpace  float64
	state     string
	timeout   time.Duration
	workers   int
}

func newBowServeCmd(a *app) *cobra.Command {
	var f serveFlags
	c := &cobra.Command{
		Use:   "serve DEV --nbd /dev/nbdN",
		Short: "Serve DEV through the bow engine as the kernel block device /dev/nbdN",
		Long: `Serve runs the bow backup-on-write engine on DEV (a block device or an image
file) and gives it to the kernel as /dev/nbdN, in the foreground, until SIGTERM
or SIGINT. Make the filesystem and mount it on /dev/nbdN, never on DEV.

The device starts in trim state: run fstrim on the mounted filesystem so the
engine learns which blocks are free; backups go there. 'snapctl bow checkpoint'
then freezes the current contents: every later overwrite of data that existed
at the checkpoint first copies the old data into free space and logs it in
block 0. 'snapctl bow commit' keeps the changes; 'snapctl bow restore DEV', run
with the server stopped, brings the checkpoint back.

On SIGTERM the server flushes, disconnects the device cleanly and, in
checkpoint state, saves the engine's range map under --state-dir so that
serving the same device again resumes the checkpoint. Unmount the filesystem
first. A server that was killed leaves a log without a map: serving refuses
until the checkpoint is restored or committed offline.

Control: 'snapctl bow checkpoint|commit|status' talk to the server over the
unix socket --control (default /run/snapctl/bow-<name of DEV>.sock).

Example:
  snapctl bow serve /dev/sdb --nbd /dev/nbd0 &
  mkfs.ext4 /dev/nbd0 && mount /dev/nbd0 /mnt && fstrim /mnt
  snapctl bow checkpoint /dev/sdb`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.bowServe(cmd, args[0], f)
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.nbdPath, "nbd", "", "the kernel NBD device to serve on, /dev/nbdN (modprobe nbd)")
	fl.StringVar(&f.listen, "listen", "", "serve NBD clients (newstyle handshake) on unix:PATH or tcp:HOST:PORT instead of the kernel device")
	fl.Int64Var(&f.blockSize, "block-size", 0, "block size of the engine and the device: 512, 1024, 2048 or 4096 (default 4096, or the block size of the checkpoint on DEV)")
	fl.StringVar(&f.onFull, "on-full", "fail", "when free space for backups runs out: fail (the write gets an I/O error, the checkpoint stays valid) or commit (drop the checkpoint and go on)")
	fl.StringVar(&f.control, "control", "", "control socket (default /run/snapctl/bow-<name of DEV>.sock)")
	fl.Float64Var(&f.lowSpace, "low-space", 5, "warn when the free space left for backups falls below this percentage of the device (0: never)")
	fl.StringVar(&f.state, "state", "", "file for the range map of a checkpoint across restarts (default in --state-dir)")
	fl.DurationVar(&f.timeout, "timeout", 0, "let the kernel fail a request the server has not answered in this time (0: wait forever)")
	fl.IntVar(&f.workers, "workers", 0, "NBD requests handled at once (default 16)")
	return c
}

func (a *app) bowServe(cmd *cobra.Command, dev string, f serveFlags) error {
	path := cmd.CommandPath()
	if (f.nbdPath == "") == (f.listen == "") {
		return newUsageError(path, errors.New("give exactly one of --nbd /dev/nbdN and --listen ADDR"))
	}
	policy, err := bow.ParseFullPolicy(f.onFull)
	if err != nil {
		return newUsageError(path, err)
	}
	if f.blockSize != 0 && !bow.ValidBlockSize(f.blockSize) {
		return newUsageError(path, fmt.Errorf("--block-size %d: want 512, 1024, 2048 or 4096", f.blockSize))
	}
	if f.lowSpace < 0 || f.lowSpace > 100 {
		return newUsageError(path, fmt.Errorf("--low-space %v: want a percentage from 0 to 100", f.lowSpace))
	}
	var lnNet, lnAddr string
	if f.listen != "" {
		var ok bool
		lnNet, lnAddr, ok = strings.Cut(f.listen, ":")
		if !ok || (lnNet != "unix" && lnNet != "tcp") || lnAddr == "" {
			return newUsageError(path, fmt.Errorf("--listen %q: want unix:PATH or tcp:HOST:PORT", f.listen))
		}
	}
	if f.control == "" {
		f.control = controlPath(dev)
	}
	if f.state == "" {
		f.state = bowStatePath(a.stateDir, dev)
	}
	if err := os.MkdirAll(filepath.Dir(f.state), 0o700); err != nil {
		return fmt.Errorf("serve %s: state directory: %w", dev, err)
	}
	warn := slog.New(slog.NewTextHandler(a.errOut, nil))
	// Catch the stop signals from the start: killed by one midway through
	// the setup, the server would leave a checkpoint without its map.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if err := removeStaleSocket(f.control); err != nil {
		return err
	}

	d, err := bow.OpenFile(dev)
	if err != nil {
		return err
	}
	defer d.Close()
	var size int64
	opts := bow.Options{
		BlockSize: f.blockSize,
		OnFull:    policy,
		StatePath: f.state,
		OnLowSpace: func(s bow.Status) {
			warn.Warn("bow: low on free space for backups", "device", dev, "free_bytes", s.FreeBytes, "threshold", s.LowSpaceThreshold,
				"hint", "commit soon (snapctl bow commit), or free space in the filesystem and run fstrim before the next checkpoint")
		},
		OnAutoCommit: func(s bow.Status) {
			warn.Warn("bow: out of free space for backups: the checkpoint was committed (--on-full commit)", "device", dev)
		},
	}
	if f.lowSpace > 0 {
		size = d.Size()
		opts.LowSpace = int64(float64(size) * f.lowSpace / 100)
	}
	e, err := bow.Open(d, opts)
	if err != nil {
		return err
	}
	// From here on the engine must be closed, which saves the map of an
	// active checkpoint again.
	closeEngine := func() error {
		if err := e.Close(); err != nil {
			return fmt.Errorf("stop %s: %w", dev, err)
		}
		return nil
	}
	srv := nbd.NewServer(engineBackend{e}, nbd.Options{
		Workers:   f.workers,
		BlockSize: int(e.BlockSize()),
		Log:       warn,
	})
	if err := nbd.Harden(); err != nil {
		a.log.Debug("bow: hardening the server process (best effort)", "err", err)
	}

	var stopped <-chan struct{}
	var stop func() error
	if f.nbdPath != "" {
		b, err := nbd.Bind(f.nbdPath, srv, nbd.BindOptions{BlockSize: e.BlockSize(), Timeout: f.timeout, Runner: nbdRunArgv})
		if err != nil {
			return errors.Join(err, closeEngine())
		}
		stopped = b.Done()
		stop = func() error {
			if mnt := mountedAt(f.nbdPath); mnt != "" {
				warn.Warn("bow: the filesystem on the device is still mounted; it will see I/O errors", "device", f.nbdPath, "mountpoint", mnt)
			}
			return b.Disconnect(30 * time.Second)
		}
		defer func() {
			select {
			case <-b.Done():
			default:
				b.Disconnect(30 * time.Second)
			}
		}()
	} else {
		l, err := listenNBD(lnNet, lnAddr)
		if err != nil {
			return errors.Join(err, closeEngine())
		}
		done := make(chan struct{})
		var wg sync.WaitGroup
		go func() {
			defer close(done)
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := srv.ServeClient(conn, "bow"); err != nil {
						warn.Warn("bow: NBD client", "err", err)
					}
				}()
			}
		}()
		stopped = make(chan struct{}) // only a signal stops a listener
		stop = func() error {
			l.Close()
			<-done
			wg.Wait()
			return nil
		}
	}

	// The control socket comes last: a server that answers is serving.
	st := &serveState{e: e, srv: srv, nbd: f.nbdPath, listen: f.listen, statePath: f.state}
	ctl, err := listenControl(f.control, st)
	if err != nil {
		return errors.Join(err, stop(), closeEngine())
	}
	defer ctl.Close()
	where := f.nbdPath
	if where == "" {
		where = f.listen
	}
	s := e.Status()
	a.printf("serving %s on %s: state %s, block size %d, %d bytes; control %s\n", dev, where, s.State, s.BlockSize, s.Size, f.control)

	var runErr error
	select {
	case sig := <-sigs:
		a.log.Debug("bow: stopping", "signal", sig)
		runErr = stop()
	case <-stopped:
		runErr = errStoppedEarly{NBD: f.nbdPath, Err: nil}
		stop()
	}
	ctl.Close()
	flushErr := e.Flush()
	if errors.Is(flushErr, bow.ErrClosed) {
		flushErr = nil
	}
	closeErr := closeEngine()
	if err := errors.Join(runErr, flushErr, closeErr); err != nil {
		return err
	}
	s = e.Status()
	switch s.State {
	case bow.StateCheckpoint:
		a.printf("stopped: %s holds a checkpoint; range map saved to %s. Serve again to resume, or: snapctl bow restore %s\n", dev, f.state, dev)
	default:
		a.printf("stopped: %s is in state %s\n", dev, s.State)
	}
	return nil
}

// mountedAt is where the device is mounted, from /proc/self/mounts, or "".
func mountedAt(dev string) string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		fs := strings.Fields(l)
		if len(fs) >= 2 && fs[0] == dev {
			return fs[1]
		}
	}
	return ""
}

func listenNBD(network, addr string) (net.Listener, error) {
	if network == "unix" {
		if err := removeStaleSocket(addr); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%s: %w", network, addr, err)
	}
	return l, nil
}

// removeStaleSocket removes a unix socket nobody answers on; one that
// answers is a running server.
func removeStaleSocket(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return errControlBusy{Socket: path}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}

// serveState is what the control socket acts on.
type serveState struct {
	e         *bow.Engine
	srv       *nbd.Server
	nbd       string
	listen    string
	statePath string
}

func (s *serveState) status() *serveStatus {
	return &serveStatus{
		Status:    s.e.Status(),
		NBD:       s.nbd,
		Listen:    s.listen,
		PID:       os.Getpid(),
		StatePath: s.statePath,
		Server:    s.srv.Stats(),
	}
}

func (s *serveState) handle(req controlRequest) controlResponse {
	var err error
	switch req.Op {
	case "status":
	case "checkpoint":
		err = s.e.Checkpoint()
	case "commit":
		err = s.e.Commit()
	default:
		err = fmt.Errorf("control: unknown operation %q", req.Op)
	}
	if err != nil {
		code, hint := classify(err)
		return controlResponse{Error: err.Error(), Code: code, Hint: hint, Status: s.status()}
	}
	return controlResponse{OK: true, Status: s.status()}
}

// controlListener serves the control socket.
type controlListener struct {
	l    net.Listener
	path string
	once sync.Once
	wg   sync.WaitGroup
}

func listenControl(path string, st *serveState) (*controlListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create control socket directory %s: %w", filepath.Dir(path), err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict control socket %s: %w", path, err)
	}
	c := &controlListener{l: l, path: path}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			c.wg.Add(1)
			go func() {
				defer c.wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(5 * time.Minute))
				var req controlRequest
				line, err := bufio.NewReader(io.LimitReader(conn, 4096)).ReadBytes('\n')
				var resp controlResponse
				if err != nil {
					resp = controlResponse{Error: fmt.Sprintf("control: read request: %v", err), Code: exitUsage}
				} else if err := json.Unmarshal(line, &req); err != nil {
					resp = controlResponse{Error: fmt.Sprintf("control: parse request: %v", err), Code: exitUsage}
				} else {
					resp = st.handle(req)
				}
				json.NewEncoder(conn).Encode(resp)
			}()
		}
	}()
	return c, nil
}

// Close stops accepting, waits for requests being answered and removes the
// socket.
func (c *controlListener) Close() error {
	c.once.Do(func() {
		c.l.Close() // removes the socket file too
		c.wg.Wait()
		os.Remove(c.path)
	})
	return nil
}

// callControl sends one request to a running server.
func callControl(socket, op string) (*serveStatus, error) {
	conn, err := net.DialTimeout("unix", socket, 5*time.Second)
	if err != nil {
		return nil, errNoServer{Socket: socket, Err: err}
	}
	defer conn.Close()
	b, _ := json.Marshal(controlRequest{Op: op})
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, errNoServer{Socket: socket, Err: err}
	}
	var resp controlResponse
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("read answer from bow server at %s: %w", socket, err)
	}
	if !resp.OK {
		code := resp.Code
		if code == 0 {
			code = exitFailure
		}
		return resp.Status, controlError{Msg: resp.Error, Code: code, Hint: resp.Hint}
	}
	return resp.Status, nil
}

// controlFor picks the control socket: --control, else the default for
// DEV, else the only server running.
func controlFor(cmd *cobra.Command, control string, args []string) (string, error) {
	switch {
	case control != "" && len(args) > 0:
		return "", newUsageError(cmd.CommandPath(), errors.New("give DEV or --control, not both"))
	case control != "":
		return control, nil
	case len(args) == 1:
		return controlPath(args[0]), nil
	}
	socks, _ := filepath.Glob(filepath.Join(defaultControlDir, "bow-*.sock"))
	switch len(socks) {
	case 1:
		return socks[0], nil
	case 0:
		return "", errNoServer{Socket: filepath.Join(defaultControlDir, "bow-*.sock"), Err: errors.New("no bow server is running")}
	}
	return "", newUsageError(cmd.CommandPath(), fmt.Errorf("%d bow servers are running (%s): name one with DEV or --control", len(socks), strings.Join(socks, ", ")))
}

func controlCmd(a *app, use, short, long, op string, show func(*serveStatus)) *cobra.Command {
	var control string
	c := &cobra.Command{
		Use:   use + " [DEV] [--control SOCKET]",
		Short: short,
		Long:  long,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("accepts at most 1 arg, received %d", len(args)))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			sock, err := controlFor(cmd, control, args)
			if err != nil {
				return err
			}
			s, err := callControl(sock, op)
			if err != nil {
				return err
			}
			if a.json {
				return a.printDoc(&bowStatusDoc{serveStatus: s})
			}
			show(s)
			return nil
		},
	}
	c.Flags().StringVar(&control, "control", "", "control socket of the server (default /run/snapctl/bow-<name of DEV>.sock)")
	return c
}

func newBowCheckpointCmd(a *app) *cobra.Command {
	return controlCmd(a, "checkpoint", "Freeze the contents of a served bow device: later overwrites are backed up first",
		`Checkpoint moves a running bow server from trim to checkpoint state. The
device's current contents become what 'snapctl bow restore' brings back; every
later write over data that exists now first copies the old data into space
that was free (trimmed) at the checkpoint. Run fstrim on the mounted filesystem
before, so the engine knows the free space; the more there is, the longer the
checkpoint can live.

Example:
  fstrim -v /mnt && snapctl bow checkpoint /dev/sdb`, "checkpoint",
		func(s *serveStatus) {
			a.printf("checkpoint taken on %s: %s free for backups\n", s.Device, humanBytes(s.FreeBytes))
		})
}

func newBowCommitCmd(a *app) *cobra.Command {
	var offline bool
	c := controlCmd(a, "commit", "Keep the changes made since the checkpoint and stop backing up",
		`Commit moves a running bow server from checkpoint to committed state: block 0
gets the filesystem's own data back, the backups are dropped and the device
passes every request through.

With --offline DEV, for a device whose server was killed (serving refuses it),
commit rolls the checkpoint forward without a server: the device keeps its
current contents and the log is dropped.

Example:
  snapctl bow commit /dev/sdb
  snapctl bow commit --offline /dev/sdb`, "commit",
		func(s *serveStatus) {
			a.printf("committed %s: the checkpoint is dropped; the device passes everything through\n", s.Device)
		})
	run := c.RunE
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if !offline {
			return run(cmd, args)
		}
		if len(args) != 1 {
			return newUsageError(cmd.CommandPath(), errors.New("--offline needs DEV"))
		}
		return a.bowCommitOffline(args[0])
	}
	c.Flags().BoolVar(&offline, "offline", false, "roll the checkpoint on DEV forward without a server (the server must not be running)")
	return c
}

func (a *app) bowCommitOffline(dev string) error {
	d, err := bow.OpenFile(dev)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := bow.RollForward(d); err != nil {
		return err
	}
	if err := d.Flush(); err != nil {
		return err
	}
	if a.json {
		return a.printDoc(&bowOfflineCommitDoc{Device: dev, Committed: true})
	}
	a.printf("committed %s offline: the checkpoint is dropped, the current contents kept\n", dev)
	return nil
}

func newBowStatusCmd(a *app) *cobra.Command {
	return controlCmd(a, "status", "Show the state, free space and counters of a running bow server",
		`Status asks a running bow server for its state (trim, checkpoint, committed),
the free space left for backups, what has been backed up, the log, and the
request counters of the engine and the NBD server.

Example:
  snapctl bow status /dev/sdb
  snapctl bow status --json --control /run/snapctl/bow-sdb.sock`, "status",
		func(s *serveStatus) {
			where := s.NBD
			if where == "" {
				where = s.Listen
			}
			a.printf("device:      %s (served on %s by pid %d)\n", s.Device, where, s.PID)
			a.printf("state:       %s\n", s.State)
			a.printf("block size:  %d\n", s.BlockSize)
			a.printf("size:        %s\n", humanBytes(s.Size))
			a.printf("free:        %s for backups", humanBytes(s.FreeBytes))
			if s.LowSpace {
				a.printf(" (LOW: below %s)", humanBytes(s.LowSpaceThreshold))
			}
			a.printf("\n")
			a.printf("backed up:   %s in %s; log: %s in %s\n", humanBytes(s.BackedUpBytes), plural(int64(s.Backups), "backup"), plural(int64(s.LogEntries), "entry"), plural(int64(s.LogBlocks), "block"))
			a.printf("engine:      %d writes, %d reads, %d discards, %d flushes, %d in flight\n", s.Writes, s.Reads, s.Discards, s.Flushes, s.InFlight)
			a.printf("nbd:         %d reads (%s), %d writes (%s), %d trims (%s), %d flushes, %d errors\n",
				s.Server.Reads, humanBytes(int64(s.Server.BytesRead)), s.Server.Writes, humanBytes(int64(s.Server.BytesWritten)),
				s.Server.Trims, humanBytes(int64(s.Server.BytesTrimmed)), s.Server.Flushes, s.Server.Errors)
			if s.Server.LastError != "" {
				a.printf("last error:  %s\n", s.Server.LastError)
			}
			if s.CommittedOnFull {
				a.printf("note:        the checkpoint was committed when free space ran out (--on-full commit)\n")
			}
			if s.Broken != "" {
				a.printf("BROKEN:      %s\n             stop the server and run: snapctl bow restore %s\n", s.Broken, s.Device)
			}
		})
}

// humanBytes prints a byte count with a binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

// classifyBowServe maps the errors of serving and controlling a bow device
// to exit codes and hints.
func classifyBowServe(err error) (int, string, bool) {
	var (
		ce  controlError
		ns  errNoServer
		cb  errControlBusy
		se  errStoppedEarly
		nr  bow.NeedsRestoreError
		rp  bow.RestoreInProgressError
		tr  bow.TransitionError
		sp  bow.NoSpaceError
		bs  bow.BlockSizeError
		ts  bow.DeviceTooSmallError
		br  bow.BrokenError
		cl  bow.CorruptLogError
		bz  nbd.BusyError
		nn  nbd.NotNBDError
		nol bow.NoLogError
	)
	switch {
	case errors.As(err, &ce):
		return ce.Code, ce.Hint, true
	case errors.As(err, &ns):
		return exitRefused, "start the server first: snapctl bow serve DEV --nbd /dev/nbd0 (or name its socket with --control)", true
	case errors.As(err, &cb):
		return exitRefused, "stop the other server first, or give this one its own --control socket", true
	case errors.As(err, &se):
		return exitFailure, "the device was disconnected under the server (nbd-client -d?); the checkpoint log on the device is intact: serve again after 'snapctl bow restore' or 'snapctl bow commit --offline'", true
	case errors.As(err, &nr):
		return exitNeedsRepair, fmt.Sprintf("bring the checkpoint back with 'snapctl bow restore %s', or keep the current contents with 'snapctl bow commit --offline %s'", nr.Device, nr.Device), true
	case errors.As(err, &rp):
		return exitNeedsRepair, fmt.Sprintf("finish it: snapctl bow restore %s", rp.Device), true
	case errors.As(err, &tr):
		switch tr.From {
		case bow.StateCheckpoint:
			return exitRefused, "a checkpoint is already active: keep it with 'snapctl bow commit', or stop the server and bring it back with 'snapctl bow restore DEV'", true
		case bow.StateCommitted:
			return exitRefused, "the device is committed; for a new checkpoint stop the server, serve the device again (snapctl bow serve), fstrim, then 'snapctl bow checkpoint'", true
		}
		return exitRefused, "take a checkpoint first: snapctl bow checkpoint", true
	case errors.As(err, &sp):
		return exitRefused, "free space for backups is short: before 'snapctl bow checkpoint' run fstrim on the mounted filesystem (and free space in it); during a checkpoint, commit it (snapctl bow commit) or restore it to get the backup space back", true
	case errors.As(err, &bs):
		if bs.Log != 0 {
			return exitUsage, fmt.Sprintf("the checkpoint on the device uses block size %d: leave out --block-size or give --block-size %d", bs.Log, bs.Log), true
		}
		return exitUsage, "give --block-size 512, 1024, 2048 or 4096 (default 4096)", true
	case errors.As(err, &ts):
		return exitRefused, fmt.Sprintf("bow needs a device of at least two %d-byte blocks", ts.BlockSize), true
	case errors.As(err, &br):
		return exitNeedsRepair, fmt.Sprintf("stop the server and restore the checkpoint: snapctl bow restore %s", br.Device), true
	case errors.As(err, &cl):
		return exitInvalidData, fmt.Sprintf("nothing was written; to keep the current contents and drop the damaged checkpoint: snapctl bow restore %s --roll-forward-on-corruption", cl.Device), true
	case errors.As(err, &nol):
		return exitRefused, fmt.Sprintf("%s holds no bow checkpoint: there is nothing to restore or commit (take one with snapctl bow serve and snapctl bow checkpoint)", nol.Device), true
	case errors.As(err, &bz):
		return exitRefused, fmt.Sprintf("%s is in use by another server: stop it (nbd-client -d %s) or pick another --nbd device", bz.Path, bz.Path), true
	case errors.As(err, &nn):
		return exitUnsupported, "load the kernel's NBD client (modprobe nbd) and give a /dev/nbdN device", true
	}
	return 0, "", false
}

// bowOfflineCommitDoc is `bow commit --offline --json`.
type bowOfflineCommitDoc struct {
	schema
	Device    string `json:"device"`
	Committed bool   `json:"committed"`
}
