package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
)

// hsClient is the client side of the handshake, written from the protocol
// description for the tests.
type hsClient struct {
	t    *testing.T
	conn net.Conn
}

var be = binary.BigEndian

func (c *hsClient) read(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.conn, b); err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *hsClient) greet(flags uint32) {
	c.t.Helper()
	g := c.read(18)
	if be.Uint64(g) != NBDMAGIC || be.Uint64(g[8:]) != IHAVEOPT {
		c.t.Fatalf("greeting % x", g)
	}
	if hf := be.Uint16(g[16:]); hf != NBD_FLAG_FIXED_NEWSTYLE|NBD_FLAG_NO_ZEROES {
		c.t.Fatalf("handshake flags %#x, want fixed newstyle and no zeroes", hf)
	}
	c.conn.Write(be.AppendUint32(nil, flags))
}

func (c *hsClient) option(opt uint32, data []byte) {
	b := be.AppendUint64(nil, IHAVEOPT)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	c.conn.Write(append(b, data...))
}

type optRep struct {
	opt, typ uint32
	data     []byte
}

func (c *hsClient) reply() optRep {
	c.t.Helper()
	h := c.read(20)
	if be.Uint64(h) != NBD_REP_MAGIC {
		c.t.Fatalf("option reply magic %#x", be.Uint64(h))
	}
	return optRep{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:]), data: c.read(int(be.Uint32(h[16:])))}
}

func infoRequest(name string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

func startHandshake(t *testing.T, size int) (*hsClient, *memBackend, chan error) {
	m := newMem(size)
	s := NewServer(m, Options{BlockSize: 1024})
	a, b := connPair(t, false)
	t.Cleanup(func() { b.Close() })
	res := make(chan error, 1)
	go func() { res <- s.ServeClient(a, "bow") }()
	return &hsClient{t: t, conn: b}, m, res
}

func TestHandshakeGo(t *testing.T) {
	c, m, res := startHandshake(t, 1<<20)
	c.greet(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)

	c.option(NBD_OPT_LIST, nil)
	r := c.reply()
	if r.typ != NBD_REP_SERVER || string(r.data[4:]) != "bow" || be.Uint32(r.data) != 3 {
		t.Fatalf("LIST: type %#x data %q, want SERVER \"bow\"", r.typ, r.data)
	}
	if r := c.reply(); r.typ != NBD_REP_ACK {
		t.Fatalf("LIST end: type %#x, want ACK", r.typ)
	}
	c.option(NBD_OPT_LIST, []byte{1})
	if r := c.reply(); r.typ != NBD_REP_ERR_INVALID {
		t.Fatalf("LIST with data: type %#x, want ERR_INVALID", r.typ)
	}
	c.option(NBD_OPT_STRUCTURED_REPLY, nil)
	if r := c.reply(); r.typ != NBD_REP_ERR_UNSUP || r.opt != NBD_OPT_STRUCTURED_REPLY {
		t.Fatalf("STRUCTURED_REPLY: type %#x opt %d, want ERR_UNSUP", r.typ, r.opt)
	}
	c.option(NBD_OPT_GO, infoRequest("other"))
	if r := c.reply(); r.typ != NBD_REP_ERR_UNKNOWN {
		t.Fatalf("GO other: type %#x, want ERR_UNKNOWN", r.typ)
	}
	c.option(NBD_OPT_INFO, []byte{0, 0, 0, 9, 'x'})
	if r := c.reply(); r.typ != NBD_REP_ERR_INVALID {
		t.Fatalf("INFO malformed: type %#x, want ERR_INVALID", r.typ)
	}
	c.option(NBD_OPT_INFO, infoRequest("bow", NBD_INFO_BLOCK_SIZE))
	var sawExport, sawBlock bool
	for {
		r := c.reply()
		if r.typ == NBD_REP_ACK {
			break
		}
		if r.typ != NBD_REP_INFO {
			t.Fatalf("INFO: reply type %#x", r.typ)
		}
		switch be.Uint16(r.data) {
		case NBD_INFO_EXPORT:
			sawExport = true
			if size, flags := be.Uint64(r.data[2:]), be.Uint16(r.data[10:]); size != 1<<20 || flags&NBD_FLAG_SEND_TRIM == 0 || flags&NBD_FLAG_SEND_FUA == 0 {
				t.Fatalf("INFO export: size %d flags %#x", size, flags)
			}
		case NBD_INFO_BLOCK_SIZE:
			sawBlock = true
			if min, pref, max := be.Uint32(r.data[2:]), be.Uint32(r.data[6:]), be.Uint32(r.data[10:]); min != 1 || pref != 1024 || max != 32<<20 {
				t.Fatalf("INFO block size: %d %d %d, want 1 1024 %d", min, pref, max, 32<<20)
			}
		}
	}
	if !sawExport || !sawBlock {
		t.Fatalf("INFO: export info %v, block size info %v; want both", sawExport, sawBlock)
	}
	c.option(NBD_OPT_GO, infoRequest("", NBD_INFO_NAME))
	for {
		r := c.reply()
		if r.typ == NBD_REP_ACK {
			break
		}
		if r.typ != NBD_REP_INFO {
			t.Fatalf("GO: reply type %#x", r.typ)
		}
	}
	// Transmission.
	cl := newClient(t, c.conn)
	if r := cl.do(CmdWrite, NBD_CMD_FLAG_FUA, 512, 5, []byte("hello")); r.errno != 0 {
		t.Fatalf("write after GO: error %d", r.errno)
	}
	if !bytes.Equal(m.bytes(512, 5), []byte("hello")) {
		t.Fatal("write after GO did not reach the backend")
	}
	cl.send(CmdDisc, 0, 0, 0, nil)
	if err := <-res; err != nil {
		t.Fatalf("ServeClient: %v", err)
	}
}

func TestHandshakeExportName(t *testing.T) {
	for _, zeroes := range []bool{false, true} {
		c, _, res := startHandshake(t, 4096*3)
		flags := uint32(NBD_FLAG_C_FIXED_NEWSTYLE)
		if !zeroes {
			flags |= NBD_FLAG_C_NO_ZEROES
		}
		c.greet(flags)
		c.option(NBD_OPT_EXPORT_NAME, []byte("bow"))
		e := c.read(10)
		if size := be.Uint64(e); size != 4096*3 {
			t.Fatalf("export size %d, want %d", size, 4096*3)
		}
		if zeroes {
			if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
				t.Fatal("124 bytes of padding are not zero")
			}
		}
		cl := newClient(t, c.conn)
		if r := cl.do(CmdRead, 0, 0, 4096, nil); r.errno != 0 || len(r.data) != 4096 {
			t.Fatalf("read: error %d, %d bytes", r.errno, len(r.data))
		}
		c.conn.Close()
		if err := <-res; err != nil {
			t.Fatalf("ServeClient after the client closed: %v, want nil", err)
		}
	}
}

func TestHandshakeRefusals(t *testing.T) {
	t.Run("unknown export name", func(t *testing.T) {
		c, _, res := startHandshake(t, 4096)
		c.greet(NBD_FLAG_C_FIXED_NEWSTYLE)
		c.option(NBD_OPT_EXPORT_NAME, []byte("nope"))
		var ue UnknownExportError
		if err := <-res; !errors.As(err, &ue) || ue.Name != "nope" {
			t.Fatalf("got %v, want UnknownExportError{nope}", err)
		}
	})
	t.Run("abort", func(t *testing.T) {
		c, _, res := startHandshake(t, 4096)
		c.greet(NBD_FLAG_C_FIXED_NEWSTYLE)
		c.option(NBD_OPT_ABORT, nil)
		if r := c.reply(); r.typ != NBD_REP_ACK {
			t.Fatalf("ABORT: type %#x, want ACK", r.typ)
		}
		if err := <-res; err != nil {
			t.Fatalf("ServeClient after abort: %v, want nil", err)
		}
	})
	t.Run("unknown client flags", func(t *testing.T) {
		c, _, res := startHandshake(t, 4096)
		c.greet(1 << 7)
		if err := <-res; err == nil {
			t.Fatal("got nil, want an error")
		}
	})
	t.Run("huge option", func(t *testing.T) {
		c, _, res := startHandshake(t, 4096)
		c.greet(NBD_FLAG_C_FIXED_NEWSTYLE)
		b := be.AppendUint64(nil, IHAVEOPT)
		b = be.AppendUint32(b, NBD_OPT_GO)
		c.conn.Write(be.AppendUint32(b, 1<<30))
		if err := <-res; err == nil {
			t.Fatal("got nil, want an error")
		}
	})
	t.Run("bad option magic", func(t *testing.T) {
		c, _, res := startHandshake(t, 4096)
		c.greet(NBD_FLAG_C_FIXED_NEWSTYLE)
		c.conn.Write(make([]byte, 16))
		if err := <-res; err == nil {
			t.Fatal("got nil, want an error")
		}
	})
}

// FuzzHandshake: arbitrary client bytes never panic the handshake, and it
// ends on a finite stream.
func FuzzHandshake(f *testing.F) {
	opt := func(o uint32, data []byte) []byte {
		b := be.AppendUint64(nil, IHAVEOPT)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	flags := be.AppendUint32(nil, NBD_FLAG_C_FIXED_NEWSTYLE|NBD_FLAG_C_NO_ZEROES)
	f.Add(append(append([]byte{}, flags...), opt(NBD_OPT_GO, infoRequest("bow", NBD_INFO_BLOCK_SIZE))...))
	f.Add(append(append([]byte{}, flags...), opt(NBD_OPT_LIST, nil)...))
	f.Add(append(append([]byte{}, flags...), opt(NBD_OPT_INFO, []byte{0, 0, 0, 1})...))
	f.Add(append(append([]byte{}, flags...), opt(NBD_OPT_EXPORT_NAME, []byte("bow"))...))
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewServer(newMem(8192), Options{})
		s.Handshake(&stream{r: bytes.NewReader(in)}, "bow")
	})
}
