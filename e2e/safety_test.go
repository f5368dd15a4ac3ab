//go:build e2e

package e2e

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The safety tests check that snapctl never merges or maps a store that no
// longer holds what the snapshot needs: a store the kernel once reported
// full (it forgets Overflow when the table goes), and a store whose file was
// moved while the volume was inactive (its old blocks now another file's).
//
// Guest disks of TestSafetyOverflowRemembered:
//
//	/dev/ubda  16 MiB  origin of update volume "sys" (a raw pattern)
//	/dev/ubdb  64 MiB  attached as "stor", ext4, holds the store file
//
// Guest disks of TestSafetyStoreMoved:
//
//	/dev/ubda  16 MiB  origin of update volume "sys" (a raw pattern)
//	/dev/ubdb  32 MiB  attached as "stor", ext4, holds the store file, its
//	                   copy, and a file of zeros that fills the rest

// safetyStatus is the part of `snapctl status --json` these tests read.
type safetyStatus struct {
	Phase string `json:"phase"`
	Store *struct {
		Unusable string `json:"unusable"`
		Segments []struct {
			Dev    string `json:"dev"`
			Offset int64  `json:"offset"`
		} `json:"segments"`
	} `json:"store"`
	Usage *struct {
		State string `json:"state"`
	} `json:"usage"`
}

func (v *volume) safetyStatus() safetyStatus {
	v.t.Helper()
	var s safetyStatus
	out := v.must("status", v.name, "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		v.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return s
}

// TestSafetyOverflowRemembered: an update written into a PO store too small
// for it overflows; the volume is deactivated (nothing asked for its status
// first) and activated again, and the kernel now reports the store clean.
// commit and merge must still refuse it (exit 4), naming the overflow and
// the way out, with the origin byte-identical; rollback (drop) works.
func TestSafetyOverflowRemembered(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 16 << 20}, {Size: 64 << 20}}}) {
		return
	}
	smnt := storeFS(t, "ext4")
	fill(t, ubd(0), 3)
	orig := deviceSum(t, ubd(0))
	v := newVolume(t, "sys")
	v.must("prepare", "sys", "--origin", ubd(0), "--mode", "update", "--store", filepath.Join(smnt, "ota.cow"), "--size", "64K", "--overflow", "fail")
	// 1 MiB into a store with room for 14 chunks: with PO the kernel fails
	// the writes that find it full and reports Overflow.
	out, err := exec.Command("dd", "if=/dev/urandom", "of=/dev/mapper/sys", "bs=4096", "count=256", "oflag=direct", "status=none").CombinedOutput()
	if err == nil {
		t.Fatalf("1 MiB written into a 64 KiB PO store without an error; want the writes past its capacity to fail")
	}
	t.Logf("the update's writes failed as the store filled: %v: %s", err, strings.TrimSpace(string(out)))

	v.must("deactivate", "sys")
	v.must("activate", "sys")
	for _, op := range []string{"commit", "merge"} {
		_, errOut, code := v.snapctl(op, "sys")
		if code != 4 || !strings.Contains(strings.ToLower(errOut), "overflow") || !strings.Contains(errOut, "snapctl rollback sys") {
			t.Errorf("%s of the overflowed store: exit %d, want 4 naming the overflow and `snapctl rollback sys`\n%s", op, code, errOut)
		}
		if got := deviceSum(t, ubd(0)); got != orig {
			t.Fatalf("after the refused %s the origin differs from before the update", op)
		}
	}
	s := v.safetyStatus()
	if s.Usage != nil {
		t.Logf("after deactivate + activate the kernel reports the store %q", s.Usage.State)
	}
	if s.Store == nil || s.Store.Unusable != "overflow" {
		t.Fatalf("status --json after deactivate + activate: store %+v, want store.unusable \"overflow\"", s.Store)
	}
	if text := v.must("status", "sys"); !strings.Contains(text, "OVERFLOW") {
		t.Errorf("status does not show that the store was seen full:\n%s", text)
	}
	if s.Phase != "prepared" {
		t.Errorf("after the refusals: phase %s, want prepared", s.Phase)
	}
	v.must("rollback", "sys")
	if got := deviceSum(t, ubd(0)); got != orig {
		t.Fatalf("after rollback the origin differs from before the update")
	}
	v.must("detach", "sys")
}

// TestSafetyStoreMoved: with the volume deactivated, the store's immutable
// flag is cleared, the file is copied away and the copy renamed over it (so
// the store's path holds the same bytes in other blocks), and a file of
// zeros fills the freed blocks. activate must refuse (exit 3), naming the
// file and what changed, both with the store's filesystem unmounted (as at
// boot: only the blocks can be checked, and they no longer hold a store
// header) and mounted (FIEMAP: another inode, not immutable, other
// segments); commit must refuse too. The origin and the file of zeros
// stay byte-identical, and no device is left behind.
func TestSafetyStoreMoved(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 16 << 20}, {Size: 32 << 20}}}) {
		return
	}
	smnt := storeFS(t, "ext4")
	fill(t, ubd(0), 5)
	orig := deviceSum(t, ubd(0))
	store := filepath.Join(smnt, "ota.cow")
	v := newVolume(t, "sys")
	v.must("prepare", "sys", "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "8M")
	// The kernel fact the check rests on: loading the snapshot wrote the
	// header (magic "SnAp", valid 1, version 1, chunk size) over the zeros
	// prepare wrote.
	hdr := []byte(run(t, "dd", "if=/dev/mapper/sys-cow", "bs=4096", "count=1", "iflag=direct", "status=none"))
	if len(hdr) < 16 || binary.LittleEndian.Uint32(hdr) != 0x70416e53 || binary.LittleEndian.Uint32(hdr[4:]) != 1 ||
		binary.LittleEndian.Uint32(hdr[8:]) != 1 || binary.LittleEndian.Uint32(hdr[12:]) != 8 {
		t.Fatalf("store header after prepare: % x, want SnAp, valid 1, version 1, chunk 8", hdr[:min(16, len(hdr))])
	}
	writeAt(t, "/dev/mapper/sys", 0, pattern(9, 1<<20))
	seg := v.safetyStatus().Store.Segments[0]
	v.must("deactivate", "sys")

	run(t, "chattr", "-i", store)
	away := filepath.Join(smnt, "away")
	run(t, "cp", store, away)
	run(t, "mv", away, store)
	filler := filepath.Join(smnt, "zeros")
	if out, err := exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=1M", "status=none").CombinedOutput(); err == nil {
		t.Fatalf("dd filled %s without running out of space", filler)
	} else {
		t.Logf("filler: %v: %s", err, strings.TrimSpace(string(out)))
	}
	run(t, "sync")
	fillerSum := fileSum(t, filler)
	// The precondition: the store's old first block is now the filler's.
	old := readRaw(t, ubd(1), seg.Offset*512, 4096)
	if strings.Trim(string(old), "\x00") != "" {
		t.Fatalf("test setup: the store's old header block (sector %d of %s) was not reused by the file of zeros", seg.Offset, ubd(1))
	}

	check := func(what string, has ...string) {
		t.Helper()
		for _, op := range []string{"activate", "commit"} {
			_, errOut, code := v.snapctl(op, "sys")
			if code != 3 {
				t.Errorf("%s, %s: exit %d, want 3\n%s", what, op, code, errOut)
			}
			for _, h := range append([]string{store}, has...) {
				if !strings.Contains(errOut, h) {
					t.Errorf("%s, %s: the message does not mention %q:\n%s", what, op, h, errOut)
				}
			}
			if d := devicesOf(t, "sys"); len(d) != 0 {
				t.Fatalf("%s, %s: devices %v left behind, want none", what, op, d)
			}
			if got := deviceSum(t, ubd(0)); got != orig {
				t.Fatalf("%s, %s: the origin changed", what, op)
			}
		}
	}
	umount(t, smnt)
	check("store filesystem unmounted", "zeroed")
	run(t, "mount", "/dev/mapper/stor", smnt)
	check("store filesystem mounted", "inode", "immutable", "moved")
	if got := fileSum(t, filler); got != fillerSum {
		t.Fatalf("the file of zeros that took the store's old blocks was written")
	}
	if s := v.safetyStatus(); s.Phase != "prepared" {
		t.Errorf("after the refusals: phase %s, want prepared", s.Phase)
	}
	// The way out the hint names.
	v.must("drop", "sys")
	if got := deviceSum(t, ubd(0)); got != orig {
		t.Fatalf("after drop the origin changed")
	}
	if got := fileSum(t, filler); got != fillerSum {
		t.Fatalf("after drop the file of zeros changed")
	}
	v.must("detach", "sys")
	umount(t, smnt)
}

// readRaw reads n bytes of dev at off with O_DIRECT (below any page cache).
func readRaw(t testing.TB, dev string, off int64, n int) []byte {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	must(t, err)
	defer f.Close()
	b := alignedBuf(t, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("read %s at %d: %v", dev, off, err)
	}
	return b
}
