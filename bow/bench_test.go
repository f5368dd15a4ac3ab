package bow

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// BenchmarkCheckpointWrite measures write throughput in checkpoint state,
// into free space and over existing data, against pass-through on the same
// image file in the same run: the raw file, and the engine in committed
// state. Sixteen writers write 4 KiB or 64 KiB chunks (4 or 16 MiB in
// all), each chunk once, so every overwrite needs a backup. "sync" flushes after every write, as a
// journalling filesystem's commits do; "buffered" flushes once at the end.
// Ratios are reported against the engine's own pass-through (committed
// state) over the same half of the image. Run with TMPDIR on a tmpfs to see
// the engine's CPU cost alone, on a disk to include flush costs.
func BenchmarkCheckpointWrite(b *testing.B) {
	for _, w := range []struct {
		chunk, writes int // chunk size; writes per writer
	}{{4 << 10, 64}, {64 << 10, 16}} {
		for _, sync := range []bool{true, false} {
			name := fmt.Sprintf("%dK/buffered", w.chunk>>10)
			if sync {
				name = fmt.Sprintf("%dK/sync", w.chunk>>10)
			}
			b.Run(name, func(b *testing.B) { benchWrite(b, sync, w.chunk, w.writes) })
		}
	}
}

const (
	benchBS      = 4096
	benchImage   = 64 << 20
	benchWriters = 16
)

func benchWrite(b *testing.B, syncEach bool, benchChunk, benchWrites int) {
	_, f := newImage(b, benchImage, 1)
	half := int64(benchImage / 2)
	// workload writes benchWriters*benchWrites distinct chunks from base.
	workload := func(d interface {
		WriteAt([]byte, int64) (int, error)
		Flush() error
	}, base int64) time.Duration {
		// Start from a clean page cache so one workload's writeback does not
		// land in the next one's time.
		if err := f.Flush(); err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < benchWriters; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				p := pattern(int64(benchChunk), uint64(w))
				for i := 0; i < benchWrites; i++ {
					off := base + int64((i*benchWriters+w)*benchChunk)
					if _, err := d.WriteAt(p, off); err != nil {
						b.Error(err)
						return
					}
					if syncEach {
						if err := d.Flush(); err != nil {
							b.Error(err)
						}
					}
				}
			}(w)
		}
		wg.Wait()
		if err := d.Flush(); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	// checkpointed opens an engine, frees the second half and checkpoints.
	checkpointed := func() *Engine {
		e, err := Open(f, Options{BlockSize: benchBS})
		if err != nil {
			b.Fatal(err)
		}
		if err := e.Discard(half, half); err != nil {
			b.Fatal(err)
		}
		if err := e.Checkpoint(context.Background()); err != nil {
			b.Fatal(err)
		}
		return e
	}
	finish := func(e *Engine) {
		if err := e.Commit(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := e.Close(); err != nil {
			b.Fatal(err)
		}
	}
	var raw, passLow, passHigh, free, over time.Duration
	var backups uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		raw += workload(f, 0)

		e, err := Open(f, Options{BlockSize: benchBS, PassThrough: true})
		if err != nil {
			b.Fatal(err)
		}
		passLow += workload(e, 0)
		passHigh += workload(e, half)
		e.Close()

		e = checkpointed()
		free += workload(e, half)
		finish(e)

		e = checkpointed()
		over += workload(e, 0)
		backups += e.Status().Backups
		finish(e)
	}
	bytes := float64(b.N * benchWriters * benchWrites * benchChunk)
	mbps := func(d time.Duration) float64 { return bytes / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(raw), "raw-MB/s")
	b.ReportMetric(mbps((passLow+passHigh)/2), "pass-MB/s")
	b.ReportMetric(mbps(free), "free-MB/s")
	b.ReportMetric(mbps(over), "over-MB/s")
	// Each ratio compares with pass-through over the same half of the image.
	b.ReportMetric(passHigh.Seconds()/free.Seconds(), "free/pass")
	b.ReportMetric(passLow.Seconds()/over.Seconds(), "over/pass")
	b.ReportMetric(raw.Seconds()/passLow.Seconds(), "pass/raw")
	if want := uint64(b.N * (benchWriters*benchWrites + 1)); backups < want {
		b.Fatalf("overwrite workload made %d backups, want at least %d", backups, want)
	}
}
