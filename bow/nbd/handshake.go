package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// maxOptionData bounds the data of one handshake option; names are at most
// 4096 bytes by the protocol, so anything larger is refused.
const maxOptionData = 16 << 10

// ErrAborted reports a client that ended the handshake with NBD_OPT_ABORT.
var ErrAborted = errors.New("nbd handshake: the client aborted")

// UnknownExportError reports a client that asked for an export by a name the
// server does not have with NBD_OPT_EXPORT_NAME, which leaves the server no
// way to answer but to hang up.
type UnknownExportError struct {
	Name string
}

func (e UnknownExportError) Error() string {
	return fmt.Sprintf("nbd handshake: the client asked for export %q, which does not exist", e.Name)
}

// Handshake runs the server side of the fixed newstyle handshake on conn,
// offering a single export called name (the empty name, the default
// export, is accepted too). It answers NBD_OPT_LIST, NBD_OPT_INFO and
// NBD_OPT_ABORT, refuses other options with NBD_REP_ERR_UNSUP (structured
// replies and TLS are not offered), and returns nil once the client has
// chosen the export with NBD_OPT_GO or NBD_OPT_EXPORT_NAME: the
// transmission phase starts, see Serve. Old-style negotiation is not
// offered.
func (s *Server) Handshake(conn io.ReadWriter, name string) error {
	be := binary.BigEndian
	var hello [18]byte
	be.PutUint64(hello[0:], NBDMAGIC)
	be.PutUint64(hello[8:], IHAVEOPT)
	be.PutUint16(hello[16:], NBD_FLAG_FIXED_NEWSTYLE|NBD_FLAG_NO_ZEROES)
	if _, err := conn.Write(hello[:]); err != nil {
		return fmt.Errorf("nbd handshake: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(conn, cf[:]); err != nil {
		return fmt.Errorf("nbd handshake: read client flags: %w", err)
	}
	flags := be.Uint32(cf[:])
	if flags&^uint32(NBD_FLAG_C_FIXED_NEWSTYLE|NBD_FLAG_C_NO_ZEROES) != 0 {
		return fmt.Errorf("nbd handshake: unknown client flags %#x", flags)
	}
	noZeroes := flags&NBD_FLAG_C_NO_ZEROES != 0
	for {
		var oh [16]byte
		if _, err := io.ReadFull(conn, oh[:]); err != nil {
			return fmt.Errorf("nbd handshake: read option: %w", err)
		}
		if m := be.Uint64(oh[0:]); m != IHAVEOPT {
			return fmt.Errorf("nbd handshake: option magic %#x, want %#x", m, uint64(IHAVEOPT))
		}
		opt, n := be.Uint32(oh[8:]), be.Uint32(oh[12:])
		if n > maxOptionData {
			// The option cannot be skipped safely with bounded effort.
			return fmt.Errorf("nbd handshake: option %d carries %d bytes, more than %d", opt, n, maxOptionData)
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(conn, data); err != nil {
			return fmt.Errorf("nbd handshake: read option %d: %w", opt, err)
		}
		known := func(n string) bool { return n == "" || n == name }
		switch opt {
		case NBD_OPT_EXPORT_NAME:
			if !known(string(data)) {
				return UnknownExportError{Name: string(data)}
			}
			b := be.AppendUint64(nil, uint64(s.Size()))
			b = be.AppendUint16(b, s.Flags())
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			if _, err := conn.Write(b); err != nil {
				return fmt.Errorf("nbd handshake: send export: %w", err)
			}
			return nil
		case NBD_OPT_ABORT:
			optReply(conn, opt, NBD_REP_ACK, nil) // the client may be gone already
			return ErrAborted
		case NBD_OPT_LIST:
			if n != 0 {
				if err := optReply(conn, opt, NBD_REP_ERR_INVALID, nil); err != nil {
					return err
				}
				continue
			}
			entry := be.AppendUint32(nil, uint32(len(name)))
			if err := optReply(conn, opt, NBD_REP_SERVER, append(entry, name...)); err != nil {
				return err
			}
			if err := optReply(conn, opt, NBD_REP_ACK, nil); err != nil {
				return err
			}
		case NBD_OPT_INFO, NBD_OPT_GO:
			want, infos, ok := parseInfoRequest(data)
			var err error
			switch {
			case !ok:
				err = optReply(conn, opt, NBD_REP_ERR_INVALID, nil)
			case !known(want):
				err = optReply(conn, opt, NBD_REP_ERR_UNKNOWN, nil)
			default:
				err = s.sendInfo(conn, opt, name, infos)
				if err == nil && opt == NBD_OPT_GO {
					return nil
				}
			}
			if err != nil {
				return err
			}
		default:
			if err := optReply(conn, opt, NBD_REP_ERR_UNSUP, nil); err != nil {
				return err
			}
		}
	}
}

// parseInfoRequest decodes the data of NBD_OPT_INFO and NBD_OPT_GO: u32
// name length, name, u16 count, count × u16 information types.
func parseInfoRequest(b []byte) (name string, infos []uint16, ok bool) {
	be := binary.BigEndian
	if len(b) < 4 {
		return "", nil, false
	}
	nl := be.Uint32(b)
	if uint64(nl) > uint64(len(b)-4) || len(b)-4-int(nl) < 2 {
		return "", nil, false
	}
	name = string(b[4 : 4+nl])
	rest := b[4+nl:]
	count := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return "", nil, false
	}
	for i := 0; i < count; i++ {
		infos = append(infos, be.Uint16(rest[2*i:]))
	}
	return name, infos, true
}

// sendInfo answers NBD_OPT_INFO or NBD_OPT_GO: the export's size and
// flags, the name and block sizes if asked for, then an ACK.
func (s *Server) sendInfo(conn io.Writer, opt uint32, name string, infos []uint16) error {
	be := binary.BigEndian
	exp := be.AppendUint16(nil, NBD_INFO_EXPORT)
	exp = be.AppendUint64(exp, uint64(s.Size()))
	exp = be.AppendUint16(exp, s.Flags())
	if err := optReply(conn, opt, NBD_REP_INFO, exp); err != nil {
		return err
	}
	for _, t := range infos {
		var b []byte
		switch t {
		case NBD_INFO_NAME:
			b = append(be.AppendUint16(nil, NBD_INFO_NAME), name...)
		case NBD_INFO_BLOCK_SIZE:
			// Any alignment works (the backend reads, modifies and writes
			// partial blocks), but whole blocks are cheaper.
			b = be.AppendUint16(nil, NBD_INFO_BLOCK_SIZE)
			b = be.AppendUint32(b, 1)
			b = be.AppendUint32(b, uint32(s.opts.BlockSize))
			b = be.AppendUint32(b, uint32(s.opts.MaxRequest))
		default:
			continue
		}
		if err := optReply(conn, opt, NBD_REP_INFO, b); err != nil {
			return err
		}
	}
	return optReply(conn, opt, NBD_REP_ACK, nil)
}

// optReply sends one option reply.
func optReply(w io.Writer, opt, typ uint32, data []byte) error {
	be := binary.BigEndian
	b := be.AppendUint64(make([]byte, 0, 20+len(data)), NBD_REP_MAGIC)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, typ)
	b = be.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("nbd handshake: reply to option %d: %w", opt, err)
	}
	return nil
}

// ServeClient runs the handshake and then the transmission phase on conn,
// for an external client such as nbd-client or qemu over a unix or TCP
// socket. It closes conn when done.
func (s *Server) ServeClient(conn io.ReadWriteCloser, name string) error {
	defer conn.Close()
	if err := s.Handshake(conn, name); err != nil {
		if errors.Is(err, ErrAborted) {
			return nil
		}
		return err
	}
	return s.Serve(conn)
}
