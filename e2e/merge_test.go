//go:build e2e

package e2e

// End-to-end proof of the offline merge on the guest's 6.1
// kernel: the kernel's snapshot-merge and `snapctl merge --offline` restore
// the same bytes from copies of one store; a SIGKILLed offline merge resumes
// to the same bytes; damaged stores are refused with the origin untouched;
// a checkpoint volume is rolled back offline through the lifecycle.
//
// Guest disks (sparse images on the host's tmpfs when it has room, see
// mgDisks):
//
//	TestMergeKernelVsOffline: ubda 256 MiB origin scratch, ubdb 160 MiB COW
//	  scratch. Each case maps its origin and store as linear devices of the
//	  exact sizes onto the start of these.
//	TestMergeKill: ubda 512 MiB and ubdb (the store's size) where the store
//	  is made; ubdc and ubdd of the same sizes, the copies the offline
//	  merge runs on.
//	TestMergeCorrupt: no disk is used (files in the temp directory).
//	TestMergeCheckpointVolume: ubda 256 MiB, the volume's origin.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// The devices a test builds by hand; removeDevices(t, mgVol) removes all.
const (
	mgVol  = "mg-vol"
	mgReal = "mg-vol-real"
	mgCOW  = "mg-vol-cow"
	mgSnap = "mg-vol-snap"
)

// mgDisks are disk images of the given sizes. On the host they go to its
// tmpfs when it has room: every exception the kernel commits flushes the
// store, and UML turns a flush into an fsync of the image file, which on a
// busy host disk makes building thousands of exceptions take minutes.
func mgDisks(t *testing.T, sizes ...int64) []Disk {
	disks := make([]Disk, len(sizes))
	var sum int64
	for i, s := range sizes {
		disks[i].Size = s
		sum += s
	}
	if guest() {
		return disks
	}
	const shm = "/dev/shm"
	var st unix.Statfs_t
	if err := unix.Statfs(shm, &st); err != nil || st.Type != unix.TMPFS_MAGIC || int64(st.Bavail)*int64(st.Bsize) < sum+(2<<30) {
		t.Logf("disk images in the temp directory (%s is not a tmpfs with %d MiB free)", shm, (sum+(2<<30))>>20)
		return disks
	}
	dir, err := os.MkdirTemp(shm, "snapctl-merge-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	for i := range disks {
		p := filepath.Join(dir, fmt.Sprintf("disk%d.img", i))
		f, err := os.Create(p)
		must(t, err)
		must(t, f.Truncate(disks[i].Size))
		f.Close()
		disks[i] = Disk{Path: p}
	}
	return disks
}

// mgSpec is one store to build through the kernel: an origin of `origin`
// bytes, a snapshot with chunks of `chunk` bytes, and N = scattered +
// runs*runLen distinct chunks first written through the origin.
type mgSpec struct {
	name      string
	chunk     int64 // bytes
	origin    int64 // bytes
	scattered int   // chunks written one at a time (every 4th only partly)
	runs      int   // runs of consecutive chunks, each written as one request
	runLen    int   // chunks per run
	full      bool  // the store is exactly cowsize.ForChunks(N) chunks
}

func (s mgSpec) n() uint64 { return uint64(s.scattered + s.runs*s.runLen) }

func (s mgSpec) layout() merge.Layout { return merge.Layout{ChunkSize: uint32(s.chunk / sector)} }

// storeBytes is the size of the store device: exactly the smallest store
// that holds N exceptions when full, else that and some slack.
func (s mgSpec) storeBytes(t testing.TB) int64 {
	// The layout's next data chunk after N exceptions is where the smallest
	// store for N ends: a cross-check of the size formula.
	c := s.layout().DataChunk(s.n())
	size, err := cowsize.ForChunks(s.n(), uint32(s.chunk))
	must(t, err)
	if size.Bytes != c*uint64(s.chunk) {
		t.Fatalf("cowsize.ForChunks(%d, %d) = %d bytes, merge.Layout.DataChunk = %d (%d bytes): they disagree",
			s.n(), s.chunk, size.Bytes, c, c*uint64(s.chunk))
	}
	if !s.full {
		c += 16 + c/50
	}
	return int64(c) * s.chunk
}

// mgBuilt is what mgBuild leaves: the raw origin and store on their disks
// and the checksums of the origin before and after the writes.
type mgBuilt struct {
	spec       mgSpec
	storeBytes int64
	prep       string // sha256 of the origin when the snapshot was taken
	changed    string // sha256 of the origin after the writes
}

// mgBuild makes a store the way the kernel does. The origin (the first
// spec.origin bytes of originDisk) gets distinct pseudo-random content, a
// snapshot is taken in the order of DESIGN.md section 2 (snapshot-origin
// over a linear origin, a persistent snapshot over a linear COW on
// cowDisk), the change set is written through the origin with O_DIRECT from
// several writers, and the snapshot is taken down in the commit order. The
// kernel's status must show exactly N data chunks (and a store that is
// completely allocated when spec.full).
func mgBuild(t *testing.T, spec mgSpec, originDisk, cowDisk string, seed uint64) mgBuilt {
	t.Helper()
	t.Cleanup(func() { removeDevices(t, mgVol) })
	b := mgBuilt{spec: spec, storeBytes: spec.storeBytes(t)}
	originSectors := uint64(spec.origin / sector)
	chunkSectors := uint64(spec.chunk / sector)

	mgFill(t, originDisk, spec.origin, seed)
	b.prep = mgSum(t, originDisk, spec.origin)

	// Garbage where the store header goes: only the zeroing through the
	// COW device makes it a new store.
	mgWriteDirect(t, cowDisk, 0, pattern(int(seed), int(spec.chunk)))

	x := dmtable.Table{dmtable.Linear(0, originSectors, originDisk, 0)}
	mgDevice(t, mgVol, x)
	mgDevice(t, mgCOW, dmtable.Table{dmtable.Linear(0, uint64(b.storeBytes/sector), cowDisk, 0)})
	mgWriteDirect(t, dmtable.NodePath(mgCOW), 0, make([]byte, spec.chunk))
	mgDevice(t, mgReal, x)
	must(t, dmtable.Suspend(mgVol, dmtable.SuspendOptions{}))
	_, err := dmtable.Create(mgSnap, "")
	must(t, err)
	must(t, dmtable.Load(mgSnap, dmtable.Table{dmtable.Snapshot(0, originSectors, dmtable.SnapshotParams{
		Origin: dmtable.NodePath(mgReal), COW: dmtable.NodePath(mgCOW), Store: dmtable.Persistent, Chunk: chunkSectors,
	})}))
	must(t, dmtable.Load(mgVol, dmtable.Table{dmtable.SnapshotOrigin(0, originSectors, dmtable.NodePath(mgReal))}))
	must(t, dmtable.Resume(mgSnap))
	must(t, dmtable.Resume(mgVol))

	start := time.Now()
	mgWriteChanges(t, dmtable.NodePath(mgVol), spec, seed)
	st, line := mgStatus(t, mgSnap)
	if st.State != dmtable.SnapshotActive {
		t.Fatalf("%s: snapshot after the writes: status %q, want active", spec.name, line)
	}
	if got, want := st.DataSectors(), spec.n()*chunkSectors; got != want {
		t.Fatalf("%s: snapshot status %q: %d data sectors, want %d (%d chunks)", spec.name, line, got, want, spec.n())
	}
	if spec.full && st.Allocated != st.Total {
		t.Fatalf("%s: snapshot status %q: the store of exactly cowsize.ForChunks(%d) chunks is not completely allocated", spec.name, line, spec.n())
	}
	t.Logf("%s: wrote %d chunks through the origin in %v; snapshot status %q (store %d bytes)",
		spec.name, spec.n(), time.Since(start).Round(time.Millisecond), line, b.storeBytes)

	// Commit order: with the origin suspended drop the snapshot and give
	// the volume its linear table back; then the helpers.
	must(t, dmtable.Suspend(mgVol, dmtable.SuspendOptions{}))
	must(t, dmtable.Remove(mgSnap))
	must(t, dmtable.Load(mgVol, x))
	must(t, dmtable.Resume(mgVol))
	must(t, dmtable.Remove(mgReal))
	must(t, dmtable.Remove(mgCOW))
	must(t, dmtable.Remove(mgVol))

	b.changed = mgSum(t, originDisk, spec.origin)
	if b.changed == b.prep {
		t.Fatalf("%s: the origin did not change", spec.name)
	}
	return b
}

// mgDevice creates, loads and resumes a device-mapper device.
func mgDevice(t testing.TB, name string, tab dmtable.Table) {
	t.Helper()
	_, err := dmtable.Create(name, "")
	must(t, err)
	must(t, dmtable.Load(name, tab))
	must(t, dmtable.Resume(name))
}

func mgStatus(t testing.TB, name string) (dmtable.SnapshotStatus, string) {
	t.Helper()
	st, err := dmtable.Status(name)
	must(t, err)
	if len(st) != 1 {
		t.Fatalf("status of %s: %d lines, want 1", name, len(st))
	}
	s, err := dmtable.ParseSnapshotStatus(st[0].Status)
	if err != nil {
		t.Fatalf("status of %s: %v", name, err)
	}
	return s, st[0].Status
}

// mgWriteChanges writes the change set of spec through dev: runs of
// consecutive chunks (one request each) and scattered chunks, every fourth
// of them only half written, all distinct, in random order from 8 writers
// with O_DIRECT.
func mgWriteChanges(t testing.TB, dev string, spec mgSpec, seed uint64) {
	t.Helper()
	type job struct{ off, n int64 }
	rng := rand.New(rand.NewPCG(seed, 0x3e76e))
	chunks := spec.origin / spec.chunk
	used := make(map[int64]bool, spec.n())
	var jobs []job
	for len(jobs) < spec.runs {
		start := rng.Int64N(chunks - int64(spec.runLen))
		free := true
		for c := start; c < start+int64(spec.runLen); c++ {
			free = free && !used[c]
		}
		if !free {
			continue
		}
		for c := start; c < start+int64(spec.runLen); c++ {
			used[c] = true
		}
		jobs = append(jobs, job{start * spec.chunk, int64(spec.runLen) * spec.chunk})
	}
	for k := 0; k < spec.scattered; {
		c := rng.Int64N(chunks)
		if used[c] {
			continue
		}
		used[c] = true
		j := job{c * spec.chunk, spec.chunk}
		if k%4 == 0 {
			j = job{c*spec.chunk + spec.chunk/4, spec.chunk / 2}
		}
		jobs = append(jobs, j)
		k++
	}
	rng.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })

	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	const writers = 8
	maxLen := max(spec.chunk, int64(spec.runLen)*spec.chunk)
	next := make(chan job)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for w := range writers {
		buf, free := mgAligned(t, int(maxLen))
		defer free()
		src := rand.NewChaCha8([32]byte{byte(w), byte(seed), byte(seed >> 8), 0x77})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				b := buf[:j.n]
				src.Read(b)
				if _, err := f.WriteAt(b, j.off); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("write %s at %d (+%d): %w", dev, j.off, j.n, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
	must(t, first)
	must(t, f.Sync())
}

// mgAligned is an n-byte buffer aligned for O_DIRECT; the caller frees
// it (the guest has little memory and the tests make many).
func mgAligned(t testing.TB, n int) (b []byte, free func()) {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", n, err)
	}
	return b, func() { unix.Munmap(b) }
}

// mgOpen opens a block device with O_DIRECT (its page cache may be stale
// after writes through device-mapper) and a regular file without it.
func mgOpen(t testing.TB, path string, flag int) *os.File {
	t.Helper()
	fi, err := os.Stat(path)
	if err == nil && fi.Mode()&os.ModeDevice != 0 {
		flag |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flag, 0o644)
	must(t, err)
	return f
}

// mgWriteDirect writes data at off of a block device, with O_DIRECT.
func mgWriteDirect(t testing.TB, dev string, off int64, data []byte) {
	t.Helper()
	f := mgOpen(t, dev, os.O_WRONLY)
	defer f.Close()
	b, free := mgAligned(t, len(data))
	defer free()
	copy(b, data)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %s at %d: %v", dev, off, err)
	}
	must(t, f.Sync())
}

// mgFill gives the first n bytes of dev pseudo-random content, distinct
// for every chunk (a merge that copies a chunk to the wrong place shows).
func mgFill(t testing.TB, dev string, n int64, seed uint64) {
	t.Helper()
	f := mgOpen(t, dev, os.O_WRONLY)
	defer f.Close()
	src := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 0xf1})
	buf, free := mgAligned(t, 1<<20)
	defer free()
	for off := int64(0); off < n; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), n-off)]
		src.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatalf("fill %s at %d: %v", dev, off, err)
		}
	}
	must(t, f.Sync())
}

// mgSum is the sha256 of the first n bytes of a device or file, a device
// read past its page cache.
func mgSum(t testing.TB, path string, n int64) string {
	t.Helper()
	// No drop_caches needed: block devices are read with O_DIRECT, and
	// files are only ever written through this guest's page cache.
	f := mgOpen(t, path, os.O_RDONLY)
	defer f.Close()
	h := sha256.New()
	buf, free := mgAligned(t, 1<<20)
	defer free()
	for off := int64(0); off < n; {
		b := buf[:min(int64(len(buf)), n-off)]
		k, err := f.ReadAt(b, off)
		h.Write(b[:k])
		off += int64(k)
		if err != nil && (err != io.EOF || off < n) {
			t.Fatalf("read %s at %d: %v", path, off, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// mgCopy copies the first n bytes of src to the start of dst (a new file
// of exactly n bytes when dst is not a device) and flushes dst.
func mgCopy(t testing.TB, src, dst string, n int64) {
	t.Helper()
	in := mgOpen(t, src, os.O_RDONLY)
	defer in.Close()
	out := mgOpen(t, dst, os.O_WRONLY|os.O_CREATE)
	defer out.Close()
	buf, free := mgAligned(t, 1<<20)
	defer free()
	for off := int64(0); off < n; off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), n-off)]
		if _, err := in.ReadAt(b, off); err != nil {
			t.Fatalf("read %s at %d: %v", src, off, err)
		}
		if _, err := out.WriteAt(b, off); err != nil {
			t.Fatalf("write %s at %d: %v", dst, off, err)
		}
	}
	if fi, err := out.Stat(); err == nil && fi.Mode().IsRegular() {
		must(t, out.Truncate(n))
	}
	must(t, out.Sync())
}

// mgKernelMerge merges the store on the first storeBytes of cowDisk into
// the origin on the first spec.origin bytes of originDisk with the kernel's
// snapshot-merge target, polls until the status reads merged, and takes the
// devices down. It returns the time from the resume to the merged status.
func mgKernelMerge(t testing.TB, spec mgSpec, storeBytes int64, originDisk, cowDisk string) time.Duration {
	t.Helper()
	originSectors := uint64(spec.origin / sector)
	mgDevice(t, mgReal, dmtable.Table{dmtable.Linear(0, originSectors, originDisk, 0)})
	mgDevice(t, mgCOW, dmtable.Table{dmtable.Linear(0, uint64(storeBytes/sector), cowDisk, 0)})
	_, err := dmtable.Create(mgVol, "")
	must(t, err)
	must(t, dmtable.Load(mgVol, dmtable.Table{dmtable.SnapshotMerge(0, originSectors, dmtable.SnapshotParams{
		Origin: dmtable.NodePath(mgReal), COW: dmtable.NodePath(mgCOW), Store: dmtable.Persistent, Chunk: uint64(spec.chunk / sector),
	})}))
	start := time.Now()
	must(t, dmtable.Resume(mgVol))
	next := 30 * time.Second
	for {
		st, line := mgStatus(t, mgVol)
		if st.State != dmtable.SnapshotActive {
			t.Fatalf("%s: snapshot-merge status %q, want active", spec.name, line)
		}
		if st.Merged() {
			break
		}
		if el := time.Since(start); el > 4*time.Minute {
			t.Fatalf("%s: snapshot-merge not done after %v: status %q", spec.name, el, line)
		} else if el > next {
			t.Logf("%s: snapshot-merge still running after %v: status %q", spec.name, el.Round(time.Second), line)
			next += 30 * time.Second
		}
		time.Sleep(5 * time.Millisecond)
	}
	el := time.Since(start)
	must(t, dmtable.Remove(mgVol))
	must(t, dmtable.Remove(mgReal))
	must(t, dmtable.Remove(mgCOW))
	return el
}

// mgResult is `snapctl merge --offline --json`.
type mgResult struct {
	Target      string  `json:"target"`
	Exceptions  int     `json:"exceptions"`
	Bytes       int64   `json:"bytes"`
	Copied      int64   `json:"copied"`
	Writes      int     `json:"writes"`
	Resumed     int     `json:"resumed"`
	AlreadyDone bool    `json:"already_done"`
	Invalidated bool    `json:"invalidated"`
	Seconds     float64 `json:"seconds"`
}

func mgParseResult(t testing.TB, out string) mgResult {
	t.Helper()
	var r mgResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("merge --offline --json: %v\n%s", err, out)
	}
	return r
}

// mgInspect is the part of `snapctl inspect-cow --json` the tests read.
type mgInspect struct {
	Valid      bool   `json:"valid"`
	Fresh      bool   `json:"fresh"`
	ChunkBytes int64  `json:"chunk_bytes"`
	Exceptions int    `json:"exceptions"`
	Areas      uint64 `json:"areas"`
	Chunks     uint64 `json:"chunks"`
	UsedChunks uint64 `json:"used_chunks"`
	Error      string `json:"error"`
}

func mgInspectCOW(t testing.TB, path string) mgInspect {
	t.Helper()
	out := mustSnapctl(t, "inspect-cow", path, "--json")
	var r mgInspect
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("inspect-cow --json: %v\n%s", err, out)
	}
	return r
}

// mgChunkFlag renders a chunk size for --chunk-size.
func mgChunkFlag(b int64) string { return fmt.Sprintf("%dK", b>>10) }

// TestMergeKernelVsOffline builds a store through the kernel for each case,
// copies the raw origin and store into image files (the B pair), lets the
// kernel merge the raw devices in place (the A pair: the same bytes) with
// snapshot-merge, and runs `snapctl merge --offline` on the B pair. Both
// origins must equal the prepare-time image; the offline merge must leave
// the store invalid, and a rerun must report it already done.
func TestMergeKernelVsOffline(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: mgDisks(t, 256<<20, 160<<20), Timeout: 10 * time.Minute}) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("change sets from seed %d", seed)
	var rows []string
	for i, spec := range []mgSpec{
		{name: "4K", chunk: 4 << 10, origin: 64 << 20, scattered: 3000, runs: 8, runLen: 64},
		{name: "16K", chunk: 16 << 10, origin: 128 << 20, scattered: 2500, runs: 6, runLen: 32},
		{name: "64K", chunk: 64 << 10, origin: 256 << 20, scattered: 1936, runs: 4, runLen: 16},
		// N = 16*E with E = 256: the last area is full, the next one
		// exists and is empty, and not one chunk is spare.
		{name: "4K-exactly-full", chunk: 4 << 10, origin: 64 << 20, scattered: 3584, runs: 8, runLen: 64, full: true},
		// N = 2*E with E = 1024.
		{name: "16K-exactly-full", chunk: 16 << 10, origin: 128 << 20, scattered: 1856, runs: 6, runLen: 32, full: true},
	} {
		t.Run(spec.name, func(t *testing.T) {
			if spec.full && spec.n()%spec.layout().PerArea() != 0 {
				t.Fatalf("N = %d is not a multiple of E = %d", spec.n(), spec.layout().PerArea())
			}
			b := mgBuild(t, spec, ubd(0), ubd(1), seed+uint64(i))
			dir := t.TempDir()
			bOrigin, bCOW := filepath.Join(dir, "B.origin"), filepath.Join(dir, "B.cow")
			mgCopy(t, ubd(0), bOrigin, spec.origin)
			mgCopy(t, ubd(1), bCOW, b.storeBytes)
			if got := mgSum(t, bOrigin, spec.origin); got != b.changed {
				t.Fatal("the copy of the origin differs from the origin")
			}

			in := mgInspectCOW(t, bCOW)
			if !in.Valid || in.Fresh || in.ChunkBytes != spec.chunk || in.Exceptions != int(spec.n()) {
				t.Fatalf("inspect-cow of the kernel's store: got %+v, want valid, %d-byte chunks, %d exceptions", in, spec.chunk, spec.n())
			}
			if spec.full && (in.UsedChunks != in.Chunks || in.Chunks != spec.layout().DataChunk(spec.n())) {
				t.Fatalf("inspect-cow of the exactly full store: used %d of %d chunks, want all of cowsize.ForChunks(%d) = %d",
					in.UsedChunks, in.Chunks, spec.n(), spec.layout().DataChunk(spec.n()))
			}

			// (a) the kernel, on the A pair in place.
			kernel := mgKernelMerge(t, spec, b.storeBytes, ubd(0), ubd(1))
			sumA := mgSum(t, ubd(0), spec.origin)

			// (b) offline, on the B pair.
			pf := filepath.Join(dir, "progress.json")
			args := []string{"merge", "--offline", "--origin", bOrigin, "--cow", bCOW, "--chunk-size", mgChunkFlag(spec.chunk), "--progress-file", pf, "--json"}
			res := mgParseResult(t, mustSnapctl(t, args...))
			sumB := mgSum(t, bOrigin, spec.origin)
			if res.Exceptions != int(spec.n()) || res.Copied != int64(spec.n())*spec.chunk || !res.Invalidated || res.AlreadyDone {
				t.Errorf("offline merge reported %+v, want %d exceptions, %d bytes copied, invalidated", res, spec.n(), int64(spec.n())*spec.chunk)
			}
			if sumA != b.prep {
				t.Errorf("kernel merge (A): the origin differs from its prepare-time image")
			}
			if sumB != b.prep {
				t.Errorf("offline merge (B): the origin differs from its prepare-time image")
			}
			if sumA != sumB {
				t.Errorf("the kernel's and the offline merge's origins differ")
			}
			if in := mgInspectCOW(t, bCOW); in.Valid || in.Exceptions != int(spec.n()) {
				t.Errorf("inspect-cow after the offline merge: got %+v, want valid false and the %d exceptions still listed", in, spec.n())
			}
			again := mgParseResult(t, mustSnapctl(t, args...))
			if !again.AlreadyDone || again.Copied != 0 {
				t.Errorf("rerun after the merge: got %+v, want already done, nothing copied", again)
			}
			if got := mgSum(t, bOrigin, spec.origin); got != b.prep {
				t.Errorf("the rerun changed the merged origin")
			}
			same := "identical"
			if sumA != b.prep || sumB != b.prep {
				same = "DIFFERENT"
			}
			rows = append(rows, fmt.Sprintf("%-17s %5d %10d %8.3f %8.3f  %s", spec.name, spec.n(), b.storeBytes, kernel.Seconds(), res.Seconds, same))
		})
	}
	t.Logf("kernel vs offline merge (seed %d):\n%-17s %5s %10s %8s %8s  %s\n%s", seed, "case", "N", "store", "kernel s", "offline s", "origin vs prepare-time",
		strings.Join(rows, "\n"))
}

// TestMergeKill SIGKILLs the offline merge at random moments and reruns it
// with the same progress file until it completes: the origin ends equal to
// its prepare-time image every time. The store (64 KiB chunks, ~312 MiB of
// changes) is big enough that a run takes about a second and passes one
// progress checkpoint (every 256 MiB), so some reruns resume.
func TestMergeKill(t *testing.T) {
	parallel(t)
	spec := mgSpec{name: "kill-64K", chunk: 64 << 10, origin: 512 << 20, scattered: 4872, runs: 8, runLen: 16}
	storeBytes := spec.storeBytes(t)
	if !InGuest(t, Config{Disks: mgDisks(t, spec.origin, storeBytes, spec.origin, storeBytes), Timeout: 10 * time.Minute}) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("change set and kill times from seed %d", seed)
	b := mgBuild(t, spec, ubd(0), ubd(1), seed)
	origin, cow := ubd(2), ubd(3)
	pf := filepath.Join(t.TempDir(), "progress.json")
	args := []string{"merge", "--offline", "--origin", origin, "--cow", cow, "--chunk-size", mgChunkFlag(spec.chunk), "--progress-file", pf, "--json"}
	fresh := func() {
		mgCopy(t, ubd(0), origin, spec.origin)
		mgCopy(t, ubd(1), cow, storeBytes)
		os.Remove(pf)
	}
	check := func(what string) {
		if got := mgSum(t, origin, spec.origin); got != b.prep {
			t.Fatalf("%s: the origin differs from its prepare-time image", what)
		}
		if in := mgInspectCOW(t, cow); in.Valid {
			t.Fatalf("%s: the store is still valid after the merge completed", what)
		}
	}

	// An uninterrupted run gives the time scale for the kills.
	fresh()
	start := time.Now()
	res := mgParseResult(t, mustSnapctl(t, args...))
	full := time.Since(start)
	check("uninterrupted run")
	t.Logf("uninterrupted offline merge: %d exceptions, %d bytes in %v (%.1f MB/s by the command's clock)",
		res.Exceptions, res.Copied, full.Round(time.Millisecond), float64(res.Copied)/1e6/res.Seconds)

	// Kills alternate between two kinds of moment: a random delay after
	// the start (reading the store, copying the first windows), and a
	// random delay after the run writes a new progress record (after the
	// checkpoint at 256 MiB, or after the final record and before the store
	// is invalidated). After a kill of the second kind the rerun must resume
	// from the record, not start over.
	// whole estimates a run from nothing (the first run was slower than
	// most); a run resumed from the checkpoint has under a fifth of the
	// copy left (256 of 312 MiB were done), and a run past the checkpoint
	// as much.
	rng := rand.New(rand.NewPCG(seed, 0x4b111))
	whole := full
	hi := full / 5
	var log []string
	kills, afterRecord, early := 0, 0, 0
	for round := 1; kills < 10; round++ {
		if round > 12 {
			t.Fatalf("only %d kills landed in %d rounds (%d runs finished before their kill):\n%s", kills, round-1, early, strings.Join(log, "\n"))
		}
		fresh()
		recorded := false // a run of this round was killed after writing a record
		for k := 0; ; k++ {
			kill := mgKill{}
			if k < 4 { // then let the round finish
				kill.record = k%2 == 1
				switch {
				case kill.record:
					kill.delay = time.Duration(rng.Int64N(int64(whole / 10)))
				case k == 0: // from nothing
					kill.delay = time.Duration(rng.Int64N(int64(whole)))
				default: // may resume: shorter
					kill.delay = time.Duration(rng.Int64N(int64(hi)))
				}
			}
			killed, out, dur := mgRunKilled(t, args, pf, kill)
			if killed {
				kills++
				if kill.record {
					afterRecord++
					recorded = true
				}
				log = append(log, fmt.Sprintf("round %d run %d: killed %v", round, k+1, kill))
				continue
			}
			if kill.delay > 0 || kill.record {
				early++
				switch {
				case k == 0:
					whole = dur * 9 / 10
				case !kill.record:
					hi = max(kill.delay*7/10, 20*time.Millisecond)
				}
				log = append(log, fmt.Sprintf("round %d run %d: finished in %v before its kill %v; next delays below %v (from the start), %v (later runs)",
					round, k+1, dur.Round(time.Millisecond), kill, whole.Round(time.Millisecond), hi.Round(time.Millisecond)))
			}
			r := mgParseResult(t, out)
			log = append(log, fmt.Sprintf("round %d run %d: completed in %v, resumed after %d of %d exceptions, copied %d bytes, already done %v",
				round, k+1, dur.Round(time.Millisecond), r.Resumed, r.Exceptions, r.Copied, r.AlreadyDone))
			switch {
			case r.AlreadyDone:
				// A killed run finished and invalidated the store; check
				// below verifies that it did.
			case recorded && r.Resumed == 0:
				t.Errorf("round %d: a run was killed after writing a progress record, but the completing run started over", round)
			case r.Resumed+int(r.Copied/spec.chunk) != r.Exceptions || !r.Invalidated:
				t.Errorf("round %d: completing run %+v: resumed + copied do not cover every exception, or the store was not invalidated", round, r)
			}
			break
		}
		check(fmt.Sprintf("round %d", round))
	}
	t.Logf("%d kills (%d after a progress record), %d runs finished before their kill:\n%s",
		kills, afterRecord, early, strings.Join(log, "\n"))
}

// mgKill says when mgRunKilled kills: delay after the start, or with
// record, delay after the run replaces the progress record. The zero value
// never kills.
type mgKill struct {
	record bool
	delay  time.Duration
}

func (k mgKill) String() string {
	if k.record {
		return fmt.Sprintf("%v after a new progress record", k.delay.Round(time.Millisecond))
	}
	return fmt.Sprintf("after %v", k.delay.Round(time.Millisecond))
}

// mgRunKilled runs snapctl and kills it with SIGKILL as kill says; pf is
// the progress record to watch. It reports whether the signal ended it,
// its stdout, and its run time; any other failure fails the test.
func mgRunKilled(t testing.TB, args []string, pf string, kill mgKill) (bool, string, time.Duration) {
	t.Helper()
	inode := func() uint64 {
		var st unix.Stat_t
		if unix.Stat(pf, &st) != nil {
			return 0
		}
		return st.Ino
	}
	before := inode()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(snapctlBin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	must(t, cmd.Start())
	done := make(chan struct{})
	defer close(done)
	if kill.delay > 0 || kill.record {
		go func() {
			if kill.record {
				// The record is replaced by a rename: a new inode.
				for inode() == before {
					select {
					case <-done:
						return
					case <-time.After(time.Millisecond):
					}
				}
			}
			select {
			case <-done:
			case <-time.After(kill.delay):
				cmd.Process.Signal(syscall.SIGKILL)
			}
		}()
	}
	err := cmd.Wait()
	dur := time.Since(start)
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
		return true, stdout.String(), dur
	}
	if err != nil {
		t.Fatalf("snapctl %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return false, stdout.String(), dur
}

// TestMergeCorrupt feeds `snapctl merge --offline` damaged stores built
// with merge.WriteStore: each is refused with the exit code of its class
// (3 damaged, 4 refused) and a message naming the problem; the origin and
// the store are left byte for byte as they were and no progress record is
// made. The undamaged store they are made from merges correctly.
func TestMergeCorrupt(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: mgDisks(t, 1<<20)}) {
		return
	}
	const (
		chunk       = 4096
		originBytes = 4 << 20
		n           = 300 // area 0 full (E = 256), area 1 partly
	)
	l := merge.Layout{ChunkSize: chunk / sector}
	dir := t.TempDir()
	origin := filepath.Join(dir, "origin.img")
	must(t, os.WriteFile(origin, pattern(11, originBytes), 0o644))
	originSum := fileSum(t, origin)

	rng := rand.New(rand.NewPCG(5, 5))
	good := make([]merge.Exception, n)
	for i, c := range rng.Perm(originBytes / chunk)[:n] {
		good[i] = merge.Exception{Old: uint64(c), New: l.DataChunk(uint64(i))}
	}
	storeChunks := l.DataChunk(n) + 4 // the smallest store for n, and 4 chunks more
	header := merge.Header{Magic: merge.Magic, Valid: true, Version: merge.Version, ChunkSize: l.ChunkSize}
	data := pattern(12, int(storeChunks)*chunk)

	// build writes a store of storeChunks chunks: data everywhere, then the
	// header and tables; patch may change the bytes last.
	build := func(name string, h merge.Header, ex []merge.Exception, patch func(f *os.File)) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		must(t, err)
		defer f.Close()
		_, err = f.WriteAt(data, 0)
		must(t, err)
		must(t, merge.WriteStore(f, h, ex))
		if patch != nil {
			patch(f)
		}
		return p
	}
	with := func(i int, e merge.Exception) []merge.Exception {
		ex := append([]merge.Exception(nil), good...)
		ex[i] = e
		return ex
	}
	hdr := func(f func(*merge.Header)) merge.Header { h := header; f(&h); return h }
	truncate := func(size int64) func(*os.File) { return func(f *os.File) { must(t, f.Truncate(size)) } }

	for _, c := range []struct {
		name  string
		store string
		chunk string
		code  int
		has   []string
	}{
		{"bad magic", build("magic", hdr(func(h *merge.Header) { h.Magic = 0x12345678 }), good, nil), "4K", 3, []string{"magic 0x12345678"}},
		{"valid=0", build("invalid", hdr(func(h *merge.Header) { h.Valid = false }), good, nil), "4K", 4, []string{"valid=0", "drop it"}},
		{"valid=7", build("valid7", header, good, func(f *os.File) { f.WriteAt([]byte{7}, 4) }), "4K", 3, []string{"valid flag 7"}},
		{"version 2", build("version", hdr(func(h *merge.Header) { h.Version = 2 }), good, nil), "4K", 3, []string{"version 2"}},
		{"zeroed header", build("fresh", header, good, func(f *os.File) { f.WriteAt(make([]byte, chunk), 0) }), "4K", 4, []string{"zeroed"}},
		{"chunk size mismatch", build("chunk", header, good, nil), "8K", 3, []string{"chunk size", "--chunk-size 4096"}},
		{"entry on a metadata slot", build("meta", header, with(10, merge.Exception{Old: good[10].Old, New: l.AreaChunk(1)}), nil), "4K", 3,
			[]string{"area 0 entry 10", "metadata area 1"}},
		{"entry past the end", build("past", header, with(280, merge.Exception{Old: good[280].Old, New: storeChunks + 3}), nil), "4K", 3,
			[]string{"area 1 entry 24", "past the end of the store"}},
		{"old chunk past the origin", build("pastorigin", header, with(7, merge.Exception{Old: originBytes/chunk + 1, New: good[7].New}), nil), "4K", 3,
			[]string{"past the end of the origin"}},
		{"duplicate old chunk", build("dupold", header, with(200, merge.Exception{Old: good[3].Old, New: good[200].New}), nil), "4K", 3,
			[]string{"repeats old chunk"}},
		{"duplicate new chunk", build("dupnew", header, with(150, merge.Exception{Old: good[150].Old, New: good[149].New}), nil), "4K", 3,
			[]string{"repeats new chunk"}},
		{"truncated before area 1", build("trunc-area", header, good, truncate(int64(l.AreaChunk(1))*chunk)), "4K", 3,
			[]string{"metadata area 1 would be chunk 258, but the store has 258 chunks"}},
		{"truncated in the data", build("trunc-data", header, good, truncate(200*chunk)), "4K", 3, []string{"past the end of the store"}},
		{"truncated in the header", build("trunc-hdr", header, good, truncate(10)), "4K", 3, []string{"shorter than its 16-byte header"}},
		{"empty file", build("empty", header, good, truncate(0)), "4K", 3, []string{"shorter than"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			storeSum := fileSum(t, c.store)
			pf := filepath.Join(dir, "progress-"+strings.ReplaceAll(c.name, " ", "-"))
			_, errOut, code := snapctl(t, "merge", "--offline", "--origin", origin, "--cow", c.store, "--chunk-size", c.chunk, "--progress-file", pf)
			if code != c.code {
				t.Errorf("exit %d, want %d", code, c.code)
			}
			if !strings.HasPrefix(errOut, "snapctl: ") || !strings.Contains(errOut, "\nhint: ") {
				t.Errorf("stderr is not an error line and a hint:\n%s", errOut)
			}
			for _, s := range c.has {
				if !strings.Contains(errOut, s) {
					t.Errorf("message lacks %q:\n%s", s, errOut)
				}
			}
			if got := fileSum(t, origin); got != originSum {
				t.Fatal("the origin changed")
			}
			if got := fileSum(t, c.store); got != storeSum {
				t.Error("the store changed")
			}
			if _, err := os.Stat(pf); !os.IsNotExist(err) {
				t.Errorf("a progress record was made (%v)", err)
			}
		})
	}

	// The store they are all made from is good: it merges, chunk by chunk.
	t.Run("undamaged", func(t *testing.T) {
		store := build("good", header, good, nil)
		want := pattern(11, originBytes)
		for _, e := range good {
			copy(want[e.Old*chunk:(e.Old+1)*chunk], data[e.New*chunk:(e.New+1)*chunk])
		}
		if bytes.Equal(want, pattern(11, originBytes)) {
			t.Fatal("the expected image equals the origin: the test could not fail")
		}
		res := mgParseResult(t, mustSnapctl(t, "merge", "--offline", "--origin", origin, "--cow", store, "--chunk-size", "4K", "--json"))
		if res.Exceptions != n || !res.Invalidated {
			t.Errorf("merge of the undamaged store: got %+v, want %d exceptions, invalidated", res, n)
		}
		got, err := os.ReadFile(origin)
		must(t, err)
		if !bytes.Equal(got, want) {
			t.Fatal("after merging the undamaged store the origin is not the expected image")
		}
		_, errOut, code := snapctl(t, "merge", "--offline", "--origin", origin, "--cow", store, "--chunk-size", "4K")
		if code != 4 || !strings.Contains(errOut, "valid=0") {
			t.Errorf("second merge of the invalidated store without a progress record: exit %d, want 4 (invalid)\n%s", code, errOut)
		}
	})
}

// TestMergeCheckpointVolume rolls a checkpoint volume back offline: attach,
// ext4 on /dev/mapper/NAME with the store file on that filesystem, prepare,
// change files, unmount, deactivate, `snapctl merge NAME --offline`,
// activate: every file is back, e2fsck is clean, the store file goes away.
func TestMergeCheckpointVolume(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: mgDisks(t, 256<<20)}) {
		return
	}
	v := newVolume(t, "data")
	v.must("attach", "data", "--origin", ubd(0))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/data")
	mnt := mountFS(t, "/dev/mapper/data")
	populate(t, mnt, 20, 3)
	store := filepath.Join(mnt, ".snapctl-store")
	before := tree(t, mnt)

	v.must("prepare", "data", "--store", store, "--size", "64M")
	change(t, mnt)
	changed := tree(t, mnt, ".snapctl-store")
	if len(changed) == len(before) {
		t.Fatal("change() did not change the set of files")
	}
	umount(t, mnt)

	// Refused while the volume is active.
	_, errOut, code := v.snapctl("merge", "data", "--offline")
	if code == 0 || !strings.Contains(errOut, "is active") {
		t.Fatalf("merge --offline of an active volume: exit %d, want a refusal naming the active devices\n%s", code, errOut)
	}
	if code != 4 || !strings.Contains(errOut, "snapctl deactivate data") {
		t.Errorf("merge --offline of an active volume: exit %d, want 4 (refused) with a hint naming `snapctl deactivate data`\n%s", code, errOut)
	}
	v.must("deactivate", "data")
	if d := devicesOf(t, "data"); len(d) != 0 {
		t.Fatalf("after deactivate: devices %v, want none", d)
	}
	out := v.must("merge", "data", "--offline", "--json")
	res := mgParseResult(t, out)
	if res.Exceptions == 0 || !res.Invalidated || res.Copied == 0 {
		t.Fatalf("merge data --offline: got %+v, want exceptions copied and the store invalidated", res)
	}
	if s := v.status(); s.Phase != "attached" {
		t.Fatalf("after the offline merge: phase %s, want attached", s.Phase)
	}
	v.must("activate", "data")
	if d := devicesOf(t, "data"); len(d) != 1 {
		t.Fatalf("after activate: devices %v, want only data", d)
	}
	fsck(t, "/dev/mapper/data")
	run(t, "mount", "/dev/mapper/data", mnt)
	sameTree(t, tree(t, mnt, ".snapctl-store"), withoutStore(before, ".snapctl-store"))
	// The store file came back with the prepare-time image; with the
	// filesystem mounted, the next snapctl command on the volume deletes it.
	v.must("activate", "data")
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("store %s after the offline merge + activate with the filesystem mounted: %v, want it deleted", store, err)
	}
	umount(t, mnt)
	fsck(t, "/dev/mapper/data")
	v.must("detach", "data")
}
