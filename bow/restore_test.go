package bow

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"syscall"
	"testing"
)

// handImage builds a device image with a two-block log chain straight from
// the format description, without the engine. Block size 1024 (2 sectors
// per block), 16 blocks. Blocks 0-7 held data at the checkpoint, 8-15 were
// free. Then:
//
//	seq 0: block 0 backed up to 14 (live block 0 kept at 15);
//	       block 3 backed up to 13; blocks 5-6 backed up to 11-12
//	seq 1: the full seq-0 log block backed up to 10;
//	       block 13 (a backup the filesystem then overwrote) backed up to 9
//
// and blocks 3, 5, 6 and 13 were overwritten. It returns the image and the
// original blocks 0-7.
func handImage(t testing.TB) (img, orig []byte) {
	const bs = 1024
	orig = pattern(8*bs, 11)
	img = make([]byte, 16*bs)
	copy(img, orig)
	copy(img[8*bs:], pattern(8*bs, 12)) // free space holds junk
	blk := func(i int) []byte { return img[i*bs : (i+1)*bs] }
	sec := func(b uint64) uint64 { return b * 2 }
	copy(blk(15), orig[0:bs]) // live block 0
	copy(blk(14), orig[0:bs])
	copy(blk(13), orig[3*bs:4*bs])
	copy(img[11*bs:], orig[5*bs:7*bs])
	log0 := LogBlock{Header: Header{Magic: Magic, Version: Version, BlockSize: bs, Sequence: 0, Sector0: sec(15)},
		Entries: []Entry{
			{Source: 0, Dest: sec(14), Size: bs, Checksum: Checksum(0, orig[0:bs])},
			{Source: sec(3), Dest: sec(13), Size: bs, Checksum: Checksum(3, orig[3*bs:4*bs])},
			{Source: sec(5), Dest: sec(11), Size: 2 * bs, Checksum: Checksum(5, orig[5*bs:7*bs])},
		}}
	l0, err := log0.Encode()
	if err != nil {
		t.Fatal(err)
	}
	copy(blk(10), l0)
	copy(blk(9), blk(13))
	log1 := LogBlock{Header: Header{Magic: Magic, Version: Version, BlockSize: bs, Sequence: 1, Sector0: sec(15)},
		Entries: []Entry{
			{Source: 0, Dest: sec(10), Size: bs, Checksum: Checksum(0, l0)},
			{Source: sec(13), Dest: sec(9), Size: bs, Checksum: Checksum(13, blk(13))},
		}}
	l1, err := log1.Encode()
	if err != nil {
		t.Fatal(err)
	}
	copy(blk(0), l1)
	for _, b := range []int{3, 5, 6, 13} {
		copy(blk(b), pattern(bs, uint64(100+b)))
	}
	return img, orig
}

func TestRestoreHandImage(t *testing.T) {
	img, orig := handImage(t)
	info, err := Inspect(context.Background(), NewMemFrom(img))
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if len(info.Logs) != 2 || info.Entries != 5 || info.Bytes != 6*1024 {
		t.Errorf("inspect: got %d logs, %d entries, %d bytes, want 2, 5, 6144", len(info.Logs), info.Entries, info.Bytes)
	}
	if info.Logs[1].Block != 10 {
		t.Errorf("inspect: older log found at block %d, want 10", info.Logs[1].Block)
	}
	mem := NewMemFrom(img)
	sum, err := Restore(context.Background(), mem, RestoreOptions{DryRun: true})
	if err != nil || !bytes.Equal(mem.Bytes(), img) {
		t.Fatalf("dry run: err %v, image changed %v", err, !bytes.Equal(mem.Bytes(), img))
	}
	if sum.Entries != 5 || sum.LogBlocks != 2 {
		t.Errorf("dry run summary: got %+v", sum)
	}
	var calls int
	var last int64
	sum, err = Restore(context.Background(), mem, RestoreOptions{Progress: func(done, total int64) {
		calls++
		if total != 6*1024 || done <= last || done > total {
			t.Errorf("progress %d/%d at call %d after %d", done, total, calls, last)
		}
		last = done
	}})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	if got := mem.Bytes()[:8*1024]; !bytes.Equal(got, orig) {
		t.Fatalf("restored blocks 0-7 differ from the originals at block %d", diffBlocks(got, orig, 1024, nil))
	}
	if calls != 5 || last != 6*1024 {
		t.Errorf("progress called %d times ending at %d, want 5 ending at 6144", calls, last)
	}
	if _, err := Restore(context.Background(), mem, RestoreOptions{}); !errors.As(err, new(NoLogError)) {
		t.Errorf("second restore: got %v, want NoLogError", err)
	}
}

// writeCounter fails the test at any write.
type writeCounter struct {
	*Mem
	writes int
}

func (w *writeCounter) WriteAt(p []byte, off int64) (int, error) {
	w.writes++
	return w.Mem.WriteAt(p, off)
}

func TestRestoreRefusesCorruptChain(t *testing.T) {
	const bs = 1024
	le := binary.LittleEndian
	// Offsets: block 0 holds log seq 1, block 10 the backup of log seq 0.
	entry := func(blk, i int) int { return blk*bs + HeaderSize + i*EntrySize }
	// resum re-checksums the older log block after an edit, so the edit
	// itself is what validation finds.
	resum := func(b []byte) { le.PutUint32(b[entry(0, 0)+20:], Checksum(0, b[10*bs:11*bs])) }
	tests := []struct {
		name   string
		edit   func(img []byte)
		noLog  bool
		reason string
	}{
		{"bad magic on the newest log", func(b []byte) { b[0] = 'X' }, true, ""},
		{"bad magic on the older log", func(b []byte) { b[10*bs] = 'X'; resum(b) }, false, "magic"},
		{"partial magic on the older log", func(b []byte) { le.PutUint32(b[10*bs:], PartialMagic); resum(b) }, false, "magic"},
		{"sequence gap in the older log", func(b []byte) { le.PutUint32(b[10*bs+16:], 3); resum(b) }, false, "sequence"},
		{"sequence gap", func(b []byte) { le.PutUint32(b[16:], 2) }, false, "sequence"},
		{"block size not a power of two", func(b []byte) { le.PutUint32(b[8:], 1000) }, false, "block size"},
		{"block size mismatch in the chain", func(b []byte) { le.PutUint32(b[10*bs+8:], 512); resum(b) }, false, "block size"},
		{"no entries", func(b []byte) { le.PutUint32(b[12:], 0) }, false, "no entries"},
		{"count overflows the block", func(b []byte) { le.PutUint32(b[12:], 1000) }, false, "overflow"},
		{"entry out of bounds", func(b []byte) { le.PutUint64(b[entry(0, 1)+8:], 2*64) }, false, "past the end"},
		{"source out of bounds", func(b []byte) { le.PutUint64(b[entry(0, 1):], 1<<60) }, false, "past the end"},
		{"size not a multiple of the block size", func(b []byte) { le.PutUint32(b[entry(0, 1)+16:], 1000) }, false, "multiple"},
		{"size zero", func(b []byte) { le.PutUint32(b[entry(0, 1)+16:], 0) }, false, "multiple"},
		{"unaligned sector", func(b []byte) { le.PutUint64(b[entry(0, 1)+8:], 19) }, false, "boundary"},
		{"checksum mismatch", func(b []byte) { b[11*bs+5] ^= 1 }, false, "checksum"},
		{"checksum mismatch in the newest log", func(b []byte) { b[9*bs] ^= 1 }, false, "checksum"},
		{"older log damaged", func(b []byte) { b[10*bs+HeaderSize+3] ^= 1 }, false, "checksum"},
		{"first entry not block 0", func(b []byte) { le.PutUint64(b[entry(0, 0):], 2) }, false, "block 0"},
		{"block 0 restored out of turn", func(b []byte) { le.PutUint64(b[entry(0, 1):], 0) }, false, "out of turn"},
		{"backup in block 0", func(b []byte) { le.PutUint64(b[entry(0, 1)+8:], 0) }, false, "block 0"},
		{"source overlaps backup", func(b []byte) { le.PutUint64(b[entry(0, 1)+8:], 2*13); le.PutUint32(b[entry(0, 1)+16:], 2*bs) }, false, "overlap"},
		{"sequence beyond the device", func(b []byte) { le.PutUint32(b[16:], 1<<30) }, false, "sequence"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, _ := handImage(t)
			tt.edit(img)
			before := digest(img)
			for _, dry := range []bool{true, false} {
				dev := &writeCounter{Mem: NewMemFrom(img)}
				_, err := Restore(context.Background(), dev, RestoreOptions{DryRun: dry})
				var ce CorruptLogError
				switch {
				case tt.noLog && !errors.As(err, new(NoLogError)):
					t.Fatalf("got %v, want NoLogError", err)
				case !tt.noLog && !errors.As(err, &ce):
					t.Fatalf("got %v, want CorruptLogError", err)
				case !tt.noLog && !bytes.Contains([]byte(ce.Reason), []byte(tt.reason)):
					t.Errorf("got reason %q, want it to mention %q", ce.Reason, tt.reason)
				}
				if dev.writes != 0 || digest(dev.Bytes()) != before {
					t.Fatalf("refused restore wrote %d times; image changed: %v", dev.writes, digest(dev.Bytes()) != before)
				}
			}
			if _, err := Inspect(context.Background(), NewMemFrom(img)); err == nil {
				t.Errorf("inspect: got nil error for a corrupt chain")
			}
		})
	}
}

func TestRestoreRollForward(t *testing.T) {
	const bs = 1024
	img, _ := handImage(t)
	img[11*bs] ^= 1 // breaks the checksum of an entry
	live := append([]byte(nil), img[15*bs:16*bs]...)
	mem := NewMemFrom(img)
	sum, err := Restore(context.Background(), mem, RestoreOptions{RollForwardOnCorruption: true})
	if err != nil {
		t.Fatalf("roll forward: %v", err)
	}
	if !sum.RolledForward || sum.Problem == "" {
		t.Errorf("summary: got %+v, want rolled forward with the problem", sum)
	}
	got := mem.Bytes()
	if !bytes.Equal(got[:bs], live) {
		t.Errorf("block 0 is not the live block 0 after rolling forward")
	}
	if !bytes.Equal(got[bs:], img[bs:]) {
		t.Errorf("rolling forward changed blocks other than 0")
	}
	// A half-done restore cannot be rolled forward.
	img2, _ := handImage(t)
	binary.LittleEndian.PutUint32(img2[0:], PartialMagic)
	img2[11*bs] ^= 1
	dev := &writeCounter{Mem: NewMemFrom(img2)}
	if _, err := Restore(context.Background(), dev, RestoreOptions{RollForwardOnCorruption: true}); err == nil || dev.writes != 0 {
		t.Errorf("roll forward of a partial restore: got %v with %d writes, want a refusal", err, dev.writes)
	}
	// RollForward on a good log is an offline commit.
	img3, _ := handImage(t)
	mem3 := NewMemFrom(img3)
	if err := RollForward(context.Background(), mem3); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mem3.Bytes()[:bs], img3[15*bs:16*bs]) {
		t.Errorf("RollForward did not bring the live block 0 home")
	}
}

// FuzzRestore: any device image restores or is refused; a refusal never
// writes and nothing panics.
func FuzzRestore(f *testing.F) {
	img, _ := handImage(f)
	f.Add(img)
	bad := append([]byte(nil), img...)
	bad[11*1024] ^= 1
	f.Add(bad)
	partial := append([]byte(nil), img...)
	binary.LittleEndian.PutUint32(partial, PartialMagic)
	f.Add(partial)
	f.Add(img[:1024])
	f.Add([]byte{0x42, 0x4f, 0x57, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		dev := &writeCounter{Mem: NewMemFrom(b)}
		if _, err := Inspect(context.Background(), dev); err != nil && dev.writes != 0 {
			t.Fatalf("inspect wrote")
		}
		_, err := Restore(context.Background(), dev, RestoreOptions{})
		if err != nil && dev.writes != 0 {
			t.Fatalf("restore failed (%v) after %d writes", err, dev.writes)
		}
	})
}

// TestRestoreContext: a restore whose context ends stops between two
// entries, leaves the device marked as being restored, and a second
// restore finishes it; a roll forward is never taken for a cancelled
// validation.
func TestRestoreContext(t *testing.T) {
	img, orig := handImage(t)
	dev := NewMemFrom(img)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := Restore(ctx, dev, RestoreOptions{Progress: func(done, total int64) { cancel() }})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled restore: got %v, want context.Canceled", err)
	}
	_, err = Open(NewMemFrom(dev.Bytes()), Options{})
	if !errors.As(err, new(RestoreInProgressError)) {
		t.Fatalf("device after a cancelled restore: Open got %v, want RestoreInProgressError", err)
	}
	sum, err := Restore(context.Background(), dev, RestoreOptions{})
	if err != nil || !sum.Resumed {
		t.Fatalf("second restore: %v, %+v; want a resumed restore", err, sum)
	}
	if !bytes.Equal(dev.Bytes()[:len(orig)], orig) {
		t.Fatal("restored image differs from the checkpoint")
	}

	img, _ = handImage(t)
	dev = NewMemFrom(img)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Restore(cancelled, dev, RestoreOptions{RollForwardOnCorruption: true}); !errors.Is(err, context.Canceled) {
		t.Fatalf("restore with a cancelled context: got %v, want context.Canceled", err)
	}
	if !bytes.Equal(dev.Bytes(), img) {
		t.Fatal("a restore with a cancelled context wrote to the device")
	}
}

// readFailer fails every read that touches [from, to) with EIO, and
// counts writes.
type readFailer struct {
	writeCounter
	from, to int64
}

func (r *readFailer) ReadAt(p []byte, off int64) (int, error) {
	if off < r.to && off+int64(len(p)) > r.from {
		return 0, syscall.EIO
	}
	return r.Mem.ReadAt(p, off)
}

// TestRestoreNoRollForwardOnIOError: an I/O error while the chain is
// checked is not a damaged chain: the checkpoint stays, nothing is
// written, and the error keeps its errno.
func TestRestoreNoRollForwardOnIOError(t *testing.T) {
	const bs = 1024
	img, _ := handImage(t)
	// Blocks 11-12 hold a backup (not a log block): only the checksum
	// check reads them.
	dev := &readFailer{writeCounter: writeCounter{Mem: NewMemFrom(img)}, from: 11 * bs, to: 12 * bs}
	sum, err := Restore(context.Background(), dev, RestoreOptions{RollForwardOnCorruption: true})
	if !errors.Is(err, syscall.EIO) || sum.RolledForward || dev.writes != 0 {
		t.Fatalf("got %v, rolled forward %v, %d writes; want EIO, no roll forward, no write", err, sum.RolledForward, dev.writes)
	}
}
