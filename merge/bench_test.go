package merge

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

// BenchmarkOffline merges three scattered stores of 64 MiB of chunks into
// an origin file of 128 MiB (half of its chunks change; store chunks in
// write order) with the default options, direct I/O:
//
//   - 4 KiB chunks at random origin chunks ("4K");
//   - 64 KiB chunks at random origin chunks ("64K");
//   - 4 KiB chunks in random runs of 256 KiB ("256Kruns");
//
// and once the first with a 16 MiB window (a store four times the window),
// and the three with the page cache instead:
//
//	go test -run '^$' -bench Offline -benchtime 5x ./merge/
//
// Each iteration merges every store of the sub-benchmark and, right after
// each merge, measures two baselines on the same filesystem in the same
// mode:
//
//   - raw: the same number of bytes copied sequentially from one file to
//     another with 1 MiB I/O (read, write, one fsync), as dd does.
//     SHAPE-merge/raw is the figure the design asks to be >= 0.9; a store
//     of scattered 4 KiB chunks cannot reach it where the merge must write
//     the unchanged bytes between them too (see README, Measured).
//   - scattered: the same chunks copied to the same origin offsets with
//     plain I/O: the store read in order with 1 MiB reads into memory
//     allocated in the timed run, as the merge's is, then one write
//     per run of chunks adjacent on the origin (at most 1 MiB), in origin
//     order, one at a time, one fsync. It writes exactly the bytes the
//     merge changes in the fewest writes that change nothing else;
//     SHAPE-merge/scattered is what sorting, filling gaps and overlapping
//     I/O win over that.
//
// SHAPE-fillgap-KiB is the gap the merge measured and filled.
func BenchmarkOffline(b *testing.B) {
	all := []benchShape{{"4K", 8, 1}, {"64K", 128, 1}, {"256Kruns", 8, 64}}
	for _, direct := range []bool{true, false} {
		b.Run(fmt.Sprintf("direct=%v", direct), func(b *testing.B) { benchOffline(b, direct, 0, all...) })
	}
	b.Run("direct=true/window=16M", func(b *testing.B) { benchOffline(b, true, 16<<20, all[0]) })
}

// benchShape is a store to merge: chunks of cs sectors in runs of run.
type benchShape struct {
	name string
	cs   uint32
	run  int
}

func benchOffline(b *testing.B, direct bool, window int64, shapes ...benchShape) {
	const data = 64 << 20
	var cases []*benchCase
	for _, s := range shapes {
		c := newBenchCase(b, s.name, s.cs, data, direct, s.run, window)
		defer c.close()
		cases = append(cases, c)
	}
	b.SetBytes(data * int64(len(cases)))
	b.ResetTimer()
	for range b.N {
		for _, c := range cases {
			c.iteration(b)
		}
	}
	b.StopTimer()
	for _, c := range cases {
		c.report(b)
	}
}

// benchCase is one store, its origin, and the two baselines' files, all in
// one directory.
type benchCase struct {
	name                    string
	cs                      uint32
	data                    int64
	window                  int64
	ex                      []Exception
	cb                      int64
	origin, store, src, dst *Raw
	buf                     pageBuf
	merged, raw, scattered  time.Duration
	fillGap                 int64
	files                   []*Raw
}

// newBenchCase changes runs of run consecutive origin chunks, at random
// places (run = 1: single scattered chunks).
func newBenchCase(b *testing.B, name string, cs uint32, data int64, direct bool, run int, window int64) *benchCase {
	l := Layout{ChunkSize: cs}
	cb := l.ChunkBytes()
	n := int(data / cb)
	originChunks := 2 * n
	rng := rand.New(rand.NewPCG(31, 32))
	dir := b.TempDir()
	originPath, storePath := filepath.Join(dir, "origin"), filepath.Join(dir, "cow")
	srcPath, dstPath := filepath.Join(dir, "src"), filepath.Join(dir, "dst")

	var olds []int
	for _, r := range rng.Perm(originChunks / run)[:n/run] {
		for k := range run {
			olds = append(olds, r*run+k)
		}
	}
	ex := make([]Exception, n)
	for i, o := range olds {
		ex[i] = Exception{Old: uint64(o), New: l.DataChunk(uint64(i))}
	}
	storeBytes := randBytes(rng, int(int64(l.DataChunk(uint64(n)))*cb))
	if err := WriteStore(newMemAt(storeBytes), Header{Magic: Magic, Valid: true, Version: Version, ChunkSize: cs}, ex); err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{
		{storePath, storeBytes},
		{originPath, randBytes(rng, int(int64(originChunks)*cb))},
		{srcPath, randBytes(rng, int(data))},
		{dstPath, make([]byte, data)},
	} {
		if err := os.WriteFile(f.path, f.b, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	flags := OpenFlags(0)
	if direct {
		flags = OpenDirect
	}
	c := &benchCase{name: name, cs: cs, data: data, window: window, ex: ex, cb: cb}
	open := func(path string, f OpenFlags) *Raw {
		r, err := OpenRaw(path, f)
		if err != nil {
			b.Fatal(err)
		}
		c.files = append(c.files, r)
		return r
	}
	c.origin = open(originPath, OpenWrite|flags)
	c.store = open(storePath, flags)
	c.src = open(srcPath, flags)
	c.dst = open(dstPath, OpenWrite|flags)
	if direct && !(c.origin.Direct() && c.store.Direct()) {
		b.Skip("filesystem without O_DIRECT")
	}
	var err error
	if c.buf, err = alignedBuf(1 << 20); err != nil {
		b.Fatal(err)
	}
	return c
}

func (c *benchCase) close() {
	for _, f := range c.files {
		f.Close()
	}
	c.buf.free()
}

func (c *benchCase) iteration(b *testing.B) {
	t0 := time.Now()
	res, err := Offline(context.Background(), c.origin, c.store, OfflineOptions{ChunkSize: c.cs, Window: c.window})
	if err != nil {
		b.Fatal(err)
	}
	if res.Total != c.data {
		b.Fatalf("merged %d bytes, want %d", res.Total, c.data)
	}
	c.merged += time.Since(t0)
	c.fillGap = res.FillGap

	t0 = time.Now()
	if err := rawCopy(c.dst, c.src, c.buf.b, c.data); err != nil {
		b.Fatal(err)
	}
	c.raw += time.Since(t0)

	t0 = time.Now()
	if err := scatteredCopy(c.origin, c.store, c.ex, c.cb, c.buf.b); err != nil {
		b.Fatal(err)
	}
	c.scattered += time.Since(t0)
}

func (c *benchCase) report(b *testing.B) {
	mbps := func(d time.Duration) float64 { return float64(c.data) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(c.merged), c.name+"-merge-MB/s")
	b.ReportMetric(mbps(c.raw), c.name+"-raw-MB/s")
	b.ReportMetric(c.raw.Seconds()/c.merged.Seconds(), c.name+"-merge/raw")
	b.ReportMetric(c.scattered.Seconds()/c.merged.Seconds(), c.name+"-merge/scattered")
	b.ReportMetric(float64(c.fillGap>>10), c.name+"-fillgap-KiB")
}

// rawCopy is the baseline: n bytes from src to dst in order, one fsync.
func rawCopy(dst, src Device, buf []byte, n int64) error {
	for off := int64(0); off < n; off += int64(len(buf)) {
		k := min(int64(len(buf)), n-off)
		if _, err := src.ReadAt(buf[:k], off); err != nil && err != io.EOF {
			return err
		}
		if _, err := dst.WriteAt(buf[:k], off); err != nil {
			return err
		}
	}
	return dst.Sync()
}

// scatteredCopy is the second baseline: the whole store read into memory
// (allocated here, as the merge allocates its window) in order with 1 MiB
// reads, then each run of chunks adjacent on the origin (up to len(buf)
// bytes) gathered into buf and written with one write, in origin order,
// then one fsync. Every chunk is whole (the origin is a multiple of the
// chunk size).
func scatteredCopy(origin, store Device, ex []Exception, cb int64, buf []byte) error {
	mem := make([]byte, store.Size()+4096) // the Go heap does not move
	skip := (4096 - int(reflect.ValueOf(mem).Pointer()%4096)) % 4096
	mem = mem[skip : skip+int(store.Size())]
	for off := int64(0); off < int64(len(mem)); off += 1 << 20 {
		n := min(1<<20, int64(len(mem))-off)
		if _, err := store.ReadAt(mem[off:off+n], off); err != nil && err != io.EOF {
			return err
		}
	}
	byOld := slices.SortedFunc(slices.Values(ex), func(a, b Exception) int { return cmp.Compare(a.Old, b.Old) })
	per := int(int64(len(buf)) / cb)
	for r := 0; r < len(byOld); {
		s := r + 1
		for s < len(byOld) && s-r < per && byOld[s].Old == byOld[s-1].Old+1 {
			s++
		}
		for q, e := range byOld[r:s] {
			copy(buf[int64(q)*cb:][:cb], mem[int64(e.New)*cb:])
		}
		if _, err := origin.WriteAt(buf[:int64(s-r)*cb], int64(byOld[r].Old)*cb); err != nil {
			return err
		}
		r = s
	}
	return origin.Sync()
}
