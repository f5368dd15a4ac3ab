//go:build e2e

package e2e

// End-to-end proof of the exception-store size formula of package cowsize
// (DESIGN.md section 3) on the guest's 6.1 kernel.
//
// Guest disks (TestCowSizeExact), sparse images on the host's tmpfs when it
// has room (see csDisks):
//   /dev/ubda = 1 GiB origin
//   /dev/ubdb = 1600 MiB scratch for the exception stores (COW); each case maps
//               two linear devices onto its start, one of exactly the size
//               cowsize gives and one a chunk smaller
//
// Every case builds its devices afresh and removes them in a t.Cleanup; the
// harness fails the run if any device-mapper device is left.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
)

const (
	csOriginBytes = 1 << 30
	csCOWBytes    = 1600 << 20
	csWriters     = 64 // concurrent chunk writers

	csCOW       = "cs-cow"
	csCOWShort  = "cs-cow-short"
	csReal      = "cs-real"
	csSnap      = "cs-snap"
	csSnapShort = "cs-snap-short"
	csVol       = "cs-vol"
)

// csMode says where the N chunk writes go.
type csMode int

const (
	// csThroughOrigin writes to a snapshot-origin device over the origin;
	// every first write of a chunk copies it into both persistent (P)
	// stores.
	csThroughOrigin csMode = iota
	// csThroughSnapshot writes the same chunks to each of two writable
	// persistent snapshots with the overflow option (PO); the origin is
	// never written.
	csThroughSnapshot
)

func (m csMode) String() string {
	if m == csThroughOrigin {
		return "origin"
	}
	return "snapshot"
}

// csRow is one line of the logged table: a case and the kernel's status
// lines of its two snapshots after the N-th write.
type csRow struct {
	mode    csMode
	chunk   uint32
	n       uint64
	bytes   uint64 // cowsize.ForChunks(n, chunk).Bytes
	exact   string // the store of exactly bytes
	oneLess string // the store of bytes - chunk
}

// TestCowSizeExact proves on the kernel that cowsize.ForChunks is exact.
// For several chunk sizes and change sets of N distinct chunks (including
// N = k*E exactly, where one more exception area must already fit), two
// snapshots of one origin take the same N first writes, through the origin
// or through each snapshot: the one whose store is exactly ForChunks(N).Bytes
// stays active and the kernel reports exactly the chunks cowsize predicts,
// N of them data; the one whose store is a chunk smaller takes N-1 and fails
// at the N-th (it is invalidated, or overflows).
func TestCowSizeExact(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: csDisks(t)}) {
		return
	}
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	t.Logf("random change sets from seed %d", seed)

	start := time.Now()
	var rows []csRow
	for _, chunk := range []uint32{4 << 10, 8 << 10, 64 << 10} {
		e := cowsize.ExceptionsPerArea(chunk)
		if e != uint64(chunk)/16 {
			t.Fatalf("ExceptionsPerArea(%d) = %d, want %d", chunk, e, chunk/16)
		}
		ns := []uint64{1, e - 1, e, e + 1, 2 * e, 3 * e, 1 + rng.Uint64N(3*e)}
		for _, mode := range []csMode{csThroughOrigin, csThroughSnapshot} {
			for _, n := range ns {
				t.Run(fmt.Sprintf("%s/%dK/N=%d", mode, chunk>>10, n), func(t *testing.T) {
					rows = append(rows, csCase(t, mode, chunk, n))
				})
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%-8s %5s %6s %11s  %-18s %s\n", "through", "chunk", "N", "bytes(N)", "status: exact", "status: one chunk less")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-8s %4dK %6d %11d  %-18s %s\n", r.mode, r.chunk>>10, r.n, r.bytes, r.exact, r.oneLess)
	}
	t.Logf("cow-size proof (seed %d, %v):\n%s", seed, time.Since(start).Round(time.Millisecond), b.String())
}

// csDisks are the guest's disks. Every exception commit flushes the store,
// and UML turns each flush into an fsync of the image on the host, so the
// several GiB the 64 KiB cases copy would all go through the host's disk.
// The images go to the host's tmpfs when it has room (the test writes at
// most about 2.4 GiB of them), else to the test's temp directory.
func csDisks(t *testing.T) []Disk {
	disks := []Disk{{Size: csOriginBytes}, {Size: csCOWBytes}}
	if guest() {
		return disks
	}
	const shm = "/dev/shm"
	var st unix.Statfs_t
	if err := unix.Statfs(shm, &st); err != nil || st.Type != unix.TMPFS_MAGIC || st.Bavail*uint64(st.Bsize) < 4<<30 {
		t.Logf("disk images in the temp directory (%s: not a tmpfs with 4 GiB free)", shm)
		return disks
	}
	dir, err := os.MkdirTemp(shm, "snapctl-cowsize-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	for i := range disks {
		p := fmt.Sprintf("%s/disk%d.img", dir, i)
		f, err := os.Create(p)
		must(t, err)
		must(t, f.Truncate(disks[i].Size))
		must(t, f.Close())
		disks[i] = Disk{Path: p}
	}
	t.Logf("disk images on tmpfs in %s", dir)
	return disks
}

// csCase runs one case and returns its row.
func csCase(t *testing.T, mode csMode, chunk uint32, n uint64) csRow {
	size, err := cowsize.ForChunks(n, chunk)
	must(t, err)
	before, err := cowsize.ForChunks(n-1, chunk)
	must(t, err)
	c := uint64(size.ChunkSectors())
	if c*sector != uint64(chunk) {
		t.Fatalf("ChunkSectors() = %d, want %d", c, chunk/sector)
	}
	if want := n + 2 + n/cowsize.ExceptionsPerArea(chunk); size.TotalChunks != want || size.Bytes != want*uint64(chunk) {
		t.Fatalf("ForChunks(%d, %d) = %+v, want %d chunks, %d bytes", n, chunk, size, want, want*uint64(chunk))
	}
	exact, short := size.Bytes, size.Bytes-uint64(chunk)
	if exact+short > csCOWBytes {
		t.Fatalf("stores of %d and %d bytes do not fit the %d-byte scratch disk", exact, short, csCOWBytes)
	}
	removeAtEnd(t, csVol, csSnap, csSnapShort, csReal, csCOW, csCOWShort)

	// The stores: exactly `exact` and `short` bytes of the scratch disk,
	// one after the other, each with its first chunk zeroed so the kernel
	// initialises a new one.
	for _, st := range []struct {
		name        string
		bytes, from uint64
	}{{csCOW, exact, 0}, {csCOWShort, short, exact}} {
		_, err = dmtable.Create(st.name, "")
		must(t, err)
		must(t, dmtable.Load(st.name, dmtable.Table{dmtable.Linear(0, st.bytes/sector, ubd(1), st.from/sector)}))
		must(t, dmtable.Resume(st.name))
		writeDirect(t, dmtable.NodePath(st.name), 0, make([]byte, chunk))
	}

	originSectors := uint64(csOriginBytes / sector)
	_, err = dmtable.Create(csReal, "")
	must(t, err)
	must(t, dmtable.Load(csReal, dmtable.Table{dmtable.Linear(0, originSectors, ubd(0), 0)}))
	must(t, dmtable.Resume(csReal))

	store := dmtable.Persistent
	if mode == csThroughSnapshot {
		store = dmtable.PersistentOverflow
	}
	for _, sn := range [][2]string{{csSnap, csCOW}, {csSnapShort, csCOWShort}} {
		p := dmtable.SnapshotParams{Origin: dmtable.NodePath(csReal), COW: dmtable.NodePath(sn[1]), Store: store, Chunk: c}
		_, err = dmtable.Create(sn[0], "")
		must(t, err)
		must(t, dmtable.Load(sn[0], dmtable.Table{dmtable.Snapshot(0, originSectors, p)}))
		must(t, dmtable.Resume(sn[0]))
	}
	targets := []string{dmtable.NodePath(csSnap), dmtable.NodePath(csSnapShort)}
	if mode == csThroughOrigin {
		_, err = dmtable.Create(csVol, "")
		must(t, err)
		must(t, dmtable.Load(csVol, dmtable.Table{dmtable.SnapshotOrigin(0, originSectors, dmtable.NodePath(csReal))}))
		must(t, dmtable.Resume(csVol))
		targets = []string{dmtable.NodePath(csVol)}
	}

	// Chunk i of the change set is origin chunk (i*stride + off) mod M: an
	// odd stride permutes the power-of-two many origin chunks, so the N
	// chunks are distinct and scattered over the whole origin.
	m := uint64(csOriginBytes) / uint64(chunk)
	stride := (m/2 + m/8 + 7) | 1
	off := m / 3
	at := func(i uint64) int64 { return int64((i*stride+off)%m) * int64(chunk) }

	files := make([]*os.File, len(targets))
	for i, path := range targets {
		f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
		must(t, err)
		defer f.Close()
		files[i] = f
	}
	bufs := make([][]byte, csWriters)
	for w := range bufs {
		bufs[w] = alignedBuf(t, int(chunk))
		copy(bufs[w], pattern(w+1, int(chunk)))
	}

	// The first N-1 chunks fit both stores ...
	for i, f := range files {
		if err := csWrite(f, bufs, at, 0, n-1); err != nil {
			t.Fatalf("write %d chunks to %s: %v", n-1, targets[i], err)
		}
	}
	for _, st := range []struct {
		snap  string
		bytes uint64
	}{{csSnap, exact}, {csSnapShort, short}} {
		s, line := csStatus(t, st.snap)
		csCheckUsage(t, st.snap, s, line, before, st.bytes)
	}

	// ... the N-th fits the exact store only. An origin write still
	// succeeds and the short snapshot is invalidated. A write to the short
	// snapshot fails; its PO store overflows when the data chunk itself
	// does not fit, and is invalidated when the data chunk fits but the next
	// exception area (needed once the N-th exception fills area N/E - 1)
	// does not: the kernel cannot zero it.
	werr := make([]error, len(files))
	for i, f := range files {
		werr[i] = csWrite(f, bufs, at, n-1, n)
	}
	if werr[0] != nil {
		t.Errorf("write of chunk %d to %s: got %v, want success", n, targets[0], werr[0])
	}
	s, exactLine := csStatus(t, csSnap)
	csCheckUsage(t, csSnap, s, exactLine, size, exact)

	want := dmtable.SnapshotInvalid
	if mode == csThroughSnapshot {
		if !errors.Is(werr[1], unix.EIO) {
			t.Errorf("write of chunk %d to %s with a store one chunk short: got %v, want EIO", n, targets[1], werr[1])
		}
		if n%cowsize.ExceptionsPerArea(chunk) != 0 {
			want = dmtable.SnapshotOverflow
		}
	}
	s, shortLine := csStatus(t, csSnapShort)
	if s.State != want {
		t.Errorf("after chunk %d with a store of %d bytes (one chunk less than %d): got status %q, want %s", n, short, exact, shortLine, want)
	}
	return csRow{mode: mode, chunk: chunk, n: n, bytes: exact, exact: exactLine, oneLess: shortLine}
}

// csWrite writes chunks from+1 to `to` of the change set (counted from 1),
// one O_DIRECT write of a whole chunk each, with up to len(bufs) writes in flight. It returns the
// first error.
func csWrite(f *os.File, bufs [][]byte, at func(uint64) int64, from, to uint64) error {
	var (
		next  atomic.Uint64
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next.Store(from)
	for _, b := range bufs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= to {
					return
				}
				if _, err := f.WriteAt(b, at(i)); err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("chunk %d of the change set (origin byte %d): %w", i+1, at(i), err)
					}
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// csStatus returns the parsed status of the snapshot and the kernel's line.
func csStatus(t *testing.T, name string) (dmtable.SnapshotStatus, string) {
	t.Helper()
	st, err := dmtable.Status(name)
	must(t, err)
	if len(st) != 1 {
		t.Fatalf("status of %s: got %d lines, want 1", name, len(st))
	}
	s, err := dmtable.ParseSnapshotStatus(st[0].Status)
	if err != nil {
		t.Fatalf("status of %s: %v", name, err)
	}
	return s, st[0].Status
}

// csCheckUsage checks an active snapshot's usage against size: every chunk
// cowsize counts is allocated, its metadata chunks are the kernel's, and the
// rest are exactly the changed chunks.
func csCheckUsage(t *testing.T, name string, s dmtable.SnapshotStatus, line string, size cowsize.Size, storeBytes uint64) {
	t.Helper()
	c := uint64(size.ChunkSectors())
	if s.State != dmtable.SnapshotActive {
		t.Fatalf("%s after %d chunks in a store of %d bytes: got status %q, want active", name, size.ChangedChunks, storeBytes, line)
	}
	if s.Total != storeBytes/sector {
		t.Errorf("%s total: got %d sectors, want %d (the store device)", name, s.Total, storeBytes/sector)
	}
	if got, want := s.DataSectors(), size.ChangedChunks*c; got != want {
		t.Errorf("%s after %d chunks: data sectors (allocated - metadata) got %d, want %d", name, size.ChangedChunks, got, want)
	}
	if got, want := s.Allocated, size.TotalChunks*c; got != want {
		t.Errorf("%s after %d chunks: allocated got %d sectors, want %d (%d chunks)", name, size.ChangedChunks, got, want, size.TotalChunks)
	}
	if got, want := s.Metadata, size.MetadataChunks*c; got != want {
		t.Errorf("%s after %d chunks: metadata got %d sectors, want %d (%d chunks)", name, size.ChangedChunks, got, want, size.MetadataChunks)
	}
}
