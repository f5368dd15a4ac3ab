// Package nbd serves a block device to Linux over the Network Block Device
// protocol, so that a userspace storage engine (the bow backup-on-write
// engine) can be mounted like any disk.
//
// NBD splits a session in two phases. In the handshake the server says
// which exports it has and what they can do (their size and transmission
// flags: flush, FUA, trim, read-only); in the transmission phase the client
// sends fixed 28-byte requests (magic 0x25609513, command flags, type,
// cookie, offset, length, and for a write the data) and the server answers
// each with a 16-byte simple reply (magic 0x67446698, an errno-style error,
// the request's cookie, and for a successful read the data). Requests may
// be answered in any order; the cookie pairs them up. Server runs the
// transmission phase with requests handled in parallel by a bounded pool of
// goroutines and a bounded amount of buffered payload, and offers the fixed
// newstyle handshake (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST,
// NBD_OPT_EXPORT_NAME) for clients such as nbd-client or qemu that connect
// over a socket.
//
// The kernel's own client needs no handshake when it is set up with ioctls:
// Bind opens /dev/nbdN, sets the block size, the size and the flags
// (NBD_SET_BLKSIZE, NBD_SET_SIZE_BLOCKS, NBD_SET_FLAGS) and gives the kernel
// one end of a unix socket pair (NBD_SET_SOCK). NBD_DO_IT, which blocks for
// the life of the device, runs in a helper process (BindOptions.Runner,
// whose body is RunDevice), not in the server: the kernel's teardown after
// a fatal signal waits for sends to the server's end of the socket, and if
// that end belonged to the process being torn down, a SIGKILL under write
// load would leave it unkillable. The helper ignores the signals that stop
// a server and clears the device when the connection ends, so that
// requests a killed server never answered fail with I/O errors instead of
// hanging the filesystem. Disconnect flushes, sends NBD_DISCONNECT and
// waits for the kernel's NBD_CMD_DISC; the server must close its end then,
// or the kernel waits minutes before it gives up.
//
// Linux turns every error value in a reply into an I/O error for the
// filesystem; ENOSPC from the backend reaches the filesystem as EIO.
//
// References: the protocol document at
// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md and
// the kernel's include/uapi/linux/nbd.h and drivers/block/nbd.c.
package nbd
