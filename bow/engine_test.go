package bow

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newEngine opens an engine over a patterned in-memory device with the
// given number of blocks, the top `free` of them discarded.
func newEngine(t *testing.T, bs, blocks, free int64, opts Options) (*Engine, *Mem) {
	t.Helper()
	mem := NewMemFrom(pattern(bs*blocks, uint64(blocks)))
	opts.BlockSize = bs
	e, err := Open(mem, opts)
	if err != nil {
		t.Fatal(err)
	}
	if free > 0 {
		if err := e.Discard((blocks-free)*bs, free*bs); err != nil {
			t.Fatal(err)
		}
	}
	return e, mem
}

func TestOpenBadInput(t *testing.T) {
	logImage := func(magic uint32, bs int64) []byte {
		img := make([]byte, 8*bs)
		lb := LogBlock{Header: Header{Magic: magic, Version: Version, BlockSize: uint32(bs), Sector0: uint64(bs / 512)},
			Entries: []Entry{{Source: 0, Dest: uint64(2 * bs / 512), Size: uint32(bs)}}}
		b, _ := lb.Encode()
		copy(img, b)
		return img
	}
	tests := []struct {
		name string
		img  []byte
		opts Options
		want any
	}{
		{"block size 1000", make([]byte, 1<<16), Options{BlockSize: 1000}, BlockSizeError{}},
		{"block size 8192", make([]byte, 1<<16), Options{BlockSize: 8192}, BlockSizeError{}},
		{"block size 256", make([]byte, 1<<16), Options{BlockSize: 256}, BlockSizeError{}},
		{"block size -512", make([]byte, 1<<16), Options{BlockSize: -512}, BlockSizeError{}},
		{"one block", make([]byte, 4096), Options{}, DeviceTooSmallError{}},
		{"one and a half blocks", make([]byte, 768), Options{BlockSize: 512}, DeviceTooSmallError{}},
		{"empty", nil, Options{BlockSize: 512}, DeviceTooSmallError{}},
		{"restore in progress", logImage(PartialMagic, 512), Options{}, RestoreInProgressError{}},
		{"log without state path", logImage(Magic, 512), Options{}, NeedsRestoreError{}},
		{"log without state file", logImage(Magic, 512), Options{StatePath: "/nonexistent/dir/state"}, NeedsRestoreError{}},
		{"log in pass-through", logImage(Magic, 1024), Options{PassThrough: true}, NeedsRestoreError{}},
		{"log of another block size", logImage(Magic, 4096), Options{BlockSize: 512}, BlockSizeError{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(NewMemFrom(tt.img), tt.opts)
			var ok bool
			switch tt.want.(type) {
			case BlockSizeError:
				ok = errors.As(err, new(BlockSizeError))
			case DeviceTooSmallError:
				ok = errors.As(err, new(DeviceTooSmallError))
			case RestoreInProgressError:
				ok = errors.As(err, new(RestoreInProgressError))
			case NeedsRestoreError:
				ok = errors.As(err, new(NeedsRestoreError))
			}
			if !ok {
				t.Errorf("got %v, want %T", err, tt.want)
			}
		})
	}
	t.Run("smallest device", func(t *testing.T) {
		if _, err := Open(NewMem(1024), Options{BlockSize: 512}); err != nil {
			t.Errorf("two blocks: got %v, want nil", err)
		}
	})
}

func TestTransitions(t *testing.T) {
	e, _ := newEngine(t, 512, 32, 16, Options{})
	steps := []struct {
		to    State
		valid bool
	}{
		{StateTrim, false},
		{StateCommitted, false},
		{State(7), false},
		{State(-1), false},
		{StateCheckpoint, true},
		{StateCheckpoint, false},
		{StateTrim, false},
		{StateCommitted, true},
		{StateCheckpoint, false},
		{StateTrim, false},
		{StateCommitted, false},
	}
	for _, s := range steps {
		from := e.State()
		err := e.SetState(context.Background(), s.to)
		var te TransitionError
		switch {
		case s.valid && err != nil:
			t.Fatalf("%v -> %v: got %v, want nil", from, s.to, err)
		case !s.valid && !errors.As(err, &te):
			t.Fatalf("%v -> %v: got %v, want TransitionError", from, s.to, err)
		case !s.valid && (te.From != from || te.To != s.to):
			t.Fatalf("%v -> %v: error names %v -> %v", from, s.to, te.From, te.To)
		case !s.valid && e.State() != from:
			t.Fatalf("%v -> %v: state changed to %v on a refused transition", from, s.to, e.State())
		}
	}
	if _, err := ParseState("1"); err != nil {
		t.Error(err)
	}
	if s, _ := ParseState("Committed"); s != StateCommitted {
		t.Errorf("ParseState(Committed): got %v", s)
	}
	if _, err := ParseState("3"); err == nil {
		t.Error("ParseState(3): got nil error")
	}
}

func TestCheckpointNeedsFreeSpace(t *testing.T) {
	e, mem := newEngine(t, 512, 16, 1, Options{})
	before := digest(mem.Bytes())
	err := e.Checkpoint(context.Background())
	if !errors.Is(err, syscall.ENOSPC) || e.State() != StateTrim {
		t.Fatalf("checkpoint with one free block: got %v in %v, want ENOSPC in trim", err, e.State())
	}
	if digest(mem.Bytes()) != before {
		t.Fatal("a refused checkpoint changed the device")
	}
	checkMap(t, e)
}

func TestNoSpaceFail(t *testing.T) {
	const bs = 512
	e, mem := newEngine(t, bs, 32, 6, Options{OnFull: FullFail})
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := readAll(t, e, e.Size())
	var err error
	var i int64
	for i = 1; i < 20; i++ {
		if _, err = e.WriteAt(pattern(bs, uint64(i)), i*bs); err != nil {
			break
		}
	}
	var ns NoSpaceError
	if !errors.As(err, &ns) || !errors.Is(err, syscall.ENOSPC) || !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("write %d: got %v, want NoSpaceError wrapping ENOSPC", i, err)
	}
	if ns.Needed != bs || ns.Free != 0 {
		t.Errorf("NoSpaceError: got need %d free %d, want %d and 0", ns.Needed, ns.Free, bs)
	}
	// The refused write changed nothing and the engine goes on.
	if got := readAll(t, e, e.Size()); !bytes.Equal(got[i*bs:(i+1)*bs], ck[i*bs:(i+1)*bs]) {
		t.Fatal("refused write reached the device")
	}
	if _, err := e.WriteAt([]byte("into a changed block"), bs); err != nil {
		t.Fatalf("write to a changed block after ENOSPC: %v", err)
	}
	checkMap(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), mem, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := diffBlocks(mem.Bytes(), ck, bs, func(b int64) bool { return b < 26 }); b >= 0 {
		t.Fatalf("restore after ENOSPC differs at block %d", b)
	}
}

func TestNoSpaceCommit(t *testing.T) {
	const bs = 1024
	var auto atomic.Int32
	e, mem := newEngine(t, bs, 32, 6, Options{OnFull: FullCommit, OnAutoCommit: func(s Status) {
		auto.Add(1)
		if s.State != StateCommitted || !s.CommittedOnFull {
			t.Errorf("auto-commit status: %+v", s)
		}
	}})
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := readAll(t, e, e.Size())
	for i := int64(1); i < 20; i++ {
		p := pattern(bs, uint64(i))
		if _, err := e.WriteAt(p, i*bs); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		copy(want[i*bs:], p)
	}
	if e.State() != StateCommitted || auto.Load() != 1 {
		t.Fatalf("got state %v after %d auto-commits, want committed after 1", e.State(), auto.Load())
	}
	if got := mem.Bytes(); diffBlocks(got, want, bs, func(b int64) bool { return b < 26 }) >= 0 {
		t.Fatal("device after auto-commit is not the written content")
	}
	if _, err := Inspect(context.Background(), mem); !errors.As(err, new(NoLogError)) {
		t.Errorf("inspect after auto-commit: got %v, want NoLogError", err)
	}
}

func TestLowSpace(t *testing.T) {
	const bs = 512
	var calls []Status
	e, _ := newEngine(t, bs, 64, 20, Options{LowSpace: 8 * bs, OnLowSpace: func(s Status) { calls = append(calls, s) }})
	if err := e.Checkpoint(context.Background()); err != nil { // uses 2 of the 20
		t.Fatal(err)
	}
	for i := int64(1); i <= 12; i++ {
		if _, err := e.WriteAt(make([]byte, bs), i*bs); err != nil {
			t.Fatal(err)
		}
		if s := e.Status(); s.FreeBytes < 8*bs != s.LowSpace {
			t.Fatalf("after %d writes: free %d, low-space flag %v", i, s.FreeBytes, s.LowSpace)
		}
	}
	if len(calls) != 1 || calls[0].FreeBytes >= 8*bs || calls[0].FreeBytes < 6*bs {
		t.Fatalf("got %d low-space calls (%+v), want 1 just below the threshold", len(calls), calls)
	}
	// Freeing changed blocks re-arms the warning.
	if err := e.Discard(bs, 12*bs); err != nil {
		t.Fatal(err)
	}
	if s := e.Status(); s.LowSpace || s.FreeBytes != 18*bs {
		t.Fatalf("after discarding changed blocks: %+v, want 18 blocks free and no warning", s)
	}
	for i := int64(20); i < 32; i++ {
		if _, err := e.WriteAt(make([]byte, bs), i*bs); err != nil {
			t.Fatal(err)
		}
	}
	if len(calls) != 2 {
		t.Fatalf("got %d low-space calls, want 2", len(calls))
	}
}

func TestDiscardInCheckpoint(t *testing.T) {
	const bs = 1024
	e, mem := newEngine(t, bs, 64, 16, Options{})
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := readAll(t, e, e.Size())
	free0 := e.Status().FreeBytes
	// Unchanged data: the discard is ignored.
	if err := e.Discard(4*bs, 8*bs); err != nil {
		t.Fatal(err)
	}
	if got := e.Status().FreeBytes; got != free0 {
		t.Fatalf("discard of unchanged data changed free space: %d -> %d", free0, got)
	}
	// Changed data: becomes free again, and later backups may use it.
	if _, err := e.WriteAt(pattern(8*bs, 5), 4*bs); err != nil {
		t.Fatal(err)
	}
	free1 := e.Status().FreeBytes
	if err := e.Discard(4*bs+100, 8*bs); err != nil { // rounds in to blocks 5-11
		t.Fatal(err)
	}
	if got := e.Status().FreeBytes; got != free1+7*bs {
		t.Fatalf("discard of 7 changed blocks: free %d -> %d, want +%d", free1, got, 7*bs)
	}
	// 13 blocks are free now: 10 more backups fit only thanks to the discard.
	for i := int64(20); i < 30; i++ {
		if _, err := e.WriteAt(pattern(bs, uint64(i)), i*bs); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	checkMap(t, e)
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Restore(context.Background(), mem, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := diffBlocks(mem.Bytes(), ck, bs, func(b int64) bool { return b < 48 }); b >= 0 {
		t.Fatalf("restore differs at block %d", b)
	}
}

func TestBlockZero(t *testing.T) {
	const bs = 2048
	e, mem := newEngine(t, bs, 16, 8, Options{})
	orig := readAll(t, e, bs)
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h, err := ParseHeader(mem.Bytes()); err != nil || h.Magic != Magic || h.BlockSize != bs {
		t.Fatalf("block 0 in checkpoint: header %+v, %v", h, err)
	}
	if got := readAll(t, e, bs); !bytes.Equal(got, orig) {
		t.Fatal("block 0 does not read its live contents")
	}
	p := []byte("new superblock")
	if _, err := e.WriteAt(p, 100); err != nil {
		t.Fatal(err)
	}
	want := append([]byte(nil), orig...)
	copy(want[100:], p)
	if got := readAll(t, e, bs); !bytes.Equal(got, want) {
		t.Fatal("write to block 0 not read back")
	}
	// Overwrite the block where the live block 0 is kept: it moves.
	z := int64(e.zero.Load())
	if _, err := e.WriteAt(pattern(2*bs, 1), (z-1)*bs); err != nil {
		t.Fatal(err)
	}
	if int64(e.zero.Load()) == z {
		t.Fatal("live block 0 did not move when its block was written")
	}
	if got := readAll(t, e, bs); !bytes.Equal(got, want) {
		t.Fatal("block 0 lost its contents when it moved")
	}
	if h, _ := ParseHeader(mem.Bytes()); h.Sector0 != e.zero.Load()*(bs/512) {
		t.Fatalf("log says the live block 0 is at sector %d, engine at block %d", h.Sector0, e.zero.Load())
	}
	if err := e.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := mem.Bytes()[:bs]; !bytes.Equal(got, want) {
		t.Fatal("commit did not bring the live block 0 home")
	}
}

func TestUnaligned(t *testing.T) {
	for _, st := range []State{StateTrim, StateCheckpoint, StateCommitted} {
		t.Run(st.String(), func(t *testing.T) {
			const bs = 512
			e, _ := newEngine(t, bs, 64, 0, Options{})
			// Free blocks away from the bytes the test reads back: free
			// blocks may change under a checkpoint.
			if err := e.Discard(20*bs, 16*bs); err != nil {
				t.Fatal(err)
			}
			for e.State() < st {
				if err := e.SetState(context.Background(), e.State()+1); err != nil {
					t.Fatal(err)
				}
			}
			want := readAll(t, e, e.Size())
			tests := []struct{ off, n int64 }{{0, 1}, {1, 510}, {511, 2}, {700, 1000}, {3*bs - 1, bs + 2}, {10 * bs, 3}, {e.Size() - 5, 5}}
			for i, tt := range tests {
				p := pattern(tt.n+8, uint64(i+1))[:tt.n]
				if _, err := e.WriteAt(p, tt.off); err != nil {
					t.Fatalf("write %d+%d: %v", tt.off, tt.n, err)
				}
				copy(want[tt.off:], p)
				got := make([]byte, tt.n+2)
				lo := max(0, tt.off-1)
				got = got[:min(int64(len(got)), e.Size()-lo)]
				if _, err := e.ReadAt(got, lo); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want[lo:lo+int64(len(got))]) {
					t.Fatalf("read around %d+%d: got %x, want %x", tt.off, tt.n, got, want[lo:lo+int64(len(got))])
				}
			}
			if b := diffBlocks(readAll(t, e, e.Size()), want, bs, func(b int64) bool { return b < 20 || b >= 36 }); b >= 0 {
				t.Fatalf("image differs at block %d after unaligned writes", b)
			}
			for _, bad := range []struct{ off, n int64 }{{-1, 1}, {e.Size(), 1}, {e.Size() - 1, 2}} {
				if _, err := e.WriteAt(make([]byte, bad.n), bad.off); !errors.Is(err, syscall.EINVAL) {
					t.Errorf("write %d+%d: got %v, want EINVAL", bad.off, bad.n, err)
				}
				if _, err := e.ReadAt(make([]byte, bad.n), bad.off); !errors.Is(err, syscall.EINVAL) {
					t.Errorf("read %d+%d: got %v, want EINVAL", bad.off, bad.n, err)
				}
			}
		})
	}
}

func TestPersistence(t *testing.T) {
	const bs = 4096
	dir := t.TempDir()
	state := filepath.Join(dir, "bow.state")
	path, f := newImage(t, 64*bs, 3)
	_ = path
	opts := Options{BlockSize: bs, StatePath: state}
	e, err := Open(f, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Discard(32*bs, 32*bs); err != nil {
		t.Fatal(err)
	}
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := readAll(t, e, e.Size())
	write := func(e *Engine, i int64) {
		t.Helper()
		if _, err := e.WriteAt(pattern(bs+100, uint64(i)), i*bs+50); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(0); i < 8; i++ {
		write(e, i)
	}
	st1 := e.Status()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state); err != nil {
		t.Fatalf("no state file after Close: %v", err)
	}
	e, err = Open(f, opts)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file still there while the engine runs: %v", err)
	}
	st2 := e.Status()
	if st2.State != StateCheckpoint || st2.FreeBytes != st1.FreeBytes || st2.BackedUpBytes != st1.BackedUpBytes || st2.LogBlocks != st1.LogBlocks {
		t.Fatalf("resumed status %+v, before %+v", st2, st1)
	}
	checkMap(t, e)
	for i := int64(4); i < 16; i++ {
		write(e, i)
	}
	// A crash: no Close, so nothing saved. (Let the background commits
	// finish first: this engine and the restore must not race.)
	if err := e.drain(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(f, opts); !errors.As(err, new(NeedsRestoreError)) {
		t.Fatalf("open after a crash: got %v, want NeedsRestoreError", err)
	}
	if _, err := Restore(context.Background(), f, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := diffBlocks(readAll(t, f, f.Size()), ck, bs, func(b int64) bool { return b < 32 }); b >= 0 {
		t.Fatalf("restore after restart differs at block %d", b)
	}

	t.Run("damaged state file", func(t *testing.T) {
		_, f := newImage(t, 16*bs, 4)
		e, err := Open(f, opts)
		if err != nil {
			t.Fatal(err)
		}
		e.Discard(8*bs, 8*bs)
		if err := e.Checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(state)
		b[len(b)/2] ^= 1
		os.WriteFile(state, b, 0o600)
		_, err = Open(f, opts)
		var nr NeedsRestoreError
		if !errors.As(err, &nr) || !strings.Contains(nr.Reason, "checksum") {
			t.Fatalf("got %v, want NeedsRestoreError about the checksum", err)
		}
	})
	t.Run("state of another log", func(t *testing.T) {
		_, f := newImage(t, 16*bs, 5)
		e, _ := Open(f, opts)
		e.Discard(8*bs, 8*bs)
		e.Checkpoint(context.Background())
		e.Close()
		// The log in block 0 moves on without the engine.
		var b [4]byte
		f.ReadAt(b[:], 16)
		binary.LittleEndian.PutUint32(b[:], binary.LittleEndian.Uint32(b[:])+1)
		f.WriteAt(b[:], 16)
		_, err := Open(f, opts)
		var nr NeedsRestoreError
		if !errors.As(err, &nr) || !strings.Contains(nr.Reason, "different log") {
			t.Fatalf("got %v, want NeedsRestoreError about a different log", err)
		}
	})
	t.Run("stale state without a log", func(t *testing.T) {
		_, f := newImage(t, 16*bs, 6)
		os.WriteFile(state, []byte("junk"), 0o600)
		e, err := Open(f, opts)
		if err != nil || e.State() != StateTrim {
			t.Fatalf("got %v, want a fresh engine in trim state", err)
		}
		if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("stale state file not removed")
		}
	})
}

func TestClosed(t *testing.T) {
	e, _ := newEngine(t, 512, 8, 4, Options{})
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"read":    func() error { _, err := e.ReadAt(make([]byte, 1), 0); return err }(),
		"write":   func() error { _, err := e.WriteAt(make([]byte, 1), 0); return err }(),
		"flush":   e.Flush(),
		"discard": e.Discard(0, 512),
		"state":   e.Checkpoint(context.Background()),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: got %v, want ErrClosed", name, err)
		}
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestFileDevice(t *testing.T) {
	path, f := newImage(t, 1<<16, 8)
	if f.Size() != 1<<16 || f.Name() != path {
		t.Fatalf("size %d name %q", f.Size(), f.Name())
	}
	if err := f.Discard(4096, 8192); err != nil {
		t.Fatalf("punch hole: %v", err)
	}
	got := make([]byte, 8192)
	if _, err := f.ReadAt(got, 4096); err != nil || !bytes.Equal(got, make([]byte, 8192)) {
		t.Fatalf("discarded range: err %v, zero %v", err, bytes.Equal(got, make([]byte, 8192)))
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(t.TempDir()); err == nil {
		t.Error("OpenFile of a directory: got nil error")
	}
	if _, err := OpenFile(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("OpenFile of a missing file: got %v, want ErrNotExist", err)
	}
}

// TestLockOrder: overlapping requests are granted in arrival order,
// disjoint ones at once.
func TestLockOrder(t *testing.T) {
	e, _ := newEngine(t, 512, 64, 0, Options{})
	e.mu.Lock()
	a := e.lockRange(0, 10)
	b := e.enqueue(5, 6)
	c := e.enqueue(5, 7)
	d := e.enqueue(20, 30)
	if e.grantable(b) || e.grantable(c) || !e.grantable(d) {
		t.Fatalf("grantable: b %v c %v d %v, want false false true", e.grantable(b), e.grantable(c), e.grantable(d))
	}
	e.releaseLocked(a)
	if !e.grantable(b) || e.grantable(c) {
		t.Fatalf("after a: b %v c %v, want true false (c must wait for the earlier b)", e.grantable(b), e.grantable(c))
	}
	b.granted = true
	if e.grantable(c) {
		t.Fatal("c granted while b holds an overlapping range")
	}
	e.releaseLocked(b)
	if !e.grantable(c) {
		t.Fatal("c not grantable after b")
	}
	e.mu.Unlock()
}

// gateDev blocks reads of one block until released, to show that I/O on
// one range does not hold up another.
type gateDev struct {
	*Mem
	block   int64
	bs      int64
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gateDev) ReadAt(p []byte, off int64) (int, error) {
	if off <= g.block*g.bs && g.block*g.bs < off+int64(len(p)) {
		g.once.Do(func() {
			close(g.entered)
			<-g.release
		})
	}
	return g.Mem.ReadAt(p, off)
}

func TestIndependentRangesDoNotWait(t *testing.T) {
	for _, st := range []State{StateCheckpoint, StateCommitted} {
		t.Run(st.String(), func(t *testing.T) {
			const bs = 512
			g := &gateDev{Mem: NewMemFrom(pattern(64*bs, 1)), block: 5, bs: bs, entered: make(chan struct{}), release: make(chan struct{})}
			e, err := Open(g, Options{BlockSize: bs})
			if err != nil {
				t.Fatal(err)
			}
			e.Discard(32*bs, 32*bs)
			for e.State() < st {
				if err := e.SetState(context.Background(), e.State()+1); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error)
			go func() { _, err := e.WriteAt([]byte("x"), 5*bs+1); done <- err }() // reads block 5 first
			<-g.entered
			for i := int64(10); i < 20; i++ {
				if _, err := e.WriteAt(pattern(bs, uint64(i)), i*bs); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := e.ReadAt(make([]byte, bs), 7*bs); err != nil {
				t.Fatal(err)
			}
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
				t.Fatal("blocked write finished early")
			default:
			}
			close(g.release)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// slowFlush makes flushes take time, so concurrent writers pile up.
type slowFlush struct {
	*Mem
	flushes atomic.Int64
}

func (s *slowFlush) Flush() error {
	s.flushes.Add(1)
	time.Sleep(2 * time.Millisecond)
	return nil
}

func TestGroupCommit(t *testing.T) {
	for _, wb := range []int64{-1, 0} {
		t.Run(fmt.Sprint("write-back ", wb), func(t *testing.T) { testGroupCommit(t, wb) })
	}
}

func testGroupCommit(t *testing.T, writeBack int64) {
	const bs, writers, each = 4096, 8, 10
	dev := &slowFlush{Mem: NewMemFrom(pattern(256*bs, 2))}
	e, err := Open(dev, Options{BlockSize: bs, WriteBack: writeBack})
	if err != nil {
		t.Fatal(err)
	}
	e.Discard(128*bs, 128*bs)
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := readAll(t, e, e.Size())
	dev.flushes.Store(0)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < each; i++ {
				blk := int64(1 + w*each + i)
				if _, err := e.WriteAt(pattern(bs, uint64(blk)), blk*bs); err != nil {
					t.Error(err)
				}
			}
		}(w)
	}
	wg.Wait()
	if err := e.Flush(); err != nil {
		t.Fatal(err)
	}
	// Unbatched, every one of the 80 backups would cost two flushes.
	if n := dev.flushes.Load(); n > writers*each {
		t.Errorf("got %d flushes for %d backed-up writes, want at most %d", n, writers*each, writers*each)
	} else {
		t.Logf("%d flushes for %d backed-up writes", n, writers*each)
	}
	if _, err := Restore(context.Background(), dev, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if b := diffBlocks(dev.Bytes(), ck, bs, func(b int64) bool { return b < 128 }); b >= 0 {
		t.Fatalf("restore differs at block %d", b)
	}
}

// TestConcurrent hammers the engine from many goroutines (run with -race):
// overlapping writes, reads, flushes and discards in checkpoint state; the
// restore must give the checkpoint back, and disjoint regions must hold
// what was last written to them.
func TestConcurrent(t *testing.T) {
	for _, bs := range []int64{512, 4096} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			const blocks, writers, each = 256, 6, 150
			e, mem := newEngine(t, bs, blocks, 128, Options{})
			if err := e.Checkpoint(context.Background()); err != nil {
				t.Fatal(err)
			}
			ck := readAll(t, e, e.Size())
			var wg sync.WaitGroup
			own := make([][]byte, writers) // last content of each writer's own region
			for w := 0; w < writers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					r := pattern(int64(each*8), uint64(w))
					region := int64(w*16 + 2) // 4 blocks each, blocks 2..97
					own[w] = make([]byte, 4*bs)
					copy(own[w], ck[region*bs:])
					for i := 0; i < each; i++ {
						x := int64(r[i*8]) | int64(r[i*8+1])<<8
						switch x % 5 {
						case 0, 1: // own region, unaligned
							off := x % (4 * bs)
							n := 1 + (x>>3)%(4*bs-off)
							p := pattern(n, uint64(x))
							if _, err := e.WriteAt(p, region*bs+off); err != nil {
								t.Error(err)
								return
							}
							copy(own[w][off:], p)
						case 2: // shared hot blocks, overlapping other writers
							off := (x % 8) * bs / 2
							if _, err := e.WriteAt(pattern(bs, uint64(x)), 100*bs+off); err != nil && !errors.Is(err, syscall.ENOSPC) {
								t.Error(err)
							}
						case 3:
							if _, err := e.ReadAt(make([]byte, 3*bs), (x%blocks-3+3)%(blocks-3)*bs); err != nil {
								t.Error(err)
							}
							if x%7 == 0 {
								e.Flush()
							}
						case 4: // block 0 and the free area
							if x%2 == 0 {
								e.WriteAt(pattern(100, uint64(x)), x%bs)
							} else {
								e.WriteAt(pattern(bs, uint64(x)), (130+x%100)*bs)
								e.Discard((130+x%100)*bs, bs)
							}
						}
					}
				}(w)
			}
			wg.Wait()
			checkMap(t, e)
			got := readAll(t, e, e.Size())
			for w := 0; w < writers; w++ {
				region := int64(w*16 + 2)
				if !bytes.Equal(got[region*bs:(region+4)*bs], own[w]) {
					t.Fatalf("writer %d's region does not hold its last writes", w)
				}
			}
			if err := e.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := Restore(context.Background(), mem, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			if b := diffBlocks(mem.Bytes(), ck, bs, func(b int64) bool { return b < 128 }); b >= 0 {
				t.Fatalf("restore differs at block %d", b)
			}
		})
	}
}

// TestSetStateContext: a state change whose context has ended changes
// nothing.
func TestSetStateContext(t *testing.T) {
	e, err := Open(NewMem(1<<20), Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Discard(512<<10, 512<<10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Checkpoint(ctx); !errors.Is(err, context.Canceled) || e.State() != StateTrim {
		t.Fatalf("checkpoint with a cancelled context: got %v, state %v; want context.Canceled in trim state", err, e.State())
	}
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
}
