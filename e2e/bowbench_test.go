//go:build e2e

package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestBowBench measures, in one guest run on the same disks, what bow
// costs (see the bench_test.go preamble: ratios only, no timing asserted;
// the data written is checked).
//
// Throughput: 4 KiB O_DIRECT writes, sequential, random at queue depth 1
// and random at queue depth 8, on the raw ubd disk, through the bow NBD
// device in checkpoint state into space that was free at the checkpoint,
// over data that existed at the checkpoint (each block backed up first),
// and through the same server after commit (pass-through; a second
// instance on its own disk, so that the runs interleave). The project's
// goals: free-space writes at least 90 % of pass-through, overwrites at
// least 50 %.
//
// Space: one mixed workload (new files, appends, in-place overwrites,
// deletes) on ext4 checkpointed by bow and on a copy of the same image
// checkpointed by dm-snapshot (snapctl prepare, checkpoint mode, 4 KiB
// chunks): bytes bow backed up vs bytes the COW store allocated. Goal:
// bow at most 55 %.
//
// Guest disks:
//
//	/dev/ubda 512 MiB  throughput: [0, 96M) data, [96M, 192M) free targets,
//	                   [192M, 512M) free space for backups
//	/dev/ubdb 256 MiB  space: ext4 with files, served by bow
//	/dev/ubdc 256 MiB  space: a copy of ubdb, attached for dm-snapshot
//	/dev/ubdd 128 MiB  throughput: the pass-through (committed) server
//	/dev/ubde 128 MiB  throughput: the raw disk
func TestBowBench(t *testing.T) {
	if !InGuest(t, Config{Disks: []Disk{{Size: 512 << 20}, {Size: 256 << 20}, {Size: 256 << 20}, {Size: 128 << 20}, {Size: 128 << 20}}, Timeout: 15 * time.Minute}) {
		return
	}
	t.Run("throughput", benchBowThroughput)
	t.Run("space", benchBowSpace)
}

// blockWrite is the content of 4 KiB block blk written in phase: a header
// naming both, then filler, so a read-back check finds misplaced blocks.
func blockWrite(b []byte, phase, blk uint64) {
	binary.LittleEndian.PutUint64(b[0:], phase)
	binary.LittleEndian.PutUint64(b[8:], blk)
	for i := 16; i < len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], phase*0x9e3779b97f4a7c15^blk^uint64(i))
	}
}

// directRun writes the blocks [first, first+n) of dev (4 KiB each) once,
// in order or shuffled, from qd writers with O_DIRECT, then fsyncs; it
// returns MB/s including the fsync.
func directRun(t testing.TB, dev string, phase, first, n uint64, random bool, qd int) float64 {
	t.Helper()
	order := make([]uint64, n)
	for i := range order {
		order[i] = first + uint64(i)
	}
	if random {
		r := rand.New(rand.NewSource(int64(phase)))
		r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	bufs := make([][]byte, qd)
	for i := range bufs {
		bufs[i] = alignedBuf(t, 4096)
	}
	var next uint64
	var mu sync.Mutex
	var werr error
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < qd; w++ {
		wg.Add(1)
		go func(b []byte) {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= n {
					return
				}
				blk := order[i]
				blockWrite(b, phase, blk)
				if _, err := f.WriteAt(b, int64(blk)*4096); err != nil {
					mu.Lock()
					werr = err
					mu.Unlock()
					return
				}
			}
		}(bufs[w])
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("write %s: %v", dev, werr)
	}
	must(t, f.Sync())
	return float64(n*4096) / 1e6 / time.Since(start).Seconds()
}

// checkBlocks reads the blocks [first, first+n) of dev and checks each
// holds what phase wrote.
func checkBlocks(t testing.TB, dev string, phase, first, n uint64) {
	t.Helper()
	f, err := os.Open(dev)
	must(t, err)
	defer f.Close()
	got := make([]byte, n*4096)
	if _, err := f.ReadAt(got, int64(first)*4096); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	want := make([]byte, 4096)
	for i := uint64(0); i < n; i++ {
		blockWrite(want, phase, first+i)
		if string(got[i*4096:(i+1)*4096]) != string(want) {
			t.Fatalf("%s block %d does not hold what phase %d wrote", dev, first+i, phase)
		}
	}
}

func discardRange(s *bowServer, dev string, off, n int64) {
	s.t.Helper()
	s.runFor(2*time.Minute, "blkdiscard", "-o", fmt.Sprint(off), "-l", fmt.Sprint(n), dev)
}

// The three write patterns of a throughput row, each on its own blocks.
type rates struct{ seq, rand1, rand8 float64 }

const (
	mib        = 1 << 20
	benchSeq   = 16 * mib / 4096 // blocks per sequential run
	benchRand  = 8 * mib / 4096  // blocks per random run
	benchSlice = benchSeq + 2*benchRand
)

// row writes the three patterns into consecutive blocks from first.
func row(t testing.TB, dev string, phase, first uint64) rates {
	start := time.Now()
	defer func() {
		t.Logf("row %d on %s at block %d: %v", phase, dev, first, time.Since(start).Round(time.Millisecond))
	}()
	var p rates
	p.seq = directRun(t, dev, phase, first, benchSeq, false, 1)
	p.rand1 = directRun(t, dev, phase+1, first+benchSeq, benchRand, true, 1)
	p.rand8 = directRun(t, dev, phase+2, first+benchSeq+benchRand, benchRand, true, 8)
	return p
}

func checkRow(t testing.TB, dev string, phase, first uint64) {
	checkBlocks(t, dev, phase, first, benchSeq)
	checkBlocks(t, dev, phase+1, first+benchSeq, benchRand)
	checkBlocks(t, dev, phase+2, first+benchSeq+benchRand, benchRand)
}

// median3 is the per-pattern median of three rows (UML timings are noisy).
func median3(r [3]rates) rates {
	med := func(a, b, c float64) float64 { return max(min(a, b), min(max(a, b), c)) }
	return rates{med(r[0].seq, r[1].seq, r[2].seq), med(r[0].rand1, r[1].rand1, r[2].rand1), med(r[0].rand8, r[1].rand8, r[2].rand8)}
}

func benchBowThroughput(t *testing.T) {
	disk, nbd := ubd(0), "/dev/nbd0"
	passDisk, passNBD, rawDisk := ubd(3), "/dev/nbd2", ubd(4)
	const (
		dataBlk = 0                // [0, 96M): data at the checkpoint, three slices
		freeBlk = 96 * mib / 4096  // [96M, 192M): free targets, three slices
		endBlk  = 512 * mib / 4096 // [192M, 512M): backup space
	)
	// The checkpointed server: a fresh engine holds everything but what is
	// discarded; discard the free targets and the backup space.
	srv := serveBow(t, disk, nbd, t.TempDir(), "--low-space", "0")
	discardRange(srv, nbd, freeBlk*4096, (endBlk-freeBlk)*4096)
	st := srv.must("checkpoint")
	if st.FreeBytes < 400*mib {
		t.Fatalf("free space at checkpoint %d, want the 416 MiB discarded", st.FreeBytes)
	}
	// The pass-through server: the same server, checkpointed and committed
	// at once, on a disk of its own, so that its runs interleave with the
	// others' and the host's load drifts alike over all of them.
	ps := serveBow(t, passDisk, passNBD, t.TempDir(), "--low-space", "0")
	discardRange(ps, passNBD, 0, 1*mib)
	ps.must("checkpoint")
	ps.must("commit")

	var raw, pass, free, over [3]rates
	for r := range 3 {
		slice := uint64(r) * benchSlice
		raw[r] = row(t, rawDisk, uint64(10+3*r), slice)
		pass[r] = row(t, passNBD, uint64(40+3*r), slice)
		before := srv.must("status")
		free[r] = row(t, nbd, uint64(20+3*r), freeBlk+slice)
		mid := srv.must("status")
		over[r] = row(t, nbd, uint64(30+3*r), dataBlk+slice)
		after := srv.must("status")
		if mid.Backups != before.Backups {
			t.Errorf("writes into free space made %d backups, want none", mid.Backups-before.Backups)
		}
		if got, want := after.BackedUpBytes-mid.BackedUpBytes, int64(benchSlice*4096); got < want {
			t.Errorf("overwrites backed up %d bytes, want at least the %d overwritten", got, want)
		}
	}
	for r := range 3 {
		slice := uint64(r) * benchSlice
		checkRow(t, nbd, uint64(20+3*r), freeBlk+slice)
		checkRow(t, nbd, uint64(30+3*r), dataBlk+slice)
		checkRow(t, passNBD, uint64(40+3*r), slice)
		checkRow(t, rawDisk, uint64(10+3*r), slice)
	}
	srv.must("commit")
	srv.stop()
	ps.stop()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	for r := range 3 {
		slice := uint64(r) * benchSlice
		checkRow(t, disk, uint64(20+3*r), freeBlk+slice)
		checkRow(t, disk, uint64(30+3*r), dataBlk+slice)
		checkRow(t, passDisk, uint64(40+3*r), slice)
	}

	t.Logf("4 KiB O_DIRECT writes, MB/s, median of 3 interleaved rounds (sequential %d MiB, random %d MiB at QD1 and QD8):", benchSeq*4096/mib, benchRand*4096/mib)
	t.Logf("  %-34s %8s %8s %8s", "", "seq", "rand1", "rand8")
	rawM, passM, freeM, overM := median3(raw), median3(pass), median3(free), median3(over)
	for _, r := range []struct {
		name string
		p    rates
	}{{"raw ubd", rawM}, {"bow pass-through (committed)", passM}, {"bow checkpoint, into free space", freeM}, {"bow checkpoint, overwriting", overM}} {
		t.Logf("  %-34s %8.2f %8.2f %8.2f", r.name, r.p.seq, r.p.rand1, r.p.rand8)
	}
	ratio := func(a, b rates) string {
		return fmt.Sprintf("seq %.0f%%, rand QD1 %.0f%%, rand QD8 %.0f%%", 100*a.seq/b.seq, 100*a.rand1/b.rand1, 100*a.rand8/b.rand8)
	}
	t.Logf("free space vs pass-through: %s (goal >= 90%%)", ratio(freeM, passM))
	t.Logf("overwrite vs pass-through:  %s (goal >= 50%%)", ratio(overM, passM))
	t.Logf("pass-through vs raw ubd:    %s", ratio(passM, rawM))
}

// spaceWorkload is the mixed workload of the space comparison: new files,
// appends, in-place overwrites and deletes, the same bytes every time.
func spaceWorkload(t testing.TB, dir string) {
	t.Helper()
	r := rand.New(rand.NewSource(77))
	b := make([]byte, 2*mib)
	for i := 0; i < 8; i++ {
		r.Read(b)
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("new%d", i)), b, 0o644))
	}
	for i := 0; i < 10; i++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		r.Read(b[:mib/2])
		_, err = f.Write(b[:mib/2])
		must(t, err)
		must(t, f.Close())
	}
	for i := 10; i < 20; i++ {
		p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
		fi, err := os.Stat(p)
		must(t, err)
		n := min(fi.Size(), 256<<10)
		r.Read(b[:n])
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err)
		_, err = f.WriteAt(b[:n], 0)
		must(t, err)
		must(t, f.Close())
	}
	for i := 20; i < 25; i++ {
		must(t, os.Remove(filepath.Join(dir, fmt.Sprintf("f%02d", i))))
	}
	run(t, "sync")
}

func benchBowSpace(t *testing.T) {
	bowDisk, dmDisk, nbd := ubd(1), ubd(2), "/dev/nbd1"
	mkfsBow(t, bowDisk, 4096)
	mnt := mountFS(t, bowDisk)
	populate(t, mnt, 40, 11)
	umount(t, mnt)
	run(t, "dd", "if="+bowDisk, "of="+dmDisk, "bs=1M", "status=none")

	// bow: fstrim, checkpoint, workload, unmount.
	srv := serveBow(t, bowDisk, nbd, t.TempDir(), "--low-space", "0")
	run(t, "mount", nbd, mnt)
	fstrimBow(t, mnt)
	srv.must("checkpoint")
	spaceWorkload(t, mnt)
	bowTree := tree(t, mnt)
	umount(t, mnt)
	st := srv.must("status")
	bowBytes := st.BackedUpBytes
	srv.must("commit")
	srv.stop()
	fsck(t, bowDisk)

	// dm-snapshot: attach the copy, store on the same filesystem, prepare
	// (checkpoint mode), workload, unmount, read the store's usage.
	v := newVolume(t, "spc")
	v.must("attach", "spc", "--origin", dmDisk)
	dmMnt := mountFS(t, "/dev/mapper/spc")
	v.must("prepare", "spc", "--store", filepath.Join(dmMnt, ".snapctl-store"), "--size", "96M", "--chunk-size", "4K")
	spaceWorkload(t, dmMnt)
	sameTree(t, tree(t, dmMnt, ".snapctl-store"), bowTree)
	umount(t, dmMnt)
	out := v.must("status", "spc", "--json")
	var vs struct {
		Usage *struct {
			State            string `json:"state"`
			AllocatedSectors uint64 `json:"allocated_sectors"`
			MetadataSectors  uint64 `json:"metadata_sectors"`
			DataChunks       uint64 `json:"data_chunks"`
		} `json:"usage"`
	}
	if err := json.Unmarshal([]byte(out), &vs); err != nil || vs.Usage == nil || vs.Usage.State != "active" {
		t.Fatalf("status --json: %v, usage %+v\n%s", err, vs.Usage, out)
	}
	cowBytes := int64(vs.Usage.AllocatedSectors) * 512
	v.must("commit", "spc")
	v.must("detach", "spc")

	t.Logf("mixed workload (8 new files of 2 MiB, 10 appends of 512 KiB, 10 in-place overwrites of up to 256 KiB, 5 deletes):")
	t.Logf("  bow backed up:        %8.2f MiB (log, block 0 and data)", float64(bowBytes)/mib)
	t.Logf("  dm-snapshot COW used: %8.2f MiB (%d data chunks of 4 KiB, %d metadata sectors)", float64(cowBytes)/mib, vs.Usage.DataChunks, vs.Usage.MetadataSectors)
	t.Logf("  bow / dm-snapshot:    %.0f%% (goal <= 55%%)", 100*float64(bowBytes)/float64(cowBytes))
	if bowBytes <= 0 || cowBytes <= 0 {
		t.Fatalf("bow %d bytes, dm-snapshot %d bytes: both should have backed something up", bowBytes, cowBytes)
	}
}
