package fiemap

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
)

// storeDir is a temporary directory on a filesystem that can hold a store.
// These tests run FIEMAP on the host's own filesystem; on a host whose
// temporary directory is tmpfs they skip (the e2e suite covers the kernel).
func storeDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if _, err := StatFS(dir); err != nil {
		var u UnsupportedFSError
		if errors.As(err, &u) {
			t.Skipf("%s is on %s; set TMPDIR to a directory on ext4, xfs or f2fs to run this test", dir, u.Type)
		}
		t.Fatal(err)
	}
	return dir
}

func TestAllocateRefusesSize(t *testing.T) {
	dir := t.TempDir()
	for _, tt := range []struct {
		size, chunk, multiple uint64
	}{
		{0, 0, 0},
		{1000, 0, 512},
		{4096 + 512, 4096, 4096},
		{1 << 63, 0, 0},
	} {
		p := filepath.Join(dir, "store")
		_, err := Allocate(p, tt.size, AllocateOptions{ChunkSize: tt.chunk})
		var e SizeError
		if !errors.As(err, &e) {
			t.Fatalf("size %d: got %v, want SizeError", tt.size, err)
		}
		if e.Multiple != tt.multiple || e.Size != tt.size {
			t.Errorf("size %d: got %+v, want multiple %d", tt.size, e, tt.multiple)
		}
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("size %d: store exists after refusal (%v)", tt.size, err)
		}
	}
}

func TestAllocateRefusesSymlinks(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(real, "target"), []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("target", filepath.Join(real, "store-link")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path, link string
		opts       AllocateOptions
	}{
		{filepath.Join(dir, "link", "store"), filepath.Join(dir, "link"), AllocateOptions{}},
		{filepath.Join(real, "store-link"), filepath.Join(real, "store-link"), AllocateOptions{Overwrite: true}},
		{filepath.Join(dir, "link", "store-link"), filepath.Join(dir, "link"), AllocateOptions{Overwrite: true}},
	} {
		_, err := Allocate(tt.path, 1<<20, tt.opts)
		var s SymlinkError
		if !errors.As(err, &s) {
			t.Fatalf("%s: got %v, want SymlinkError", tt.path, err)
		}
		if s.Link != tt.link || s.Path != tt.path || !strings.Contains(s.Error(), tt.link) {
			t.Errorf("%s: got %+v, want link %s", tt.path, s, tt.link)
		}
	}
	if _, err := os.Lstat(filepath.Join(real, "store")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a store was created through the symlink")
	}
	if b, _ := os.ReadFile(filepath.Join(real, "target")); string(b) != "keep" {
		t.Errorf("symlink target changed to %q", b)
	}
	// Map refuses them too.
	_, err := Map(filepath.Join(real, "store-link"), fakeStack{}.lookup, MapOptions{})
	var s SymlinkError
	if !errors.As(err, &s) {
		t.Errorf("Map of a symlink: got %v, want SymlinkError", err)
	}
	_, err = Map(filepath.Join(dir, "link", "target"), fakeStack{}.lookup, MapOptions{})
	if !errors.As(err, &s) || s.Link != filepath.Join(dir, "link") {
		t.Errorf("Map through a symlinked directory: got %v, want SymlinkError naming %s", err, filepath.Join(dir, "link"))
	}
}

func TestRefusesUnsupportedFS(t *testing.T) {
	// /proc/version is a regular file on proc.
	_, err := Map("/proc/version", fakeStack{}.lookup, MapOptions{})
	var u UnsupportedFSError
	if !errors.As(err, &u) || u.Type != "proc" || u.Path != "/proc/version" {
		t.Errorf("Map /proc/version: got %v, want UnsupportedFSError for proc", err)
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if fsys, err := StatFS("/dev/shm"); errors.As(err, &u) && fsys.Magic == TMPFS_MAGIC {
			_, err := Allocate(filepath.Join("/dev/shm", "snapctl-test-store"), 1<<20, AllocateOptions{})
			if !errors.As(err, &u) || u.Type != "tmpfs" {
				t.Errorf("Allocate on tmpfs: got %v, want UnsupportedFSError for tmpfs", err)
			}
			if _, err := os.Lstat("/dev/shm/snapctl-test-store"); err == nil {
				os.Remove("/dev/shm/snapctl-test-store")
				t.Errorf("a store was created on tmpfs")
			}
		}
	}
}

func TestAllocateExisting(t *testing.T) {
	dir := storeDir(t)
	p := filepath.Join(dir, "store")
	if err := os.WriteFile(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Allocate(p, 1<<20, AllocateOptions{})
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("got %v, want ExistsError", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Errorf("existing file changed to %q", b)
	}
	f, err := Allocate(p, 1<<20, AllocateOptions{Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if st, _ := f.Stat(); st.Size() != 1<<20 {
		t.Errorf("got size %d, want %d", st.Size(), 1<<20)
	}
}

func TestAllocateNoSpace(t *testing.T) {
	dir := storeDir(t)
	p := filepath.Join(dir, "store")
	_, err := Allocate(p, 1<<62, AllocateOptions{})
	var e NoSpaceError
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want NoSpaceError", err)
	}
	if e.Needed != 1<<62 || e.Available == 0 || !strings.Contains(e.Error(), "4.0 EiB") {
		t.Errorf("got %+v: %v", e, e)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("store exists after refusal")
	}
}

// TestExtentsHost allocates a store on the host's filesystem, fills it with
// random bytes and checks FIEMAP: the extents cover the file, carry only
// accepted flags, and (when the host's block device is readable) the bytes
// at their physical offsets are the file's bytes.
func TestExtentsHost(t *testing.T) {
	dir := storeDir(t)
	const size = 8 << 20
	p := filepath.Join(dir, "store")
	f, err := Allocate(p, size, AllocateOptions{ChunkSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	exts, err := Extents(f)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, exts, size)

	data := make([]byte, size)
	rand.New(rand.NewSource(1)).Read(data)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	exts, err = Extents(f)
	if err != nil {
		t.Fatal(err)
	}
	checkCover(t, exts, size)
	t.Logf("%d extents after writing", len(exts))

	fsys, err := StatFS(p)
	if err != nil {
		t.Fatal(err)
	}
	node, err := devNode(fsys.Dev)
	if err != nil {
		t.Logf("not comparing device bytes: %v", err)
		return
	}
	dev, err := os.OpenFile(node, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Logf("not comparing device bytes: %v", err)
		return
	}
	defer dev.Close()
	for _, e := range exts {
		got := readDirect(t, dev, e.Physical, e.Length)
		if !bytes.Equal(got, data[e.Logical:e.Logical+e.Length]) {
			t.Fatalf("extent %+v: bytes on %s differ from the file's", e, node)
		}
	}
	t.Logf("all %d extents read back identical from %s", len(exts), node)
}

// devNode is the /dev node sysfs names for the block device "major:minor".
func devNode(dev string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/sys/dev/block", dev, "uevent"))
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			return filepath.Join("/dev", name), nil
		}
	}
	return "", fmt.Errorf("no DEVNAME for %s", dev)
}

func checkCover(t *testing.T, exts []Extent, size uint64) {
	t.Helper()
	var next uint64
	for _, e := range exts {
		if e.Logical != next {
			t.Fatalf("extents are not contiguous at byte %d: %+v", next, exts)
		}
		if _, _, ok := checkFlags(e.Flags); !ok {
			t.Fatalf("extent %+v has refused flags", e)
		}
		next += e.Length
	}
	if next != size {
		t.Fatalf("extents cover %d bytes, want %d", next, size)
	}
}

// readDirect reads n bytes at off with O_DIRECT into page-aligned memory.
func readDirect(t *testing.T, f *os.File, off, n uint64) []byte {
	t.Helper()
	buf, err := syscall.Mmap(-1, 0, int(n), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(buf)
	if _, err := f.ReadAt(buf, int64(off)); err != nil {
		t.Fatalf("read %s at %d: %v", f.Name(), off, err)
	}
	return bytes.Clone(buf)
}

// TestMapHost maps a store on the host through a fake linear device
// stacked over the host's filesystem device, and revalidates it.
func TestMapHost(t *testing.T) {
	dir := storeDir(t)
	p := filepath.Join(dir, "store")
	f, err := Allocate(p, 4<<20, AllocateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fsys, err := StatFS(p)
	if err != nil {
		t.Fatal(err)
	}
	limits := func(major, minor uint32) (Limits, error) {
		return Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 4096}, nil
	}

	// The host's own device is (normally) a raw disk: a direct mount.
	if _, ok, _ := dmtable.TableByDev(fsys.Major, fsys.Minor); !ok {
		_, err := Map(p, dmtable.TableByDev, MapOptions{Limits: limits})
		var dm DirectMountError
		if !errors.As(err, &dm) || dm.Path != p || dm.Dev != fsys.Dev {
			t.Errorf("got %v, want DirectMountError for %s on %s", err, p, fsys.Dev)
		}
	}

	// Pretend the filesystem's device is a linear over 7:0 at sector 2048.
	stack := fakeStack{fsys.Dev: "0 18446744073709549567 linear 7:0 2048"}
	m, err := Map(p, stack.lookup, MapOptions{ChunkSize: 4096, Limits: limits})
	if err != nil {
		t.Fatal(err)
	}
	if m.Size != 4<<20 || m.FS.Dev != fsys.Dev || m.Path != p || len(m.Segments) != len(m.Extents) {
		t.Fatalf("got mapping %+v", m)
	}
	for i, e := range m.Extents {
		want := Segment{Logical: e.Logical / 512, Dev: "7:0", DevOffset: e.Physical/512 + 2048, Length: e.Length / 512}
		if m.Segments[i] != want {
			t.Errorf("segment %d: got %+v, want %+v", i, m.Segments[i], want)
		}
	}
	tab, err := m.Table()
	if err != nil || tab.Sectors() != (4<<20)/512 {
		t.Fatalf("table: got %v sectors, %v; want %d", tab.Sectors(), err, (4<<20)/512)
	}
	if m.Immutable {
		t.Errorf("got Immutable on a fresh store")
	}

	if _, err := Revalidate(p, m.Segments, stack.lookup); err != nil {
		t.Errorf("revalidate unchanged store: %v", err)
	}
	moved := append([]Segment(nil), m.Segments...)
	moved[0].DevOffset += 8
	_, err = Revalidate(p, moved, stack.lookup)
	var mm MismatchError
	if !errors.As(err, &mm) || mm.Index != 0 || mm.Path != p {
		t.Errorf("revalidate moved store: got %v, want MismatchError at segment 0", err)
	}
	_, err = Revalidate(p, append(m.Segments, Segment{Logical: 1 << 20, Dev: "7:0", Length: 8}), stack.lookup)
	if !errors.As(err, &mm) || mm.Now != nil || mm.Index != len(m.Segments) {
		t.Errorf("revalidate with a missing segment: got %v, want MismatchError with Now nil", err)
	}

	// A file with a hole is refused with the hole's place.
	sparse := filepath.Join(dir, "sparse")
	sf, err := os.Create(sparse)
	if err != nil {
		t.Fatal(err)
	}
	sf.WriteAt(make([]byte, 4096), 0)
	sf.WriteAt(make([]byte, 4096), 1<<20)
	sf.Close()
	_, err = Map(sparse, stack.lookup, MapOptions{Limits: limits})
	var h HoleError
	if !errors.As(err, &h) || h.Offset != 4096 || h.Length != 1<<20-4096 {
		t.Errorf("sparse file: got %v, want HoleError at 4096", err)
	}
}

func TestImmutableAndRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("setting FS_IMMUTABLE_FL needs CAP_LINUX_IMMUTABLE: run as root")
	}
	dir := storeDir(t)
	p := filepath.Join(dir, "store")
	f, err := Allocate(p, 1<<20, AllocateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := SetImmutable(f, true); err != nil {
		t.Fatal(err)
	}
	if on, err := IsImmutable(f); err != nil || !on {
		t.Fatalf("IsImmutable: got %v, %v; want true", on, err)
	}
	if _, err := os.OpenFile(p, os.O_WRONLY, 0); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("open immutable store for writing: got %v, want EPERM", err)
	}
	if err := os.Remove(p); err == nil {
		t.Fatalf("unlinked an immutable file")
	}
	if pinned, err := IsPinned(f); err != nil || pinned {
		t.Errorf("IsPinned off f2fs: got %v, %v; want false", pinned, err)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("store still exists after Remove: %v", err)
	}
	if err := Remove(p); err != nil {
		t.Errorf("second Remove: got %v, want nil", err)
	}
	// Clearing is idempotent.
	g, err := Allocate(p, 1<<20, AllocateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := SetImmutable(g, false); err != nil {
		t.Fatal(err)
	}
	if on, _ := IsImmutable(g); on {
		t.Errorf("IsImmutable after clearing: got true")
	}
}
