//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestMergeBench measures, in one guest run and on the same ubd devices,
// three ways of moving the same number of bytes from the store's disk to
// the origin's disk:
//
//   - the offline merge: `snapctl merge --offline` of a store the kernel
//     made (4 KiB chunks, 64 MiB of changes);
//   - the kernel's online merge of the same store (snapshot-merge, from the
//     resume to the status reading merged);
//   - a raw sequential copy of as many bytes: dd bs=1M with O_DIRECT on both
//     sides and a final flush (conv=fsync), as both merges flush.
//
// for a store of scattered chunks and one of 1 MiB runs of consecutive
// chunks. Each figure is the median of reps runs (1 in CI; raise reps for
// steadier figures), every run on a fresh copy
// of the same origin and store. It logs the MB/s and the ratios to the raw
// copy; timings are never asserted, but each merge must restore the
// prepare-time image.
//
// It used to wedge the UML guest in about half the runs on a loaded host,
// shortly after the offline merge of the scattered store exited: UML 6.1
// lost a timer interrupt, its host timer stayed disarmed and its idle loop
// spun at 100 % host CPU with no guest timer ever firing again. The ptrace
// shim (umlfpu/umlfpu.c) now re-arms a host timer that the idle loop finds
// disarmed twice in a row, so the test runs in CI with one rep.
//
// Guest disks (host tmpfs when it has room, see mgDisks):
//
//	ubda 256 MiB      the origin the merges and the copy write
//	ubdb store size   the store they read
//	ubdc, ubdd        pristine copies of the two, restored before each run
func TestMergeBench(t *testing.T) {
	const (
		chunk   = 4 << 10
		origin  = 256 << 20
		changed = 64 << 20
		n       = changed / chunk
		reps    = 1
	)
	kinds := []mgSpec{
		{name: "scattered 4 KiB chunks", chunk: chunk, origin: origin, scattered: n},
		{name: "1 MiB runs", chunk: chunk, origin: origin, runs: n / 256, runLen: 256},
	}
	storeBytes := kinds[0].storeBytes(t)
	if !InGuest(t, Config{Disks: mgDisks(t, origin, storeBytes, origin, storeBytes), Timeout: 6 * time.Minute}) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("change sets from seed %d", seed)
	var report []string
	for i, spec := range kinds {
		if spec.storeBytes(t) != storeBytes {
			t.Fatalf("%s: store of %d bytes, want %d", spec.name, spec.storeBytes(t), storeBytes)
		}
		b := mgBuild(t, spec, ubd(0), ubd(1), seed+uint64(i))
		mgCopy(t, ubd(0), ubd(2), origin)
		mgCopy(t, ubd(1), ubd(3), storeBytes)
		restore := func() {
			mgCopy(t, ubd(2), ubd(0), origin)
			mgCopy(t, ubd(3), ubd(1), storeBytes)
		}
		// The progress record goes to the guest's tmpfs: its fsyncs are a
		// fixed cost of the state directory's disk, not of the merge, and
		// on the host's disk they would only add the other tests' noise.
		pf := filepath.Join("/run", "mergebench-progress.json")
		t.Cleanup(func() { os.Remove(pf) })
		var offCmd, offWall, kernel, raw []time.Duration
		for r := 0; r < reps; r++ {
			t.Logf("%s: run %d", spec.name, r+1)
			restore()
			os.Remove(pf)
			start := time.Now()
			out := mustSnapctl(t, "merge", "--offline", "--origin", ubd(0), "--cow", ubd(1), "--chunk-size", mgChunkFlag(chunk),
				"--progress-file", pf, "--json")
			offWall = append(offWall, time.Since(start))
			res := mgParseResult(t, out)
			offCmd = append(offCmd, time.Duration(res.Seconds*float64(time.Second)))
			if res.Copied != changed {
				t.Fatalf("%s: offline merge copied %d bytes, want %d", spec.name, res.Copied, changed)
			}
			if r == 0 && mgSum(t, ubd(0), origin) != b.prep {
				t.Fatalf("%s: after the offline merge the origin differs from its prepare-time image", spec.name)
			}

			restore()
			kernel = append(kernel, mgKernelMerge(t, spec, storeBytes, ubd(0), ubd(1)))
			if r == 0 && mgSum(t, ubd(0), origin) != b.prep {
				t.Fatalf("%s: after the kernel merge the origin differs from its prepare-time image", spec.name)
			}

			restore()
			t.Logf("%s: run %d: kernel merge took %v", spec.name, r+1, kernel[r].Round(time.Millisecond))
			start = time.Now()
			run(t, "dd", "if="+ubd(1), "of="+ubd(0), "bs=1M", fmt.Sprintf("count=%d", changed>>20),
				"iflag=direct", "oflag=direct", "conv=fsync,notrunc", "status=none")
			raw = append(raw, time.Since(start))
		}
		rate := func(d []time.Duration) float64 { return float64(changed) / 1e6 / mgMedian(d).Seconds() }
		off, offW, kern, rawR := rate(offCmd), rate(offWall), rate(kernel), rate(raw)
		line := fmt.Sprintf("%s (%d chunks, %d MiB): offline %.1f MB/s (%.1f by wall clock incl. start-up), kernel %.1f MB/s, raw copy %.1f MB/s; "+
			"offline/raw %.2f (%.2f wall), kernel/raw %.2f, offline/kernel %.1fx",
			spec.name, n, changed>>20, off, offW, kern, rawR, off/rawR, offW/rawR, kern/rawR, off/kern)
		t.Log(line)
		t.Logf("%s: runs (s): offline %s; wall %s; kernel %s; raw %s", spec.name, mgSecs(offCmd), mgSecs(offWall), mgSecs(kernel), mgSecs(raw))
		report = append(report, line)
	}
	t.Logf("merge throughput, median of %d, same devices:\n%s", reps, strings.Join(report, "\n"))
}

func mgSecs(d []time.Duration) string {
	s := make([]string, len(d))
	for i, x := range d {
		s[i] = fmt.Sprintf("%.3f", x.Seconds())
	}
	return strings.Join(s, " ")
}

// mgMedian is the median of d.
func mgMedian(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
