// Package serve runs a bow device: the backup-on-write engine of package
// bow over a device or image file, given to the kernel as /dev/nbdN (or to
// NBD clients on a socket), steered over a control socket (package
// bow/control).
//
// Run does it all for a program that serves until told to stop:
//
//	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
//	defer stop()
//	res, err := serve.Run(ctx, serve.Config{Device: "/dev/sdb", NBD: "/dev/nbd0", StatePath: "/var/lib/app/sdb.map"})
//
// Start and Server.Stop split it for a program that steers the device
// itself (Server.Checkpoint, Server.Commit) or does other work meanwhile.
//
// # Shutdown order
//
// Stop first stops the front end: the kernel device flushes its cached
// writes and disconnects (NBD_DISCONNECT, then NBD_CLEAR_SOCK), or the
// listener stops and its clients' requests finish. Then the control socket
// closes, the engine flushes and closes, which in checkpoint state saves
// the range map to Config.StatePath, so that serving the same device again
// resumes the checkpoint. A server killed instead leaves a checkpoint log
// without a map: serving it again is refused with bow.NeedsRestoreError
// until the checkpoint is restored or rolled forward (bow.Restore,
// bow.RollForward).
//
// # Network
//
// NBD has no authentication: whoever reaches a listening address can read
// and write the device. Start refuses a TCP address that is not loopback
// (a wildcard, another interface, or a host name any of whose addresses is
// not loopback) with UntrustedNetworkError, unless Config.TrustedNetwork
// says the network is private to trusted hosts.
package serve
