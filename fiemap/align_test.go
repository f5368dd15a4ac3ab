package fiemap

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckAlignment(t *testing.T) {
	const K = 1024
	lim512 := Limits{LogicalBlockSize: 512, PhysicalBlockSize: 512, MinIO: 512}
	lim4k := Limits{LogicalBlockSize: 4096, PhysicalBlockSize: 4096, MinIO: 4096}
	tests := []struct {
		name      string
		exts      []Extent
		segs      []Segment
		lim       Limits
		chunk     uint64
		wantAlign uint64 // 0: no error
		wantWhat  string
		warnings  int
	}{
		{name: "all 4K aligned", exts: []Extent{{0, 8 * K, 8 * K, 0}}, segs: []Segment{{0, "8:0", 16, 16}}, lim: lim4k, chunk: 4 * K},
		{name: "extent start off the logical block", exts: []Extent{{0, 8*K + 512, 8 * K, 0}}, lim: lim4k, wantAlign: 4096, wantWhat: "logical block"},
		{name: "extent length off the chunk", exts: []Extent{{0, 8 * K, 6 * K, 0}}, lim: lim512, chunk: 4 * K, wantAlign: 4096, wantWhat: "chunk"},
		{name: "segment offset off the chunk", exts: []Extent{{0, 8 * K, 8 * K, 0}}, segs: []Segment{{0, "8:0", 17, 16}}, lim: lim512, chunk: 4 * K, wantAlign: 4096, wantWhat: "chunk"},
		{name: "logical offset off the chunk", segs: []Segment{{1, "8:0", 16, 8}}, lim: lim512, chunk: 4 * K, wantAlign: 4096, wantWhat: "chunk"},
		{name: "sector misalignment", exts: []Extent{{0, 100, 512, 0}}, lim: Limits{}, wantAlign: 512, wantWhat: "sector"},
		{name: "physical block only warns", exts: []Extent{{0, 512, 4 * K, 0}}, lim: Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 4096}, warnings: 1},
		{name: "io_min warns separately", exts: []Extent{{0, 4 * K, 4 * K, 0}}, lim: Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 64 * K}, warnings: 1},
		{name: "both warn", exts: []Extent{{0, 512, 4 * K, 0}}, lim: Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 64 * K}, warnings: 2},
		{name: "chunk implies physical block", exts: []Extent{{0, 4 * K, 4 * K, 0}}, lim: Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 4096}, chunk: 4 * K},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			warns, err := CheckAlignment("/s", "253:0", tt.exts, tt.segs, tt.lim, tt.chunk)
			if tt.wantAlign == 0 {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				if len(warns) != tt.warnings {
					t.Errorf("got %d warnings %q, want %d", len(warns), warns, tt.warnings)
				}
				return
			}
			var m MisalignedError
			if !errors.As(err, &m) {
				t.Fatalf("got %v, want MisalignedError", err)
			}
			if m.Align != tt.wantAlign || !strings.Contains(m.What, tt.wantWhat) || m.Path != "/s" {
				t.Errorf("got %+v, want align %d (%s)", m, tt.wantAlign, tt.wantWhat)
			}
		})
	}
}

func TestDeviceLimits(t *testing.T) {
	root := t.TempDir()
	// A disk 8:0 with a queue, and its partition 8:1 without one, linked
	// from the by-number directory the way sysfs links them.
	disk := filepath.Join(root, "devices", "sda")
	part := filepath.Join(disk, "sda1")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(disk, "queue"), 0o755))
	must(os.MkdirAll(part, 0o755))
	for name, v := range map[string]string{"logical_block_size": "512\n", "physical_block_size": "4096\n", "minimum_io_size": "65536\n"} {
		must(os.WriteFile(filepath.Join(disk, "queue", name), []byte(v), 0o644))
	}
	byNum := filepath.Join(root, "block")
	must(os.MkdirAll(byNum, 0o755))
	must(os.Symlink("../devices/sda", filepath.Join(byNum, "8:0")))
	must(os.Symlink("../devices/sda/sda1", filepath.Join(byNum, "8:1")))
	want := Limits{LogicalBlockSize: 512, PhysicalBlockSize: 4096, MinIO: 65536}
	for _, minor := range []uint32{0, 1} {
		got, err := deviceLimits(byNum, 8, minor)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("8:%d: got %+v, want %+v", minor, got, want)
		}
	}
	if _, err := deviceLimits(byNum, 8, 2); err == nil || !strings.Contains(err.Error(), "8:2") {
		t.Errorf("missing device: got %v, want an error naming 8:2", err)
	}
	if got := (Limits{512, 4096, 512}).Stack(Limits{4096, 512, 65536}); got != (Limits{4096, 4096, 65536}) {
		t.Errorf("Stack: got %+v", got)
	}
}

func TestCheckFSType(t *testing.T) {
	for _, tt := range []struct {
		magic uint64
		ok    bool
		name  string
		says  string
	}{
		{EXT4_SUPER_MAGIC, true, "ext4", ""},
		{XFS_SUPER_MAGIC, true, "xfs", ""},
		{F2FS_SUPER_MAGIC, true, "f2fs", ""},
		{BTRFS_SUPER_MAGIC, false, "btrfs", "logical address"},
		{TMPFS_MAGIC, false, "tmpfs", "memory"},
		{0x794C7630, false, "overlayfs", "beneath"},
		{0x12345678, false, "0x12345678", "only ext4, xfs and f2fs"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckFSType("/x/store", tt.magic)
			if tt.ok {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			var u UnsupportedFSError
			if !errors.As(err, &u) {
				t.Fatalf("got %v, want UnsupportedFSError", err)
			}
			if !strings.Contains(u.Type, tt.name) || u.Path != "/x/store" || !strings.Contains(u.Error(), tt.says) {
				t.Errorf("got %+v: %v; want type %s and a reason with %q", u, u, tt.name, tt.says)
			}
		})
	}
}
