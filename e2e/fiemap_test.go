//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
)

// Guest disks for the FIEMAP tests (one boot per test):
//
//	TestFiemapExt4         /dev/ubda 256 MiB beneath "fm-vol" = linear /dev/ubda 0 (1:1); ext4 on fm-vol
//	TestFiemapXFS          /dev/ubda 512 MiB beneath "fm-vol" = linear targets of 768 KiB over /dev/ubda
//	                       with each pair swapped (every extent is split and translated); xfs
//	TestFiemapF2FS         /dev/ubda 256 MiB beneath a 1:1 "fm-vol"; f2fs, the store pinned
//	TestFiemapDirectMount  /dev/ubda 16 MiB unused; /dev/ubdb 64 MiB with ext4 mounted on it directly
//
// In each mapped case the store file is allocated with fiemap.Allocate on a
// filesystem whose free space was first cut into 1 MiB gaps, filled with
// random bytes through the file, and mapped with `snapctl map-file --json`.
// A device "fm-cow" built from the printed segments over /dev/ubda (beneath
// the mounted filesystem) must read back byte-identical to the file.

const fmStoreSize = 16 << 20

// fmReport is the part of `snapctl map-file --json` the tests read.
type fmReport struct {
	Path       string `json:"path"`
	Size       uint64 `json:"size"`
	Filesystem struct {
		Type string `json:"type"`
		Dev  string `json:"dev"`
	} `json:"filesystem"`
	Extents   []fiemap.Extent  `json:"extents"`
	Segments  []fiemap.Segment `json:"segments"`
	Immutable bool             `json:"immutable"`
	Pinned    bool             `json:"pinned"`
	Table     string           `json:"table"`
}

// fmDevice creates name with table t and removes it at cleanup.
func fmDevice(t *testing.T, name string, table dmtable.Table) dmtable.Dev {
	t.Helper()
	d, err := dmtable.Create(name, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dmtable.Remove(name); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	must(t, dmtable.Load(name, table))
	must(t, dmtable.Resume(name))
	return d
}

// fmSectors is the size of a guest block device in sectors.
func fmSectors(t *testing.T, dev string) uint64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "size"))
	must(t, err)
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	must(t, err)
	return n
}

// fmDevNum is the "major:minor" of a block device node.
func fmDevNum(t *testing.T, dev string) string {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Stat(dev, &st))
	rdev := uint64(st.Rdev)
	major := rdev>>8&0xfff | rdev>>32&0xfffff000
	minor := rdev&0xff | rdev>>12&0xffffff00
	return fmt.Sprintf("%d:%d", major, minor)
}

// fmMount makes a filesystem of type fstype on dev, mounts it and unmounts
// it at cleanup.
func fmMount(t *testing.T, fstype, dev string) string {
	t.Helper()
	switch fstype {
	case "ext4":
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", dev)
	case "xfs":
		// Without reflink and rmapbt XFS keeps no large per-AG reservations,
		// so filling it up leaves no big free extent behind.
		run(t, "mkfs.xfs", "-q", "-f", "-m", "reflink=0,rmapbt=0", dev)
	case "f2fs":
		run(t, "mkfs.f2fs", "-q", "-f", dev)
	default:
		t.Fatalf("no mkfs for %s", fstype)
	}
	dir := t.TempDir()
	run(t, "mount", "-t", fstype, dev, dir)
	t.Cleanup(func() {
		if out, err := execOut("umount", dir); err != nil {
			t.Errorf("cleanup: umount %s: %v\n%s", dir, err, out)
		}
	})
	return dir
}

// fmFragment fills dir's filesystem with 1 MiB preallocated files, then
// the rest of it with smaller ones until not even 4 KiB is left, and then
// deletes every other 1 MiB file: free space is then a row of 1 MiB gaps,
// and a store larger than that must take several extents.
func fmFragment(t *testing.T, dir string) {
	t.Helper()
	var big []string
	n := 0
	for _, size := range []int64{1 << 20, 64 << 10, 4 << 10} {
		for {
			p := filepath.Join(dir, fmt.Sprintf("fill%05d", n))
			f, err := os.Create(p)
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			must(t, err)
			err = syscall.Fallocate(int(f.Fd()), 0, 0, size)
			f.Close()
			if errors.Is(err, syscall.ENOSPC) {
				os.Remove(p)
				break
			}
			must(t, err)
			n++
			if size == 1<<20 {
				big = append(big, p)
			}
			if n > 100000 {
				t.Fatal("filesystem never filled up")
			}
		}
	}
	for i := 0; i < len(big); i += 2 {
		must(t, os.Remove(big[i]))
	}
	run(t, "sync")
	t.Logf("filled with %d files (%d of 1 MiB), deleted every other 1 MiB one", n, len(big))
}

// fmMapFile runs map-file --json on path and checks its table against its
// segments.
func fmMapFile(t *testing.T, path string) fmReport {
	t.Helper()
	out := mustSnapctl(t, "map-file", path, "--json")
	var r fmReport
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("map-file --json: %v\n%s", err, out)
	}
	var want dmtable.Table
	for _, s := range r.Segments {
		want = append(want, dmtable.Linear(s.Logical, s.Length, s.Dev, s.DevOffset))
	}
	if r.Table != want.String() {
		t.Fatalf("map-file table\n%s\ndoes not match its segments\n%s", r.Table, want)
	}
	if want.Sectors()*512 != r.Size || r.Size != fmStoreSize {
		t.Fatalf("table maps %d sectors for a %d-byte file, want %d bytes", want.Sectors(), r.Size, fmStoreSize)
	}
	return r
}

// fmReadDirect reads n bytes of a device from offset 0 with O_DIRECT.
func fmReadDirect(t *testing.T, dev string, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	buf, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	must(t, err)
	defer syscall.Munmap(buf)
	if _, err := f.ReadAt(buf, 0); err != nil {
		t.Fatalf("read %s: %v", dev, err)
	}
	return bytes.Clone(buf)
}

func execOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// fmStoreReadBack is the body of the mapped cases: volume table, filesystem,
// fragmented store, map-file, a device over the segments, byte comparison.
func fmStoreReadBack(t *testing.T, fstype string, vol func(sectors uint64) dmtable.Table, fragment bool) {
	disk := ubd(0)
	sectors := fmSectors(t, disk)
	volDev := fmDevice(t, "fm-vol", vol(sectors))
	dir := fmMount(t, fstype, dmtable.NodePath("fm-vol"))
	if fragment {
		if fstype == "xfs" {
			// XFS holds back a reserve pool of free blocks that ordinary
			// allocations cannot use; it would stay behind as one large
			// free extent. Empty it so filling up fills the disk.
			run(t, "xfs_io", "-x", "-c", "resblks 0", dir)
		}
		fmFragment(t, dir)
	}

	path := filepath.Join(dir, "store")
	f, err := fiemap.Allocate(path, fmStoreSize, fiemap.AllocateOptions{ChunkSize: 4096})
	must(t, err)
	defer f.Close()
	t.Cleanup(func() {
		if err := fiemap.Remove(path); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	// Freshly allocated: unwritten extents are accepted.
	before := fmMapFile(t, path)
	if before.Filesystem.Type != fstype || before.Filesystem.Dev != volDev.String() {
		t.Fatalf("map-file says %s on %s, want %s on %s", before.Filesystem.Type, before.Filesystem.Dev, fstype, volDev)
	}
	unwritten := 0
	for _, e := range before.Extents {
		if e.Flags&fiemap.FIEMAP_EXTENT_UNWRITTEN != 0 {
			unwritten++
		}
	}
	t.Logf("fresh store: %d extents (%d unwritten), %d segments", len(before.Extents), unwritten, len(before.Segments))
	if fragment && len(before.Extents) < 4 {
		t.Fatalf("store has %d extents on a fragmented filesystem, want several", len(before.Extents))
	}
	if vt := vol(sectors); len(vt) > 1 && fragment && len(before.Segments) <= len(before.Extents) {
		t.Fatalf("%d extents gave %d segments over a %d-target volume, want them split", len(before.Extents), len(before.Segments), len(vt))
	}
	diskDev := fmDevNum(t, disk)
	for _, s := range before.Segments {
		if s.Dev != diskDev {
			t.Fatalf("segment %+v is not on %s (%s)", s, disk, diskDev)
		}
	}

	data := make([]byte, fmStoreSize)
	rand.New(rand.NewSource(int64(len(fstype)))).Read(data)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	must(t, f.Sync())
	must(t, fiemap.SetImmutable(f, true))
	must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0))
	back, err := os.ReadFile(path)
	must(t, err)
	if !bytes.Equal(back, data) {
		t.Fatal("the file does not read back what was written to it")
	}

	// Writing into the preallocated blocks does not move them.
	if _, err := fiemap.Revalidate(path, before.Segments, dmtable.TableByDev); err != nil {
		t.Fatalf("after writing: %v", err)
	}
	r := fmMapFile(t, path)
	if !r.Immutable {
		t.Errorf("map-file: immutable false after SetImmutable")
	}
	if fstype == "f2fs" && !r.Pinned {
		t.Errorf("map-file: store on f2fs is not pinned")
	}

	table, err := dmtable.ParseTable(r.Table)
	must(t, err)
	fmDevice(t, "fm-cow", table)
	got := fmReadDirect(t, dmtable.NodePath("fm-cow"), fmStoreSize)
	if !bytes.Equal(got, data) {
		for i := range got {
			if got[i] != data[i] {
				t.Fatalf("fm-cow differs from the file at byte %d (of %d)", i, len(got))
			}
		}
	}
	t.Logf("fm-cow (%d segments over %s) reads back the file's %d bytes exactly", len(table), disk, fmStoreSize)

	// The text form shows the same table.
	out := mustSnapctl(t, "map-file", path)
	if !strings.Contains(out, "linear table") || !strings.Contains(out, r.Table) {
		t.Errorf("map-file text output lacks the table:\n%s", out)
	}
}

func TestFiemapExt4(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 256 << 20}}}) {
		return
	}
	fmStoreReadBack(t, "ext4", func(n uint64) dmtable.Table {
		return dmtable.Table{dmtable.Linear(0, n, ubd(0), 0)}
	}, true)
}

func TestFiemapXFS(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 512 << 20}}}) {
		return
	}
	fmStoreReadBack(t, "xfs", func(n uint64) dmtable.Table {
		// Pieces of 768 KiB with each pair swapped: every 1 MiB extent
		// crosses a target boundary and lands on the disk translated.
		const piece = 1536
		var tab dmtable.Table
		var start uint64
		for ; start+2*piece <= n; start += 2 * piece {
			tab = append(tab, dmtable.Linear(start, piece, ubd(0), start+piece))
			tab = append(tab, dmtable.Linear(start+piece, piece, ubd(0), start))
		}
		if start < n {
			tab = append(tab, dmtable.Linear(start, n-start, ubd(0), start))
		}
		return tab
	}, true)
}

func TestFiemapF2FS(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 256 << 20}}}) {
		return
	}
	// No fragmentation: a pinned f2fs file takes whole free sections.
	fmStoreReadBack(t, "f2fs", func(n uint64) dmtable.Table {
		return dmtable.Table{dmtable.Linear(0, n, ubd(0), 0)}
	}, false)
}

func TestFiemapDirectMount(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 16 << 20}, {Size: 64 << 20}}}) {
		return
	}
	disk := ubd(1)
	dir := fmMount(t, "ext4", disk)
	path := filepath.Join(dir, "store")
	f, err := fiemap.Allocate(path, 1<<20, fiemap.AllocateOptions{})
	must(t, err)
	f.Close()

	out, errOut, code := snapctl(t, "map-file", path, "--json")
	if code != 4 {
		t.Fatalf("map-file on a directly mounted disk: exit %d, want 4", code)
	}
	if out != "" {
		t.Errorf("stdout %q, want nothing", out)
	}
	for _, want := range []string{fmDevNum(t, disk), "EBUSY", "--backend loop", "hint: use --backend loop or put the filesystem on a device-mapper device (snapctl attach)"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}

	// The kernel fact behind the refusal: a linear over the mounted disk
	// is refused with EBUSY.
	_, err = dmtable.Create("fm-probe", "")
	must(t, err)
	t.Cleanup(func() {
		if err := dmtable.Remove("fm-probe"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	err = dmtable.Load("fm-probe", dmtable.Table{dmtable.Linear(0, 2048, disk, 0)})
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("load linear over mounted %s: got %v, want EBUSY", disk, err)
	}
}
