//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Guest disks of the --skip-free tests:
//   /dev/ubda  400 MiB  xfs (xfsprogs refuses less than 300 MB, and its log
//                       takes 64 MiB)
//   /dev/ubdb  256 MiB  ext4
//   /dev/ubdc   64 MiB  f2fs (refused: no GETFSMAP)

// sfStatus is the part of `snapctl status --json` these tests read.
type sfStatus struct {
	Phase string `json:"phase"`
	Store *struct {
		Bytes  uint64 `json:"bytes"`
		Seeded *struct {
			Areas   uint64 `json:"areas"`
			Seeds   uint64 `json:"seeds"`
			Objects uint64 `json:"objects"`
		} `json:"seeded"`
	} `json:"store"`
	Usage *struct {
		State     string  `json:"state"`
		Allocated uint64  `json:"allocated_sectors"`
		Total     uint64  `json:"total_sectors"`
		Data      uint64  `json:"data_chunks"`
		Left      uint64  `json:"chunks_left"`
		Percent   float64 `json:"percent_full"`
		Seeded    uint64  `json:"seeded_chunks"`
	} `json:"usage"`
}

// cowTableOf is the live table of the volume's NAME-cow.
func cowTableOf(t testing.TB, v *volume) string {
	t.Helper()
	for _, d := range v.status().Devices {
		if d.Name == v.name+"-cow" {
			return d.Table
		}
	}
	t.Fatalf("%s-cow does not exist", v.name)
	return ""
}

func sfStatusOf(t testing.TB, v *volume) sfStatus {
	t.Helper()
	var s sfStatus
	must(t, json.Unmarshal([]byte(v.must("status", v.name, "--json")), &s))
	return s
}

// raceWriter writes small files into dir one after another, each with
// fsync, and logs when each fsync returned: a file logged before a moment
// was durable on the filesystem before it.
type raceWriter struct {
	t    testing.TB
	dir  string
	stop chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	done []raceFile
}

type raceFile struct {
	name string
	sum  string
	at   time.Time
}

func startWriter(t testing.TB, dir string, seed int) *raceWriter {
	w := &raceWriter{t: t, dir: dir, stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			name := fmt.Sprintf("race-%d-%05d", seed, i)
			b := pattern(seed*100000+i, 16<<10+i%7*4096)
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			if err == nil {
				_, err = f.Write(b)
				if err == nil {
					err = f.Sync()
				}
				err = joinClose(err, f)
			}
			if err != nil {
				t.Errorf("race writer: %s: %v", name, err)
				return
			}
			h := sha256.Sum256(b)
			w.mu.Lock()
			w.done = append(w.done, raceFile{name: name, sum: hex.EncodeToString(h[:]), at: time.Now()})
			w.mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	return w
}

func joinClose(err error, f *os.File) error {
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// finish stops the writer and returns what it completed.
func (w *raceWriter) finish() []raceFile {
	close(w.stop)
	w.wg.Wait()
	return w.done
}

// before is the files whose fsync returned before t.
func before(files []raceFile, t time.Time) []raceFile {
	var out []raceFile
	for _, f := range files {
		if f.at.Before(t) {
			out = append(out, f)
		}
	}
	return out
}

// fsckFS checks the filesystem on dev, read-only. An xfs image taken
// under a freeze (the snapshot's point in time, rolled back to) holds a
// log that mounting replays, and xfs_repair -n ignores it and reports
// what the replay would fix: mount and unmount it first, as any
// snapshot of a frozen xfs needs.
func fsckFS(t testing.TB, fs, dev string) {
	t.Helper()
	cmd := exec.Command("e2fsck", "-fn", dev)
	if fs == "xfs" {
		dir := t.TempDir()
		run(t, "mount", dev, dir)
		run(t, "umount", dir)
		cmd = exec.Command("xfs_repair", "-n", dev)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(cmd.Args, " "), err, out)
	}
}

// mkfsOn makes a filesystem of type fs on dev.
func mkfsOn(t testing.TB, fs, dev string) {
	t.Helper()
	switch fs {
	case "ext4":
		// No lazy initialisation: the kernel would zero the inode tables
		// in the background after the mount, and every such write to a
		// chunk in use is copied into the store.
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
	case "xfs":
		run(t, "mkfs.xfs", "-q", "-f", dev)
	case "f2fs":
		run(t, "mkfs.f2fs", "-q", "-f", dev)
	}
}

// writeNew writes files of 1 MiB random data into dir until total bytes.
func writeNew(t testing.TB, dir string, total int64, seed int64) {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	b := make([]byte, 1<<20)
	for i := 0; int64(i)<<20 < total; i++ {
		r.Read(b)
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("big-%d-%04d", seed, i)), b, 0o644))
	}
	run(t, "sync")
}

// notFrozen fails the test if the filesystem at mnt is frozen: FITHAW of a
// filesystem that is not frozen fails with EINVAL (fsfreeze -u would thaw
// a frozen one, which the test then reports).
func notFrozen(t testing.TB, mnt string) {
	t.Helper()
	out, err := exec.Command("fsfreeze", "--unfreeze", mnt).CombinedOutput()
	if err == nil {
		t.Fatalf("%s was still frozen (fsfreeze --unfreeze succeeded)", mnt)
	}
	if !strings.Contains(string(out), "Invalid argument") {
		t.Fatalf("fsfreeze --unfreeze %s: %v\n%s", mnt, err, out)
	}
}

// TestSkipFree proves prepare --skip-free on ext4 and xfs, each with the
// store on the volume's own filesystem, while a writer races the freeze:
// the store gets seeds and stays far from full although new files well
// over its size are written; rollback brings back every file present at
// prepare time, and every file whose fsync returned before prepare began,
// and fsck is clean; a second round commits and the changes stay. It also
// proves the refusals: update mode, an unmounted volume, f2fs.
func TestSkipFree(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 400 << 20}, {Size: 256 << 20}, {Size: 64 << 20}}}) {
		return
	}
	for _, c := range []struct{ fs, dev, merge string }{{"ext4", ubd(1), "kernel"}, {"xfs", ubd(0), "userspace"}} {
		t.Run(c.fs, func(t *testing.T) {
			v := newVolume(t, "vol")
			v.must("attach", "vol", "--origin", c.dev)
			mkfsOn(t, c.fs, "/dev/mapper/vol")
			mnt := mountFS(t, "/dev/mapper/vol")
			populate(t, mnt, 20, 1)
			run(t, "sync")
			store := filepath.Join(mnt, ".snapctl-store")
			want := tree(t, mnt)

			// Refused while unmounted: the free map comes from the mounted
			// filesystem.
			umount(t, mnt)
			if _, errOut, code := v.snapctl("prepare", "vol", "--store", "/tmp/sf-unmounted", "--skip-free"); code != 4 || !strings.Contains(errOut, "/dev/mapper/vol") || !strings.Contains(errOut, "mount") {
				t.Fatalf("prepare --skip-free unmounted: exit %d, want 4 naming the device and saying to mount it\n%s", code, errOut)
			}
			run(t, "mount", "/dev/mapper/vol", mnt)
			if _, errOut, code := v.snapctl("prepare", "vol", "--mode", "update", "--size", "8M", "--store", "/tmp/sf-update", "--skip-free"); code != 4 || !strings.Contains(errOut, "checkpoint") {
				t.Fatalf("prepare --skip-free in update mode: exit %d, want 4 saying checkpoint mode only\n%s", code, errOut)
			}

			w := startWriter(t, mnt, 1)
			time.Sleep(200 * time.Millisecond)
			start := time.Now()
			out := v.must("prepare", "vol", "--store", store, "--skip-free")
			end := time.Now()
			time.Sleep(200 * time.Millisecond)
			raced := w.finish()
			var gap time.Duration
			for i := 1; i < len(raced); i++ {
				gap = max(gap, raced[i].at.Sub(raced[i-1].at))
			}
			t.Logf("prepare --skip-free took %v (the racing writer's longest pause: %v):\n%s", end.Sub(start), gap, out)
			pre, after := before(raced, start), len(raced)-len(before(raced, end))
			if len(pre) == 0 || after == 0 {
				t.Fatalf("race writer: %d files done before prepare, %d after: want some of each", len(pre), after)
			}
			run(t, "sync")
			s := sfStatusOf(t, v)
			if s.Phase != "prepared" || s.Store == nil || s.Store.Seeded == nil || s.Store.Seeded.Seeds == 0 || s.Usage == nil || s.Usage.Seeded != s.Store.Seeded.Seeds {
				t.Fatalf("after prepare --skip-free: %+v", s)
			}
			seeded := s.Store.Seeded
			t.Logf("%s: store %d bytes, %d seeds in %d areas, %d kernel exceptions; usage %+v", c.fs, s.Store.Bytes, seeded.Seeds, seeded.Areas, seeded.Objects, *s.Usage)
			if s.Usage.Total != s.Store.Bytes/512 {
				t.Fatalf("usage total %d sectors, want the store file's %d (seed slots left out)", s.Usage.Total, s.Store.Bytes/512)
			}

			// New files well over the store's size, overwrites, deletions.
			var st syscall.Statfs_t
			must(t, syscall.Statfs(mnt, &st))
			free := int64(st.Bavail) * int64(st.Bsize)
			big := min(int64(s.Store.Bytes)*2, free-24<<20)
			if big < int64(s.Store.Bytes)*3/2 {
				t.Fatalf("the filesystem has %d bytes free, too little to write 1.5 times the store (%d bytes)", free, s.Store.Bytes)
			}
			writeNew(t, mnt, big, 2)
			change(t, mnt)
			s = sfStatusOf(t, v)
			if s.Usage == nil || s.Usage.State != "active" || s.Usage.Percent >= 90 {
				t.Fatalf("after writing %d bytes into a %d-byte seeded store: usage %+v, want active and far from full", big, s.Store.Bytes, s.Usage)
			}
			t.Logf("%s: after writing %d bytes of new files, overwrites and deletions: %d data chunks, %.1f%% of the store", c.fs, big, s.Usage.Data, s.Usage.Percent)

			umount(t, mnt)
			// Deactivate and activate (a reboot): NAME-cow comes out the
			// same from the record, and the store check reads the seeded
			// areas through it.
			cowBefore := cowTableOf(t, v)
			v.must("deactivate", "vol")
			v.must("activate", "vol")
			if got := cowTableOf(t, v); got != cowBefore || !strings.Contains(got, " zero") {
				t.Fatalf("vol-cow after deactivate + activate:\n%s\nwant the table before:\n%s", got, cowBefore)
			}
			if c.merge == "userspace" {
				v.must("rollback", "vol") // the default: the userspace merge
			} else {
				v.must("rollback", "vol", "--kernel")
			}
			if s := sfStatusOf(t, v); s.Phase != "attached" {
				t.Fatalf("after the rollback: phase %s", s.Phase)
			}
			fsckFS(t, c.fs, "/dev/mapper/vol")
			run(t, "mount", "/dev/mapper/vol", mnt)
			got := tree(t, mnt, ".snapctl-store")
			for k, w := range withoutStore(want, ".snapctl-store") {
				if got[k] != w {
					t.Errorf("%s after rollback: content differs or missing", k)
				}
			}
			for _, f := range pre {
				if g := got[f.name]; g != f.sum {
					t.Errorf("%s (fsync returned before prepare began) after rollback: sum %q, want %q", f.name, g, f.sum)
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok && !strings.HasPrefix(k, "race-") {
					t.Errorf("%s exists after the rollback", k)
				}
			}
			if t.Failed() {
				t.FailNow()
			}
			t.Logf("%s: rollback (%s merge): %d files and %d raced files back, fsck clean", c.fs, c.merge, len(want), len(pre))
			v.must("activate", "vol") // deletes the store file that came back

			// Second round: commit keeps the changes.
			v.must("prepare", "vol", "--store", store, "--skip-free")
			writeNew(t, mnt, 8<<20, 3)
			changed := tree(t, mnt, ".snapctl-store")
			v.must("commit", "vol")
			sameTree(t, tree(t, mnt), changed)
			umount(t, mnt)
			fsckFS(t, c.fs, "/dev/mapper/vol")
			v.must("detach", "vol")
		})
	}
	t.Run("f2fs-and-grow", func(t *testing.T) {
		v := newVolume(t, "vf")
		v.must("attach", "vf", "--origin", ubd(2))
		mkfsOn(t, "f2fs", "/dev/mapper/vf")
		mnt := mountFS(t, "/dev/mapper/vf")
		_, errOut, code := v.snapctl("prepare", "vf", "--store", filepath.Join(mnt, "store"), "--size", "8M", "--skip-free")
		if code != 4 || !strings.Contains(errOut, "f2fs") || !strings.Contains(errOut, "/dev/mapper/vf") || !strings.Contains(errOut, "without --skip-free") {
			t.Fatalf("prepare --skip-free on f2fs: exit %d, want 4 naming f2fs, the device and what to do\n%s", code, errOut)
		}
		if s := sfStatusOf(t, v); s.Phase != "attached" {
			t.Fatalf("after the refusal: phase %s", s.Phase)
		}
		if _, err := os.Stat(filepath.Join(mnt, "store")); !os.IsNotExist(err) {
			t.Fatalf("store file after the refusal: %v", err)
		}

		// A seeded store on another filesystem (this f2fs) grows like any
		// other: the file grows, and its new chunks follow the seeded
		// areas in NAME-cow. (A store on the volume's own filesystem
		// cannot grow, seeded or not.)
		v2 := newVolume(t, "vol")
		v2.must("attach", "vol", "--origin", ubd(1))
		mnt2 := mountFS(t, "/dev/mapper/vol")
		v2.must("prepare", "vol", "--store", filepath.Join(mnt, "store"), "--size", "8M", "--skip-free")
		s := sfStatusOf(t, v2)
		v2.must("grow", "vol", "--by", "4M")
		if g := sfStatusOf(t, v2); g.Usage == nil || s.Usage == nil || g.Usage.Total != s.Usage.Total+8192 || g.Usage.Seeded == 0 || g.Usage.Seeded != s.Usage.Seeded {
			t.Fatalf("after grow --by 4M: usage %+v, want total %d sectors and the same seeds", g.Usage, s.Usage.Total+8192)
		}
		writeNew(t, mnt2, 16<<20, 5)
		if g := sfStatusOf(t, v2); g.Usage == nil || g.Usage.State != "active" {
			t.Fatalf("after 16 MiB of new files into the grown 12 MiB store: usage %+v", g.Usage)
		}
		v2.must("commit", "vol")
		umount(t, mnt2)
		fsckFS(t, "ext4", "/dev/mapper/vol")
		v2.must("detach", "vol")
	})
}

// TestSkipFreeCrash kills snapctl (SIGKILL) at every step of a --skip-free
// prepare (store on the volume's own ext4, which prepare freezes) and of
// the rollback of a seeded store, then runs `snapctl activate --wait`: the
// filesystem is never left frozen, and the volume ends attached with every
// file as it was at prepare time (a prepare undone, or a rollback
// finished), or prepared (the prepare completed). Every step the
// completing run announced must have been a kill point.
func TestSkipFreeCrash(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 96 << 20}}}) {
		return
	}
	v := newVolume(t, "vol")
	v.must("attach", "vol", "--origin", ubd(0))
	mkfsOn(t, "ext4", "/dev/mapper/vol")
	mnt := mountFS(t, "/dev/mapper/vol")
	populate(t, mnt, 10, 1)
	store := filepath.Join(mnt, ".snapctl-store")
	want := tree(t, mnt)
	var table []string
	for _, op := range []string{"prepare", "rollback"} {
		kills := 0
		for k := 1; ; k++ {
			if k > 40 {
				t.Fatalf("%s: still killed at step 40; the loop does not end", op)
			}
			crash := []string{"SNAPCTL_TEST_CRASH_AFTER=" + fmt.Sprint(k)}
			prep := []string{"prepare", "vol", "--store", store, "--skip-free", "--state-dir", v.state}
			var out string
			var killed bool
			if op == "prepare" {
				out, killed, _ = snapctlEnv(t, crash, prep...)
			} else {
				v.must(prep[:len(prep)-2]...)
				writeNew(t, mnt, 2<<20, int64(k))
				must(t, os.Remove(filepath.Join(mnt, "f00")))
				must(t, os.WriteFile(filepath.Join(mnt, "f01"), pattern(k, 8192), 0o644))
				run(t, "sync")
				umount(t, mnt)
				out, killed, _ = snapctlEnv(t, crash, "rollback", "vol", "--state-dir", v.state)
			}
			if steps := hookSteps(out); killed && len(steps) != k {
				t.Fatalf("%s killed with SNAPCTL_TEST_CRASH_AFTER=%d after announcing %d steps:\n%s", op, k, len(steps), out)
			}
			if killed {
				kills++
				v.must("activate", "--wait", "vol")
			} else if !strings.Contains(out, "prepared") && !strings.Contains(out, "rolled back") {
				t.Fatalf("%s without a crash failed:\n%s", op, out)
			}
			if op == "rollback" {
				run(t, "mount", "/dev/mapper/vol", mnt)
			}
			notFrozen(t, mnt)
			s := sfStatusOf(t, v)
			wantPhase := "attached"
			if op == "prepare" && !killed {
				wantPhase = "prepared"
			}
			if s.Phase != wantPhase {
				t.Fatalf("%s killed at step %d: phase %s after activate, want %s", op, k, s.Phase, wantPhase)
			}
			if wantPhase == "attached" {
				v.must("activate", "vol") // deletes a store file a rollback brought back
				if _, err := os.Stat(store); !os.IsNotExist(err) {
					t.Fatalf("%s killed at step %d: store file left behind (%v)", op, k, err)
				}
			}
			sameTree(t, tree(t, mnt, ".snapctl-store"), withoutStore(want, ".snapctl-store"))
			if t.Failed() {
				t.Fatalf("%s killed at step %d: the files differ", op, k)
			}
			umount(t, mnt)
			fsck(t, "/dev/mapper/vol")
			run(t, "mount", "/dev/mapper/vol", mnt)
			res := "completed (no step left to kill)"
			if m := hookKilledLine.FindStringSubmatch(out); killed && m != nil {
				res = "killed at " + m[2] + ", recovered by activate"
			}
			table = append(table, fmt.Sprintf("| %s | %d | %s | %s |", op, k, res, s.Phase))
			if wantPhase == "prepared" {
				v.must("commit", "vol")
			}
			if !killed {
				if n := len(hookSteps(out)); n == 0 || kills != n {
					t.Fatalf("%s: %d kill points covered, but the completing run announced %d steps (want as many, and at least 1)", op, kills, n)
				}
				t.Logf("%s --skip-free: %d kill points covered", op, kills)
				break
			}
		}
	}
	t.Logf("crash matrix:\n| operation | killed at step | result | phase after |\n|---|---|---|---|\n%s", strings.Join(table, "\n"))
}
