//go:build e2e

package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/snapctl/snapctl/freespace"
)

// TestFreeSpace proves the free-space map and the freeze on the guest's
// kernel, in one boot:
//
//	/dev/ubda 256 MiB  ext4 (4 KiB blocks)
//	/dev/ubdb 320 MiB  xfs (xfsprogs refuses less than 300 MB)
//	/dev/ubdc 64 MiB   f2fs
//
// On ext4 and xfs, with files written and some deleted (holes in the free
// space), freespace.Free on the frozen filesystem must equal the free
// space xfs_io's `fsmap` prints for the filesystem's device, and on ext4
// its total must equal statfs f_bfree. Freeze must make a writer wait
// until Thaw; a second Freeze is EBUSY, a Thaw of a thawed filesystem
// EINVAL. f2fs has no FS_IOC_GETFSMAP: *UnsupportedError naming it.
func TestFreeSpace(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 256 << 20}, {Size: 320 << 20}, {Size: 64 << 20}}}) {
		return
	}
	for _, c := range []struct {
		fs   string
		dev  string
		mkfs []string
	}{
		{"ext4", ubd(0), []string{"mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,nodiscard"}},
		{"xfs", ubd(1), []string{"mkfs.xfs", "-q", "-f"}},
	} {
		t.Run(c.fs, func(t *testing.T) {
			mnt := fsMount(t, c.dev, c.mkfs)
			for i := range 12 {
				must(t, os.WriteFile(filepath.Join(mnt, fmt.Sprintf("f%d", i)), pattern(i, (i+1)*700<<10+i*4096), 0o644))
			}
			run(t, "sync")
			for _, i := range []int{2, 5, 9} {
				must(t, os.Remove(filepath.Join(mnt, fmt.Sprintf("f%d", i))))
			}
			run(t, "sync")

			must(t, freespace.Freeze(mnt))
			thawed := false
			defer func() {
				if !thawed {
					must(t, freespace.Thaw(mnt))
				}
			}()
			free, err := freespace.Free(mnt)
			must(t, err)
			want := xfsIOFree(t, mnt, c.dev)
			var total int64
			for _, e := range free {
				total += e.Length
			}
			t.Logf("%s: %d free extents, %d bytes; xfs_io: %d extents", c.fs, len(free), total, len(want))
			if len(free) < 4 {
				t.Errorf("only %d free extents: the deletions left no holes?", len(free))
			}
			if !slices.Equal(free, want) {
				t.Fatalf("Free differs from xfs_io's fsmap:\n got %v\nwant %v", free, want)
			}
			var st syscall.Statfs_t
			must(t, syscall.Statfs(mnt, &st))
			bfree := int64(st.Bfree) * int64(st.Bsize)
			t.Logf("%s: statfs f_bfree %d bytes, f_bavail %d, fsmap %d", c.fs, bfree, int64(st.Bavail)*int64(st.Bsize), total)
			if c.fs == "ext4" && total != bfree {
				t.Errorf("ext4: fsmap free %d bytes, statfs f_bfree %d", total, bfree)
			}
			runs := freespace.Chunks(free, 4096)
			if n := int64(freespace.Total(runs)) * 4096; n > total || n < total-int64(len(free))*2*4096 {
				t.Errorf("Chunks: %d bytes of whole chunks out of %d free", n, total)
			}

			// Frozen: a second freeze is refused, a writer waits.
			if err := freespace.Freeze(mnt); !errors.Is(err, syscall.EBUSY) {
				t.Errorf("second Freeze: got %v, want EBUSY", err)
			}
			done := make(chan error, 1)
			go func() {
				done <- os.WriteFile(filepath.Join(mnt, "late"), pattern(99, 8192), 0o644)
			}()
			select {
			case err := <-done:
				t.Fatalf("a write to the frozen filesystem finished (%v)", err)
			case <-time.After(time.Second):
			}
			thawed = true
			must(t, freespace.Thaw(mnt))
			select {
			case err := <-done:
				must(t, err)
			case <-time.After(30 * time.Second):
				t.Fatal("the write still waits 30 s after Thaw")
			}
			if err := freespace.Thaw(mnt); !errors.Is(err, syscall.EINVAL) {
				t.Errorf("Thaw of a thawed filesystem: got %v, want EINVAL", err)
			}
		})
	}
	t.Run("f2fs", func(t *testing.T) {
		mnt := fsMount(t, ubd(2), []string{"mkfs.f2fs", "-q", "-f"})
		_, err := freespace.Free(mnt)
		var u *freespace.UnsupportedError
		if !errors.As(err, &u) || u.Type != "f2fs" || u.Mountpoint != mnt {
			t.Fatalf("Free on f2fs: got %v, want *UnsupportedError for f2fs at %s", err, mnt)
		}
		t.Logf("f2fs: %v", err)
	})
}

// fsMount makes a filesystem on dev with mkfs and mounts it, unmounting at
// cleanup.
func fsMount(t *testing.T, dev string, mkfs []string) string {
	t.Helper()
	run(t, mkfs[0], append(mkfs[1:], dev)...)
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v\n%s", mnt, err, out)
		}
	})
	return mnt
}

// fsmapFree matches a free-space record of `xfs_io -c fsmap`: device,
// first and last 512-byte unit.
var fsmapFree = regexp.MustCompile(`(?m)^\s*\d+: (\d+):(\d+) \[(\d+)\.\.(\d+)\]: free space`)

// xfsIOFree is the free space of dev that `xfs_io -c fsmap` prints for the
// filesystem at mnt, joined like freespace.Free's.
func xfsIOFree(t *testing.T, mnt, dev string) []freespace.Extent {
	t.Helper()
	var st syscall.Stat_t
	must(t, syscall.Stat(dev, &st))
	major, minor := uint64(st.Rdev)>>8&0xfff, uint64(st.Rdev)&0xff|uint64(st.Rdev)>>12&0xfff00
	out := run(t, "xfs_io", "-c", "fsmap", mnt)
	var ex []freespace.Extent
	for _, m := range fsmapFree.FindAllStringSubmatch(out, -1) {
		ma, _ := strconv.ParseUint(m[1], 10, 32)
		mi, _ := strconv.ParseUint(m[2], 10, 32)
		first, _ := strconv.ParseInt(m[3], 10, 64)
		last, _ := strconv.ParseInt(m[4], 10, 64)
		if ma != major || mi != minor {
			continue
		}
		ex = append(ex, freespace.Extent{Offset: first * 512, Length: (last - first + 1) * 512})
	}
	if len(ex) == 0 {
		t.Fatalf("xfs_io fsmap printed no free space on %s (%d:%d):\n%s", dev, major, minor, out)
	}
	return freespace.Coalesce(ex)
}
