//go:build e2e

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestBenchSkipFree measures what `prepare --skip-free` buys a checkpoint
// (see the bench_test.go preamble: ratios only, no timing asserted; every
// rollback is checked: files back, fsck clean). One guest, booted with
// slab_nomerge so that the kernel's dm_exception cache has a line of its
// own in /proc/slabinfo.
//
// The same mixed workload (a 40 MiB new file, 2 MiB of overwrites in two
// files, two deletions) runs on ext4 (4 KiB blocks, 40 files) on:
//
//	(a) /dev/ubda 256 MiB  an attached volume, no snapshot (the baseline)
//	(b) /dev/ubdb 256 MiB  a plain checkpoint, 96 MiB store on the volume
//	(c) /dev/ubdc 256 MiB  a --skip-free checkpoint, the same store
//	(d) /dev/ubdd 256 MiB  bow over NBD, checkpoint after fstrim
//
// in two rounds: round 1 rolls (b) and (c) back with `rollback --kernel`
// (the kernel's snapshot-merge), round 2 with the default rollback (the
// userspace merge). Reported: store bytes used (c
// against b, goal at most 0.1) and bow's backup bytes; the throughput of
// the 40 MiB new-file write through /dev/mapper/NAME (c/a, goal at least
// 0.9; b/a; bow/a), written in four pieces of 10 MiB with the
// configurations taking turns; rollback time seeded against plain (goal:
// seeded no slower); prepare time with and without --skip-free.
//
// Kernel memory: /dev/ubde 1 GiB ext4 whose free space is cut into over
// 100,000 single free chunks (an 800 MiB preallocated file with a 4 KiB
// hole punched every 8 KiB) and one remaining run; prepare --skip-free;
// dm_exception objects and bytes from /proc/slabinfo before and after, and
// MemAvailable, per seeded chunk. The object count is checked against the
// plan's Objects (the real exceptions of the moment allowed for).
func TestBenchSkipFree(t *testing.T) {
	cfg := Config{
		Disks:      []Disk{{Size: 256 << 20}, {Size: 256 << 20}, {Size: 256 << 20}, {Size: 256 << 20}, {Size: 1 << 30}},
		KernelArgs: []string{"slab_nomerge"},
		Timeout:    20 * time.Minute,
	}
	if !InGuest(t, cfg) {
		return
	}
	var lines []string
	logf := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	defer func() { t.Logf("skip-free benchmark:\n  %s", strings.Join(lines, "\n  ")) }()

	bare := sfbSetup(t, "sfa", ubd(0))
	plain := sfbSetup(t, "sfb", ubd(1))
	seeded := sfbSetup(t, "sfc", ubd(2))

	// bow: the same files on its own disk, served over NBD; it takes part
	// in round 1.
	bowDisk := ubd(3)
	mkfsBow(t, bowDisk, 4096)
	bmnt := mountFS(t, bowDisk)
	populate(t, bmnt, 40, 11)
	umount(t, bmnt)
	srv := serveBow(t, bowDisk, "/dev/nbd1", t.TempDir(), "--low-space", "0")
	run(t, "mount", "/dev/nbd1", bmnt)
	fstrimBow(t, bmnt)
	srv.must("checkpoint")
	var bowBytes int64
	var bowMBs []float64

	var bareMBs, plainMBs, seedMBs [2][]float64
	var plainPrep, seedPrep, plainRB, seedRB [2]float64
	var plainUsed, seedUsed [2]int64
	for round := range 2 {
		merge := []string{"kernel merge", "userspace merge"}[round]
		for _, v := range []*sfbVol{plain, seeded} {
			args := []string{"prepare", v.v.name, "--store", filepath.Join(v.mnt, ".snapctl-store"), "--size", "96M", "--chunk-size", "4K"}
			if v == seeded {
				args = append(args, "--skip-free")
			}
			v.want = tree(t, v.mnt, ".snapctl-store")
			start := time.Now()
			v.v.must(args...)
			d := time.Since(start).Seconds()
			if v == seeded {
				seedPrep[round] = d
			} else {
				plainPrep[round] = d
			}
		}
		s := sfbStatus(t, seeded.v)
		if s.Store.Seeded == nil || s.Store.Seeded.Seeds == 0 {
			t.Fatalf("prepare --skip-free seeded nothing: %+v", s.Store)
		}
		logf("round %d: %d free chunks seeded in %d areas, %d dm_exception objects (%.2f bytes of them per seed)", round+1,
			s.Store.Seeded.Seeds, s.Store.Seeded.Areas, s.Store.Seeded.Objects, float64(s.Store.Seeded.Objects*32)/float64(s.Store.Seeded.Seeds))

		// The 40 MiB new file in four timed pieces of 10 MiB, the
		// configurations taking turns, so that a burst of load on the
		// shared host hits them alike.
		dirs := []string{bare.mnt, plain.mnt, seeded.mnt}
		if round == 0 {
			dirs = append(dirs, bmnt)
		}
		mbs := sfbNewFile(t, dirs, round+1)
		bareMBs[round], plainMBs[round], seedMBs[round] = mbs[0], mbs[1], mbs[2]
		for _, d := range dirs {
			sfbChange(t, d, round+1)
		}
		if round == 0 {
			bowMBs = mbs[3]
			umount(t, bmnt)
			bowBytes = srv.must("status").BackedUpBytes
			srv.must("commit")
			srv.stop()
			fsck(t, bowDisk)
		}
		plainUsed[round] = int64(sfbStatus(t, plain.v).Usage.Allocated) * 512
		seedUsed[round] = int64(sfbStatus(t, seeded.v).Usage.Allocated) * 512

		for _, v := range []*sfbVol{plain, seeded} {
			umount(t, v.mnt)
			start := time.Now()
			if round == 0 {
				v.v.must("rollback", v.v.name, "--kernel")
			} else {
				v.v.must("rollback", v.v.name) // the default: the userspace merge
			}
			d := time.Since(start).Seconds()
			if v == seeded {
				seedRB[round] = d
			} else {
				plainRB[round] = d
			}
			fsck(t, "/dev/mapper/"+v.v.name)
			run(t, "mount", "/dev/mapper/"+v.v.name, v.mnt)
			sameTree(t, tree(t, v.mnt, ".snapctl-store"), v.want)
			if got := tree(t, v.mnt, ".snapctl-store"); len(got) != len(v.want) {
				t.Fatalf("%s after the %s: %d files, want %d", v.v.name, merge, len(got), len(v.want))
			}
			v.v.must("activate", v.v.name) // deletes the store file the rollback brought back
		}
		// The bare volume has no rollback: drop its new file.
		must(t, os.Remove(filepath.Join(bare.mnt, fmt.Sprintf("new%d", round+1))))
		run(t, "sync")
	}
	memFigures := sfbMemory(t)

	logf("workload: 40 MiB new file (4 timed pieces of 10 MiB, each with fsync), 2 MiB of overwrites, 2 deletions; ext4 4 KiB on 256 MiB with 40 files")
	for r := range 2 {
		logf("round %d (rollback by %s):", r+1, []string{"the kernel merge", "the userspace merge"}[r])
		logf("  store used: plain %.2f MiB, seeded %.2f MiB: seeded/plain %.3f (goal <= 0.1)", float64(plainUsed[r])/mib, float64(seedUsed[r])/mib, float64(seedUsed[r])/float64(plainUsed[r]))
		b, p, c := median(bareMBs[r]), median(plainMBs[r]), median(seedMBs[r])
		logf("  new-file write MB/s (median of 4): bare %.1f, plain %.1f, seeded %.1f: seeded/bare %.2f (goal >= 0.9; pieces %s), plain/bare %.2f (pieces %s)",
			b, p, c, c/b, ratios(seedMBs[r], bareMBs[r]), p/b, ratios(plainMBs[r], bareMBs[r]))
		logf("  rollback: plain %.2f s, seeded %.2f s: seeded/plain %.2f (goal <= 1)", plainRB[r], seedRB[r], seedRB[r]/plainRB[r])
		logf("  prepare: plain %.2f s, --skip-free %.2f s: %.2f", plainPrep[r], seedPrep[r], seedPrep[r]/plainPrep[r])
	}
	logf("bow (round 1): backed up %.2f MiB; new-file write %.1f MB/s: bow/bare %.2f (pieces %s)", float64(bowBytes)/mib, median(bowMBs), median(bowMBs)/median(bareMBs[0]), ratios(bowMBs, bareMBs[0]))
	lines = append(lines, memFigures...)
	if bowBytes <= 0 || plainUsed[0] <= 0 || seedUsed[0] <= 0 {
		t.Fatalf("bow %d bytes, plain %d, seeded %d: each should have saved something", bowBytes, plainUsed[0], seedUsed[0])
	}
}

// median of a few figures.
func median(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratios lists a[i]/b[i], the pairs timed one after the other.
func ratios(a, b []float64) string {
	var out []string
	for i := range min(len(a), len(b)) {
		out = append(out, fmt.Sprintf("%.2f", a[i]/b[i]))
	}
	return strings.Join(out, " ")
}

// sfbVol is an attached volume with ext4 and files, mounted.
type sfbVol struct {
	v    *volume
	mnt  string
	want map[string]string
}

func sfbSetup(t *testing.T, name, disk string) *sfbVol {
	t.Helper()
	v := newVolume(t, name)
	v.must("attach", name, "--origin", disk)
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", "/dev/mapper/"+name)
	mnt := mountFS(t, "/dev/mapper/"+name)
	populate(t, mnt, 40, 11)
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	return &sfbVol{v: v, mnt: mnt}
}

// sfbNewFile writes a 40 MiB file "newROUND" into each of dirs in four
// pieces of 10 MiB (1 MiB writes, then fsync), the dirs taking turns, and
// returns the MB/s of each piece, per dir.
func sfbNewFile(t *testing.T, dirs []string, round int) [][]float64 {
	t.Helper()
	r := rand.New(rand.NewSource(int64(round)))
	b := make([]byte, mib)
	files := make([]*os.File, len(dirs))
	for i, d := range dirs {
		f, err := os.Create(filepath.Join(d, fmt.Sprintf("new%d", round)))
		must(t, err)
		files[i] = f
	}
	mbs := make([][]float64, len(dirs))
	for range 4 {
		for i, f := range files {
			start := time.Now()
			for range 10 {
				r.Read(b)
				_, err := f.Write(b)
				must(t, err)
			}
			must(t, f.Sync())
			mbs[i] = append(mbs[i], 10*mib/1e6/time.Since(start).Seconds())
		}
	}
	for _, f := range files {
		must(t, f.Close())
	}
	return mbs
}

// sfbChange overwrites 1 MiB at the start of two files and deletes two.
func sfbChange(t *testing.T, dir string, round int) {
	t.Helper()
	r := rand.New(rand.NewSource(int64(round)))
	b := make([]byte, mib)
	for i := range 2 {
		p := filepath.Join(dir, fmt.Sprintf("f%02d", 10+i))
		fi, err := os.Stat(p)
		must(t, err)
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err)
		r.Read(b)
		_, err = w.WriteAt(b[:min(int64(mib), fi.Size())], 0)
		must(t, err)
		must(t, w.Close())
	}
	for i := range 2 {
		must(t, os.Remove(filepath.Join(dir, fmt.Sprintf("f%02d", 20+2*round+i))))
	}
	run(t, "sync")
}

// sfbState is the part of `snapctl status --json` the benchmark reads.
type sfbState struct {
	Store *struct {
		Bytes  uint64 `json:"bytes"`
		Seeded *struct {
			Areas   uint64 `json:"areas"`
			Seeds   uint64 `json:"seeds"`
			Objects uint64 `json:"objects"`
		} `json:"seeded"`
	} `json:"store"`
	Usage *struct {
		Allocated uint64 `json:"allocated_sectors"`
		Data      uint64 `json:"data_chunks"`
	} `json:"usage"`
}

func sfbStatus(t *testing.T, v *volume) sfbState {
	t.Helper()
	var s sfbState
	out := v.must("status", v.name, "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.Store == nil || s.Usage == nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return s
}

// slabExceptions reads the dm_exception line of /proc/slabinfo: active
// objects, object size and objects per slab. SLUB counts the objects of
// the slabs a CPU holds as active, so the count is exact only to within a
// slab per CPU.
func slabExceptions(t *testing.T) (objs, size, perSlab int64) {
	t.Helper()
	f, err := os.Open("/proc/slabinfo")
	must(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 && fs[0] == "dm_exception" {
			objs, _ = strconv.ParseInt(fs[1], 10, 64)
			size, _ = strconv.ParseInt(fs[3], 10, 64)
			perSlab, _ = strconv.ParseInt(fs[4], 10, 64)
			return objs, size, perSlab
		}
	}
	t.Fatal("/proc/slabinfo has no dm_exception line (slab_nomerge missing, or dm-snapshot not loaded?)")
	return 0, 0, 0
}

// memAvailable is /proc/meminfo's MemAvailable in bytes.
func memAvailable(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/meminfo")
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			must(t, err)
			return kb << 10
		}
	}
	t.Fatal("no MemAvailable in /proc/meminfo")
	return 0
}

// sfbMemory seeds a checkpoint of a 1 GiB ext4 whose free space is cut
// into single chunks and reads the kernel's memory for it.
func sfbMemory(t *testing.T) []string {
	t.Helper()
	v := newVolume(t, "sfe")
	v.must("attach", "sfe", "--origin", ubd(4))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", "/dev/mapper/sfe")
	mnt := mountFS(t, "/dev/mapper/sfe")
	t.Cleanup(func() { unix.Unmount(mnt, 0) })
	f, err := os.Create(filepath.Join(mnt, "holes"))
	must(t, err)
	const holes = 102400
	must(t, unix.Fallocate(int(f.Fd()), 0, 0, holes*8192))
	start := time.Now()
	for i := range int64(holes) {
		must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, i*8192, 4096))
	}
	must(t, f.Close())
	run(t, "sync")
	t.Logf("punched %d holes in %v", holes, time.Since(start))
	run(t, "sync")
	objs0, size, perSlab := slabExceptions(t)
	avail0 := memAvailable(t)
	start = time.Now()
	v.must("prepare", "sfe", "--store", filepath.Join(mnt, ".snapctl-store"), "--size", "16M", "--chunk-size", "4K", "--skip-free")
	prep := time.Since(start)
	objs1, _, _ := slabExceptions(t)
	avail1 := memAvailable(t)
	s := sfbStatus(t, v)
	sd := s.Store.Seeded
	if sd == nil || sd.Seeds < 100000 {
		t.Fatalf("seeded %+v: want over 100,000 seeds", sd)
	}
	// The plan's count, give or take the slab granularity of the two
	// readings and the real exceptions of the moment; one object per seed
	// (no collapse) would be far off: a third of the seeds lie in runs.
	got := objs1 - objs0
	if slack := 2 * perSlab; got < int64(sd.Objects)-slack || got > int64(sd.Objects+s.Usage.Data)+slack {
		t.Errorf("dm_exception objects grew by %d; the plan says %d for the seeds (+ %d real exceptions, +- %d for the slab granularity)", got, sd.Objects, s.Usage.Data, slack)
	}
	if int64(sd.Seeds)-int64(sd.Objects) < 4*perSlab {
		t.Errorf("%d seeds in %d objects: the free space has too few runs to tell the collapse from none", sd.Seeds, sd.Objects)
	}
	v.must("commit", "sfe")
	objs2, _, _ := slabExceptions(t)
	out := []string{
		fmt.Sprintf("kernel memory: 1 GiB ext4, %d holes of 4 KiB: %d seeds in %d areas; prepare --skip-free %.2f s", holes, sd.Seeds, sd.Areas, prep.Seconds()),
		fmt.Sprintf("  dm_exception objects +%d (plan: %d; slabs of %d) of %d bytes: %.2f bytes per seed; after commit %+d", got, sd.Objects, perSlab, size, float64(got*size)/float64(sd.Seeds), objs2-objs0),
		fmt.Sprintf("  MemAvailable -%.2f MiB: %.1f bytes per seed (table, slab and page cache together)", float64(avail0-avail1)/mib, float64(avail0-avail1)/float64(sd.Seeds)),
	}
	return out
}
