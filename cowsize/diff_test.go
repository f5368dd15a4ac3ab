package cowsize

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func img(name string, b []byte) Image {
	return Image{Name: name, R: bytes.NewReader(b), Size: int64(len(b))}
}

// bruteDiff is the definition of Diff, one chunk at a time.
func bruteDiff(old, new []byte, c int) uint64 {
	var n uint64
	for i := 0; i < len(new); i += c {
		end := min(i+c, len(new))
		if end > len(old) || !bytes.Equal(old[i:end], new[i:end]) {
			n++
		}
	}
	return n
}

func patterned(n int, seed uint64) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestDiff(t *testing.T) {
	const k = 4096
	base := patterned(64*k+100, 1) // ends mid-chunk
	flip := func(b []byte, at ...int) []byte {
		b = bytes.Clone(b)
		for _, i := range at {
			b[i] ^= 0xff
		}
		return b
	}
	extend := func(b []byte, n int) []byte { return append(bytes.Clone(b), patterned(n, 9)...) }
	whole := base[:64*k]
	tests := []struct {
		name     string
		old, new []byte
		want     uint64
	}{
		{"both empty", nil, nil, 0},
		{"identical", base, bytes.Clone(base), 0},
		{"first byte", base, flip(base, 0), 1},
		{"two bytes one chunk", base, flip(base, 3*k+1, 3*k+4000), 1},
		{"chunk boundary", base, flip(base, 5*k-1, 5*k), 2},
		{"spread", base, flip(base, 0, 17*k, 40*k+5, 63*k+9), 4},
		{"partial last chunk differs", base, flip(base, 64*k+99), 1},
		{"partial last chunk equal", base, flip(base, 10), 1},
		{"new longer by one byte", whole, extend(whole, 1), 1},
		{"new longer by 3 chunks and a bit", whole, extend(whole, 3*k+1), 4},
		{"old ends mid-chunk, new longer", base, extend(base, 10), 1},
		{"old ends mid-chunk, new much longer", base, extend(base, 2*k), 3},
		{"empty old", nil, patterned(10000, 2), 3},
		{"tail with a change", whole, flip(extend(whole, k), 0), 2},
	}
	for _, tt := range tests {
		for _, blk := range []int{k, 3 * k, 8 * k, diffBlock} {
			t.Run(fmt.Sprintf("%s/block=%d", tt.name, blk), func(t *testing.T) {
				got, err := diff(context.Background(), img("old", tt.old), img("new", tt.new), k, nil, blk)
				if err != nil {
					t.Fatalf("diff: %v", err)
				}
				if got != tt.want {
					t.Errorf("got %d changed chunks, want %d", got, tt.want)
				}
				if brute := bruteDiff(tt.old, tt.new, k); brute != tt.want {
					t.Errorf("brute force says %d, test wants %d", brute, tt.want)
				}
			})
		}
	}
}

func TestDiffRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 60 {
		c := chunkSizes[i%len(chunkSizes)]
		oldLen := rng.IntN(int(c) * 9)
		old := patterned(oldLen, uint64(i))
		newb := append(bytes.Clone(old), patterned(rng.IntN(int(c)*3), uint64(i+1000))...)
		for range rng.IntN(6) {
			if len(newb) > 0 {
				newb[rng.IntN(len(newb))] ^= 1
			}
		}
		blk := []int{int(c), 2 * int(c), diffBlock}[i%3]
		got, err := diff(context.Background(), img("a", old), img("b", newb), c, nil, blk)
		if err != nil {
			t.Fatal(err)
		}
		if want := bruteDiff(old, newb, int(c)); got != want {
			t.Fatalf("case %d (chunk %d, %d->%d bytes): got %d, want %d", i, c, len(old), len(newb), got, want)
		}
	}
}

func TestDiffNewShorter(t *testing.T) {
	_, err := Diff(context.Background(), img("a.img", make([]byte, 8192)), img("b.img", make([]byte, 8191)), 4096, nil)
	var e NewShorterError
	if !errors.As(err, &e) || e.Old != "a.img" || e.New != "b.img" || e.OldSize != 8192 || e.NewSize != 8191 {
		t.Errorf("got %v, want NewShorterError naming both images", err)
	}
}

// shortReader claims a size but returns at most n bytes in total.
type shortReader struct {
	b   []byte
	n   int64
	err error
}

func (r shortReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= r.n {
		return copy(p, r.b[off:]), nil
	}
	k := 0
	if off < r.n {
		k = copy(p, r.b[off:r.n])
	}
	return k, r.err
}

func TestDiffReadErrors(t *testing.T) {
	data := make([]byte, 40<<10)
	boom := errors.New("boom")
	tests := []struct {
		name     string
		old, new Image
		want     error
		wantName string
	}{
		{"old shrank", Image{"o", shortReader{data, 10 << 10, io.EOF}, 40 << 10}, img("n", data), io.ErrUnexpectedEOF, `old image "o" at offset 8192`},
		{"new shrank", img("o", data), Image{"n", shortReader{data, 30 << 10, nil}, 40 << 10}, io.ErrUnexpectedEOF, `new image "n" at offset 24576`},
		{"io error", img("o", data), Image{"n", shortReader{data, 5000, boom}, 40 << 10}, boom, `new image "n" at offset 0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := diff(context.Background(), tt.old, tt.new, 4096, nil, 8192)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantName) {
				t.Errorf("got %v, want %v naming %s", err, tt.want, tt.wantName)
			}
		})
	}
}

func TestDiffCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	data := make([]byte, 64<<10)
	calls := 0
	_, err := diff(ctx, img("o", data), img("n", data), 4096, func(done, total int64) {
		calls++
		cancel()
	}, 4096)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
	if calls != 1 {
		t.Errorf("got %d progress calls after cancel, want 1", calls)
	}
}

func TestDiffProgress(t *testing.T) {
	data := patterned(100<<10+7, 3)
	var last, calls int64
	_, err := diff(context.Background(), img("o", data[:50<<10]), img("n", data), 4096, func(done, total int64) {
		if total != int64(len(data)) || done <= last || done > total {
			t.Errorf("progress(%d, %d) after %d, want increasing up to %d", done, total, last, len(data))
		}
		last = done
		calls++
	}, 16<<10)
	if err != nil {
		t.Fatal(err)
	}
	if last != int64(len(data)) || calls != 7 {
		t.Errorf("got %d calls ending at %d, want 7 ending at %d", calls, last, len(data))
	}
}

func TestForImages(t *testing.T) {
	dir := t.TempDir()
	old := patterned(1<<20, 1)
	newb := append(bytes.Clone(old), make([]byte, 5000)...) // 2 tail chunks
	newb[4096*7] ^= 1
	newb[4096*9+5] ^= 1
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := write("a.img", old), write("b.img", newb)
	s, err := ForImages(context.Background(), a, b, 4096, nil)
	if err != nil {
		t.Fatalf("ForImages: %v", err)
	}
	if s.ChangedChunks != 4 || s.TotalChunks != 6 || s.Bytes != 6*4096 {
		t.Errorf("got %+v, want 4 changed, 6 total chunks", s)
	}
	if _, err := ForImages(context.Background(), b, a, 4096, nil); !errors.As(err, new(NewShorterError)) {
		t.Errorf("swapped: got %v, want NewShorterError", err)
	}
	missing := filepath.Join(dir, "missing.img")
	if _, err := ForImages(context.Background(), a, missing, 4096, nil); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing: got %v, want ErrNotExist naming %s", err, missing)
	}
	if _, err := ForImages(context.Background(), dir, b, 4096, nil); err == nil || !strings.Contains(err.Error(), "not a regular file or block device") {
		t.Errorf("directory: got %v, want a refusal", err)
	}
	if _, err := ForImages(context.Background(), a, b, 1<<20, nil); !errors.As(err, new(ChunkSizeError)) {
		t.Errorf("1 MiB chunk: got %v, want ChunkSizeError", err)
	}
}

// benchFiles creates two 256 MiB images (BenchmarkDiff runs once with
// b.Loop, so only once per run): the new one
// differs from the old one in about 1% of its 4 KiB chunks.
func benchFiles(b *testing.B) (string, string, int64) {
	const size = 256 << 20
	dir := b.TempDir()
	old := patterned(size, 11)
	newb := bytes.Clone(old)
	rng := rand.New(rand.NewPCG(12, 13))
	for range size / 4096 / 100 {
		newb[rng.IntN(size)] ^= 0x55
	}
	a, bb := filepath.Join(dir, "old.img"), filepath.Join(dir, "new.img")
	if err := os.WriteFile(a, old, 0o600); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(bb, newb, 0o600); err != nil {
		b.Fatal(err)
	}
	return a, bb, size
}

// readAll reads the files one after the other in diffBlock pieces: the
// baseline a diff cannot beat by much.
func readAll(b *testing.B, paths ...string) {
	buf := make([]byte, diffBlock)
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); ; off += int64(len(buf)) {
			n, err := f.ReadAt(buf, off)
			if err == io.EOF && n < len(buf) {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
	}
}

// BenchmarkDiff compares ForImages over two 256 MiB files with a plain
// sequential read of the same two files in the same run and reports the
// throughput ratio as diff/read (1 = as fast as reading).
func BenchmarkDiff(b *testing.B) {
	a, bb, size := benchFiles(b)
	readAll(b, a, bb) // warm the page cache for both contenders
	var readTime, diffTime time.Duration
	b.SetBytes(2 * size)
	for b.Loop() {
		start := time.Now()
		readAll(b, a, bb)
		readTime += time.Since(start)
		start = time.Now()
		if _, err := ForImages(context.Background(), a, bb, 4096, nil); err != nil {
			b.Fatal(err)
		}
		diffTime += time.Since(start)
	}
	mb := float64(2*size) / (1 << 20) * float64(b.N)
	b.ReportMetric(mb/readTime.Seconds(), "read-MiB/s")
	b.ReportMetric(mb/diffTime.Seconds(), "diff-MiB/s")
	b.ReportMetric(readTime.Seconds()/diffTime.Seconds(), "diff/read")
}
