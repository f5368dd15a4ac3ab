package bow

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// noSync is a File whose Flush does nothing: the model tests check
// contents, not durability (the crash tests do that), and fsync would make
// thousands of sequences too slow.
type noSync struct{ *File }

func (noSync) Flush() error { return nil }

// newImage creates an image file of the given size filled with a pattern
// and opens it.
func newImage(t testing.TB, size int64, seed uint64) (string, *File) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, pattern(size, seed), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return path, f
}

// pattern returns size pseudo-random bytes.
func pattern(size int64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	b := make([]byte, size)
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// tbLite is what helpers need of testing.TB and rapid.T.
type tbLite interface {
	Helper()
	Fatalf(format string, args ...any)
}

func readAll(t tbLite, d interface {
	ReadAt([]byte, int64) (int, error)
}, size int64) []byte {
	t.Helper()
	b := make([]byte, size)
	if _, err := d.ReadAt(b, 0); err != nil {
		t.Fatalf("read image: %v", err)
	}
	return b
}

func digest(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// diffBlocks returns the first block where a and b differ among the blocks
// for which keep returns true, or -1.
func diffBlocks(a, b []byte, bs int64, keep func(blk int64) bool) int64 {
	for blk := int64(0); blk*bs < int64(len(a)); blk++ {
		if keep != nil && !keep(blk) {
			continue
		}
		if !bytes.Equal(a[blk*bs:(blk+1)*bs], b[blk*bs:(blk+1)*bs]) {
			return blk
		}
	}
	return -1
}

// checkMap verifies the engine's range-map invariants.
func checkMap(t tbLite, e *Engine) {
	t.Helper()
	if err := e.drain(); err != nil {
		t.Fatalf("drain: %v", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.rm.check(); err != nil {
		t.Fatalf("range map: %v", err)
	}
	if len(e.locks) != 0 {
		t.Fatalf("got %d range locks held at rest, want 0", len(e.locks))
	}
	if e.pending != 0 {
		t.Fatalf("got %d pending entries at rest, want 0", e.pending)
	}
	if e.State() == StateCheckpoint {
		if r := e.logCopies(0); e.rm.nfree < r {
			t.Fatalf("free %d below log reserve %d", e.rm.nfree, r)
		}
	}
}
