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
//     made (64 MiB of changes to a 256 MiB origin);
//   - the kernel's online merge of the same store (snapshot-merge, from the
//     resume to the status reading merged);
//   - a raw sequential copy of as many bytes: dd bs=1M with O_DIRECT on both
//     sides and a final flush (conv=fsync), as both merges flush.
//
// for three stores: scattered 4 KiB chunks, scattered 64 KiB chunks, and
// 4 KiB chunks in runs of 256 KiB. Each of reps runs measures all three on
// a fresh copy of the same origin and store, and gives its own ratios
// (offline/raw, offline/kernel); the log shows every run's and their
// spread. Timings are never asserted, but each merge must restore the
// prepare-time image.
//
// The raw copy runs at the speed of the host's memory: the disk images are
// files on the host's tmpfs (or in its page cache), and ubd moves each
// request with a host read or write. What costs in the guest is each
// request (a round trip to ubd's I/O thread) and each page a process
// touches for the first time, not the bytes.
//
// It used to wedge the UML guest in about half the runs on a loaded host,
// shortly after the offline merge of the scattered store exited: UML 6.1
// lost a timer interrupt, its host timer stayed disarmed and its idle loop
// spun at 100 % host CPU with no guest timer ever firing again. The ptrace
// shim (umlfpu/umlfpu.c) now re-arms a host timer that the idle loop finds
// disarmed twice in a row, so the test runs in CI.
//
// Guest disks (host tmpfs when it has room, see mgDisks):
//
//	ubda 256 MiB      the origin the merges and the copy write
//	ubdb store size   the store they read (the largest of the three)
//	ubdc, ubdd        pristine copies of the two, restored before each run
func TestMergeBench(t *testing.T) {
	const (
		origin  = 256 << 20
		changed = 64 << 20
		reps    = 3
	)
	kinds := []mgSpec{
		{name: "scattered 4 KiB chunks", chunk: 4 << 10, origin: origin, scattered: changed / (4 << 10)},
		{name: "scattered 64 KiB chunks", chunk: 64 << 10, origin: origin, scattered: changed / (64 << 10)},
		{name: "256 KiB runs of 4 KiB chunks", chunk: 4 << 10, origin: origin, runs: changed / (256 << 10), runLen: 64},
	}
	var disk int64
	for _, k := range kinds {
		disk = max(disk, k.storeBytes(t))
	}
	if !InGuest(t, Config{Disks: mgDisks(t, origin, disk, origin, disk), Timeout: 8 * time.Minute}) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("change sets from seed %d", seed)
	var report []string
	for i, spec := range kinds {
		storeBytes := spec.storeBytes(t)
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
		var offRaw, offKern []float64
		for r := 0; r < reps; r++ {
			restore()
			os.Remove(pf)
			start := time.Now()
			out := mustSnapctl(t, "merge", "--offline", "--origin", ubd(0), "--cow", ubd(1), "--chunk-size", mgChunkFlag(spec.chunk),
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
			start = time.Now()
			run(t, "dd", "if="+ubd(1), "of="+ubd(0), "bs=1M", fmt.Sprintf("count=%d", changed>>20),
				"iflag=direct", "oflag=direct", "conv=fsync,notrunc", "status=none")
			raw = append(raw, time.Since(start))
			offRaw = append(offRaw, raw[r].Seconds()/offCmd[r].Seconds())
			offKern = append(offKern, kernel[r].Seconds()/offCmd[r].Seconds())
			t.Logf("%s: run %d: offline %v (%d writes), kernel %v, raw copy %v: offline/raw %.2f, offline/kernel %.1fx",
				spec.name, r+1, offCmd[r].Round(time.Millisecond), res.Writes, kernel[r].Round(time.Millisecond), raw[r].Round(time.Millisecond),
				offRaw[r], offKern[r])
		}
		rate := func(d []time.Duration) float64 { return float64(changed) / 1e6 / mgMedian(d).Seconds() }
		line := fmt.Sprintf("%s (%d chunks, %d MiB), %d runs: offline/raw %s, offline/kernel %s (median offline %.1f MB/s, %.1f by wall clock incl. start-up; kernel %.1f MB/s; raw copy %.1f MB/s)",
			spec.name, spec.n(), changed>>20, reps, mgSpread(offRaw, "%.2f"), mgSpread(offKern, "%.1fx"),
			rate(offCmd), rate(offWall), rate(kernel), rate(raw))
		t.Log(line)
		t.Logf("%s: runs (s): offline %s; wall %s; kernel %s; raw %s", spec.name, mgSecs(offCmd), mgSecs(offWall), mgSecs(kernel), mgSecs(raw))
		report = append(report, line)
	}
	t.Logf("merge throughput, same devices, each ratio from one run:\n%s", strings.Join(report, "\n"))
}

// mgSpread renders the smallest and the largest of x ("a–b").
func mgSpread(x []float64, format string) string {
	lo, hi := slices.Min(x), slices.Max(x)
	return fmt.Sprintf(format+"–"+format, lo, hi)
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
