package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/semaphore"
)

// Backend is the storage a Server exports. Its methods are called from many
// goroutines at once. Trim tells it a range is no longer used.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Flush() error
	Trim(off, length int64) error
	Size() int64
}

// Options tune a Server. Zero values pick the defaults.
type Options struct {
	// Workers is the number of requests handled at once; default 16.
	Workers int
	// MaxRequest is the largest read or write payload accepted, in bytes;
	// larger requests are answered with EINVAL. Default 32 MiB, the most
	// the Linux client sends in one request.
	MaxRequest int
	// MaxBuffered bounds the payload bytes held by all requests in flight;
	// default 64 MiB, never less than MaxRequest. Reading from the
	// connection pauses while the bound is reached.
	MaxBuffered int64
	// ReadOnly refuses writes and trims with EPERM and says so in the
	// transmission flags.
	ReadOnly bool
	// BlockSize is the preferred I/O size announced in the handshake
	// (NBD_INFO_BLOCK_SIZE); default 4096.
	BlockSize int
	// Log receives one Warn record per failed request; nil discards them.
	Log *slog.Logger
}

const (
	defaultWorkers     = 16
	defaultMaxRequest  = 32 << 20
	defaultMaxBuffered = 64 << 20
	zeroChunk          = 1 << 20
)

// Server answers NBD requests from a Backend: the transmission phase with
// simple replies, and the newstyle fixed handshake for clients that need
// one. Requests run in parallel on a bounded number of goroutines; replies
// are written one at a time, in the order the requests complete.
type Server struct {
	b      Backend
	opts   Options
	budget *semaphore.Weighted
	slots  chan struct{}
	st     counters
}

type counters struct {
	reads, writes, flushes, trims, zeroes, others atomic.Uint64
	bytesRead, bytesWritten, bytesTrimmed         atomic.Uint64
	errors, inFlight                              atomic.Int64
	lastErr                                       atomic.Value // string
}

// Stats counts what a Server has done since it was made.
type Stats struct {
	Reads        uint64 `json:"reads"`
	Writes       uint64 `json:"writes"`
	Flushes      uint64 `json:"flushes"`
	Trims        uint64 `json:"trims"`
	WriteZeroes  uint64 `json:"write_zeroes,omitempty"`
	Other        uint64 `json:"other,omitempty"`
	BytesRead    uint64 `json:"bytes_read"`
	BytesWritten uint64 `json:"bytes_written"`
	BytesTrimmed uint64 `json:"bytes_trimmed"`
	Errors       int64  `json:"errors"`
	LastError    string `json:"last_error,omitempty"`
	InFlight     int64  `json:"in_flight"`
}

// NewServer returns a server for b.
func NewServer(b Backend, opts Options) *Server {
	if opts.Workers <= 0 {
		opts.Workers = defaultWorkers
	}
	if opts.MaxRequest <= 0 {
		opts.MaxRequest = defaultMaxRequest
	}
	if opts.MaxBuffered <= 0 {
		opts.MaxBuffered = defaultMaxBuffered
	}
	if opts.MaxBuffered < int64(opts.MaxRequest) {
		opts.MaxBuffered = int64(opts.MaxRequest)
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = 4096
	}
	return &Server{
		b:      b,
		opts:   opts,
		budget: semaphore.NewWeighted(opts.MaxBuffered),
		slots:  make(chan struct{}, opts.Workers),
	}
}

// Flags returns the transmission flags the server offers: flush, FUA and
// trim (and write-zeroes), or read-only.
func (s *Server) Flags() uint16 {
	f := uint16(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA)
	if s.opts.ReadOnly {
		return f | NBD_FLAG_READ_ONLY
	}
	return f | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES
}

// Size returns the size of the export in bytes.
func (s *Server) Size() int64 { return s.b.Size() }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Reads:        s.st.reads.Load(),
		Writes:       s.st.writes.Load(),
		Flushes:      s.st.flushes.Load(),
		Trims:        s.st.trims.Load(),
		WriteZeroes:  s.st.zeroes.Load(),
		Other:        s.st.others.Load(),
		BytesRead:    s.st.bytesRead.Load(),
		BytesWritten: s.st.bytesWritten.Load(),
		BytesTrimmed: s.st.bytesTrimmed.Load(),
		Errors:       s.st.errors.Load(),
		InFlight:     s.st.inFlight.Load(),
	}
	if v, ok := s.st.lastErr.Load().(string); ok {
		st.LastError = v
	}
	return st
}

// session is one connection in the transmission phase.
type session struct {
	s    *Server
	conn io.ReadWriter
	wg   sync.WaitGroup

	wmu  sync.Mutex // serializes replies
	werr error      // first failure to write a reply
	dead atomic.Bool
}

// Serve runs the transmission phase on conn until the client sends
// NBD_CMD_DISC or closes the connection, and returns once every request it
// read has been answered. It returns nil for a disconnect or an end of
// stream between requests, and an error for a broken stream: a bad magic,
// a truncated request or a failed reply. It does not close conn; after DISC
// the caller should close it promptly (the Linux client waits for that).
func (s *Server) Serve(conn io.ReadWriter) error {
	c := &session{s: s, conn: conn}
	err := c.readLoop(bufio.NewReaderSize(conn, 64<<10))
	c.wg.Wait()
	c.wmu.Lock()
	werr := c.werr
	c.wmu.Unlock()
	if err == nil {
		err = werr
	}
	return err
}

func (c *session) readLoop(r *bufio.Reader) error {
	s := c.s
	var hdr [RequestSize]byte
	for {
		if c.dead.Load() {
			return nil // the reply error is reported by Serve
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || c.dead.Load() {
				return nil
			}
			return fmt.Errorf("read request: %w", err)
		}
		req, err := ParseRequest(hdr[:])
		if err != nil {
			return err
		}
		var buf *[]byte
		switch req.Type {
		case CmdDisc:
			return nil
		case CmdWrite:
			if int64(req.Length) > int64(s.opts.MaxRequest) || req.Length > 1<<31 {
				// Skip the payload without holding it, then refuse.
				if _, err := io.CopyN(io.Discard, r, int64(req.Length)); err != nil {
					return fmt.Errorf("read write payload of %d bytes: %w", req.Length, err)
				}
				s.st.writes.Add(1)
				c.finish(req, fmt.Errorf("write of %d bytes: more than %d", req.Length, s.opts.MaxRequest), NBD_EINVAL, nil)
				continue
			}
			buf = c.acquire(int(req.Length))
			if _, err := io.ReadFull(r, *buf); err != nil {
				c.release(buf)
				return fmt.Errorf("read write payload of %d bytes: %w", req.Length, err)
			}
		case CmdRead:
			if int64(req.Length) > int64(s.opts.MaxRequest) || req.Length > 1<<31 {
				s.st.reads.Add(1)
				c.finish(req, fmt.Errorf("read of %d bytes: more than %d", req.Length, s.opts.MaxRequest), NBD_EINVAL, nil)
				continue
			}
			buf = c.acquire(int(req.Length))
		}
		s.slots <- struct{}{}
		s.st.inFlight.Add(1)
		c.wg.Add(1)
		go func() {
			defer func() {
				c.release(buf)
				s.st.inFlight.Add(-1)
				<-s.slots
				c.wg.Done()
			}()
			c.handle(req, buf)
		}()
	}
}

// acquire takes n bytes of the buffer budget and returns a buffer of n
// bytes.
func (c *session) acquire(n int) *[]byte {
	c.s.budget.Acquire(context.Background(), int64(max(n, 1)))
	return getBuf(n)
}

func (c *session) release(b *[]byte) {
	if b == nil {
		return
	}
	c.s.budget.Release(int64(max(len(*b), 1)))
	putBuf(b)
}

// handle carries out one request and replies.
func (c *session) handle(req Request, buf *[]byte) {
	s := c.s
	off, n := int64(req.Offset), int64(req.Length)
	size := s.b.Size()
	inside := req.Offset <= uint64(size) && uint64(req.Length) <= uint64(size)-req.Offset
	outside := func(code uint32) (uint32, error) {
		return code, fmt.Errorf("%v at %d+%d: beyond the end at %d", req.Type, off, n, size)
	}
	var err error
	var code uint32
	var data []byte
	switch req.Type {
	case CmdRead:
		s.st.reads.Add(1)
		if !inside {
			code, err = outside(NBD_EINVAL)
			break
		}
		if _, err = s.b.ReadAt(*buf, off); err == nil {
			data = *buf
			s.st.bytesRead.Add(uint64(n))
		}
	case CmdWrite:
		s.st.writes.Add(1)
		switch {
		case s.opts.ReadOnly:
			err, code = errors.New("write to a read-only export"), NBD_EPERM
		case !inside:
			code, err = outside(NBD_ENOSPC)
		default:
			if _, err = s.b.WriteAt(*buf, off); err == nil {
				s.st.bytesWritten.Add(uint64(n))
				err = c.fua(req)
			}
		}
	case CmdFlush:
		s.st.flushes.Add(1)
		err = s.b.Flush()
	case CmdTrim:
		s.st.trims.Add(1)
		switch {
		case s.opts.ReadOnly:
			err, code = errors.New("trim of a read-only export"), NBD_EPERM
		case !inside:
			code, err = outside(NBD_EINVAL)
		default:
			if err = s.b.Trim(off, n); err == nil {
				s.st.bytesTrimmed.Add(uint64(n))
				err = c.fua(req)
			}
		}
	case CmdWriteZeroes:
		s.st.zeroes.Add(1)
		switch {
		case s.opts.ReadOnly:
			err, code = errors.New("write-zeroes to a read-only export"), NBD_EPERM
		case !inside:
			code, err = outside(NBD_ENOSPC)
		default:
			if err = c.writeZeroes(off, n); err == nil {
				s.st.bytesWritten.Add(uint64(n))
				err = c.fua(req)
			}
		}
	case CmdCache:
		s.st.others.Add(1) // a hint; nothing to do
	default:
		s.st.others.Add(1)
		err, code = fmt.Errorf("unknown command %v", req.Type), NBD_EINVAL
	}
	if err != nil && code == 0 {
		code = ErrorCode(err)
	}
	c.finish(req, err, code, data)
}

// fua flushes after a write that asked for force unit access.
func (c *session) fua(req Request) error {
	if req.Flags&NBD_CMD_FLAG_FUA == 0 {
		return nil
	}
	return c.s.b.Flush()
}

var zeros = make([]byte, zeroChunk)

func (c *session) writeZeroes(off, n int64) error {
	for n > 0 {
		k := min(n, zeroChunk)
		if _, err := c.s.b.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// finish counts and logs a failure and sends the reply.
func (c *session) finish(req Request, err error, code uint32, data []byte) {
	if code != 0 {
		c.s.st.errors.Add(1)
		if err == nil {
			err = fmt.Errorf("error %d", code)
		}
		c.s.st.lastErr.Store(fmt.Sprintf("%v at %d+%d: %v", req.Type, req.Offset, req.Length, err))
		if c.s.opts.Log != nil {
			c.s.opts.Log.Warn("nbd request failed", "cmd", req.Type.String(), "offset", req.Offset, "length", req.Length, "errno", code, "err", err)
		}
		data = nil
	}
	var hdr [ReplySize]byte
	putReply(hdr[:], code, req.Cookie)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	var werr error
	if len(data) == 0 {
		_, werr = c.conn.Write(hdr[:])
	} else {
		bufs := net.Buffers{hdr[:], data}
		_, werr = bufs.WriteTo(c.conn)
	}
	if werr != nil {
		c.werr = fmt.Errorf("send reply to %v at %d: %w", req.Type, req.Offset, werr)
		c.dead.Store(true)
		if cl, ok := c.conn.(io.Closer); ok {
			cl.Close() // unblock the reader
		}
	}
}

// Buffers come from pools by power-of-two size class.
var pools [32]sync.Pool

func getBuf(n int) *[]byte {
	cls := bits.Len(uint(max(n, 1) - 1))
	if cls >= len(pools) {
		b := make([]byte, n)
		return &b
	}
	if p, ok := pools[cls].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<cls)
	return &b
}

func putBuf(p *[]byte) {
	c := cap(*p)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	cls := bits.Len(uint(c - 1))
	if cls < len(pools) {
		pools[cls].Put(p)
	}
}
