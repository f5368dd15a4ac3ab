//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
)

// Guest disks for the lifecycle tests:
//   /dev/ubda  256 MiB  the origin (ext4 made through /dev/mapper/data)
//   /dev/ubdb  256 MiB  a second device for the update-mode store's filesystem

// volume is a snapctl volume under test with its own state directory.
type volume struct {
	t     testing.TB
	name  string
	state string
}

func newVolume(t testing.TB, name string) *volume {
	v := &volume{t: t, name: name, state: t.TempDir()}
	t.Cleanup(func() { removeDevices(t, name) })
	return v
}

func (v *volume) snapctl(args ...string) (string, string, int) {
	v.t.Helper()
	return snapctl(v.t, append(args, "--state-dir", v.state)...)
}

func (v *volume) must(args ...string) string {
	v.t.Helper()
	return mustSnapctl(v.t, append(args, "--state-dir", v.state)...)
}

// status is the subset of `snapctl status --json` the tests read.
type status struct {
	Phase string `json:"phase"`
	Mode  string `json:"mode"`
	Store *struct {
		Path  string `json:"path"`
		Bytes uint64 `json:"bytes"`
	} `json:"store"`
	Extents int `json:"extents"`
	Devices []struct {
		Name  string `json:"name"`
		Table string `json:"table"`
	} `json:"devices"`
	Usage *struct {
		State      string  `json:"state"`
		DataChunks uint64  `json:"data_chunks"`
		Percent    float64 `json:"percent_full"`
	} `json:"usage"`
	Cleanup []string `json:"cleanup"`
}

func (v *volume) status() status {
	v.t.Helper()
	var s status
	out := v.must("status", v.name, "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		v.t.Fatalf("status --json: %v\n%s", err, out)
	}
	return s
}

// removeDevices removes name and its helper devices, whatever state a
// failed test left them in, so the leak check sees only real leaks.
func removeDevices(t testing.TB, name string) {
	for _, d := range []string{name, name + "-snap", name + "-real", name + "-base", name + "-cow"} {
		if ok, _ := dmtable.Exists(d); ok {
			dmtable.Resume(d)
			if err := dmtable.Remove(d); err != nil {
				t.Logf("cleanup: remove %s: %v", d, err)
			}
		}
	}
}

// mountFS mounts dev at a new directory and unmounts it at cleanup.
func mountFS(t testing.TB, dev string, opts ...string) string {
	t.Helper()
	dir := t.TempDir()
	args := append(append([]string{}, opts...), dev, dir)
	run(t, "mount", args...)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	return dir
}

func umount(t testing.TB, dir string) {
	t.Helper()
	run(t, "umount", dir)
}

// tree is the checksum of every regular file under dir but skip.
func tree(t testing.TB, dir string, skip ...string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		for _, s := range skip {
			if rel == s {
				return nil
			}
		}
		sums[rel] = fileSum(t, p)
		return nil
	})
	must(t, err)
	return sums
}

func fileSum(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sameTree(t testing.TB, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("file %s is missing", k)
		} else if g != w {
			t.Errorf("file %s: content differs from its checkpoint-time content", k)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("file %s should not exist", k)
		}
	}
}

// populate writes n files of random sizes and content.
func populate(t testing.TB, dir string, n int, seed int64) {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < n; i++ {
		b := make([]byte, 4096+r.Intn(1<<20))
		r.Read(b)
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), b, 0o644))
	}
	run(t, "sync")
}

// change overwrites, deletes and adds files: more than 10 MiB of writes.
func change(t testing.TB, dir string) {
	t.Helper()
	r := rand.New(rand.NewSource(99))
	for i := 0; i < 5; i++ {
		must(t, os.Remove(filepath.Join(dir, fmt.Sprintf("f%02d", i))))
	}
	for i := 5; i < 10; i++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), os.O_WRONLY, 0)
		must(t, err)
		b := make([]byte, 8192)
		r.Read(b)
		f.WriteAt(b, 1000)
		f.Close()
	}
	b := make([]byte, 12<<20)
	r.Read(b)
	must(t, os.WriteFile(filepath.Join(dir, "new"), b, 0o644))
	run(t, "sync")
}

func fsck(t testing.TB, dev string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", dev, err, out)
	}
}

// devicesOf lists the DM devices whose names start with prefix.
func devicesOf(t testing.TB, prefix string) []string {
	t.Helper()
	all, err := dmtable.List()
	must(t, err)
	var names []string
	for _, d := range all {
		if strings.HasPrefix(d.Name, prefix) {
			names = append(names, d.Name)
		}
	}
	return names
}

// TestLifecycleCheckpoint: attach, mkfs, files; prepare with the store on
// the same filesystem; change files; unmount; rollback: every file is back
// and e2fsck is clean. Then prepare again, change, commit (mounted): the
// changes stay, the store file is gone, no helper devices remain.
func TestLifecycleCheckpoint(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 256 << 20}}}) {
		return
	}
	v := newVolume(t, "data")
	v.must("attach", "data", "--origin", ubd(0))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/data")
	mnt := mountFS(t, "/dev/mapper/data")
	populate(t, mnt, 20, 1)
	store := filepath.Join(mnt, ".snapctl-store")
	before := tree(t, mnt)

	v.must("prepare", "data", "--store", store, "--size", "64M")
	s := v.status()
	if s.Phase != "prepared" || s.Mode != "checkpoint" || s.Extents == 0 {
		t.Fatalf("after prepare: phase %s mode %s extents %d", s.Phase, s.Mode, s.Extents)
	}
	change(t, mnt)
	s = v.status()
	if s.Usage == nil || s.Usage.State != "active" || s.Usage.DataChunks == 0 {
		t.Fatalf("after changes: usage %+v, want active with data chunks", s.Usage)
	}
	t.Logf("store usage after changes: %d chunks, %.1f%%", s.Usage.DataChunks, s.Usage.Percent)

	// Rollback refuses while mounted.
	if _, errOut, code := v.snapctl("rollback", "data"); code != 4 || !strings.Contains(errOut, "umount") {
		t.Fatalf("rollback while mounted: exit %d, want 4 with a hint to umount\n%s", code, errOut)
	}
	umount(t, mnt)
	v.must("rollback", "data")
	if s := v.status(); s.Phase != "attached" {
		t.Fatalf("after rollback: phase %s", s.Phase)
	}
	if d := devicesOf(t, "data"); len(d) != 1 {
		t.Fatalf("after rollback: devices %v, want only data", d)
	}
	fsck(t, "/dev/mapper/data")
	run(t, "mount", "/dev/mapper/data", mnt)
	sameTree(t, tree(t, mnt, ".snapctl-store"), withoutStore(before, ".snapctl-store"))
	// The store file came back with the rollback (it predates the
	// snapshot); the next snapctl command on the volume deletes it.
	v.must("activate", "data")
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("store %s after rollback + activate: %v, want it deleted", store, err)
	}

	// Commit keeps the changes, with the filesystem mounted.
	v.must("prepare", "data", "--store", store, "--size", "64M")
	change(t, mnt)
	after := tree(t, mnt, ".snapctl-store")
	v.must("commit", "data")
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("store %s after commit: %v, want it deleted", store, err)
	}
	sameTree(t, tree(t, mnt), after)
	if d := devicesOf(t, "data"); len(d) != 1 {
		t.Fatalf("after commit: devices %v, want only data", d)
	}
	umount(t, mnt)
	fsck(t, "/dev/mapper/data")
	v.must("detach", "data")
}

func withoutStore(m map[string]string, skip string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if k != skip {
			out[k] = v
		}
	}
	return out
}

// deviceSum is the SHA-256 of a whole block device or image.
func deviceSum(t testing.TB, p string) string {
	t.Helper()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	return fileSum(t, p)
}

// makeImages builds image A on /dev/ubda (ext4 with files) and as a file,
// and image B (A with files changed, deleted and added) as a file.
func makeImages(t testing.TB) (a, b string) {
	t.Helper()
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", ubd(0))
	m := mountFS(t, ubd(0))
	populate(t, m, 12, 7)
	umount(t, m)
	dir := t.TempDir()
	a, b = filepath.Join(dir, "A.img"), filepath.Join(dir, "B.img")
	run(t, "dd", "if="+ubd(0), "of="+a, "bs=1M", "status=none")
	run(t, "cp", a, b)
	mb := mountFS(t, b, "-o", "loop")
	change(t, mb)
	umount(t, mb)
	return a, b
}

// TestLifecycleUpdate: image A on the origin, the store on a second
// filesystem on its own attached device; write image B into
// /dev/mapper/NAME; commit: the raw origin is byte-identical to B. Again
// with rollback: byte-identical to A.
func TestLifecycleUpdate(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}, {Size: 256 << 20}}}) {
		return
	}
	a, b := makeImages(t)
	sumA, sumB := deviceSum(t, ubd(0)), deviceSum(t, b)
	if sumA == sumB {
		t.Fatal("images A and B are identical")
	}
	st := newVolume(t, "stor")
	st.must("attach", "stor", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
	smnt := mountFS(t, "/dev/mapper/stor")

	for _, outcome := range []string{"commit", "rollback"} {
		t.Run(outcome, func(t *testing.T) {
			v := newVolume(t, "sys")
			out := v.must("prepare", "sys", "--origin", ubd(0), "--mode", "update",
				"--store", filepath.Join(smnt, "ota.cow"), "--size", "auto", "--new-image", b)
			if !strings.Contains(out, "exact size") {
				t.Errorf("prepare --size auto did not say how it sized the store:\n%s", out)
			}
			writeDelta(t, "/dev/mapper/sys", a, b, 4096)
			if got := deviceSum(t, "/dev/mapper/sys"); got != sumB {
				t.Fatalf("/dev/mapper/sys after writing B differs from B")
			}
			if got := deviceSum(t, ubd(0)); got != sumA {
				t.Fatalf("the origin changed before the merge")
			}
			s := v.status()
			if s.Usage == nil || s.Usage.State != "active" {
				t.Fatalf("store usage %+v: want active (the auto size must hold the update)", s.Usage)
			}
			v.must(outcome, "sys")
			want := sumB
			if outcome == "rollback" {
				want = sumA
			}
			if got := deviceSum(t, ubd(0)); got != want {
				t.Fatalf("after %s the raw origin differs from the expected image", outcome)
			}
			if got := deviceSum(t, "/dev/mapper/sys"); got != want {
				t.Fatalf("after %s /dev/mapper/sys differs from the expected image", outcome)
			}
			if d := devicesOf(t, "sys"); len(d) != 1 {
				t.Fatalf("after %s: devices %v, want only sys", outcome, d)
			}
			if _, err := os.Stat(filepath.Join(smnt, "ota.cow")); !os.IsNotExist(err) {
				t.Fatalf("store after %s: %v, want deleted", outcome, err)
			}
			v.must("detach", "sys")
			// Put A back for the next outcome.
			run(t, "dd", "if="+a, "of="+ubd(0), "bs=1M", "oflag=direct", "status=none")
		})
	}
	umount(t, smnt)
}

// writeDelta writes into dev the chunks where image b differs from image a,
// as a delta updater does: the store was sized for exactly those.
func writeDelta(t testing.TB, dev, a, b string, chunk int) {
	t.Helper()
	ab, err := os.ReadFile(a)
	must(t, err)
	bb, err := os.ReadFile(b)
	must(t, err)
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	n := 0
	for off := 0; off < len(bb); off += chunk {
		end := min(off+chunk, len(bb))
		if off < len(ab) && string(ab[off:min(end, len(ab))]) == string(bb[off:end]) && end <= len(ab) {
			continue
		}
		if _, err := f.WriteAt(bb[off:end], int64(off)); err != nil {
			t.Fatalf("write %s at %d: %v", dev, off, err)
		}
		n++
	}
	must(t, f.Sync())
	t.Logf("delta update: wrote %d chunks of %d bytes", n, chunk)
}
