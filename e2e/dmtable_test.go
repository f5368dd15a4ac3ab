//go:build e2e

package e2e

// End-to-end tests of the raw device-mapper layer (package dmtable) and
// `snapctl targets` on the guest's 6.1 kernel.
//
// Guest disks:
//   TestDMTargets, TestDMLinear, TestDM1000Segments, TestDMBadInput:
//     /dev/ubda = 64 MiB blank (131072 sectors)
//   TestDMSnapshotPair:
//     /dev/ubda = 64 MiB origin, /dev/ubdb = 16 MiB exception store (COW)
//
// Every device a test creates is removed by a t.Cleanup even when the test
// fails; the harness fails the run if any device-mapper device is left.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/dmtable"
)

const sector = 512

// removeAtEnd removes the named devices at the end of the test, in the
// order given, if they still exist; a suspended one is resumed first so the
// remove does not wait on queued I/O.
func removeAtEnd(t *testing.T, names ...string) {
	t.Helper()
	t.Cleanup(func() {
		for _, n := range names {
			info, err := dmtable.Info(n)
			if errors.Is(err, unix.ENXIO) {
				continue
			}
			if err == nil && info.Suspended {
				if err := dmtable.Resume(n); err != nil {
					t.Errorf("cleanup: %v", err)
				}
			}
			if err := dmtable.Remove(n); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
}

// devOf is the device number of a block node.
func devOf(t testing.TB, path string) dmtable.Dev {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("%s is not a block device (mode %o)", path, st.Mode)
	}
	return dmtable.Dev{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}
}

// alignedBuf is an n-byte buffer aligned for O_DIRECT.
func alignedBuf(t testing.TB, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatalf("mmap %d bytes: %v", n, err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b[:n]
}

// readDirect reads n bytes at off with O_DIRECT, past any page cache.
func readDirect(t testing.TB, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := alignedBuf(t, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d (O_DIRECT): %v", dev, off, err)
	}
	return append([]byte(nil), b...)
}

// writeDirect writes data at off with O_DIRECT.
func writeDirect(t testing.TB, dev string, off int64, data []byte) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := alignedBuf(t, len(data))
	copy(b, data)
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatalf("write %s at %d (O_DIRECT): %v", dev, off, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("sync %s: %v", dev, err)
	}
}

// checkInfo compares the flags of Info with what the test expects.
func checkInfo(t *testing.T, name, when string, live, inactive, suspended bool) dmtable.DeviceInfo {
	t.Helper()
	info, err := dmtable.Info(name)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	if info.LiveTable != live || info.InactiveTable != inactive || info.Suspended != suspended {
		t.Fatalf("%s: got live=%v inactive=%v suspended=%v, want %v %v %v (%+v)", when,
			info.LiveTable, info.InactiveTable, info.Suspended, live, inactive, suspended, info)
	}
	return info
}

func sameTable(t *testing.T, what string, got, want dmtable.Table) {
	t.Helper()
	if got.String() != want.String() {
		t.Fatalf("%s:\ngot:\n%swant:\n%s", what, got, want)
	}
}

// TestDMTargets prints `snapctl targets` (kernel and DM driver version) and
// checks it lists the four targets snapctl uses, agreeing with dmsetup.
func TestDMTargets(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}}}) {
		return
	}
	out := mustSnapctl(t, "targets")
	uname := strings.TrimSpace(run(t, "uname", "-r"))
	if !strings.Contains(out, "kernel:                "+uname+"\n") {
		t.Errorf("output does not show kernel %s", uname)
	}
	var r struct {
		Kernel  string `json:"kernel"`
		Driver  string `json:"driver"`
		Targets []struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"targets"`
		NotLoaded []string `json:"not_loaded"`
	}
	if err := json.Unmarshal([]byte(mustSnapctl(t, "targets", "--json")), &r); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, tg := range r.Targets {
		got[tg.Name] = tg.Version
		if !strings.Contains(out, fmt.Sprintf("  %-20s %s\n", tg.Name, tg.Version)) {
			t.Errorf("human output lacks the line for %s %s", tg.Name, tg.Version)
		}
	}
	for _, n := range []string{"linear", "snapshot", "snapshot-origin", "snapshot-merge"} {
		if got[n] == "" {
			t.Errorf("target %s not listed; got %v", n, got)
		}
	}
	if len(r.NotLoaded) != 0 {
		t.Errorf("not_loaded = %v, want none (dm-snapshot is loaded)", r.NotLoaded)
	}
	// dmsetup, the reference client, sees the same driver and targets.
	dv := run(t, "dmsetup", "version")
	driverLine := false
	for _, line := range strings.Split(dv, "\n") {
		if v, ok := strings.CutPrefix(line, "Driver version:"); ok {
			driverLine = strings.TrimSpace(v) == r.Driver
		}
	}
	if !driverLine {
		t.Errorf("dmsetup version says %q, snapctl says driver %s", dv, r.Driver)
	}
	for _, line := range strings.Split(strings.TrimSpace(run(t, "dmsetup", "targets")), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && got[f[0]] != strings.TrimPrefix(f[1], "v") {
			t.Errorf("dmsetup lists %s %s, snapctl %q", f[0], f[1], got[f[0]])
		}
	}
	v, err := dmtable.DriverVersion()
	must(t, err)
	if !v.AtLeast(4, 27, 0) {
		t.Errorf("driver %v, want at least 4.27 (snapshot-merge)", v)
	}
	// DM_GET_TARGET_VERSION agrees with the list.
	sv, err := dmtable.TargetVersionOf("snapshot")
	must(t, err)
	if sv.String() != got["snapshot"] || !sv.AtLeast(1, 15, 0) {
		t.Errorf("TargetVersionOf(snapshot) = %v, list says %s; want >= 1.15.0 (PO)", sv, got["snapshot"])
	}
}

// TestDMLinear drives one linear device through its whole life and checks
// every step against the kernel: info flags, table read back, status, data
// landing at the right raw offset, suspend/resume, reload, remove.
func TestDMLinear(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}}}) {
		return
	}
	const name = "dmt-lin"
	const offset, length = 4096, 16384 // sectors: 8 MiB from 2 MiB into the disk
	removeAtEnd(t, name)
	ubda := devOf(t, ubd(0))

	if ok, err := dmtable.Exists(name); err != nil || ok {
		t.Fatalf("Exists before create: got %v, %v, want false, nil", ok, err)
	}
	dev, err := dmtable.Create(name, "SNAPCTL-TEST-dmt-lin")
	must(t, err)
	t.Logf("created %s as %s", name, dev)
	if got := devOf(t, dmtable.NodePath(name)); got != dev {
		t.Fatalf("/dev/mapper/%s is %s, want %s", name, got, dev)
	}
	info := checkInfo(t, name, "after create", false, false, false)
	if info.Dev != dev || info.UUID != "SNAPCTL-TEST-dmt-lin" || info.Name != name {
		t.Fatalf("info after create: got %+v, want dev %s and the uuid", info, dev)
	}

	loaded := dmtable.Table{dmtable.Linear(0, length, ubd(0), offset)}
	want := dmtable.Table{dmtable.Linear(0, length, ubda.String(), offset)}
	must(t, dmtable.Load(name, loaded))
	checkInfo(t, name, "after load", false, true, false)
	inactive, err := dmtable.ReadInactiveTable(name)
	must(t, err)
	sameTable(t, "inactive table", inactive, want)

	must(t, dmtable.Resume(name))
	info = checkInfo(t, name, "after resume", true, false, false)
	if info.TargetCount != 1 || info.OpenCount != 0 || info.ReadOnly {
		t.Fatalf("info after resume: got %+v, want 1 target, open count 0, writable", info)
	}
	got, err := dmtable.ReadTable(name)
	must(t, err)
	sameTable(t, "live table", got, want)
	if dm := run(t, "dmsetup", "table", name); dm != want.String() {
		t.Fatalf("dmsetup table: got %q, want %q", dm, want.String())
	}
	st, err := dmtable.Status(name)
	must(t, err)
	if len(st) != 1 || st[0].Target != (dmtable.Target{Start: 0, Length: length, Type: "linear"}) || st[0].Status != "" {
		t.Fatalf("status: got %+v, want one linear target with an empty status", st)
	}

	list, err := dmtable.List()
	must(t, err)
	found := false
	for _, d := range list {
		if d.Name == name {
			found = d.Dev == dev && d.UUID == "SNAPCTL-TEST-dmt-lin"
		}
	}
	if !found {
		t.Fatalf("List: got %+v, want %s with dev %s and its uuid", list, name, dev)
	}
	tbl, ok, err := dmtable.TableByDev(dev.Major, dev.Minor)
	if err != nil || !ok {
		t.Fatalf("TableByDev(%s): got ok=%v, %v", dev, ok, err)
	}
	sameTable(t, "TableByDev", tbl, want)
	if _, ok, err := dmtable.TableByDev(ubda.Major, ubda.Minor); err != nil || ok {
		t.Fatalf("TableByDev(ubda %s): got ok=%v, %v, want false, nil", ubda, ok, err)
	}
	if p, err := dmtable.PathByDev(dev.Major, dev.Minor); err != nil || p != dmtable.NodePath(name) {
		t.Fatalf("PathByDev(%s): got %q, %v, want %s", dev, p, err, dmtable.NodePath(name))
	}
	if p, err := dmtable.PathByDev(ubda.Major, ubda.Minor); err != nil || p != ubd(0) {
		t.Fatalf("PathByDev(%s): got %q, %v, want %s", ubda, p, err, ubd(0))
	}

	// Data written through the device lands at offset+pos on the disk.
	mapped := dmtable.NodePath(name)
	for i, pos := range []int64{0, 7*4096 + 512, length*sector - 8192} {
		data := pattern(100+i, 8192)
		writeAt(t, mapped, pos, data)
		if raw := readDirect(t, ubd(0), offset*sector+pos, len(data)); !bytes.Equal(raw, data) {
			t.Fatalf("write at mapped byte %d: raw bytes at %d differ", pos, offset*sector+pos)
		}
	}
	// And the other way round.
	data := pattern(200, 4096)
	writeDirect(t, ubd(0), offset*sector+65536, data)
	if back := readDirect(t, mapped, 65536, 4096); !bytes.Equal(back, data) {
		t.Fatal("raw write at offset+64 KiB does not read back through the device at 64 KiB")
	}

	// Open count follows openers.
	f, err := os.Open(mapped)
	must(t, err)
	if info := checkInfo(t, name, "while open", true, false, false); info.OpenCount != 1 {
		f.Close()
		t.Fatalf("open count while open: got %d, want 1", info.OpenCount)
	}
	f.Close()

	// Suspend and resume flip Suspended, with and without flush/lockfs.
	for _, opts := range []dmtable.SuspendOptions{{}, {NoFlush: true, NoLockFS: true}} {
		must(t, dmtable.Suspend(name, opts))
		checkInfo(t, name, fmt.Sprintf("after suspend %+v", opts), true, false, true)
		must(t, dmtable.Resume(name))
		checkInfo(t, name, "after resume", true, false, false)
	}

	// A second load waits inactive; ClearInactive drops it, the live table
	// stays.
	must(t, dmtable.Load(name, dmtable.Table{dmtable.Linear(0, length, ubd(0), 0)}))
	checkInfo(t, name, "after reload", true, true, false)
	must(t, dmtable.ClearInactive(name))
	checkInfo(t, name, "after clear", true, false, false)
	got, err = dmtable.ReadTable(name)
	must(t, err)
	sameTable(t, "live table after clear", got, want)

	must(t, dmtable.Remove(name))
	if ok, err := dmtable.Exists(name); err != nil || ok {
		t.Fatalf("Exists after remove: got %v, %v, want false, nil", ok, err)
	}
	if _, err := os.Lstat(mapped); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("node %s after remove: %v, want it gone", mapped, err)
	}
}

// TestDM1000Segments loads a 1,000-segment linear device whose segments are
// scattered over the disk in a known permutation, writes through it at many
// offsets and finds every byte at its raw offset.
func TestDM1000Segments(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}}}) {
		return
	}
	const name = "dmt-seg"
	const n = 1000
	removeAtEnd(t, name)
	ubda := devOf(t, ubd(0))

	// Segment i maps lengths[i] sectors; on the disk the segments lie in
	// the order perm (segment (p*389)%n at position p), separated by gaps
	// of 1 to 7 sectors, so no two neighbours are adjacent on the disk.
	length := make([]uint64, n)
	raw := make([]uint64, n)
	for i := range length {
		length[i] = 8 + uint64(i*37%57)
	}
	var cursor uint64 = 2048
	for p := 0; p < n; p++ {
		i := p * 389 % n
		raw[i] = cursor
		cursor += length[i] + 1 + uint64(p%7)
	}
	var tbl, want dmtable.Table
	var logical []uint64
	var size uint64
	for i := 0; i < n; i++ {
		tbl = append(tbl, dmtable.Linear(size, length[i], ubd(0), raw[i]))
		want = append(want, dmtable.Linear(size, length[i], ubda.String(), raw[i]))
		logical = append(logical, size)
		size += length[i]
	}
	t.Logf("%d segments, %d sectors mapped, spread over sectors 2048-%d of the disk", n, size, cursor)

	_, err := dmtable.Create(name, "")
	must(t, err)
	start := time.Now()
	must(t, dmtable.Load(name, tbl))
	t.Logf("1000-segment load took %v", time.Since(start).Round(time.Microsecond))
	must(t, dmtable.Resume(name))
	got, err := dmtable.ReadTable(name)
	must(t, err)
	if len(got) != n {
		t.Fatalf("read back %d targets, want %d", len(got), n)
	}
	sameTable(t, "1000-segment table", got, want)

	// Fill the whole device, then overwrite 300 unaligned ranges of
	// various sizes, many crossing segment boundaries; expected mirrors it.
	mapped := dmtable.NodePath(name)
	expected := pattern(1, int(size*sector))
	f, err := os.OpenFile(mapped, os.O_WRONLY, 0)
	must(t, err)
	if _, err := f.WriteAt(expected, 0); err != nil {
		t.Fatal(err)
	}
	x := uint64(12345)
	for k := 0; k < 300; k++ {
		x = x*6364136223846793005 + 1442695040888963407
		ln := int(1 + (x>>40)%9000)
		pos := int64((x >> 20) % (size*sector - uint64(ln)))
		if k%3 == 0 { // start exactly on a segment boundary
			pos = int64(logical[k%n] * sector)
			if pos+int64(ln) > int64(size*sector) {
				pos = int64(size*sector) - int64(ln)
			}
		}
		data := pattern(1000+k, ln)
		if _, err := f.WriteAt(data, pos); err != nil {
			t.Fatalf("write %d bytes at %d: %v", ln, pos, err)
		}
		copy(expected[pos:], data)
	}
	must(t, f.Sync())
	must(t, f.Close())

	disk := readDirect(t, ubd(0), 0, int(cursor*sector))
	for i := 0; i < n; i++ {
		w := expected[logical[i]*sector : (logical[i]+length[i])*sector]
		g := disk[raw[i]*sector : (raw[i]+length[i])*sector]
		if !bytes.Equal(g, w) {
			t.Fatalf("segment %d (mapped sectors %d+%d, raw sector %d): raw bytes differ", i, logical[i], length[i], raw[i])
		}
	}
	if back := readDirect(t, mapped, 0, int(size*sector)); !bytes.Equal(back, expected) {
		t.Fatal("reading the device back with O_DIRECT differs from what was written")
	}
	must(t, dmtable.Remove(name))
}

// TestDMSnapshotPair builds a snapshot of a live origin in the order of
// DESIGN.md section 2, checks that an origin write becomes an allocated
// chunk while the snapshot keeps the old data, and takes it down again.
func TestDMSnapshotPair(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}, {Size: 16 << 20}}}) {
		return
	}
	const (
		vol   = "dmt-vol"
		cow   = "dmt-vol-cow"
		real  = "dmt-vol-real"
		snap  = "dmt-vol-snap"
		chunk = 8 // sectors
	)
	removeAtEnd(t, snap, vol, real, cow)
	originSectors := uint64(64 << 20 / sector)
	cowSectors := uint64(16 << 20 / sector)

	// The old data, and garbage where the store header will be: only the
	// zeroing through the DM device makes the store usable.
	old := pattern(7, 2<<20)
	writeDirect(t, ubd(0), 0, old)
	writeDirect(t, ubd(1), 0, pattern(8, 4096))

	// The live volume with its current table X.
	x := dmtable.Table{dmtable.Linear(0, originSectors, ubd(0), 0)}
	_, err := dmtable.Create(vol, "")
	must(t, err)
	must(t, dmtable.Load(vol, x))
	must(t, dmtable.Resume(vol))

	// create+load+resume the COW, zero its first chunk with O_DIRECT.
	cowDev, err := dmtable.Create(cow, "")
	must(t, err)
	must(t, dmtable.Load(cow, dmtable.Table{dmtable.Linear(0, cowSectors, ubd(1), 0)}))
	must(t, dmtable.Resume(cow))
	writeDirect(t, dmtable.NodePath(cow), 0, make([]byte, chunk*sector))

	// create+load+resume the real device with X.
	realDev, err := dmtable.Create(real, "")
	must(t, err)
	must(t, dmtable.Load(real, x))
	must(t, dmtable.Resume(real))

	// Suspend the volume: the point in time.
	must(t, dmtable.Suspend(vol, dmtable.SuspendOptions{}))
	checkInfo(t, vol, "volume suspended", true, false, true)
	_, err = dmtable.Create(snap, "")
	must(t, err)
	must(t, dmtable.Load(snap, dmtable.Table{dmtable.Snapshot(0, originSectors, dmtable.SnapshotParams{
		Origin: dmtable.NodePath(real), COW: dmtable.NodePath(cow), Store: dmtable.Persistent, Chunk: chunk,
	})}))
	must(t, dmtable.Load(vol, dmtable.Table{dmtable.SnapshotOrigin(0, originSectors, dmtable.NodePath(real))}))
	must(t, dmtable.Resume(snap))
	must(t, dmtable.Resume(vol))
	checkInfo(t, vol, "volume resumed", true, false, false)

	// The kernel reports the tables with device numbers.
	got, err := dmtable.ReadTable(snap)
	must(t, err)
	if len(got) != 1 || got[0].Type != dmtable.TypeSnapshot {
		t.Fatalf("snapshot table: got %v", got)
	}
	p, err := dmtable.ParseSnapshot(got[0].Params)
	must(t, err)
	if p.Origin != realDev.String() || p.COW != cowDev.String() || p.Store != dmtable.Persistent || p.Chunk != chunk {
		t.Fatalf("snapshot params: got %+v, want origin %s cow %s P %d", p, realDev, cowDev, chunk)
	}
	got, err = dmtable.ReadTable(vol)
	must(t, err)
	sameTable(t, "origin table", got, dmtable.Table{dmtable.SnapshotOrigin(0, originSectors, realDev.String())})

	status := func(when string) dmtable.SnapshotStatus {
		t.Helper()
		st, err := dmtable.Status(snap)
		must(t, err)
		if len(st) != 1 {
			t.Fatalf("%s: %d status lines, want 1", when, len(st))
		}
		s, err := dmtable.ParseSnapshotStatus(st[0].Status)
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		t.Logf("%s: snapshot status %q: %s, %d data sectors", when, st[0].Status, s.State, s.DataSectors())
		if s.State != dmtable.SnapshotActive || s.Total != cowSectors {
			t.Fatalf("%s: got %+v, want active with total %d", when, s, cowSectors)
		}
		return s
	}
	if s := status("fresh"); s.DataSectors() != 0 || !s.Merged() {
		t.Fatalf("fresh snapshot: got %+v, want no data chunks", s)
	}

	// Two origin writes in two distinct chunks.
	offs := []int64{64 << 10, 1<<20 + 8192}
	for i, off := range offs {
		writeDirect(t, dmtable.NodePath(vol), off, pattern(50+i, chunk*sector))
	}
	if s := status("after 2 origin writes"); s.DataSectors() != 2*chunk {
		t.Fatalf("after 2 origin chunk writes: %d data sectors, want %d", s.DataSectors(), 2*chunk)
	}
	for i, off := range offs {
		if b := readDirect(t, dmtable.NodePath(snap), off, chunk*sector); !bytes.Equal(b, old[off:off+chunk*sector]) {
			t.Fatalf("snapshot at %d: does not read the old data", off)
		}
		if b := readDirect(t, ubd(0), off, chunk*sector); !bytes.Equal(b, pattern(50+i, chunk*sector)) {
			t.Fatalf("raw origin at %d: does not hold the new data", off)
		}
	}
	if b := readDirect(t, dmtable.NodePath(snap), 0, 4096); !bytes.Equal(b, old[:4096]) {
		t.Fatal("snapshot at 0 (unchanged chunk) does not read the origin's data")
	}

	// Take it down in the commit order: with the volume suspended, drop the
	// snapshot and give the volume X again; then the real device and COW.
	must(t, dmtable.Suspend(vol, dmtable.SuspendOptions{}))
	must(t, dmtable.Remove(snap))
	must(t, dmtable.Load(vol, x))
	must(t, dmtable.Resume(vol))
	must(t, dmtable.Remove(real))
	must(t, dmtable.Remove(cow))
	got, err = dmtable.ReadTable(vol)
	must(t, err)
	sameTable(t, "volume after drop", got, dmtable.Table{dmtable.Linear(0, originSectors, devOf(t, ubd(0)).String(), 0)})
	if b := readDirect(t, dmtable.NodePath(vol), offs[0], chunk*sector); !bytes.Equal(b, pattern(50, chunk*sector)) {
		t.Fatal("volume after drop lost the write")
	}
	must(t, dmtable.Remove(vol))
}

// TestDMBadInput feeds the kernel client bad input on the real kernel: each
// case fails with a clear, typed error and changes nothing.
func TestDMBadInput(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}}}) {
		return
	}
	const name = "dmt-bad"
	long := strings.Repeat("n", 127)
	removeAtEnd(t, name, long)
	_, err := dmtable.Create(name, "")
	must(t, err)

	t.Run("unknown target", func(t *testing.T) {
		err := dmtable.Load(name, dmtable.Table{{Start: 0, Length: 8, Type: "no-such-tgt", Params: "x"}})
		t.Logf("got: %v", err)
		var ut dmtable.UnknownTargetError
		if !errors.As(err, &ut) || ut.Type != "no-such-tgt" || !errors.Is(err, unix.EINVAL) {
			t.Fatalf("got %v, want ErrUnknownTarget{no-such-tgt} wrapping EINVAL", err)
		}
		if !strings.HasPrefix(err.Error(), `load table for "dmt-bad": `) {
			t.Fatalf("error %q does not name the device", err)
		}
		checkInfo(t, name, "after the refused load", false, false, false)
	})
	t.Run("missing device in table", func(t *testing.T) {
		err := dmtable.Load(name, dmtable.Table{dmtable.Linear(0, 8, "/dev/no-such-disk", 0)})
		t.Logf("got: %v", err)
		var ut dmtable.UnknownTargetError
		if err == nil || errors.As(err, &ut) {
			t.Fatalf("got %v, want a kernel error that is not ErrUnknownTarget", err)
		}
		checkInfo(t, name, "after the refused load", false, false, false)
	})
	t.Run("gap refused before the ioctl", func(t *testing.T) {
		before := strings.Count(run(t, "dmesg"), "Gap in table")
		err := dmtable.Load(name, dmtable.Table{dmtable.Linear(0, 8, ubd(0), 0), dmtable.Linear(16, 8, ubd(0), 8)})
		t.Logf("got: %v", err)
		var it dmtable.InvalidTableError
		if !errors.As(err, &it) || !strings.Contains(err.Error(), "gap") {
			t.Fatalf("got %v, want ErrInvalidTable about the gap", err)
		}
		checkInfo(t, name, "after the refused load", false, false, false)
		// The kernel logs "Gap in table" when it refuses one itself.
		if after := strings.Count(run(t, "dmesg"), "Gap in table"); after != before {
			t.Fatalf("the kernel saw the table (dmesg has %d new \"Gap in table\" lines)", after-before)
		}
	})
	t.Run("names", func(t *testing.T) {
		for _, bad := range []string{"a/b", strings.Repeat("n", 128), ".."} {
			_, err := dmtable.Create(bad, "")
			var in dmtable.InvalidNameError
			if !errors.As(err, &in) {
				t.Fatalf("Create(%q): got %v, want ErrInvalidName", bad, err)
			}
		}
		// 127 bytes is the longest name the kernel takes.
		d, err := dmtable.Create(long, "")
		must(t, err)
		if got := devOf(t, dmtable.NodePath(long)); got != d {
			t.Fatalf("node of the 127-byte name: got %s, want %s", got, d)
		}
		must(t, dmtable.Remove(long))
	})
	t.Run("duplicate name", func(t *testing.T) {
		_, err := dmtable.Create(name, "")
		t.Logf("got: %v", err)
		if !errors.Is(err, unix.EBUSY) || err.Error() != `create device "dmt-bad": device or resource busy` {
			t.Fatalf("got %v, want create device \"dmt-bad\": device or resource busy", err)
		}
	})
	t.Run("remove missing", func(t *testing.T) {
		err := dmtable.Remove("dmt-missing")
		t.Logf("got: %v", err)
		if !errors.Is(err, unix.ENXIO) || !strings.HasPrefix(err.Error(), `remove device "dmt-missing": `) {
			t.Fatalf("got %v, want remove device \"dmt-missing\": ... wrapping ENXIO", err)
		}
	})
	t.Run("remove busy", func(t *testing.T) {
		must(t, dmtable.Load(name, dmtable.Table{dmtable.Linear(0, 2048, ubd(0), 0)}))
		must(t, dmtable.Resume(name))
		f, err := os.Open(dmtable.NodePath(name))
		must(t, err)
		start := time.Now()
		err = dmtable.Remove(name)
		took := time.Since(start)
		t.Logf("held open: got %v after %v", err, took.Round(time.Millisecond))
		if !errors.Is(err, unix.EBUSY) {
			f.Close()
			t.Fatalf("got %v, want EBUSY", err)
		}
		if took < 250*time.Millisecond {
			f.Close()
			t.Fatalf("EBUSY after %v: the remove was not retried", took)
		}
		if ok, _ := dmtable.Exists(name); !ok {
			t.Fatal("device gone after a refused remove")
		}
		// An opener that goes away while Remove retries does not fail it.
		go func() {
			time.Sleep(60 * time.Millisecond)
			f.Close()
		}()
		must(t, dmtable.Remove(name))
		if ok, _ := dmtable.Exists(name); ok {
			t.Fatal("device still there after the retried remove")
		}
	})
}
