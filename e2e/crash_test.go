//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Guest disks for the crash tests:
//   /dev/ubda   32 MiB  the origin (raw pattern, no filesystem needed)
//   /dev/ubdb  128 MiB  attached as "stor", ext4, holds the store files

// snapctlEnv runs snapctl with extra environment; killed reports a death
// by signal (the crash-test hook kills with SIGKILL).
func snapctlEnv(t testing.TB, env []string, args ...string) (out string, killed bool, code int) {
	t.Helper()
	return binEnv(t, snapctlBin, env, args...)
}

// binEnv is snapctlEnv with the snapctl binary to run.
func binEnv(t testing.TB, bin string, env []string, args ...string) (out string, killed bool, code int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run snapctl: %v", err)
		}
		if ee.ExitCode() == -1 {
			return string(b), true, -1
		}
		return string(b), false, ee.ExitCode()
	}
	return string(b), false, 0
}

// scatter writes n 4 KiB chunks of fresh data at scattered chunk indexes
// of dev (seeded), and syncs.
func scatter(t testing.TB, dev string, n int, seed int64) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	size, err := f.Seek(0, 2)
	must(t, err)
	r := rand.New(rand.NewSource(seed))
	chunks := int(size / 4096)
	b := make([]byte, 4096)
	for i := 0; i < n; i++ {
		r.Read(b)
		if _, err := f.WriteAt(b, int64(r.Intn(chunks))*4096); err != nil {
			t.Fatalf("write %s: %v", dev, err)
		}
	}
	must(t, f.Sync())
}

// fill writes a deterministic pattern over the whole device.
func fill(t testing.TB, dev string, seed int) {
	t.Helper()
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	must(t, err)
	defer f.Close()
	size, err := f.Seek(0, 2)
	must(t, err)
	b := pattern(seed, 1<<20)
	for off := int64(0); off < size; off += int64(len(b)) {
		if _, err := f.WriteAt(b[:min(int64(len(b)), size-off)], off); err != nil {
			t.Fatal(err)
		}
	}
	must(t, f.Sync())
}

// storeFS attaches /dev/ubdb as "stor" with a fresh filesystem of type fs
// and mounts it; it returns the mount point.
func storeFS(t testing.TB, fs string) string {
	t.Helper()
	st := newVolume(t, "stor")
	st.must("attach", "stor", "--origin", ubd(1))
	switch fs {
	case "ext4":
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
	case "xfs":
		run(t, "mkfs.xfs", "-q", "-f", "/dev/mapper/stor")
	case "f2fs":
		run(t, "mkfs.f2fs", "-q", "-f", "/dev/mapper/stor")
	}
	return mountFS(t, "/dev/mapper/stor")
}

// TestCrashPoints kills snapctl (SIGKILL) at every step boundary of
// prepare, commit and rollback, in both modes, runs `snapctl activate`, and
// checks the volume ends in one of the two valid states with the data of
// that state: prepare is undone (origin unchanged), commit and rollback are
// finished (origin = new data, or = the prepare-time data). Each case must
// have been killed at every step its completing run announced, and at one
// at least. The default rollback (checkpoint) and commit (update) run the
// userspace merges; "--kernel" keeps the kernel's snapshot-merge proven.
func TestCrashPoints(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}}) {
		return
	}
	mnt := storeFS(t, "ext4")
	type outcome struct{ op, mode string }
	var table []string
	total := 0
	for _, c := range []outcome{{"prepare", "checkpoint"}, {"prepare", "update"}, {"commit", "checkpoint"}, {"rollback", "checkpoint"}, {"rollback --kernel", "checkpoint"}, {"commit", "update"}, {"commit --kernel", "update"}, {"rollback", "update"}} {
		kills := 0
		for k := 1; ; k++ {
			if k > 40 {
				t.Fatalf("%s %s: still killed at step 40; the loop does not end", c.mode, c.op)
			}
			v := newVolume(t, "vol")
			store := filepath.Join(mnt, fmt.Sprintf("store-%s-%s-%d", strings.ReplaceAll(c.op, " --", "-"), c.mode, k))
			v.must("attach", "vol", "--origin", ubd(0))
			fill(t, "/dev/mapper/vol", k)
			orig := deviceSum(t, "/dev/mapper/vol")
			prep := []string{"prepare", "vol", "--mode", c.mode, "--store", store, "--size", "16M", "--state-dir", v.state}
			var changed string
			crash := []string{"SNAPCTL_TEST_CRASH_AFTER=" + fmt.Sprint(k)}
			var out string
			var killed bool
			if c.op == "prepare" {
				out, killed, _ = snapctlEnv(t, crash, prep...)
			} else {
				v.must(prep[:len(prep)-2]...)
				scatter(t, "/dev/mapper/vol", 300, int64(k))
				changed = deviceSum(t, "/dev/mapper/vol")
				args := append(strings.Fields(c.op), "vol", "--state-dir", v.state)
				out, killed, _ = snapctlEnv(t, crash, args...)
			}
			if steps := hookSteps(out); killed && len(steps) != k {
				t.Fatalf("%s %s killed with SNAPCTL_TEST_CRASH_AFTER=%d after announcing %d steps:\n%s", c.mode, c.op, k, len(steps), out)
			}
			if killed {
				kills++
				v.must("activate", "--wait", "vol")
			} else if !strings.Contains(out, "prepared") && !strings.Contains(out, "committed") && !strings.Contains(out, "rolled back") {
				t.Fatalf("%s %s without a crash failed:\n%s", c.mode, c.op, out)
			}
			s := v.status()
			got := deviceSum(t, "/dev/mapper/vol")
			want, wantPhase := orig, "attached" // a rollback (any merge) ends at orig
			switch {
			case c.op == "prepare" && !killed:
				wantPhase = "prepared"
			case strings.HasPrefix(c.op, "commit"):
				want = changed
			}
			if s.Phase != wantPhase {
				t.Fatalf("%s %s killed at step %d: phase %s after activate, want %s", c.mode, c.op, k, s.Phase, wantPhase)
			}
			if got != want {
				t.Fatalf("%s %s killed at step %d: data of /dev/mapper/vol is not the expected image", c.mode, c.op, k)
			}
			devs := devicesOf(t, "vol")
			if wantPhase == "attached" && len(devs) != 1 {
				t.Fatalf("%s %s killed at step %d: devices %v left", c.mode, c.op, k, devs)
			}
			if wantPhase == "attached" {
				if _, err := os.Stat(store); !os.IsNotExist(err) {
					t.Fatalf("%s %s killed at step %d: store file left behind (%v)", c.mode, c.op, k, err)
				}
			}
			res := "killed, recovered by activate"
			if !killed {
				res = "completed (no step left to kill)"
			}
			table = append(table, fmt.Sprintf("| %s | %s | %d | %s | %s |", c.mode, c.op, k, res, s.Phase))
			if wantPhase == "prepared" {
				v.must("drop", "vol")
			}
			v.must("detach", "vol")
			if !killed {
				// The completing run announced every step of the
				// operation: each must have been a kill point.
				if n := len(hookSteps(out)); n == 0 || kills != n {
					t.Fatalf("%s %s: %d kill points covered, but the completing run announced %d steps (want as many, and at least 1)", c.mode, c.op, kills, n)
				}
				t.Logf("%s %s: %d kill points covered", c.mode, c.op, kills)
				total += kills
				break
			}
		}
	}
	t.Logf("%d kill points covered", total)
	t.Logf("crash matrix:\n| mode | operation | killed at step | result | phase after |\n|---|---|---|---|---|\n%s", strings.Join(table, "\n"))
}

// TestRebootMidMerge starts a checkpoint rollback (kernel merge) of a
// store with thousands of scattered chunks, cuts the guest's power in the
// middle of the merge, boots again, runs `snapctl activate --wait`: the
// origin ends byte-identical to its prepare-time image.
func TestRebootMidMerge(t *testing.T) {
	parallel(t)
	dirEnv := "SNAPCTL_E2E_DIR"
	switch os.Getenv(envPhase) {
	case "1":
		rebootPhase1(t, os.Getenv(dirEnv))
		return
	case "2":
		rebootPhase2(t, os.Getenv(dirEnv))
		return
	}
	if guest() {
		t.Fatal("no phase given")
	}
	m := NewMachine(t, Config{Disks: []Disk{{Size: 64 << 20}, {Size: 128 << 20}}})
	dir := t.TempDir()
	r := m.Run(t, RunOptions{Env: []string{envPhase + "=1", dirEnv + "=" + dir}, PowerCutOn: "E2E-POWER-CUT-NOW"})
	if !r.Cut {
		t.Fatalf("phase 1 did not reach the power cut (status %d):\n%s", r.Status, tail(r.Output, 80))
	}
	r = m.Run(t, RunOptions{Env: []string{envPhase + "=2", dirEnv + "=" + dir}})
	if r.Status != 0 || !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
		t.Fatalf("phase 2 failed (status %d):\n%s", r.Status, tail(r.Output, 120))
	}
}

func rebootPhase1(t *testing.T, dir string) {
	state := filepath.Join(dir, "state")
	sc := func(args ...string) string { return mustSnapctl(t, append(args, "--state-dir", state)...) }
	sc("attach", "stor", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
	mnt := filepath.Join(dir, "mnt")
	must(t, os.MkdirAll(mnt, 0o755))
	run(t, "mount", "/dev/mapper/stor", mnt)
	sc("attach", "data", "--origin", ubd(0))
	fill(t, "/dev/mapper/data", 42)
	must(t, os.WriteFile(filepath.Join(dir, "want"), []byte(deviceSum(t, "/dev/mapper/data")), 0o644))
	sc("prepare", "data", "--store", filepath.Join(mnt, "store"), "--size", "48M")
	scatter(t, "/dev/mapper/data", 6000, 1)
	sc("merge", "data", "--no-wait")
	out := sc("status", "data")
	if !strings.Contains(out, "chunks left to merge") {
		t.Fatalf("merge not under way after hand-over:\n%s", out)
	}
	t.Logf("status at the power cut:\n%s", out)
	fmt.Println("E2E-POWER-CUT-NOW")
	time.Sleep(time.Minute)
	t.Fatal("the power was not cut")
}

func rebootPhase2(t *testing.T, dir string) {
	state := filepath.Join(dir, "state")
	sc := func(args ...string) string { return mustSnapctl(t, append(args, "--state-dir", state)...) }
	t.Cleanup(func() { removeDevices(t, "data"); removeDevices(t, "stor") })
	out := sc("status", "data")
	if !strings.Contains(out, "merging") {
		t.Fatalf("after the power cut the volume is not merging:\n%s", out)
	}
	sc("activate", "stor")
	mnt := filepath.Join(dir, "mnt")
	run(t, "mount", "/dev/mapper/stor", mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	sc("activate", "--wait", "data")
	want, err := os.ReadFile(filepath.Join(dir, "want"))
	must(t, err)
	if got := deviceSum(t, ubd(0)); got != string(want) {
		t.Fatal("after the resumed merge the origin differs from its prepare-time image")
	}
	if s := sc("status", "data"); !strings.Contains(s, "data: attached") {
		t.Fatalf("volume not attached after the merge:\n%s", s)
	}
	if _, err := os.Stat(filepath.Join(mnt, "store")); !os.IsNotExist(err) {
		t.Fatalf("store file left after the merge: %v", err)
	}
	sc("detach", "data")
	exec.Command("umount", mnt).Run()
	sc("detach", "stor")
}

// TestGrow: a store far too small for the writes, kept valid by `grow`
// and by `monitor` (autoextend), with the store on xfs; then a rollback
// restores the prepare-time image exactly.
func TestGrow(t *testing.T) {
	parallel(t)
	// xfs refuses filesystems under 300 MB.
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}, {Size: 512 << 20}}}) {
		return
	}
	mnt := storeFS(t, "xfs")
	v := newVolume(t, "data")
	v.must("attach", "data", "--origin", ubd(0))
	fill(t, "/dev/mapper/data", 5)
	orig := deviceSum(t, "/dev/mapper/data")
	v.must("prepare", "data", "--store", filepath.Join(mnt, "store"), "--size", "2M")

	// grow by hand, then write more than the first size held
	scatter(t, "/dev/mapper/data", 200, 1)
	v.must("grow", "data", "--by", "4M")
	scatter(t, "/dev/mapper/data", 600, 2)
	if s := v.status(); s.Usage == nil || s.Usage.State != "active" {
		t.Fatalf("after grow: usage %+v, want active", s.Usage)
	}

	// monitor keeps a long write going
	mon := exec.Command(snapctlBin, "monitor", "data", "--state-dir", v.state, "--interval", "100ms", "--autoextend-threshold", "50", "--autoextend-percent", "100")
	var monOut bytes.Buffer
	mon.Stdout, mon.Stderr = &monOut, &monOut
	must(t, mon.Start())
	for i := 0; i < 40; i++ {
		scatter(t, "/dev/mapper/data", 100, int64(10+i))
		time.Sleep(60 * time.Millisecond)
	}
	mon.Process.Signal(os.Interrupt)
	mon.Wait()
	t.Logf("monitor:\n%s", monOut.String())
	s := v.status()
	if s.Usage == nil || s.Usage.State != "active" {
		t.Fatalf("after the long write under monitor: usage %+v, want active", s.Usage)
	}
	if !strings.Contains(monOut.String(), "grew by") {
		t.Fatalf("monitor never grew the store:\n%s", monOut.String())
	}
	t.Logf("store grew to %d bytes over %d extents; %d data chunks in use", s.Store.Bytes, s.Extents, s.Usage.DataChunks)
	v.must("rollback", "data")
	if got := deviceSum(t, "/dev/mapper/data"); got != orig {
		t.Fatal("after rollback the origin differs from its prepare-time image")
	}
	v.must("detach", "data")
}

// TestStoreF2FS: the store on f2fs (pinned, so f2fs's cleaner never moves
// its blocks) in update mode, committed.
func TestStoreF2FS(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 256 << 20}}}) {
		return
	}
	mods, err := os.ReadFile("/proc/modules")
	must(t, err)
	if !strings.Contains(string(mods), "f2fs ") {
		t.Fatal("the f2fs module did not load in the guest")
	}
	mnt := storeFS(t, "f2fs")
	v := newVolume(t, "sys")
	v.must("attach", "sys", "--origin", ubd(0))
	fill(t, "/dev/mapper/sys", 3)
	v.must("prepare", "sys", "--mode", "update", "--store", filepath.Join(mnt, "ota.cow"), "--size", "8M")
	out := run(t, "f2fs_io", "pinfile", "get", filepath.Join(mnt, "ota.cow"))
	if !strings.Contains(out, "pinned") || strings.Contains(out, "un-pinned") {
		t.Errorf("store on f2fs is not pinned: %s", out)
	}
	scatter(t, "/dev/mapper/sys", 500, 9)
	want := deviceSum(t, "/dev/mapper/sys")
	v.must("commit", "sys")
	if got := deviceSum(t, ubd(0)); got != want {
		t.Fatal("after commit the origin differs from what was written into the snapshot")
	}
	v.must("detach", "sys")
}

// TestCrashHookRelease: the crash hook exists only in test builds. On the
// host, the release binary (built as `make build` builds it) must not hold
// the hook's variables or messages, and the tagged binary the suite runs
// must. In the guest, the release binary runs attach, prepare, a write and
// commit with SNAPCTL_TEST_CRASH_AFTER=1 and SNAPCTL_TEST_CRASH_AT set to a
// step prepare reaches: each command must complete, saying nothing of the
// hook, and the volume end committed with the changed data. The tagged
// binary, under each variable alone, must be killed in the same prepare (or
// the test would prove nothing). Guest disks as for TestCrashPoints.
func TestCrashHookRelease(t *testing.T) {
	parallel(t)
	if !guest() {
		for _, b := range []struct {
			bin  string
			want bool
		}{{releaseBin, false}, {snapctlBin, true}} {
			img, err := os.ReadFile(b.bin)
			must(t, err)
			for _, s := range []string{"SNAPCTL_TEST_CRASH_AFTER", "SNAPCTL_TEST_CRASH_AT", "snapctl: test hook:"} {
				if got := bytes.Contains(img, []byte(s)); got != b.want {
					t.Errorf("%s holds %q: %v, want %v", filepath.Base(b.bin), s, got, b.want)
				}
			}
		}
	}
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}}) {
		return
	}
	mnt := storeFS(t, "ext4")
	const step = "prepare:cow"
	env := []string{"SNAPCTL_TEST_CRASH_AFTER=1", "SNAPCTL_TEST_CRASH_AT=" + step}
	v := newVolume(t, "vol")
	rel := func(args ...string) {
		t.Helper()
		out, killed, code := binEnv(t, releaseBin, env, append(args, "--state-dir", v.state)...)
		t.Logf("$ %s snapctl-release %s  (exit %d, killed %v)\n%s", strings.Join(env, " "), strings.Join(args, " "), code, killed, out)
		if killed || code != 0 || strings.Contains(out, "test hook") {
			t.Fatalf("the release binary with %v: snapctl %s: killed %v, exit %d, want it to complete and say nothing of the hook:\n%s", env, strings.Join(args, " "), killed, code, out)
		}
	}
	store := filepath.Join(mnt, "store")
	prep := []string{"prepare", "vol", "--store", store, "--size", "16M"}
	rel("attach", "vol", "--origin", ubd(0))
	fill(t, "/dev/mapper/vol", 7)
	rel(prep...)
	if s := v.status(); s.Phase != "prepared" {
		t.Fatalf("after the release binary's prepare: phase %s, want prepared", s.Phase)
	}
	scatter(t, "/dev/mapper/vol", 300, 7)
	changed := deviceSum(t, "/dev/mapper/vol")
	rel("commit", "vol")
	if s := v.status(); s.Phase != "attached" || deviceSum(t, "/dev/mapper/vol") != changed {
		t.Fatalf("after the release binary's commit: phase %s, the data changed: %v; want attached with the changed data", s.Phase, deviceSum(t, "/dev/mapper/vol") == changed)
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Fatalf("store file left after the release binary's commit (%v)", err)
	}

	// The same prepare with the tagged binary, under each variable alone.
	for _, c := range []struct {
		env, at string
		n       int
	}{{env[0], "", 1}, {env[1], step, 0}} {
		out, killed, code := snapctlEnv(t, []string{c.env}, append(prep, "--state-dir", v.state)...)
		t.Logf("$ %s snapctl %s  (exit %d, killed %v)\n%s", c.env, strings.Join(prep, " "), code, killed, out)
		m := hookKilledLine.FindStringSubmatch(out)
		if !killed || m == nil || (c.at != "" && m[2] != c.at) || (c.n != 0 && m[1] != fmt.Sprint(c.n)) {
			t.Fatalf("the tagged binary with %s: killed %v, kill line %q; want killed by the hook there:\n%s", c.env, killed, m, out)
		}
		v.must("activate", "--wait", "vol")
		if s := v.status(); s.Phase != "attached" || deviceSum(t, "/dev/mapper/vol") != changed {
			t.Fatalf("after the killed prepare and activate: phase %s; want attached with the data as before", s.Phase)
		}
	}
	v.must("detach", "vol")
}
