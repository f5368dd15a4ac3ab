//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Guest disks for TestWrite:
//   /dev/ubda   64 MiB  the system origin: image A (ext4 with files)
//   /dev/ubdb  256 MiB  userdata: the filesystem that holds the store

// writeResult is the subset of `snapctl write --json` the test reads.
type writeResult struct {
	SchemaVersion int    `json:"schema_version"`
	Chunks        uint64 `json:"chunks"`
	Changed       uint64 `json:"changed_chunks"`
	Written       int64  `json:"written_bytes"`
	Verified      bool   `json:"verified"`
}

// TestWrite: `snapctl write` into an update-mode volume whose store
// `prepare --size auto --new-image` sized exactly. A run killed (SIGKILL)
// after its first write is finished by a second run; the volume reads back
// equal to the image, the store holds exactly the chunks that differ, and
// commit leaves the origin byte-identical to the image. It refuses an image
// larger than the volume (nothing written), a checkpoint-mode volume and a
// volume without a snapshot.
func TestWrite(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}, {Size: 256 << 20}}}) {
		return
	}
	a, b := makeImages(t)
	sumA, sumB := deviceSum(t, ubd(0)), deviceSum(t, b)
	changed := chunksDiffering(t, a, b, 4096)
	if changed < 3 {
		t.Fatalf("images A and B differ in %d chunks; the kill needs at least 3", changed)
	}
	ud := newVolume(t, "userdata")
	ud.must("attach", "userdata", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/userdata")
	mnt := mountFS(t, "/dev/mapper/userdata")

	sys := &volume{t: t, name: "sys", state: ud.state}
	t.Cleanup(func() { removeDevices(t, "sys") })
	_, errOut, code := sys.snapctl("write", "sys", b)
	if code != 4 || !strings.Contains(errOut, "unknown") {
		t.Errorf("write into an unknown volume: exit %d, want 4\n%s", code, errOut)
	}
	store := filepath.Join(mnt, "ota.cow")
	sys.must("prepare", "sys", "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "auto", "--new-image", b)

	// An image larger than the volume: refused, nothing written.
	big := filepath.Join(t.TempDir(), "big.img")
	must(t, exec.Command("cp", b, big).Run())
	must(t, os.Truncate(big, 64<<20+4096))
	if _, errOut, code := sys.snapctl("write", "sys", big); code != 4 || !strings.Contains(errOut, "67112960 bytes, the volume only 67108864") {
		t.Errorf("write of an image larger than the volume: exit %d, want 4 naming both sizes\n%s", code, errOut)
	}
	if s := sys.status(); s.Usage == nil || s.Usage.DataChunks != 0 {
		t.Errorf("after the refused write: usage %+v, want 0 data chunks", s.Usage)
	}

	// Killed at its second write request: some chunks are in, not all.
	cmd := exec.Command(snapctlBin, "write", "sys", b, "--state-dir", sys.state)
	cmd.Env = append(os.Environ(), "SNAPCTL_TEST_CRASH_AFTER=2")
	out, err := cmd.CombinedOutput()
	t.Logf("$ SNAPCTL_TEST_CRASH_AFTER=2 snapctl write sys %s\n%s", b, out)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("write with the crash hook: %v, want killed by SIGKILL", err)
	}
	s := sys.status()
	if s.Usage == nil || s.Usage.State != "active" || s.Usage.DataChunks == 0 || s.Usage.DataChunks >= changed {
		t.Fatalf("after the killed write: usage %+v, want some of the %d changed chunks", s.Usage, changed)
	}
	before := s.Usage.DataChunks
	t.Logf("the killed write left %d of %d changed chunks in the store", before, changed)

	// The re-run finishes: only what still differs, then the read-back.
	stdout, errOut, code := sys.snapctl("write", "sys", b, "--json")
	if code != 0 {
		t.Fatalf("write after the kill: exit %d\n%s", code, errOut)
	}
	var r writeResult
	must(t, json.Unmarshal([]byte(stdout), &r))
	if r.SchemaVersion != 1 || !r.Verified || r.Changed != changed-before || r.Written != int64(r.Changed)*4096 || r.Chunks != 64<<20/4096 {
		t.Errorf("write after the kill: %+v, want verified, %d changed chunks of %d", r, changed-before, 64<<20/4096)
	}
	for _, p := range []string{"writing sys: 100%", "verifying sys: 100%"} {
		if !strings.Contains(errOut, p) {
			t.Errorf("write's progress on stderr lacks %q:\n%s", p, errOut)
		}
	}
	if s := sys.status(); s.Usage == nil || s.Usage.State != "active" || s.Usage.DataChunks != changed {
		t.Errorf("after the write: usage %+v, want exactly the %d changed chunks", s.Usage, changed)
	}
	if got := deviceSum(t, "/dev/mapper/sys"); got != sumB {
		t.Fatal("/dev/mapper/sys after the write differs from image B")
	}
	if got := deviceSum(t, ubd(0)); got != sumA {
		t.Fatal("the origin changed before the commit")
	}
	// Again: nothing differs, nothing is written.
	must(t, json.Unmarshal([]byte(sys.must("write", "sys", b, "--json")), &r))
	if r.Changed != 0 || r.Written != 0 || !r.Verified {
		t.Errorf("a third write: %+v, want nothing written", r)
	}

	sys.must("commit", "sys")
	if got := deviceSum(t, ubd(0)); got != sumB {
		t.Fatal("after commit the origin differs from image B")
	}
	if _, errOut, code := sys.snapctl("write", "sys", b); code != 4 || !strings.Contains(errOut, "only attached") {
		t.Errorf("write into an attached volume: exit %d, want 4\n%s", code, errOut)
	}
	sys.must("detach", "sys")

	// A checkpoint-mode volume: its writes land on the origin.
	ud.must("prepare", "userdata", "--store", filepath.Join(mnt, ".cp-store"), "--size", "16M")
	img := filepath.Join(t.TempDir(), "ud.img")
	must(t, os.WriteFile(img, bytes.Repeat([]byte{7}, 1<<20), 0o644))
	if _, errOut, code := ud.snapctl("write", "userdata", img); code != 4 || !strings.Contains(errOut, "checkpoint mode") || !strings.Contains(errOut, "--mode update") {
		t.Errorf("write into a checkpoint-mode volume: exit %d, want 4 with a hint\n%s", code, errOut)
	}
	ud.must("commit", "userdata")
	umount(t, mnt)
	fsck(t, "/dev/mapper/userdata")
	ud.must("detach", "userdata")
}

// chunksDiffering counts the chunks in which image b differs from image a
// (same size).
func chunksDiffering(t testing.TB, a, b string, chunk int) uint64 {
	t.Helper()
	ab, err := os.ReadFile(a)
	must(t, err)
	bb, err := os.ReadFile(b)
	must(t, err)
	if len(ab) != len(bb) {
		t.Fatalf("images %s and %s differ in size", a, b)
	}
	var n uint64
	for off := 0; off < len(bb); off += chunk {
		end := min(off+chunk, len(bb))
		if !bytes.Equal(ab[off:end], bb[off:end]) {
			n++
		}
	}
	return n
}
