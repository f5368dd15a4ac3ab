package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestServeReadWrite(t *testing.T) {
	for _, pipe := range []bool{true, false} {
		t.Run(fmt.Sprintf("pipe=%v", pipe), func(t *testing.T) {
			m := newMem(1 << 20)
			c, res := serve(t, NewServer(m, Options{}), pipe)
			data := pat(1, 12345)
			if r := c.do(CmdWrite, 0, 4096+7, uint32(len(data)), data); r.errno != 0 {
				t.Fatalf("write: error %d, want 0", r.errno)
			}
			if got := m.bytes(4096+7, len(data)); !bytes.Equal(got, data) {
				t.Fatal("backend does not hold the written data")
			}
			r := c.do(CmdRead, 0, 4096+7, uint32(len(data)), nil)
			if r.errno != 0 || !bytes.Equal(r.data, data) {
				t.Fatalf("read back: error %d, data equal %v; want 0, true", r.errno, bytes.Equal(r.data, data))
			}
			if r := c.do(CmdRead, 0, 0, 0, nil); r.errno != 0 || len(r.data) != 0 {
				t.Fatalf("empty read: error %d, %d bytes; want 0, 0", r.errno, len(r.data))
			}
			c.send(CmdDisc, 0, 0, 0, nil)
			if err := <-res; err != nil {
				t.Fatalf("Serve after DISC: %v, want nil", err)
			}
		})
	}
}

func TestServeCommands(t *testing.T) {
	const size = 1 << 20
	eio := fmt.Errorf("write %q: %w", "dev", syscall.EIO)
	nospace := fmt.Errorf("back up: %w", syscall.ENOSPC)
	tests := []struct {
		name        string
		opts        Options
		fail        func(op string, off int64) error
		typ         Command
		flags       uint16
		off         uint64
		length      uint32
		wantErrno   uint32
		wantFlushes int64
		wantTrims   int
	}{
		{name: "write", typ: CmdWrite, length: 4096},
		{name: "write FUA flushes", typ: CmdWrite, flags: NBD_CMD_FLAG_FUA, length: 4096, wantFlushes: 1},
		{name: "flush", typ: CmdFlush, wantFlushes: 1},
		{name: "trim", typ: CmdTrim, off: 8192, length: 65536, wantTrims: 1},
		{name: "trim FUA", typ: CmdTrim, flags: NBD_CMD_FLAG_FUA, off: 8192, length: 65536, wantTrims: 1, wantFlushes: 1},
		{name: "write zeroes", typ: CmdWriteZeroes, off: 4096, length: 3 << 20 >> 2},
		{name: "cache is a no-op", typ: CmdCache, length: 4096},
		{name: "read beyond end", typ: CmdRead, off: size - 512, length: 1024, wantErrno: NBD_EINVAL},
		{name: "read offset overflow", typ: CmdRead, off: 1<<64 - 512, length: 1024, wantErrno: NBD_EINVAL},
		{name: "write beyond end", typ: CmdWrite, off: size, length: 512, wantErrno: NBD_ENOSPC},
		{name: "trim beyond end", typ: CmdTrim, off: size - 4096, length: 8192, wantErrno: NBD_EINVAL},
		{name: "write zeroes beyond end", typ: CmdWriteZeroes, off: size - 4096, length: 8192, wantErrno: NBD_ENOSPC},
		{name: "read too large", typ: CmdRead, length: 64 << 10, opts: Options{MaxRequest: 32 << 10}, wantErrno: NBD_EINVAL},
		{name: "write too large", typ: CmdWrite, length: 64 << 10, opts: Options{MaxRequest: 32 << 10}, wantErrno: NBD_EINVAL},
		{name: "unknown command", typ: Command(42), wantErrno: NBD_EINVAL},
		{name: "read-only write", typ: CmdWrite, length: 512, opts: Options{ReadOnly: true}, wantErrno: NBD_EPERM},
		{name: "read-only trim", typ: CmdTrim, length: 512, opts: Options{ReadOnly: true}, wantErrno: NBD_EPERM},
		{name: "backend EIO", typ: CmdWrite, length: 512, fail: onOp("write", eio), wantErrno: NBD_EIO},
		{name: "backend ENOSPC", typ: CmdWrite, length: 512, fail: onOp("write", nospace), wantErrno: NBD_ENOSPC},
		{name: "backend EPERM on read", typ: CmdRead, length: 512, fail: onOp("read", syscall.EROFS), wantErrno: NBD_EPERM},
		{name: "backend plain error", typ: CmdFlush, fail: onOp("flush", errors.New("boom")), wantErrno: NBD_EIO},
		{name: "flush after FUA write fails", typ: CmdWrite, flags: NBD_CMD_FLAG_FUA, length: 512, fail: onOp("flush", eio), wantErrno: NBD_EIO},
		{name: "trim error", typ: CmdTrim, length: 512, fail: onOp("trim", syscall.EINVAL), wantErrno: NBD_EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem(size)
			m.fail = tc.fail
			s := NewServer(m, tc.opts)
			c, res := serve(t, s, false)
			var payload []byte
			if tc.typ == CmdWrite {
				payload = pat(3, int(tc.length))
			}
			r := c.do(tc.typ, tc.flags, tc.off, tc.length, payload)
			if r.errno != tc.wantErrno {
				t.Errorf("error %d, want %d", r.errno, tc.wantErrno)
			}
			// The stream is still in step: a read works afterwards.
			if r := c.do(CmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
				t.Errorf("read after %s: error %d, %d bytes; want 0, 512", tc.name, r.errno, len(r.data))
			}
			if got := m.flushes.Load(); got != tc.wantFlushes {
				t.Errorf("backend flushes %d, want %d", got, tc.wantFlushes)
			}
			if got := len(m.trims); got != tc.wantTrims {
				t.Errorf("backend trims %d, want %d", got, tc.wantTrims)
			}
			st := s.Stats()
			if (tc.wantErrno != 0) != (st.Errors == 1) {
				t.Errorf("stats errors %d, want %d", st.Errors, map[bool]int{true: 1}[tc.wantErrno != 0])
			}
			if tc.wantErrno != 0 && st.LastError == "" {
				t.Error("stats last error is empty after a failed request")
			}
			c.send(CmdDisc, 0, 0, 0, nil)
			if err := <-res; err != nil {
				t.Fatalf("Serve: %v, want nil", err)
			}
		})
	}
}

func onOp(op string, err error) func(string, int64) error {
	var once sync.Once
	return func(o string, off int64) error {
		fail := false
		if o == op {
			once.Do(func() { fail = true })
		}
		if fail {
			return err
		}
		return nil
	}
}

func TestServeWriteZeroesClears(t *testing.T) {
	m := newMem(4 << 20)
	copy(m.data, pat(9, len(m.data)))
	c, _ := serve(t, NewServer(m, Options{}), false)
	if r := c.do(CmdWriteZeroes, 0, 1000, 3<<20, nil); r.errno != 0 {
		t.Fatalf("write zeroes: error %d", r.errno)
	}
	want := pat(9, 4<<20)
	clear(want[1000 : 1000+3<<20])
	if got := m.bytes(0, 4<<20); !bytes.Equal(got, want) {
		t.Fatalf("device after write-zeroes of [1000, %d) is not the old data with that range zeroed", 1000+3<<20)
	}
}

// TestServeParallel: requests run in parallel up to Workers, replies come
// back paired by cookie, and the payload held at once stays bounded.
func TestServeParallel(t *testing.T) {
	m := newMem(8 << 20)
	m.delay = 20 * time.Millisecond
	const workers, req = 4, 256 << 10
	s := NewServer(m, Options{Workers: workers, MaxRequest: req, MaxBuffered: 2 * req})
	c, res := serve(t, s, false)
	var chans []chan result
	var datas [][]byte
	for i := 0; i < 24; i++ {
		d := pat(100+i, req)
		datas = append(datas, d)
		chans = append(chans, c.send(CmdWrite, 0, uint64(i*req), req, d))
	}
	for i, ch := range chans {
		if r := c.wait(ch); r.errno != 0 {
			t.Fatalf("write %d: error %d", i, r.errno)
		}
	}
	if got := m.maxHeld.Load(); got > 2*req {
		t.Errorf("payload bytes held at once %d, want at most %d", got, 2*req)
	}
	if got := m.maxActive.Load(); got < 2 {
		t.Errorf("at most %d backend calls at once, want parallel calls", got)
	}
	// Reads in parallel, small enough that workers, not bytes, bound them.
	chans = chans[:0]
	for i := 0; i < 32; i++ {
		chans = append(chans, c.send(CmdRead, 0, uint64(i%len(datas)*req), 4096, nil))
	}
	for i, ch := range chans {
		r := c.wait(ch)
		if r.errno != 0 || !bytes.Equal(r.data, datas[i%len(datas)][:4096]) {
			t.Fatalf("read %d: error %d or wrong data", i, r.errno)
		}
	}
	if got := m.maxActive.Load(); got > workers {
		t.Errorf("%d backend calls at once, want at most %d workers", got, workers)
	}
	if got := m.maxActive.Load(); got < workers {
		t.Errorf("%d backend calls at once, want %d", got, workers)
	}
	c.send(CmdDisc, 0, 0, 0, nil)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
}

// TestServeDiscWaits: DISC arriving while requests are in flight still gets
// every one of them answered before Serve returns.
func TestServeDiscWaits(t *testing.T) {
	m := newMem(1 << 20)
	m.delay = 50 * time.Millisecond
	c, res := serve(t, NewServer(m, Options{}), false)
	var chans []chan result
	for i := 0; i < 8; i++ {
		chans = append(chans, c.send(CmdWrite, 0, uint64(i*4096), 4096, pat(i, 4096)))
	}
	c.send(CmdDisc, 0, 0, 0, nil)
	for i, ch := range chans {
		if r := c.wait(ch); r.errno != 0 {
			t.Fatalf("write %d: error %d", i, r.errno)
		}
	}
	if err := <-res; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	for i := 0; i < 8; i++ {
		if !bytes.Equal(m.bytes(i*4096, 4096), pat(i, 4096)) {
			t.Fatalf("write %d did not reach the backend", i)
		}
	}
}

func TestServeBrokenStream(t *testing.T) {
	tests := []struct {
		name    string
		stream  []byte
		wantErr bool
	}{
		{name: "empty", stream: nil},
		{name: "bad magic", stream: append([]byte{1, 2, 3, 4}, make([]byte, 24)...), wantErr: true},
		{name: "truncated header", stream: Request{Type: CmdRead, Length: 512}.Encode(nil)[:20], wantErr: true},
		{name: "truncated payload", stream: append(Request{Type: CmdWrite, Length: 512}.Encode(nil), 1, 2, 3), wantErr: true},
		{name: "truncated oversized payload", stream: append(Request{Type: CmdWrite, Length: 1 << 30}.Encode(nil), 1, 2, 3), wantErr: true},
		{name: "disc", stream: Request{Type: CmdDisc}.Encode(nil)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := NewServer(newMem(1<<20), Options{})
			err := s.Serve(&stream{r: bytes.NewReader(tc.stream)})
			if (err != nil) != tc.wantErr {
				t.Fatalf("Serve: %v, want error %v", err, tc.wantErr)
			}
		})
	}
}

// TestServeReplyFailure: a connection that cannot take replies ends Serve
// with an error instead of hanging.
func TestServeReplyFailure(t *testing.T) {
	s := NewServer(newMem(1<<20), Options{})
	var in bytes.Buffer
	for i := 0; i < 4; i++ {
		in.Write(Request{Type: CmdRead, Cookie: uint64(i), Length: 4096}.Encode(nil))
	}
	pr, pw := io.Pipe()
	go func() { pw.Write(in.Bytes()) }() // then blocks: no end of stream
	conn := &stream{r: pr, w: failWriter{}, close: func() { pw.CloseWithError(io.ErrClosedPipe) }}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, syscall.EPIPE) {
			t.Fatalf("Serve: %v, want an EPIPE reply failure", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve hangs after a failed reply")
	}
}

type stream struct {
	r     io.Reader
	w     io.Writer
	close func()
	once  sync.Once
}

func (s *stream) Read(p []byte) (int, error) { return s.r.Read(p) }
func (s *stream) Write(p []byte) (int, error) {
	if s.w == nil {
		return len(p), nil
	}
	return s.w.Write(p)
}
func (s *stream) Close() error {
	if s.close != nil {
		s.once.Do(s.close)
	}
	return nil
}

type failWriter struct{}

func (failWriter) Write(p []byte) (int, error) { return 0, syscall.EPIPE }

var _ net.Conn = (net.Conn)(nil)
