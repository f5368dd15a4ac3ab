package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/control"
	"github.com/snapctl/snapctl/bow/nbd"
	"github.com/snapctl/snapctl/bow/serve"
)

// The bow server: `snapctl bow serve` runs package bow/serve on a device
// and prints what it does; `snapctl bow checkpoint|commit|status` steer it
// through package bow/control. This file keeps the flags, the printing and
// the hints.

func init() {
	for _, c := range []func(*app) *cobra.Command{newBowServeCmd, newBowCheckpointCmd, newBowCommitCmd, newBowStatusCmd} {
		registerBowSubcommand(c)
	}
	registerClassifier(classifyBowServe)
}

// serveStatus is what `snapctl bow status` reports.
type serveStatus = control.Status

type serveFlags struct {
	nbdPath        string
	listen         string
	trustedNetwork bool
	blockSize      int64
	onFull         string
	control        string
	lowSpace       float64
	state          string
	timeout        time.Duration
	workers        int
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

--listen serves NBD clients instead of the kernel's device. NBD has no
authentication: anyone who reaches the address can read and write DEV. A
tcp: address must therefore be loopback (127.0.0.1, [::1], or a name that
resolves only to loopback addresses); serving on any other address, the
wildcards 0.0.0.0 and [::] included, is refused unless --trusted-network says
that every host that can reach it is trusted.

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
	fl.StringVar(&f.listen, "listen", "", "serve NBD clients (newstyle handshake) on unix:PATH or tcp:HOST:PORT instead of the kernel device; tcp: must be loopback unless --trusted-network")
	fl.BoolVar(&f.trustedNetwork, "trusted-network", false, "allow --listen on a tcp: address other hosts can reach: NBD has no authentication, so only on a network where every host is trusted")
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
	if f.listen != "" {
		if _, _, err := serve.ParseAddress(f.listen); err != nil {
			return newUsageError(path, fmt.Errorf("--listen %q: want unix:PATH or tcp:HOST:PORT", f.listen))
		}
	}
	if f.control == "" {
		f.control = control.DefaultSocket(dev)
	}
	if f.state == "" {
		f.state = serve.StatePath(a.stateDir, dev)
	}
	level := slog.LevelInfo
	if a.verbose > 0 {
		level = slog.LevelDebug
	}
	warn := slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
	// Catch the stop signals from the start: killed by one midway through
	// the setup, the server would leave a checkpoint without its map.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cfg := serve.Config{
		Device:         dev,
		NBD:            f.nbdPath,
		Listen:         f.listen,
		TrustedNetwork: f.trustedNetwork,
		BlockSize:      f.blockSize,
		OnFull:         policy,
		LowSpace:       f.lowSpace,
		StatePath:      f.state,
		Control:        f.control,
		Timeout:        f.timeout,
		Workers:        f.workers,
		Runner:         nbdRunArgv,
		Harden:         true,
		Log:            warn,
		OnLowSpace: func(s bow.Status) {
			warn.Warn("bow: low on free space for backups", "device", dev, "free_bytes", s.FreeBytes, "threshold", s.LowSpaceThreshold,
				"hint", "commit soon (snapctl bow commit), or free space in the filesystem and run fstrim before the next checkpoint")
		},
		OnAutoCommit: func(s bow.Status) {
			warn.Warn("bow: out of free space for backups: the checkpoint was committed (--on-full commit)", "device", dev)
		},
	}
	res, err := serve.Run(ctx, cfg, func(srv *serve.Server) {
		where := f.nbdPath
		if where == "" {
			where = f.listen
		}
		s := srv.Engine().Status()
		a.printf("serving %s on %s: state %s, block size %d, %d bytes; control %s\n", dev, where, s.State, s.BlockSize, s.Size, srv.Control())
	})
	if err != nil {
		return err
	}
	switch res.State {
	case bow.StateCheckpoint:
		a.printf("stopped: %s holds a checkpoint; range map saved to %s. Serve again to resume, or: snapctl bow restore %s\n", dev, res.StatePath, dev)
	default:
		a.printf("stopped: %s is in state %s\n", dev, res.State)
	}
	return nil
}

// controlFor picks the control socket: --control, else the default for
// DEV, else the only server running.
func controlFor(cmd *cobra.Command, socket string, args []string) (string, error) {
	switch {
	case socket != "" && len(args) > 0:
		return "", newUsageError(cmd.CommandPath(), errors.New("give DEV or --control, not both"))
	case socket != "":
		return socket, nil
	}
	var dev string
	if len(args) == 1 {
		dev = args[0]
	}
	sock, err := control.Locate(dev)
	var amb control.AmbiguousError
	if errors.As(err, &amb) {
		return "", newUsageError(cmd.CommandPath(), fmt.Errorf("%d bow servers are running (%s): name one with DEV or --control", len(amb.Sockets), strings.Join(amb.Sockets, ", ")))
	}
	return sock, err
}

func controlCmd(a *app, use, short, long string, op control.Op, show func(*serveStatus)) *cobra.Command {
	var socket string
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
			sock, err := controlFor(cmd, socket, args)
			if err != nil {
				return err
			}
			s, err := control.Client{Socket: sock}.Call(cmd.Context(), op)
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
	c.Flags().StringVar(&socket, "control", "", "control socket of the server (default /run/snapctl/bow-<name of DEV>.sock)")
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
  fstrim -v /mnt && snapctl bow checkpoint /dev/sdb`, control.OpCheckpoint,
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
  snapctl bow commit --offline /dev/sdb`, control.OpCommit,
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
	if err := bow.RollForward(context.Background(), d); err != nil {
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
  snapctl bow status --json --control /run/snapctl/bow-sdb.sock`, control.OpStatus,
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
		ns  control.NoServerError
		cb  control.SocketBusyError
		br2 control.BadRequestError
		se  serve.StoppedError
		un  serve.UntrustedNetworkError
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
	case errors.As(err, &ns):
		return exitRefused, "start the server first: snapctl bow serve DEV --nbd /dev/nbd0 (or name its socket with --control)", true
	case errors.As(err, &cb):
		return exitRefused, "stop the other server first, or give this one its own --control socket", true
	case errors.As(err, &br2):
		return exitFailure, "the server does not know this request: is it an older snapctl? Stop it and serve again with this one", true
	case errors.As(err, &un):
		return exitRefused, "serve on a loopback address (tcp:127.0.0.1:PORT, tcp:[::1]:PORT, or unix:PATH); on a network where every host is trusted, add --trusted-network", true
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
