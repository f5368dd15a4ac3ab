//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReliabilityKillBow is the bow part of the kill matrix. `snapctl bow
// serve` is killed by bow's crash hook (SNAPCTL_TEST_CRASH_AFTER=k: SIGKILL
// right after the k-th durable step) while it takes a checkpoint or commits
// one, and `snapctl bow restore` while it restores; k runs over every step
// of the checkpoint and the commit, and over a sample of the restore's
// (which has one per log entry). After each kill the test does what the
// product tells the user: serve again and, when that is refused, run the
// command the refusal's hint names; after a killed restore, run the
// restore again. Each case then compares every block the filesystem used
// with the image the operation implies, and runs e2fsck -fn.
//
// Guest disks:
//
//	/dev/ubda 32 MiB  checkpoint cases: a fresh ext4 through bow for each k
//	/dev/ubdb 32 MiB  commit cases: likewise
//	/dev/ubdc 32 MiB  restore cases: one checkpointed ext4 with changes
//	                  (two log blocks, WOB marks needed), copied to
//	                  /dev/shm and put back before each k
func TestReliabilityKillBow(t *testing.T) {
	parallel(t)
	if !relInGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 32 << 20}, {Size: 32 << 20}}}) {
		return
	}
	bk := &bowKill{t: t, tab: newRelTable(t, "bowkill",
		"Kill matrix of bow checkpoint, commit and restore (TestReliabilityKillBow)", bkCols...)}
	ncp := bk.checkpoints(ubd(0))
	nc := bk.commits(ubd(1), ncp)
	nr := bk.restores(ubd(2))
	t.Logf("%d kill points covered: %d of bow checkpoint, %d of bow commit, %d of bow restore", ncp+nc+nr, ncp, nc, nr)
}

var bkCols = []string{"operation", "killed at step", "device after the kill", "recovery", "outcome", "data after"}

const bkEnv = "SNAPCTL_TEST_CRASH_AFTER"

// bowKill runs the cases and writes the table.
type bowKill struct {
	t    *testing.T
	tab  *relTable
	nbds int // /dev/nbdN used so far: every server gets a fresh one
}

// nbd picks an NBD device no server has used yet, so a killed server's
// device never needs to be waited for.
func (bk *bowKill) nbd() string {
	if bk.nbds >= 16 {
		bk.t.Fatal("out of /dev/nbdN devices (nbds_max is 16)")
	}
	bk.nbds++
	return fmt.Sprintf("/dev/nbd%d", bk.nbds-1)
}

// serve starts `snapctl bow serve`, with the crash hook armed at step k
// when k > 0. It returns the server once it answers, or nil with the exit
// code and output when it exits first (a refusal).
func (bk *bowKill) serve(dev, state string, k int) (srv *bowServer, code int, out string) {
	t := bk.t
	t.Helper()
	if k > 0 {
		// startBow hands this process's environment to the server.
		must(t, os.Setenv(bkEnv, strconv.Itoa(k)))
	}
	s := startBow(t, dev, bk.nbd(), state)
	os.Unsetenv(bkEnv)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		select {
		case <-s.done:
			code := -1
			if ee, ok := s.err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if s.err == nil {
				code = 0
			}
			return nil, code, s.out.String()
		default:
		}
		if _, err := os.Stat(s.control); err == nil {
			if _, _, code := s.ctl("status"); code == 0 {
				return s, 0, ""
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapctl bow serve %s not ready after 30 s:\n%s", dev, s.out)
		}
	}
}

// control runs a control operation on a server armed to be killed and
// reports whether the hook killed it (and at which step).
func (bk *bowKill) control(s *bowServer, op string, k int) (killed bool, step string) {
	t := bk.t
	t.Helper()
	_, errOut, code := s.ctl(op)
	if code == 0 {
		return false, ""
	}
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.hung(fmt.Sprintf("snapctl bow %s failed (exit %d) and the server is still there 30 s later: %s", op, code, errOut))
	}
	out := s.out.String()
	steps := hookSteps(out)
	if m := hookKilledLine.FindStringSubmatch(out); m == nil || m[1] != strconv.Itoa(k) || len(steps) != k {
		t.Fatalf("snapctl bow %s: exit %d and the server ended (%v), but not by the crash hook at step %d:\n%s\n%s", op, code, s.err, k, errOut, out)
	}
	return true, steps[k-1]
}

// bkInfo is the part of `snapctl bow inspect --json` the cases read.
type bkInfo struct {
	Header struct {
		Magic    uint32 `json:"magic"`
		Count    uint32 `json:"count"`
		Sequence uint32 `json:"sequence"`
	} `json:"header"`
	InProgress bool `json:"restore_in_progress"`
	Logs       []struct {
		Entries int `json:"entries"`
	} `json:"logs"`
	Entries int    `json:"entries"`
	Valid   bool   `json:"valid"`
	Problem string `json:"problem"`
}

// inspect describes the log on dev; hasLog is false without one, wob
// says block 0 is marked as being restored.
func (bk *bowKill) inspect(dev string) (desc string, hasLog, wob bool) {
	out, errOut, code := snapctl(bk.t, "bow", "inspect", dev, "--json")
	if code == 4 && strings.Contains(errOut, "no bow checkpoint") {
		return "no log: block 0 is the filesystem's", false, false
	}
	var in bkInfo
	if err := json.Unmarshal([]byte(out), &in); err != nil {
		bk.t.Fatalf("bow inspect %s: exit %d, %v\n%s%s", dev, code, err, out, errOut)
	}
	magic := "BOW log"
	if in.InProgress {
		magic = "WOB mark (restore in progress)"
	}
	desc = fmt.Sprintf("%s: newest log block %d with %s; %s in %s", magic, in.Header.Sequence,
		bkCount(int(in.Header.Count), "entry", "entries"), bkCount(in.Entries, "entry", "entries"), bkCount(len(in.Logs), "log block", "log blocks"))
	if !in.Valid {
		desc += "; INVALID: " + in.Problem
	}
	return desc, true, in.InProgress
}

// bkCount is n with its noun.
func bkCount(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// bkData compares the filesystem's used blocks on dev with img and runs
// e2fsck -fn; it returns a description and whether both are right.
func bkData(t testing.TB, img checkpointImage, what, dev string) (string, bool) {
	t.Helper()
	used, bad, first := img.diff(t, dev)
	fsck := "e2fsck -fn clean"
	fok := true
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		fsck, fok = fmt.Sprintf("e2fsck -fn: %v: %s", err, ieShort(strings.Join(strings.Fields(string(out)), " "))), false
	}
	if bad > 0 {
		return fmt.Sprintf("%d of %d used blocks differ from the %s (first %v); %s", bad, used, what, first, fsck), false
	}
	return fmt.Sprintf("the %s (all %d used blocks equal); %s", what, used, fsck), fok
}

// row records a case; a defect fails the test and is marked in the table.
func (bk *bowKill) row(op, at, after, recovery, defect, data string) {
	bk.t.Helper()
	bk.rowOutcome(op, at, after, recovery, "recovered", defect, data)
}

// rowOutcome is row with the outcome to show when there is no defect.
func (bk *bowKill) rowOutcome(op, at, after, recovery, outcome, defect, data string) {
	bk.t.Helper()
	if defect != "" {
		bk.t.Errorf("DEFECT: %s killed at step %s: %s", op, at, defect)
		outcome = "**DEFECT**: " + defect
	}
	bk.tab.row(op, at, after, recovery, outcome, data)
}

// fresh serves dev with the hook armed at k, makes ext4 with files and
// trims it; the filesystem is left unmounted at mnt.
func (bk *bowKill) fresh(dev string, k int, seed int64) (srv *bowServer, state, mnt string) {
	t := bk.t
	state = t.TempDir()
	srv, code, out := bk.serve(dev, state, k)
	if srv == nil {
		t.Fatalf("bow serve %s on a blank device: exit %d\n%s", dev, code, out)
	}
	mkfsBow(t, srv.nbd, 4096)
	mnt = mountFS(t, srv.nbd)
	populate(t, mnt, 12, seed)
	fstrimBow(t, mnt)
	umount(t, mnt)
	return srv, state, mnt
}

// save copies dev to /dev/shm (guest memory) and returns a function that
// puts the copy back.
func (bk *bowKill) save(dev string) (restore func()) {
	t := bk.t
	dir, err := os.MkdirTemp("/dev/shm", "bowkill-")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, filepath.Base(dev)+".img")
	run(t, "dd", "if="+dev, "of="+p, "bs=1M", "status=none")
	return func() { run(t, "dd", "if="+p, "of="+dev, "bs=1M", "conv=fsync", "status=none") }
}

// afterServerKill is what the user does once a server died: serve again
// (with the killed server's state directory);
// when that is refused, each recovery the hint names, on a copy of the
// device as the kill left it. want is the image every recovery must give.
func (bk *bowKill) afterServerKill(op, at, dev, state string, want checkpointImage, what string, recoveries []string) {
	t := bk.t
	after, hasLog, _ := bk.inspect(dev)
	srv, code, out := bk.serve(dev, state, 0)
	if srv != nil {
		st := srv.must("status")
		srv.stop()
		rec := fmt.Sprintf("`snapctl bow serve` again: serves, state %s", st.State)
		data, ok := bkData(t, want, what, dev)
		defect := ""
		switch {
		case hasLog:
			defect = "serve resumed a checkpoint whose range map was never saved"
		case st.State != "trim":
			defect = fmt.Sprintf("served in state %s, want trim", st.State)
		case !ok:
			defect = "wrong data after the recovery"
		}
		bk.row(op, at, after, rec, defect, data)
		return
	}
	hint := code == 6 && strings.Contains(out, "snapctl bow restore "+dev) && strings.Contains(out, "snapctl bow commit --offline "+dev)
	refusal := fmt.Sprintf("`snapctl bow serve` again: refused, exit %d", code)
	if hint {
		refusal += " with a hint naming `snapctl bow restore` and `snapctl bow commit --offline`"
	}
	if !hasLog || !hint {
		bk.row(op, at, after, refusal, fmt.Sprintf("want exit 6 with a hint naming both recoveries (and only for a device with a log): %s", ieShort(ieMsg(out))), "-")
		return
	}
	putBack := bk.save(dev)
	for i, r := range recoveries {
		if i > 0 {
			putBack()
		}
		args := append(strings.Fields(r), dev)
		rec := refusal + "; then `snapctl " + r + " DEV`"
		if _, errOut, code := snapctl(t, args...); code != 0 {
			bk.row(op, at, after, rec, fmt.Sprintf("exit %d: %s", code, ieShort(ieMsg(errOut))), "-")
			continue
		}
		data, ok := bkData(t, want, what, dev)
		defect := ""
		if !ok {
			defect = "wrong data after the recovery"
		} else if d, log, _ := bk.inspect(dev); log {
			defect = "a log is left after the recovery: " + d
		}
		bk.row(op, at, after, rec, defect, data)
	}
}

// checkpoints kills `bow checkpoint` at k = 1, 2, ... until it completes,
// and returns the number of steps it has.
func (bk *bowKill) checkpoints(dev string) int {
	t := bk.t
	for k := 1; ; k++ {
		if k > 10 {
			t.Fatal("bow checkpoint still killed at step 10: the loop does not end")
		}
		srv, state, _ := bk.fresh(dev, k, int64(k))
		img := snapshotImage(t, srv.nbd)
		killed, step := bk.control(srv, "checkpoint", k)
		if !killed {
			// Completed: a clean stop and a restore give the image back.
			srv.stop()
			// Every step the completing run announced was a kill point.
			if n := len(hookSteps(srv.out.String())); n == 0 || n != k-1 {
				t.Fatalf("bow checkpoint: %d kill points covered, but the completing run announced %d steps (want as many, and at least 1)", k-1, n)
			}
			t.Logf("bow checkpoint: %d kill points covered", k-1)
			mustSnapctl(t, "bow", "restore", dev)
			data, ok := bkData(t, img, "pre-checkpoint image", dev)
			defect := ""
			if !ok {
				defect = "wrong data after stop and restore"
			}
			bk.row("bow checkpoint", fmt.Sprintf("%d (never reached: the checkpoint completed after %d steps)", k, k-1), "-",
				"none needed (the server stopped cleanly, then `snapctl bow restore DEV`)", defect, data)
			return k - 1
		}
		bk.afterServerKill("bow checkpoint", fmt.Sprintf("%d (%s)", k, step), dev, state, img, "pre-checkpoint image",
			[]string{"bow restore", "bow commit --offline"})
	}
}

// commits kills the server before its commit (from outside, after the
// changes), then `bow commit` at each of its steps until it completes, and
// returns the number of those steps. ncp is the number of steps of the
// checkpoint the same server takes first.
func (bk *bowKill) commits(dev string, ncp int) int {
	t := bk.t
	setup := func(k int) (*bowServer, string, checkpointImage) {
		srv, state, mnt := bk.fresh(dev, k, int64(100+k))
		srv.must("checkpoint")
		run(t, "mount", srv.nbd, mnt)
		change(t, mnt)
		overwrite(t, mnt, 8, 12, int64(k))
		umount(t, mnt)
		return srv, state, snapshotImage(t, srv.nbd)
	}
	srv, state, img := setup(0)
	srv.kill()
	bk.afterServerKill("bow commit", "before step 1 (the server SIGKILLed from outside after the changes)", dev, state, img, "changed image",
		[]string{"bow commit --offline"})
	for j := 1; ; j++ {
		if j > 10 {
			t.Fatal("bow commit still killed at its step 10: the loop does not end")
		}
		k := ncp + j
		srv, state, img := setup(k)
		killed, step := bk.control(srv, "commit", k)
		if !killed {
			srv.stop()
			if n := len(hookSteps(srv.out.String())); j == 1 || n != ncp+j-1 {
				t.Fatalf("bow commit: %d kill points covered, but the completing server announced %d steps with the checkpoint's %d (want %d, and at least 1 of the commit)", j-1, n, ncp, ncp+j-1)
			}
			t.Logf("bow commit: %d kill points covered", j-1)
			after, hasLog, _ := bk.inspect(dev)
			data, ok := bkData(t, img, "changed image", dev)
			defect := ""
			switch {
			case hasLog:
				defect = "a log is left after the commit: " + after
			case !ok:
				defect = "wrong data after the commit"
			}
			bk.row("bow commit", fmt.Sprintf("%d (never reached: the commit completed after %s, the checkpoint's %d before it)", k, bkCount(j-1, "step", "steps"), ncp), after,
				"none needed (the server stopped cleanly)", defect, data)
			return j - 1
		}
		bk.afterServerKill("bow commit", fmt.Sprintf("%d (%s)", k, step), dev, state, img, "changed image",
			[]string{"bow commit --offline"})
	}
}

// restores checkpoints dev once, changes it (WOB marks needed, two log
// blocks), stops the server cleanly and keeps a copy;
// then for a sample of the restore's steps it puts the copy back, kills
// `bow restore` at the step and runs it again. It returns the number of
// steps killed.
func (bk *bowKill) restores(dev string) int {
	t := bk.t
	srv, state, mnt := bk.fresh(dev, 0, 200)
	// Leave 8 MiB free at the checkpoint, and two files to rewrite.
	run(t, "mount", srv.nbd, mnt)
	bigFile(t, filepath.Join(mnt, "f90"), 3, 90)
	bigFile(t, filepath.Join(mnt, "f91"), 6, 91)
	var fs syscall.Statfs_t
	must(t, syscall.Statfs(mnt, &fs))
	if free := int64(fs.Bfree) * int64(fs.Bsize) >> 20; free > 9 {
		bigFile(t, filepath.Join(mnt, "filler"), int(free-8), 92)
	}
	fstrimBow(t, mnt)
	umount(t, mnt)
	srv.must("checkpoint")
	img := snapshotImage(t, srv.nbd)
	// The changes: f90 rewritten in place (3 MiB of backups), deleted
	// and trimmed, which frees its blocks again; f91 rewritten in place,
	// whose 6 MiB of backups outgrow what is left of the space free at
	// the checkpoint and land in f90's old blocks, sources of earlier
	// entries of the same log block: the restore must mark its progress
	// (WOB) before it overwrites them. Then scattered blocks, one log
	// entry each, fill a second log block.
	run(t, "mount", srv.nbd, mnt)
	overwrite(t, mnt, 90, 91, 1)
	must(t, os.Remove(filepath.Join(mnt, "f90")))
	run(t, "sync")
	fstrimBow(t, mnt)
	overwrite(t, mnt, 91, 92, 2)
	bkScatter(t, mnt, 250, 9)
	umount(t, mnt)
	changed := snapshotImage(t, srv.nbd)
	st := srv.must("status")
	if st.LogBlocks < 2 || st.Server.Errors != 0 {
		t.Fatalf("the changes filled %d log block(s) with %d NBD errors (%s), want at least 2 log blocks (an older one to put back) and no errors",
			st.LogBlocks, st.Server.Errors, st.Server.LastError)
	}
	srv.stop()
	putBack := bk.save(dev)

	// Count the steps: a restore announcing them without a kill.
	out, killed, code := snapctlEnv(t, []string{bkEnv + "=0"}, "bow", "restore", dev)
	steps := hookSteps(out)
	if killed || code != 0 || len(steps) < 10 {
		t.Fatalf("bow restore with the hook counting: killed %v, exit %d, %d steps\n%s", killed, code, len(steps), out)
	}
	t.Logf("bow restore has %d steps", len(steps))
	if data, ok := bkData(t, img, "checkpoint image", dev); !ok {
		t.Fatalf("an uninterrupted restore: %s", data)
	}

	// The sample: the first 5, every step that changes block 0 (WOB
	// marks, older log blocks put back; at most 4), two in the middle and
	// the last 3.
	n := len(steps)
	pick := map[int]bool{n / 3: true, n / 2: true}
	for k := 1; k <= 5; k++ {
		pick[k] = true
	}
	for k := n - 2; k <= n; k++ {
		pick[k] = true
	}
	var b0 int
	for i, s := range steps {
		if !strings.HasPrefix(s, "restore: entry copied back") && b0 < 4 {
			pick[i+1] = true
			b0++
		}
	}
	var ks []int
	for k := range pick {
		if k >= 1 && k <= n {
			ks = append(ks, k)
		}
	}
	sort.Ints(ks)
	if len(ks) < 10 {
		t.Fatalf("bow restore: a sample of %d kill points of its %d steps, want at least 10", len(ks), n)
	}
	probedBOW, probedWOB := false, false
	for _, k := range ks {
		putBack()
		out, killed, code := snapctlEnv(t, []string{bkEnv + "=" + strconv.Itoa(k)}, "bow", "restore", dev)
		got := hookSteps(out)
		if !killed || len(got) != k {
			t.Fatalf("bow restore with SNAPCTL_TEST_CRASH_AFTER=%d: killed %v, exit %d, %d steps announced\n%s", k, killed, code, len(got), out)
		}
		at := fmt.Sprintf("%d of %d (%s)", k, n, got[k-1])
		after, hasLog, wob := bk.inspect(dev)
		if hasLog && ((wob && !probedWOB) || (!wob && !probedBOW)) {
			// Once for a log still marked BOW and once for a WOB mark:
			// what the other commands make of the device instead of
			// the rerun.
			probedWOB, probedBOW = probedWOB || wob, probedBOW || !wob
			bk.probeInstead(at, after, dev, state, img, changed)
		}
		rec := "`snapctl bow restore DEV` again"
		_, errOut, code := snapctl(t, "bow", "restore", dev)
		switch {
		case code == 0:
			rec += ": exit 0"
		case code == 4 && !hasLog:
			rec += ": exit 4, no checkpoint on the device (the restore had finished)"
		default:
			bk.row("bow restore", at, after, rec, fmt.Sprintf("the rerun failed with exit %d: %s", code, ieShort(ieMsg(errOut))), "-")
			continue
		}
		data, ok := bkData(t, img, "checkpoint image", dev)
		defect := ""
		if !ok {
			defect = "wrong data after the rerun"
		} else if d, log, _ := bk.inspect(dev); log {
			defect = "a log is left after the rerun: " + d
		}
		bk.row("bow restore", at, after, rec, defect, data)
	}
	bk.row("bow restore", fmt.Sprintf("%d (never reached: the restore completed after %d steps)", n+1, n), "-", "none needed", "",
		"the checkpoint image (checked after the counting run)")
	t.Logf("bow restore: %d kill points covered (a sample of its %d steps)", len(ks), n)
	return len(ks)
}

// probeInstead tries, on the device a killed restore left, what a user
// might run instead of the restore: serving it (with the state directory
// where the server's clean stop saved the range map), and `bow commit
// --offline` (what serving's hint offers when no map was saved). Each
// either refuses, naming the restore, or gives one of the two images; a
// device that shows neither is a defect. The device is put back as the
// kill left it afterwards.
func (bk *bowKill) probeInstead(at, after, dev, state string, ckpt, changed checkpointImage) {
	t := bk.t
	putBack := bk.save(dev)
	srv, code, out := bk.serve(dev, state, 0)
	if srv != nil {
		st := srv.must("status")
		view, ok := bkWhich(t, srv.nbd, ckpt, changed)
		srv.stop()
		defect := ""
		if !ok {
			defect = "serving accepts a device the restore half rewrote, without a word: it shows neither image (block 0 still holds an unmarked BOW log, and the saved range map matches it)"
		}
		bk.row("bow restore", at, after, fmt.Sprintf("`snapctl bow serve` instead of the rerun: serves it, state %s", st.State), defect, "the served device holds "+view)
	} else {
		defect := ""
		if code != 6 || !strings.Contains(out, "snapctl bow restore "+dev) {
			defect = "want exit 6 with a hint naming `snapctl bow restore`"
		}
		bk.rowOutcome("bow restore", at, after, fmt.Sprintf("`snapctl bow serve` instead of the rerun: refused, exit %d: %s", code, ieShort(ieMsg(out))),
			"refused, naming the restore", defect, "unchanged (the rerun follows)")
	}
	putBack()
	_, errOut, code := snapctl(t, "bow", "commit", "--offline", dev)
	if code == 0 {
		view, ok := bkWhich(t, dev, ckpt, changed)
		defect := ""
		if !ok {
			defect = "`bow commit --offline` rolls a half-done restore forward, without a word: the device keeps neither image"
		}
		bk.row("bow restore", at, after, "`snapctl bow commit --offline DEV` instead of the rerun: exit 0", defect, "the device holds "+view)
	} else {
		defect := ""
		if !strings.Contains(errOut, "restore") {
			defect = "the refusal does not name the restore"
		}
		bk.rowOutcome("bow restore", at, after, fmt.Sprintf("`snapctl bow commit --offline DEV` instead of the rerun: refused, exit %d: %s", code, ieShort(ieMsg(errOut))),
			"refused, naming the restore", defect, "unchanged (the rerun follows)")
	}
	putBack()
}

// bkWhich names the image dev holds, and ok = false for neither.
func bkWhich(t testing.TB, dev string, ckpt, changed checkpointImage) (string, bool) {
	_, badC, _ := ckpt.diff(t, dev)
	if badC == 0 {
		return "the checkpoint image", true
	}
	used, badX, _ := changed.diff(t, dev)
	if badX == 0 {
		return "the changed image", true
	}
	fsck := "e2fsck -fn clean"
	if out, err := exec.Command("e2fsck", "-fn", dev).CombinedOutput(); err != nil {
		fsck = fmt.Sprintf("e2fsck -fn: %v, %d lines of complaints", err, strings.Count(string(out), "\n"))
	}
	return fmt.Sprintf("NEITHER image: %d used blocks differ from the checkpoint image, %d of %d from the changed image; %s", badC, badX, used, fsck), false
}

// bkScatter rewrites n scattered 4 KiB blocks inside the files of dir in
// place, so that each needs its own backup and log entry.
func bkScatter(t testing.TB, dir string, n int, seed int64) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	var files []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	r := rand.New(rand.NewSource(seed))
	b := make([]byte, 4096)
	for i := 0; i < n; i++ {
		p := files[r.Intn(len(files))]
		fi, err := os.Stat(p)
		must(t, err)
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err)
		r.Read(b)
		if _, err := f.WriteAt(b, r.Int63n(fi.Size()/4096)*4096); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
		must(t, f.Close())
	}
	run(t, "sync")
}
