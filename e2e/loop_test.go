//go:build e2e

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoopBackend: the store's filesystem is mounted directly on a
// partition (/dev/ubdb), so its blocks cannot be mapped by device-mapper:
// the fiemap backend refuses and names --backend loop; the loop backend
// works, survives deactivate/activate (the loop device is found or
// re-attached), and a rollback restores the origin exactly.
// Guest disks: /dev/ubda 32 MiB origin; /dev/ubdb 128 MiB ext4, mounted directly.
func TestLoopBackend(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}}) {
		return
	}
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", ubd(1))
	mnt := mountFS(t, ubd(1))
	v := newVolume(t, "data")
	v.must("attach", "data", "--origin", ubd(0))
	fill(t, "/dev/mapper/data", 11)
	orig := deviceSum(t, "/dev/mapper/data")
	store := filepath.Join(mnt, "store")

	_, errOut, code := v.snapctl("prepare", "data", "--store", store, "--size", "16M")
	if code != 4 || !strings.Contains(errOut, "--backend loop") {
		t.Fatalf("fiemap backend on a directly mounted filesystem: exit %d, want 4 naming --backend loop\n%s", code, errOut)
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("the refused prepare left the store file: %v", err)
	}
	if d := devicesOf(t, "data"); len(d) != 1 {
		t.Fatalf("the refused prepare left devices: %v", d)
	}

	v.must("prepare", "data", "--store", store, "--size", "16M", "--backend", "loop")
	scatter(t, "/dev/mapper/data", 500, 3)
	if s := v.status(); s.Usage == nil || s.Usage.State != "active" || s.Usage.DataChunks == 0 {
		t.Fatalf("usage %+v, want active with data", s.Usage)
	}
	v.must("deactivate", "data")
	if loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file"); len(loops) != 0 {
		t.Fatalf("loop devices still attached after deactivate: %v", loops)
	}
	v.must("activate", "data")
	v.must("rollback", "data")
	if got := deviceSum(t, "/dev/mapper/data"); got != orig {
		t.Fatal("after rollback through the loop backend the origin differs from its prepare-time image")
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("store file left after rollback: %v", err)
	}
	if loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file"); len(loops) != 0 {
		t.Fatalf("loop devices left after rollback: %v", loops)
	}
	v.must("detach", "data")
}
