//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Guest disks for TestPageCache:
//
//	/dev/ubda  32 MiB   the origin; the test writes image v1 on it
//	/dev/ubdb  128 MiB  ext4 through /dev/mapper/pcstore: the stores
//
// Image v2 (v1 with pcBlocks scattered 4 KiB blocks changed) is a file.

// pcBlocks is how many 4 KiB blocks v2 changes.
const pcBlocks = 64

// TestPageCache checks that a buffered read of the raw origin sees what a
// merge wrote there, while the volume is still attached. Device-mapper
// writes the origin below the origin's own page cache, so whatever was read
// through /dev/ubda before the merge (by snapctl's --new-image sizing, by
// the test) would be served stale afterwards unless snapctl drops that
// cache once the merge is done.
//
//   - update commit: prepare --size auto --new-image (snapctl reads the
//     origin), a buffered read of the origin (v1), the changed blocks
//     written through /dev/mapper/sys, commit; then a buffered read of the
//     origin, still attached, must be v2.
//   - checkpoint rollback: prepare, the changed blocks written through
//     /dev/mapper/data (the origin becomes v2, and a buffered read caches
//     it), rollback; then a buffered read of the origin must be v1 again.
//   - offline merge: as the update commit, with deactivate and merge
//     --offline in place of commit. The offline copy writes the origin
//     with O_DIRECT, which drops the pages it overwrites, so this case
//     guards against a copy by any other path.
func TestPageCache(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}}) {
		return
	}
	origin := ubd(0)
	v1 := pattern(11, 32<<20)
	v2 := bytes.Clone(v1)
	changed := pattern(12, 64*pcBlocks)
	var blocks []int64
	for i := range pcBlocks {
		off := int64(i*(len(v1)/4096/pcBlocks)) * 4096
		copy(v2[off+100:], changed[i*64:(i+1)*64])
		blocks = append(blocks, off)
	}
	v2Path := filepath.Join(t.TempDir(), "v2.img")
	must(t, os.WriteFile(v2Path, v2, 0o644))

	st := newVolume(t, "pcstore")
	st.must("attach", "pcstore", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/pcstore")
	smnt := mountFS(t, "/dev/mapper/pcstore")

	// putOrigin writes img on the origin with O_DIRECT and drops every
	// cache, so each case starts with nothing of the origin cached.
	putOrigin := func(t *testing.T, img []byte) {
		t.Helper()
		writeDirect(t, origin, 0, img)
		must(t, os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0))
	}
	// writeBlocks writes v2's changed blocks through dev.
	writeBlocks := func(t *testing.T, dev string) {
		t.Helper()
		f, err := os.OpenFile(dev, os.O_WRONLY, 0)
		must(t, err)
		defer f.Close()
		for _, off := range blocks {
			if _, err := f.WriteAt(v2[off:off+4096], off); err != nil {
				t.Fatalf("write %s at %d: %v", dev, off, err)
			}
		}
		must(t, f.Sync())
	}

	t.Run("update commit", func(t *testing.T) {
		putOrigin(t, v1)
		v := newVolume(t, "sys")
		v.must("prepare", "sys", "--origin", origin, "--mode", "update",
			"--store", filepath.Join(smnt, "ota.cow"), "--size", "auto", "--new-image", v2Path)
		sameImage(t, origin, "before the commit", v1, "v1")
		writeBlocks(t, "/dev/mapper/sys")
		v.must("commit", "sys")
		sameImage(t, origin, "after the commit, attached", v2, "v2")
		sameImage(t, "/dev/mapper/sys", "after the commit", v2, "v2")
		v.must("detach", "sys")
	})

	t.Run("checkpoint rollback", func(t *testing.T) {
		putOrigin(t, v1)
		v := newVolume(t, "data")
		v.must("attach", "data", "--origin", origin)
		v.must("prepare", "data", "--store", filepath.Join(smnt, "cp.cow"), "--size", "4M")
		writeBlocks(t, "/dev/mapper/data")
		sameImage(t, origin, "after the change", v2, "v2")
		v.must("rollback", "data")
		sameImage(t, origin, "after the rollback, attached", v1, "v1 (the prepare-time image)")
		sameImage(t, "/dev/mapper/data", "after the rollback", v1, "v1 (the prepare-time image)")
		v.must("detach", "data")
	})

	t.Run("offline merge", func(t *testing.T) {
		putOrigin(t, v1)
		v := newVolume(t, "sys")
		v.must("prepare", "sys", "--origin", origin, "--mode", "update",
			"--store", filepath.Join(smnt, "ota.cow"), "--size", "auto", "--new-image", v2Path)
		writeBlocks(t, "/dev/mapper/sys")
		v.must("deactivate", "sys")
		sameImage(t, origin, "before the offline merge", v1, "v1")
		v.must("merge", "sys", "--offline")
		sameImage(t, origin, "after the offline merge", v2, "v2")
		v.must("activate", "sys")
		sameImage(t, origin, "after the offline merge, attached", v2, "v2")
		v.must("detach", "sys")
	})
	umount(t, smnt)
	st.must("detach", "pcstore")
}

// sameImage reads dev with buffered I/O (through its page cache, as cmp or
// dd do) and fails the test unless it equals want. On a difference it also
// reads dev with O_DIRECT, to tell a stale page cache from wrong data.
func sameImage(t *testing.T, dev, when string, want []byte, wantName string) {
	t.Helper()
	f, err := os.Open(dev)
	must(t, err)
	got, err := io.ReadAll(f)
	f.Close()
	must(t, err)
	if bytes.Equal(got, want) {
		return
	}
	direct := readDirect(t, dev, 0, len(want))
	verdict := "O_DIRECT reads differ too: the data on the device is wrong"
	if bytes.Equal(direct, want) {
		verdict = "O_DIRECT reads " + wantName + ": the page cache is stale"
	}
	t.Errorf("%s: a buffered read of %s is not %s (%s); %s", when, dev, wantName, blockDiff(got, want), verdict)
}

// blockDiff says how many 4 KiB blocks of got differ from want, and the
// first.
func blockDiff(got, want []byte) string {
	if len(got) != len(want) {
		return fmt.Sprintf("%d bytes, want %d", len(got), len(want))
	}
	n, first := 0, -1
	for off := 0; off < len(want); off += 4096 {
		end := min(off+4096, len(want))
		if !bytes.Equal(got[off:end], want[off:end]) {
			if first < 0 {
				first = off
			}
			n++
		}
	}
	return fmt.Sprintf("%d blocks of 4 KiB differ, the first at byte %d", n, first)
}
