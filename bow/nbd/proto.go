package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// Wire constants of the NBD protocol (the protocol document "proto.md" of
// the NetworkBlockDevice project, and include/uapi/linux/nbd.h). Names keep
// the protocol's own spelling.
const (
	NBD_REQUEST_MAGIC      = 0x25609513
	NBD_SIMPLE_REPLY_MAGIC = 0x67446698

	// Handshake magics.
	NBDMAGIC      = 0x4e42444d41474943 // "NBDMAGIC"
	IHAVEOPT      = 0x49484156454f5054 // "IHAVEOPT"
	NBD_REP_MAGIC = 0x0003e889045565a9
)

// Handshake flags (server) and client flags.
const (
	NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
	NBD_FLAG_NO_ZEROES      = 1 << 1

	NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
	NBD_FLAG_C_NO_ZEROES      = 1 << 1
)

// Transmission flags, sent to the client in the handshake or given to the
// kernel with NBD_SET_FLAGS.
const (
	NBD_FLAG_HAS_FLAGS         = 1 << 0
	NBD_FLAG_READ_ONLY         = 1 << 1
	NBD_FLAG_SEND_FLUSH        = 1 << 2
	NBD_FLAG_SEND_FUA          = 1 << 3
	NBD_FLAG_ROTATIONAL        = 1 << 4
	NBD_FLAG_SEND_TRIM         = 1 << 5
	NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
	NBD_FLAG_SEND_DF           = 1 << 7
	NBD_FLAG_CAN_MULTI_CONN    = 1 << 8
)

// Command flags of a request.
const (
	NBD_CMD_FLAG_FUA     = 1 << 0
	NBD_CMD_FLAG_NO_HOLE = 1 << 1
)

// Options of the newstyle handshake.
const (
	NBD_OPT_EXPORT_NAME      = 1
	NBD_OPT_ABORT            = 2
	NBD_OPT_LIST             = 3
	NBD_OPT_STARTTLS         = 5
	NBD_OPT_INFO             = 6
	NBD_OPT_GO               = 7
	NBD_OPT_STRUCTURED_REPLY = 8
)

// Option reply types; errors have the top bit set.
const (
	NBD_REP_ACK          = 1
	NBD_REP_SERVER       = 2
	NBD_REP_INFO         = 3
	NBD_REP_ERR_UNSUP    = 1<<31 | 1
	NBD_REP_ERR_POLICY   = 1<<31 | 2
	NBD_REP_ERR_INVALID  = 1<<31 | 3
	NBD_REP_ERR_UNKNOWN  = 1<<31 | 6
	NBD_REP_ERR_TOO_BIG  = 1<<31 | 9
	NBD_INFO_EXPORT      = 0
	NBD_INFO_NAME        = 1
	NBD_INFO_DESCRIPTION = 2
	NBD_INFO_BLOCK_SIZE  = 3
)

// Error values of a reply: Linux errno numbers, the protocol's choice.
const (
	NBD_EPERM     = 1
	NBD_EIO       = 5
	NBD_ENOMEM    = 12
	NBD_EINVAL    = 22
	NBD_ENOSPC    = 28
	NBD_EOVERFLOW = 75
	NBD_ENOTSUP   = 95
	NBD_ESHUTDOWN = 108
)

// Sizes on the wire.
const (
	RequestSize = 28 // magic u32, flags u16, type u16, cookie u64, offset u64, length u32
	ReplySize   = 16 // magic u32, error u32, cookie u64
)

// Command is the type of a request.
type Command uint16

// Commands of the transmission phase.
const (
	CmdRead        Command = 0
	CmdWrite       Command = 1
	CmdDisc        Command = 2
	CmdFlush       Command = 3
	CmdTrim        Command = 4
	CmdCache       Command = 5
	CmdWriteZeroes Command = 6
)

var commandNames = [...]string{"read", "write", "disc", "flush", "trim", "cache", "write-zeroes"}

func (c Command) String() string {
	if int(c) < len(commandNames) {
		return commandNames[c]
	}
	return fmt.Sprintf("command(%d)", uint16(c))
}

// Request is the fixed part of a transmission-phase request. A write's
// payload of Length bytes follows it on the wire.
type Request struct {
	Flags  uint16 // NBD_CMD_FLAG_*
	Type   Command
	Cookie uint64 // echoed in the reply ("handle" in older texts)
	Offset uint64
	Length uint32
}

// BadMagicError reports a request header that does not start with
// NBD_REQUEST_MAGIC: the stream is out of step and cannot be read further.
type BadMagicError struct {
	Got uint32
}

func (e BadMagicError) Error() string {
	return fmt.Sprintf("parse request: magic %#08x, want %#08x", e.Got, NBD_REQUEST_MAGIC)
}

// ParseRequest decodes a request header. It checks the magic and the size
// only; whether the command, flags and range make sense is for the server
// to judge.
func ParseRequest(b []byte) (Request, error) {
	if len(b) != RequestSize {
		return Request{}, fmt.Errorf("parse request: %d bytes, want %d", len(b), RequestSize)
	}
	be := binary.BigEndian
	if m := be.Uint32(b[0:]); m != NBD_REQUEST_MAGIC {
		return Request{}, BadMagicError{Got: m}
	}
	return Request{
		Flags:  be.Uint16(b[4:]),
		Type:   Command(be.Uint16(b[6:])),
		Cookie: be.Uint64(b[8:]),
		Offset: be.Uint64(b[16:]),
		Length: be.Uint32(b[24:]),
	}, nil
}

// Encode appends the wire form of r to b.
func (r Request) Encode(b []byte) []byte {
	be := binary.BigEndian
	b = be.AppendUint32(b, NBD_REQUEST_MAGIC)
	b = be.AppendUint16(b, r.Flags)
	b = be.AppendUint16(b, uint16(r.Type))
	b = be.AppendUint64(b, r.Cookie)
	b = be.AppendUint64(b, r.Offset)
	return be.AppendUint32(b, r.Length)
}

// Reply is a simple reply. A successful read's data follows it.
type Reply struct {
	Error  uint32 // 0 or an NBD_E* value
	Cookie uint64
}

// putReply writes the wire form of a simple reply into b[:ReplySize].
func putReply(b []byte, errno uint32, cookie uint64) {
	be := binary.BigEndian
	be.PutUint32(b[0:], NBD_SIMPLE_REPLY_MAGIC)
	be.PutUint32(b[4:], errno)
	be.PutUint64(b[8:], cookie)
}

// ParseReply decodes a simple reply header.
func ParseReply(b []byte) (Reply, error) {
	if len(b) != ReplySize {
		return Reply{}, fmt.Errorf("parse reply: %d bytes, want %d", len(b), ReplySize)
	}
	be := binary.BigEndian
	if m := be.Uint32(b); m != NBD_SIMPLE_REPLY_MAGIC {
		return Reply{}, fmt.Errorf("parse reply: magic %#08x, want %#08x", m, NBD_SIMPLE_REPLY_MAGIC)
	}
	return Reply{Error: be.Uint32(b[4:]), Cookie: be.Uint64(b[8:])}, nil
}

// ErrorCode maps a backend error to the error value of a reply: ENOSPC,
// EINVAL, EPERM (also for EROFS and EACCES), ENOMEM, EOVERFLOW and ENOTSUP
// are kept; anything else is EIO. nil is 0.
func ErrorCode(err error) uint32 {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		switch {
		case errors.Is(err, fs.ErrPermission):
			return NBD_EPERM
		case errors.Is(err, os.ErrClosed):
			return NBD_ESHUTDOWN
		}
		return NBD_EIO
	}
	switch errno {
	case syscall.ENOSPC, syscall.EDQUOT:
		return NBD_ENOSPC
	case syscall.EINVAL:
		return NBD_EINVAL
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return NBD_EPERM
	case syscall.ENOMEM:
		return NBD_ENOMEM
	case syscall.EOVERFLOW:
		return NBD_EOVERFLOW
	case syscall.ENOTSUP:
		return NBD_ENOTSUP
	case syscall.ESHUTDOWN:
		return NBD_ESHUTDOWN
	}
	return NBD_EIO
}
