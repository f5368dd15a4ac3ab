package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func validRecord() *Record {
	return &Record{Format: FormatVersion, Name: "data", Mode: Checkpoint, Phase: PhasePrepared,
		Origin: Device{Path: "/dev/sdb1", Dev: "8:17", Sectors: 1 << 20},
		Store:  &Store{Path: "/data/.store", FSDev: "254:0", Inode: 12, Bytes: 1 << 26, ChunkSectors: 8, Backend: "fiemap", Overflow: "invalidate", Segments: []Segment{{Dev: "8:17", Offset: 2048, Length: 131072}}}}
}

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	want := validRecord()
	want.event("prepare", "x")
	if err := writeRecord(dir, want); err != nil {
		t.Fatal(err)
	}
	got, err := readRecord(dir, "data")
	if err != nil {
		t.Fatal(err)
	}
	if got.Store.Segments[0] != want.Store.Segments[0] || got.Phase != want.Phase || len(got.History) != 1 {
		t.Errorf("got %+v, want %+v", got, want)
	}
	fi, err := os.Stat(recordPath(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %o, want 600", fi.Mode().Perm())
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestRecordCorrupt(t *testing.T) {
	good, err := os.ReadFile(func() string {
		dir := t.TempDir()
		if err := writeRecord(dir, validRecord()); err != nil {
			t.Fatal(err)
		}
		return recordPath(dir, "data")
	}())
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"empty":          "",
		"truncated":      string(good[:len(good)/2]),
		"garbage":        "\x00\x01 not json",
		"trailing":       string(good) + "{}",
		"unknown field":  strings.Replace(string(good), `"phase"`, `"phaze": "x", "phase"`, 1),
		"wrong format":   strings.Replace(string(good), `"format": 1`, `"format": 7`, 1),
		"other volume":   strings.Replace(string(good), `"name": "data"`, `"name": "other"`, 1),
		"unknown phase":  strings.Replace(string(good), `"phase": "prepared"`, `"phase": "exploding"`, 1),
		"unknown mode":   strings.Replace(string(good), `"mode": "checkpoint"`, `"mode": "sideways"`, 1),
		"no origin":      strings.Replace(string(good), `"path": "/dev/sdb1"`, `"path": ""`, 1),
		"chunk not pow2": strings.Replace(string(good), `"chunk_sectors": 8`, `"chunk_sectors": 12`, 1),
		"empty segment":  strings.Replace(string(good), `"length": 131072`, `"length": 0`, 1),
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			if text == string(good) {
				t.Fatal("case did not change the record")
			}
			_, err := parseRecord("data.json", "data", []byte(text))
			var ce *CorruptRecordError
			if !errors.As(err, &ce) {
				t.Fatalf("got %v, want CorruptRecordError", err)
			}
		})
	}
	if _, err := parseRecord("data.json", "data", good); err != nil {
		t.Fatalf("the good record: %v", err)
	}
}

func TestReadRecordUnknown(t *testing.T) {
	_, err := readRecord(t.TempDir(), "nope")
	var u *UnknownVolumeError
	if !errors.As(err, &u) {
		t.Fatalf("got %v, want UnknownVolumeError", err)
	}
}

func FuzzParseRecord(f *testing.F) {
	dir := f.TempDir()
	if err := writeRecord(dir, validRecord()); err != nil {
		f.Fatal(err)
	}
	b, _ := os.ReadFile(recordPath(dir, "data"))
	f.Add(b)
	f.Add([]byte(`{"format":1,"name":"data","phase":"attached","origin":{"path":"/dev/x","dev":"1:2","sectors":8}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRecord("data.json", "data", b)
		if err == nil && (r.Name != "data" || r.Origin.Sectors == 0) {
			t.Fatalf("accepted a record that breaks the invariants: %+v", r)
		}
	})
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"data", "system_a", "v1.2", "a+b", "X"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "a/b", "..", ".hidden", "-x", "data-cow", "data-real", "data-snap", "data-base", strings.Repeat("a", 123), "sp ace", "nul\x00"} {
		if err := CheckName(bad); err == nil {
			t.Errorf("CheckName(%q) = nil, want an error", bad)
		}
	}
}

func TestKeepsPrefix(t *testing.T) {
	old := []Segment{{"8:1", 100, 16}, {"8:1", 500, 8}}
	cases := []struct {
		name string
		cur  []Segment
		want bool
	}{
		{"identical", old, true},
		{"appended", append(append([]Segment{}, old...), Segment{"8:1", 900, 8}), true},
		{"last extended in place", []Segment{{"8:1", 100, 16}, {"8:1", 500, 24}}, true},
		{"merged differently", []Segment{{"8:1", 100, 8}, {"8:1", 108, 8}, {"8:1", 500, 8}}, true},
		{"moved", []Segment{{"8:1", 100, 16}, {"8:1", 600, 8}}, false},
		{"other device", []Segment{{"8:2", 100, 16}, {"8:1", 500, 8}}, false},
		{"shrunk", []Segment{{"8:1", 100, 16}}, false},
	}
	for _, c := range cases {
		if got := keepsPrefix(old, c.cur); got != c.want {
			t.Errorf("%s: keepsPrefix = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestChunksLeft(t *testing.T) {
	// C = 8 sectors, E = 256. A store of 259 chunks holds exactly 256.
	if got := chunksLeft(259, 0, 8); got != 256 {
		t.Errorf("empty 259-chunk store: %d chunks left, want 256", got)
	}
	if got := chunksLeft(259, 256, 8); got != 0 {
		t.Errorf("full 259-chunk store: %d chunks left, want 0", got)
	}
	if got := chunksLeft(258, 100, 8); got != 155 {
		t.Errorf("258-chunk store with 100 used: %d left, want 155", got)
	}
}

func TestReserve(t *testing.T) {
	if got := reserve(1 << 30); got != (1<<30)/20 {
		t.Errorf("reserve(1 GiB) = %d, want 5%%", got)
	}
	if got := reserve(100 << 30); got != 256<<20 {
		t.Errorf("reserve(100 GiB) = %d, want 256 MiB", got)
	}
}

func TestStateDirChecks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := openStateDir(dir); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(dir)
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %o, want 700", fi.Mode().Perm())
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	var u *UnsafeStateDirError
	if err := openStateDir(dir); !errors.As(err, &u) {
		t.Errorf("world-writable state dir: got %v, want UnsafeStateDirError", err)
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Chmod(dir, 0o700)
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if err := openStateDir(link); !errors.As(err, &u) {
		t.Errorf("symlinked state dir: got %v, want UnsafeStateDirError", err)
	}
	if err := openStateDir("relative/dir"); !errors.As(err, &u) {
		t.Errorf("relative state dir: got %v, want UnsafeStateDirError", err)
	}
}

func TestLockNamesHolder(t *testing.T) {
	dir := t.TempDir()
	l, err := lockVolume(dir, "data", "snapctl merge data")
	if err != nil {
		t.Fatal(err)
	}
	defer l.unlock()
	_, err = lockVolume(dir, "data", "snapctl commit data")
	var b *BusyError
	if !errors.As(err, &b) || !strings.Contains(b.Holder, "snapctl merge data") {
		t.Fatalf("second lock: got %v, want BusyError naming the holder", err)
	}
}

func TestDevString(t *testing.T) {
	for _, c := range []struct {
		dev  uint64
		want string
	}{
		{0x0811, "8:17"},
		{0xfe00, "254:0"},
		// major 259, minor 65537: the minor's low byte in bits 0-7, its
		// high bits shifted up by 12.
		{1 | 259<<8 | 0x10000<<12, "259:65537"},
	} {
		if got := devString(c.dev); got != c.want {
			t.Errorf("devString(%#x) = %s, want %s", c.dev, got, c.want)
		}
	}
}
