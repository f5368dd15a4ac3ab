package control

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/snapctl/snapctl/bow"
)

// engineHandler answers from a bow engine on an in-memory device, as a
// server does; fail, when set, is what every state change returns instead.
type engineHandler struct {
	e    *bow.Engine
	fail error
	wait chan struct{} // when set, a state change waits for it or ctx
}

func (h *engineHandler) Status() *Status {
	return &Status{Status: h.e.Status(), NBD: "/dev/nbd9", PID: os.Getpid()}
}

func (h *engineHandler) change(ctx context.Context, do func(context.Context) error) error {
	if h.wait != nil {
		select {
		case <-h.wait:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if h.fail != nil {
		return h.fail
	}
	return do(ctx)
}

func (h *engineHandler) Checkpoint(ctx context.Context) error { return h.change(ctx, h.e.Checkpoint) }
func (h *engineHandler) Commit(ctx context.Context) error     { return h.change(ctx, h.e.Commit) }

func start(t *testing.T) (*engineHandler, Client) {
	t.Helper()
	e, err := bow.Open(bow.NewMem(1<<20), bow.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	h := &engineHandler{e: e}
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := Listen(sock, h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return h, Client{Socket: sock}
}

// TestRoundTrip: each operation over a real unix socket, and the state it
// leaves.
func TestRoundTrip(t *testing.T) {
	h, c := start(t)
	ctx := context.Background()
	s, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.State != bow.StateTrim || s.NBD != "/dev/nbd9" || s.PID != os.Getpid() || s.Size != 1<<20 {
		t.Fatalf("status: got state %v nbd %q pid %d size %d, want trim /dev/nbd9 %d %d", s.State, s.NBD, s.PID, s.Size, os.Getpid(), 1<<20)
	}
	if err := h.e.Trim(8192, 512<<10); err != nil {
		t.Fatal(err)
	}
	if s, err = c.Checkpoint(ctx); err != nil || s.State != bow.StateCheckpoint || s.LogBlocks != 1 {
		t.Fatalf("checkpoint: %v, state %v, %d log blocks; want checkpoint with 1 log block", err, s.State, s.LogBlocks)
	}
	if s, err = c.Commit(ctx); err != nil || s.State != bow.StateCommitted {
		t.Fatalf("commit: %v, state %v; want committed", err, s.State)
	}
}

// TestErrorKinds: what the server's error was, the client's is: the same
// message, the same typed error for errors.As, the same errno for
// errors.Is.
func TestErrorKinds(t *testing.T) {
	h, c := start(t)
	ctx := context.Background()

	// The engine's own errors: no free space, then a wrong transition.
	_, err := c.Checkpoint(ctx)
	var ns bow.NoSpaceError
	var re RemoteError
	if !errors.As(err, &re) || re.Kind != KindNoSpace || !errors.As(err, &ns) || ns.Device != "memory" || ns.Needed != 8192 || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("checkpoint without free space: got %#v, want a RemoteError of kind no_space wrapping bow.NoSpaceError{memory, 8192} and ENOSPC", err)
	}
	want := bow.NoSpaceError{Device: "memory", Needed: 8192, Free: 0}.Error()
	if err.Error() != want {
		t.Errorf("message: got %q, want the server's %q", err, want)
	}
	_, err = c.Commit(ctx)
	var tr bow.TransitionError
	if !errors.As(err, &tr) || tr.From != bow.StateTrim || tr.To != bow.StateCommitted {
		t.Fatalf("commit in trim state: got %v, want bow.TransitionError{trim, committed}", err)
	}

	cause := fmt.Errorf("write /dev/sdb: %w", syscall.EIO)
	for _, tc := range []struct {
		fail  error
		kind  Kind
		check func(error) bool
	}{
		{fmt.Errorf("checkpoint: %w", bow.BrokenError{Device: "/dev/sdb", Cause: cause}), KindBroken, func(err error) bool {
			var br bow.BrokenError
			return errors.As(err, &br) && br.Device == "/dev/sdb" && br.Cause.Error() == cause.Error() && errors.Is(err, syscall.EIO)
		}},
		{bow.ErrClosed, KindClosed, func(err error) bool { return errors.Is(err, bow.ErrClosed) }},
		{fmt.Errorf("read block 0: %w", syscall.EPERM), KindOther, func(err error) bool { return errors.Is(err, syscall.EPERM) }},
		{errors.New("plain"), KindOther, func(err error) bool { return errors.Unwrap(err) == nil }},
	} {
		h.fail = tc.fail
		s, err := c.Checkpoint(ctx)
		var re RemoteError
		if !errors.As(err, &re) || re.Kind != tc.kind || err.Error() != tc.fail.Error() || !tc.check(err) {
			t.Errorf("server error %q: got %#v (%v), want kind %s with the same message and type", tc.fail, err, err, tc.kind)
		}
		if s == nil || s.State != bow.StateTrim {
			t.Errorf("server error %q: got status %+v, want the status sent with the error", tc.fail, s)
		}
	}
}

// TestBadRequest: an unknown operation and a line that is not JSON are
// answered with BadRequestError.
func TestBadRequest(t *testing.T) {
	_, c := start(t)
	_, err := c.Call(context.Background(), "frobnicate")
	var bq BadRequestError
	if !errors.As(err, &bq) || err.Error() != `control: unknown operation "frobnicate"` {
		t.Fatalf("unknown op: got %v, want BadRequestError naming it", err)
	}
	conn, err := net.Dial("unix", c.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("{not json\n"))
	b := make([]byte, 4096)
	n, _ := conn.Read(b)
	if !bytes.Contains(b[:n], []byte(`"ok":false`)) || !bytes.Contains(b[:n], []byte(`"kind":"bad_request"`)) || !bytes.Contains(b[:n], []byte("parse request")) {
		t.Fatalf("answer to a bad request: %s", b[:n])
	}
}

// TestContext: a client stops waiting when its context ends.
func TestContext(t *testing.T) {
	h, c := start(t)
	h.wait = make(chan struct{})
	defer close(h.wait)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := c.Checkpoint(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > 5*time.Second {
		t.Fatalf("checkpoint past its deadline: got %v after %v, want context.DeadlineExceeded at once", err, time.Since(t0))
	}
}

func TestNoServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := Client{Socket: sock}.Status(context.Background())
	var ns NoServerError
	if !errors.As(err, &ns) || ns.Socket != sock {
		t.Fatalf("no server: got %v, want NoServerError for %s", err, sock)
	}
}

// TestSocketBusy: a live socket is not taken over; a stale one is
// replaced; Close removes the socket.
func TestSocketBusy(t *testing.T) {
	h, c := start(t)
	_, err := Listen(c.Socket, h)
	var sb SocketBusyError
	if !errors.As(err, &sb) {
		t.Fatalf("second listener on a live socket: got %v, want SocketBusyError", err)
	}
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ctl, err := Listen(stale, h)
	if err != nil {
		t.Fatalf("listener over a stale socket: %v", err)
	}
	if fi, err := os.Stat(stale); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket: %v, mode %v; want 0600", err, fi.Mode().Perm())
	}
	ctl.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("socket after Close: %v, want it removed", err)
	}
}

func TestSockets(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"bow-b.sock", "bow-a.sock", "other.sock"} {
		os.WriteFile(filepath.Join(dir, n), nil, 0o600)
	}
	got, err := Sockets(dir)
	if err != nil || len(got) != 2 || got[0] != filepath.Join(dir, "bow-a.sock") || got[1] != filepath.Join(dir, "bow-b.sock") {
		t.Fatalf("Sockets: got %v, %v; want bow-a.sock and bow-b.sock", got, err)
	}
	if got, want := DefaultSocket("/dev/ubdb"), "/run/snapctl/bow-ubdb.sock"; got != want {
		t.Errorf("DefaultSocket: got %q, want %q", got, want)
	}
}

func TestLocate(t *testing.T) {
	if got, err := Locate("/dev/sdb"); err != nil || got != "/run/snapctl/bow-sdb.sock" {
		t.Errorf("Locate(/dev/sdb) = %q, %v; want the default socket", got, err)
	}
	if got, want := (AmbiguousError{Sockets: []string{"a", "b"}}).Error(), "2 bow servers are running (a, b): name one"; got != want {
		t.Errorf("AmbiguousError: got %q, want %q", got, want)
	}
}
