package nbd

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// memBackend is a Backend in memory that records what it was asked to do.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	trims   [][2]int64
	flushes atomic.Int64
	// fail, if set, returns an error for a call (op "read", "write",
	// "flush", "trim") at off.
	fail func(op string, off int64) error
	// delay slows every read and write down.
	delay time.Duration
	// concurrency tracking
	active, maxActive atomic.Int64
	held, maxHeld     atomic.Int64 // payload bytes inside calls
}

func newMem(size int) *memBackend { return &memBackend{data: make([]byte, size)} }

func (m *memBackend) Size() int64 { return int64(len(m.data)) }

func (m *memBackend) enter(n int) func() {
	a := m.active.Add(1)
	for {
		mx := m.maxActive.Load()
		if a <= mx || m.maxActive.CompareAndSwap(mx, a) {
			break
		}
	}
	h := m.held.Add(int64(n))
	for {
		mx := m.maxHeld.Load()
		if h <= mx || m.maxHeld.CompareAndSwap(mx, h) {
			break
		}
	}
	if m.delay > 0 {
		time.Sleep(m.delay)
	}
	return func() { m.active.Add(-1); m.held.Add(-int64(n)) }
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	defer m.enter(len(p))()
	if m.fail != nil {
		if err := m.fail("read", off); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	defer m.enter(len(p))()
	if m.fail != nil {
		if err := m.fail("write", off); err != nil {
			return 0, err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Flush() error {
	if m.fail != nil {
		if err := m.fail("flush", 0); err != nil {
			return err
		}
	}
	m.flushes.Add(1)
	return nil
}

func (m *memBackend) Trim(off, n int64) error {
	if m.fail != nil {
		if err := m.fail("trim", off); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trims = append(m.trims, [2]int64{off, n})
	return nil
}

func (m *memBackend) bytes(off, n int) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data[off:off+n]...)
}

// client is a minimal NBD client for tests: it sends requests and collects
// replies by cookie from a reader goroutine.
type client struct {
	t      testing.TB
	conn   net.Conn
	wmu    sync.Mutex
	mu     sync.Mutex
	want   map[uint64]int // cookie -> bytes of data expected on success
	got    map[uint64]chan result
	cookie atomic.Uint64
	done   chan error
}

type result struct {
	errno uint32
	data  []byte
}

func newClient(t testing.TB, conn net.Conn) *client {
	c := &client{t: t, conn: conn, want: map[uint64]int{}, got: map[uint64]chan result{}, done: make(chan error, 1)}
	go c.readLoop()
	return c
}

func (c *client) readLoop() {
	var hdr [ReplySize]byte
	for {
		if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
			c.done <- err
			return
		}
		r, err := ParseReply(hdr[:])
		if err != nil {
			c.done <- err
			return
		}
		c.mu.Lock()
		n, ok := c.want[r.Cookie]
		ch := c.got[r.Cookie]
		delete(c.want, r.Cookie)
		c.mu.Unlock()
		if !ok {
			c.done <- fmt.Errorf("reply for unknown cookie %d", r.Cookie)
			return
		}
		var data []byte
		if r.Error == 0 && n > 0 {
			data = make([]byte, n)
			if _, err := io.ReadFull(c.conn, data); err != nil {
				c.done <- err
				return
			}
		}
		ch <- result{errno: r.Error, data: data}
	}
}

// send sends a request and returns the channel its reply arrives on.
func (c *client) send(typ Command, flags uint16, off uint64, length uint32, payload []byte) chan result {
	cookie := c.cookie.Add(1) | 0xabcd<<48
	ch := make(chan result, 1)
	c.mu.Lock()
	c.got[cookie] = ch
	if typ == CmdRead {
		c.want[cookie] = int(length)
	} else {
		c.want[cookie] = 0
	}
	c.mu.Unlock()
	b := Request{Flags: flags, Type: typ, Cookie: cookie, Offset: off, Length: length}.Encode(nil)
	b = append(b, payload...)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("send %v: %v", typ, err)
	}
	return ch
}

func (c *client) wait(ch chan result) result {
	c.t.Helper()
	select {
	case r := <-ch:
		return r
	case err := <-c.done:
		c.done <- err
		select {
		case r := <-ch:
			return r
		default:
		}
		c.t.Fatalf("connection ended while waiting for a reply: %v", err)
	case <-time.After(10 * time.Second):
		c.t.Fatal("no reply within 10 s")
	}
	return result{}
}

func (c *client) do(typ Command, flags uint16, off uint64, length uint32, payload []byte) result {
	c.t.Helper()
	return c.wait(c.send(typ, flags, off, length, payload))
}

// serve starts s on one end of a connected pair and returns a client on
// the other end and a channel with Serve's result.
func serve(t *testing.T, s *Server, pipe bool) (*client, chan error) {
	t.Helper()
	a, b := connPair(t, pipe)
	res := make(chan error, 1)
	go func() {
		err := s.Serve(a)
		a.Close()
		res <- err
	}()
	t.Cleanup(func() { b.Close() })
	return newClient(t, b), res
}

// connPair is net.Pipe (synchronous) or a unix socket pair (buffered).
func connPair(t testing.TB, pipe bool) (net.Conn, net.Conn) {
	t.Helper()
	if pipe {
		return net.Pipe()
	}
	syscall.ForkLock.RLock() // SOCK_CLOEXEC is Linux's: set it the portable way
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err == nil {
		syscall.CloseOnExec(fds[0])
		syscall.CloseOnExec(fds[1])
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socket")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	return conns[0], conns[1]
}

func pat(seed, n int) []byte {
	b := make([]byte, n)
	x := uint32(seed)*2654435761 + 7
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// lockedBuffer is a bytes.Buffer safe for the concurrent reply writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}
