//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// Guest disks for TestLiveMerge:
//   /dev/ubda   32 MiB  origin of "live": image A (ext4 with files)
//   /dev/ubdb   32 MiB  origin of "kern": a copy of image A
//   /dev/ubdc   96 MiB  attached as "stor", ext4, holds the store files

// TestLiveMerge proves the live userspace merge of an update-mode commit:
//   - image B written into "live" (only the chunks that differ from A),
//     mounted read-only; a reader hashes every file of the mount again and
//     again (dropping the page cache each time, so the reads reach the
//     device) while `snapctl commit` runs, and never sees a difference; the
//     commit says it ran the live userspace merge, and the raw origin ends
//     byte-identical to B;
//   - the same update into "kern", committed with --kernel: its origin ends
//     byte-identical to the live merge's;
//   - the live commit, with the read-only mount held, killed at every step
//     (SNAPCTL_TEST_CRASH_AFTER=k) and finished by `snapctl activate`: the
//     origin is the new image, the mount reads it, the stack is gone;
//   - mounted read-write, the commit runs the kernel's snapshot-merge and
//     says so.
func TestLiveMerge(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 32 << 20}, {Size: 96 << 20}}}) {
		return
	}
	a, b := makeImages(t)
	sumA, sumB := fileSum(t, a), fileSum(t, b)
	run(t, "dd", "if="+a, "of="+ubd(1), "bs=1M", "oflag=direct", "status=none")
	st := newVolume(t, "stor")
	st.must("attach", "stor", "--origin", ubd(2))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
	smnt := mountFS(t, "/dev/mapper/stor")

	// prepareImage prepares volume name (origin dev, holding image from)
	// in update mode, its store sized exactly for image to (or size), and
	// writes image to over it.
	prepareImage := func(v *volume, dev, store, from, to string, size ...string) {
		t.Helper()
		sz := []string{"--size", "auto", "--new-image", to}
		if len(size) > 0 {
			sz = []string{"--size", size[0]}
		}
		v.must(append([]string{"prepare", v.name, "--origin", dev, "--mode", "update", "--store", filepath.Join(smnt, store)}, sz...)...)
		writeDelta(t, "/dev/mapper/"+v.name, from, to, 4096)
	}

	live := newVolume(t, "live")
	prepareImage(live, ubd(0), "live.cow", a, b)
	mnt := mountFS(t, "/dev/mapper/live", "-o", "ro,noload")
	want := tree(t, mnt)
	if len(want) == 0 {
		t.Fatal("image B has no files")
	}

	// The reader: every pass drops the page cache and hashes every file.
	var (
		mu       sync.Mutex
		passes   int
		diffs    []string
		readErrs []string
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
			got, err := hashTree(mnt)
			mu.Lock()
			if err != nil {
				readErrs = append(readErrs, err.Error())
			} else if d := treeDiff(want, got); d != "" {
				diffs = append(diffs, d)
			}
			passes++
			mu.Unlock()
		}
	}()
	waitPasses := func(n int) {
		for {
			mu.Lock()
			p := passes
			mu.Unlock()
			if p >= n {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitPasses(1)
	mu.Lock()
	before := passes
	mu.Unlock()
	out := live.must("commit", "live")
	mu.Lock()
	during := passes - before
	mu.Unlock()
	waitPasses(before + during + 2) // and after the switch to linear
	close(stop)
	<-done
	t.Logf("reader: %d passes over %d files, %d of them while the commit ran", passes, len(want), during)
	if len(diffs) > 0 || len(readErrs) > 0 {
		t.Fatalf("the read-only mount saw a difference during the live merge: %v %v", diffs, readErrs)
	}
	if !strings.Contains(out, "userspace merge, live") {
		t.Fatalf("commit of a read-only mounted volume did not run the live userspace merge:\n%s", out)
	}
	if s := live.status(); s.Phase != "attached" || len(devicesOf(t, "live")) != 1 {
		t.Fatalf("after the live commit: phase %s, devices %v; want attached, live alone", s.Phase, devicesOf(t, "live"))
	}
	if got := deviceSum(t, ubd(0)); got != sumB {
		t.Fatal("after the live commit the raw origin differs from image B")
	}
	if ro := strings.TrimSpace(run(t, "blockdev", "--getro", "/dev/mapper/live")); ro != "0" {
		t.Errorf("/dev/mapper/live is left read-only (blockdev --getro: %s)", ro)
	}

	// The kernel merge of the same update.
	kern := newVolume(t, "kern")
	prepareImage(kern, ubd(1), "kern.cow", a, b)
	if out := kern.must("commit", "kern", "--kernel"); !strings.Contains(out, "kernel merge") {
		t.Fatalf("commit --kernel did not say it ran the kernel merge:\n%s", out)
	}
	if got, live := deviceSum(t, ubd(1)), deviceSum(t, ubd(0)); got != live || got != sumB {
		t.Fatal("the kernel merge and the live userspace merge of the same update left different origins")
	}
	kern.must("detach", "kern")

	// The live commit killed at every step, the read-only mount held.
	cur := b
	kills := 0
	for k := 1; ; k++ {
		if k > 20 {
			t.Fatal("still killed at step 20; the loop does not end")
		}
		next, nextSum := a, sumA
		if cur == a {
			next, nextSum = b, sumB
		}
		umount(t, mnt)
		prepareImage(live, ubd(0), fmt.Sprintf("kill-%d.cow", k), cur, next)
		run(t, "mount", "-o", "ro,noload", "/dev/mapper/live", mnt)
		wantNext := tree(t, mnt)
		out, killed, code := snapctlEnv(t, []string{"SNAPCTL_TEST_CRASH_AFTER=" + fmt.Sprint(k)}, "commit", "live", "--state-dir", live.state)
		if !killed && code != 0 {
			t.Fatalf("commit without a kill failed (exit %d):\n%s", code, out)
		}
		if killed {
			kills++
			live.must("activate", "--wait", "live")
		}
		s := live.status()
		if s.Phase != "attached" || len(devicesOf(t, "live")) != 1 {
			t.Fatalf("killed at step %d: phase %s, devices %v after activate; want attached, live alone", k, s.Phase, devicesOf(t, "live"))
		}
		if got := deviceSum(t, ubd(0)); got != nextSum {
			t.Fatalf("killed at step %d: the raw origin is not the new image after activate", k)
		}
		if d := treeDiff(wantNext, tree(t, mnt)); d != "" {
			t.Fatalf("killed at step %d: the read-only mount reads %s", k, d)
		}
		cur = next
		if !killed {
			if n := len(hookSteps(out)); n == 0 || n != kills {
				t.Fatalf("%d kill points covered, but the completing run announced %d steps", kills, n)
			}
			if !strings.Contains(out, "userspace merge, live") {
				t.Fatalf("the completing commit did not run the live userspace merge:\n%s", out)
			}
			t.Logf("live commit with a read-only mount: %d kill points covered (%v)", kills, hookSteps(out))
			break
		}
	}

	// Mounted read-write: the kernel merge.
	umount(t, mnt)
	next := a
	if cur == a {
		next = b
	}
	// The read-write mount writes to the snapshot too: room for it.
	prepareImage(live, ubd(0), "rw.cow", cur, next, "24M")
	run(t, "mount", "/dev/mapper/live", mnt)
	wantRW := tree(t, mnt)
	out = live.must("commit", "live")
	if !strings.Contains(out, "kernel merge: /dev/mapper/live is mounted read-write") {
		t.Fatalf("commit of a read-write mounted volume did not say it ran the kernel merge:\n%s", out)
	}
	if d := treeDiff(wantRW, tree(t, mnt)); d != "" {
		t.Fatalf("after the kernel merge under the read-write mount: %s", d)
	}
	umount(t, mnt)
	run(t, "e2fsck", "-fn", "/dev/mapper/live")
	if s := live.status(); s.Phase != "attached" {
		t.Fatalf("after the kernel merge: phase %s, want attached", s.Phase)
	}
	live.must("detach", "live")
	umount(t, smnt)
	st.must("detach", "stor")
}

// hashTree is the SHA-256 of every regular file under dir, for a reader
// that runs beside the test (no testing.T).
func hashTree(dir string) (map[string]string, error) {
	sums := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sums[rel] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	return sums, err
}

// treeDiff describes how got differs from want, or is "".
func treeDiff(want, got map[string]string) string {
	var d []string
	for f, s := range want {
		if g, ok := got[f]; !ok {
			d = append(d, f+" missing")
		} else if g != s {
			d = append(d, f+" changed")
		}
	}
	for f := range got {
		if _, ok := want[f]; !ok {
			d = append(d, f+" added")
		}
	}
	sort.Strings(d)
	return strings.Join(d, ", ")
}
