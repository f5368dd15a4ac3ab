package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	tests := []Request{
		{},
		{Flags: NBD_CMD_FLAG_FUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 1 << 40, Length: 32 << 20},
		{Type: CmdDisc, Cookie: ^uint64(0), Offset: ^uint64(0), Length: ^uint32(0)},
	}
	for _, want := range tests {
		b := want.Encode(nil)
		if len(b) != RequestSize {
			t.Fatalf("encoded %d bytes, want %d", len(b), RequestSize)
		}
		got, err := ParseRequest(b)
		if err != nil || got != want {
			t.Fatalf("ParseRequest(Encode(%+v)) = %+v, %v", want, got, err)
		}
	}
}

// TestRequestWire pins the byte layout against a hand-written header.
func TestRequestWire(t *testing.T) {
	b := []byte{
		0x25, 0x60, 0x95, 0x13, // magic
		0x00, 0x01, // flags: FUA
		0x00, 0x01, // type: write
		1, 2, 3, 4, 5, 6, 7, 8, // cookie
		0, 0, 0, 0, 0, 0, 0x10, 0x00, // offset 4096
		0, 0, 0x02, 0x00, // length 512
	}
	got, err := ParseRequest(b)
	want := Request{Flags: NBD_CMD_FLAG_FUA, Type: CmdWrite, Cookie: 0x0102030405060708, Offset: 4096, Length: 512}
	if err != nil || got != want {
		t.Fatalf("got %+v, %v; want %+v", got, err, want)
	}
	var r [ReplySize]byte
	putReply(r[:], NBD_ENOSPC, 0x0102030405060708)
	wantReply := []byte{0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 1, 2, 3, 4, 5, 6, 7, 8}
	if !bytes.Equal(r[:], wantReply) {
		t.Fatalf("reply % x, want % x", r, wantReply)
	}
}

func TestParseRequestBad(t *testing.T) {
	good := Request{Type: CmdRead, Length: 512}.Encode(nil)
	bad := append([]byte{0x25, 0x60, 0x95, 0x14}, good[4:]...)
	tests := []struct {
		name string
		b    []byte
	}{
		{"short", good[:27]},
		{"long", append(append([]byte{}, good...), 0)},
		{"bad magic", bad},
		{"reply magic", append([]byte{0x67, 0x44, 0x66, 0x98}, good[4:]...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseRequest(tc.b); err == nil {
				t.Fatal("got no error")
			}
		})
	}
	var bm BadMagicError
	if _, err := ParseRequest(bad); !errors.As(err, &bm) || bm.Got != 0x25609514 {
		t.Fatalf("got %v, want BadMagicError{0x25609514}", err)
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{syscall.ENOSPC, NBD_ENOSPC},
		{fmt.Errorf("back up on x: %w", syscall.ENOSPC), NBD_ENOSPC},
		{syscall.EDQUOT, NBD_ENOSPC},
		{fmt.Errorf("read: %w", syscall.EINVAL), NBD_EINVAL},
		{syscall.EPERM, NBD_EPERM},
		{syscall.EROFS, NBD_EPERM},
		{syscall.EACCES, NBD_EPERM},
		{os.ErrPermission, NBD_EPERM},
		{syscall.ENOMEM, NBD_ENOMEM},
		{syscall.EOVERFLOW, NBD_EOVERFLOW},
		{syscall.ENOTSUP, NBD_ENOTSUP},
		{syscall.ESHUTDOWN, NBD_ESHUTDOWN},
		{os.ErrClosed, NBD_ESHUTDOWN},
		{syscall.EIO, NBD_EIO},
		{syscall.EBADMSG, NBD_EIO},
		{io.ErrUnexpectedEOF, NBD_EIO},
		{errors.New("anything"), NBD_EIO},
	}
	for _, tc := range tests {
		if got := ErrorCode(tc.err); got != tc.want {
			t.Errorf("ErrorCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestCommandString(t *testing.T) {
	for c, want := range map[Command]string{CmdRead: "read", CmdTrim: "trim", CmdWriteZeroes: "write-zeroes", 99: "command(99)"} {
		if got := c.String(); got != want {
			t.Errorf("Command(%d).String() = %q, want %q", uint16(c), got, want)
		}
	}
}

// FuzzParseRequest: never a panic; whatever parses encodes back to the
// same bytes.
func FuzzParseRequest(f *testing.F) {
	f.Add(Request{Type: CmdWrite, Flags: NBD_CMD_FLAG_FUA, Cookie: 7, Offset: 4096, Length: 512}.Encode(nil))
	f.Add(Request{Type: CmdDisc}.Encode(nil))
	f.Add(make([]byte, RequestSize))
	f.Add([]byte{0x25, 0x60, 0x95})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		if got := r.Encode(nil); !bytes.Equal(got, b) {
			t.Fatalf("Encode(ParseRequest(% x)) = % x", b, got)
		}
	})
}

// FuzzServe feeds an arbitrary byte stream to the transmission phase: it
// must end (the stream is finite), never panic, never touch the backend
// outside its size, and answer with well-formed replies only.
func FuzzServe(f *testing.F) {
	var seed []byte
	seed = Request{Type: CmdWrite, Cookie: 1, Offset: 100, Length: 5}.Encode(seed)
	seed = append(seed, "hello"...)
	seed = Request{Type: CmdRead, Cookie: 2, Offset: 100, Length: 5}.Encode(seed)
	seed = Request{Type: CmdTrim, Cookie: 3, Offset: 0, Length: 4096}.Encode(seed)
	seed = Request{Type: CmdFlush, Cookie: 4}.Encode(seed)
	seed = Request{Type: CmdWriteZeroes, Flags: NBD_CMD_FLAG_FUA, Cookie: 5, Length: 100}.Encode(seed)
	f.Add(seed)
	f.Add(Request{Type: CmdWrite, Length: 1 << 31}.Encode(nil))
	f.Add(Request{Type: CmdRead, Offset: 1<<64 - 1, Length: 2}.Encode(nil))
	f.Add(append(Request{Type: CmdDisc}.Encode(nil), seed...))
	f.Fuzz(func(t *testing.T, in []byte) {
		m := newMem(64 << 10)
		s := NewServer(m, Options{MaxRequest: 16 << 10, MaxBuffered: 32 << 10, Workers: 4})
		var out lockedBuffer
		s.Serve(&stream{r: bytes.NewReader(in), w: &out})
		reqs, unique := requestsOf(in, s.opts.MaxRequest)
		if !unique {
			return
		}
		b := out.Bytes()
		n := 0
		for len(b) > 0 {
			if len(b) < ReplySize {
				t.Fatalf("%d trailing bytes are not a reply", len(b))
			}
			r, err := ParseReply(b[:ReplySize])
			if err != nil {
				t.Fatal(err)
			}
			b = b[ReplySize:]
			req, ok := reqs[r.Cookie]
			if !ok {
				t.Fatalf("reply for cookie %#x, which no request carried", r.Cookie)
			}
			delete(reqs, r.Cookie)
			n++
			inside := req.Offset <= 64<<10 && uint64(req.Length) <= 64<<10-req.Offset
			if req.Type == CmdRead && inside && req.Length <= 16<<10 {
				if r.Error != 0 {
					t.Fatalf("read %+v failed with %d", req, r.Error)
				}
				if len(b) < int(req.Length) {
					t.Fatalf("read reply with %d of %d bytes", len(b), req.Length)
				}
				b = b[req.Length:]
			} else if req.Type == CmdRead && r.Error == 0 {
				t.Fatalf("read %+v succeeded", req)
			}
		}
		if len(reqs) != 0 {
			t.Fatalf("%d requests without a reply", len(reqs))
		}
	})
}

// requestsOf reads the requests in a stream the way Serve does, up to a
// disconnect, a bad magic or a truncation, and reports whether their
// cookies are all different.
func requestsOf(in []byte, maxRequest int) (map[uint64]Request, bool) {
	reqs := map[uint64]Request{}
	for len(in) >= RequestSize {
		r, err := ParseRequest(in[:RequestSize])
		if err != nil || r.Type == CmdDisc {
			break
		}
		in = in[RequestSize:]
		if r.Type == CmdWrite {
			if uint64(r.Length) > uint64(len(in)) {
				break
			}
			in = in[r.Length:]
		}
		if _, dup := reqs[r.Cookie]; dup {
			return nil, false
		}
		reqs[r.Cookie] = r
	}
	return reqs, true
}
