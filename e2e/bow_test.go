//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The bow tests serve a ubd disk through `snapctl bow serve` as /dev/nbdN
// (the kernel's NBD client, nbd.ko), put ext4 on the NBD device, and check
// checkpoint, restore, commit, restart and out-of-space behaviour against
// the raw disk. Guest disks are listed at each test.

// bowServer is a running `snapctl bow serve`.
type bowServer struct {
	t       testing.TB
	dev     string
	nbd     string
	control string
	state   string
	cmd     *exec.Cmd
	out     *syncBuffer
	done    chan struct{}
	err     error // from Wait, once done is closed
}

// syncBuffer collects a child's output from two pipes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serveBow starts `snapctl bow serve dev --nbd nbd` with its own state
// directory and control socket and waits until it answers on the socket.
// At cleanup a server still running is stopped (SIGTERM, then SIGKILL).
func serveBow(t testing.TB, dev, nbd, state string, extra ...string) *bowServer {
	t.Helper()
	s := startBow(t, dev, nbd, state, extra...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.done:
			t.Fatalf("snapctl bow serve %s exited (%v) before it was ready:\n%s", dev, s.err, s.out)
		default:
		}
		if _, err := os.Stat(s.control); err == nil {
			if _, _, code := s.ctl("status"); code == 0 {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapctl bow serve %s not ready after 30 s:\n%s", dev, s.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBow starts the server without waiting for it.
func startBow(t testing.TB, dev, nbd, state string, extra ...string) *bowServer {
	t.Helper()
	s := &bowServer{t: t, dev: dev, nbd: nbd, state: state, out: &syncBuffer{}, done: make(chan struct{}),
		control: filepath.Join(state, "ctl-"+filepath.Base(nbd)+".sock")}
	args := append([]string{"bow", "serve", dev, "--nbd", nbd, "--state-dir", state, "--control", s.control}, extra...)
	s.cmd = exec.Command(snapctlBin, args...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start snapctl %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ snapctl %s &  (pid %d)", strings.Join(args, " "), s.cmd.Process.Pid)
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	t.Cleanup(func() {
		select {
		case <-s.done:
			return
		default:
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(60 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

// ctl runs `snapctl bow OP --control SOCKET --json`.
func (s *bowServer) ctl(op string) (string, string, int) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, snapctlBin, "bow", op, "--control", s.control, "--json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	code := 0
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			s.hung(fmt.Sprintf("snapctl bow %s got no answer within 60 s", op))
		}
		ee, ok := err.(*exec.ExitError)
		if !ok {
			s.t.Fatalf("run snapctl bow %s: %v", op, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// hung dumps the server's goroutines (SIGQUIT) and the kernel's blocked
// tasks, and fails the test.
func (s *bowServer) hung(what string) {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill() // a thread stuck in the kernel may keep it from dying
	}
	s.stacks()
	blocked(s.t, fmt.Sprintf("%s; server output:\n%s", what, s.out))
}

// runFor runs a program like run, but gives up after d, dumping what is
// blocked.
func (s *bowServer) runFor(d time.Duration, name string, args ...string) string {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		s.hung(fmt.Sprintf("%s %s did not finish within %v", name, strings.Join(args, " "), d))
	}
	if err != nil {
		s.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// bowStatus is the part of `snapctl bow status --json` the tests read.
type bowStatus struct {
	Device        string `json:"device"`
	State         string `json:"state"`
	BlockSize     int64  `json:"block_size"`
	Size          int64  `json:"size"`
	FreeBytes     int64  `json:"free_bytes"`
	BackedUpBytes int64  `json:"backed_up_bytes"`
	LogBlocks     int    `json:"log_blocks"`
	LogEntries    uint64 `json:"log_entries"`
	Writes        uint64 `json:"writes"`
	Backups       uint64 `json:"backups"`
	Discards      uint64 `json:"discards"`
	LowSpace      bool   `json:"low_space"`
	NBD           string `json:"nbd"`
	Server        struct {
		Writes       uint64 `json:"writes"`
		Trims        uint64 `json:"trims"`
		BytesTrimmed uint64 `json:"bytes_trimmed"`
		Errors       int64  `json:"errors"`
		LastError    string `json:"last_error"`
	} `json:"server"`
}

// must runs a control operation and returns the status it answers with.
func (s *bowServer) must(op string) bowStatus {
	s.t.Helper()
	out, errOut, code := s.ctl(op)
	if code != 0 {
		s.t.Fatalf("snapctl bow %s: exit %d\n%s\nserver:\n%s", op, code, errOut, s.out)
	}
	var st bowStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		s.t.Fatalf("bow %s --json: %v\n%s", op, err, out)
	}
	s.t.Logf("bow %s: state %s, free %d, backed up %d in %d backups, %d log blocks, %d writes, nbd errors %d",
		op, st.State, st.FreeBytes, st.BackedUpBytes, st.Backups, st.LogBlocks, st.Writes, st.Server.Errors)
	return st
}

// stop sends SIGTERM and requires a clean exit.
func (s *bowServer) stop() string {
	s.t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(90 * time.Second):
		s.hung("bow server did not stop within 90 s of SIGTERM")
	}
	if s.err != nil {
		s.t.Fatalf("bow server after SIGTERM: %v\n%s", s.err, s.out)
	}
	if _, err := os.Stat(s.control); !os.IsNotExist(err) {
		s.t.Errorf("control socket after stop: %v, want it removed", err)
	}
	if pid, err := os.ReadFile("/sys/block/" + filepath.Base(s.nbd) + "/pid"); err == nil {
		s.t.Errorf("%s still connected after stop (pid %s)", s.nbd, strings.TrimSpace(string(pid)))
	}
	return s.out.String()
}

// stacks logs the kernel stacks of the server's threads.
func (s *bowServer) stacks() {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stack", s.cmd.Process.Pid))
	for _, p := range tasks {
		b, _ := os.ReadFile(p)
		st, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		s.t.Logf("%s (%s):\n%s", p, strings.TrimSpace(string(st)), b)
	}
}

// kill sends SIGKILL and waits.
func (s *bowServer) kill() {
	s.t.Helper()
	s.cmd.Process.Kill()
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.stacks()
		blocked(s.t, "bow server still there 30 s after SIGKILL")
	}
}

// blocked dumps the kernel's blocked tasks (SysRq w) to the console and
// fails the test.
func blocked(t testing.TB, what string) {
	t.Helper()
	os.WriteFile("/proc/sys/kernel/sysrq", []byte("1"), 0)
	os.WriteFile("/proc/sysrq-trigger", []byte("w"), 0)
	time.Sleep(time.Second)
	t.Fatal(what)
}

// mkfsBow makes ext4 with the given block size on an NBD device, with the
// inode tables and journal written now (no lazy init writing later).
func mkfsBow(t testing.TB, dev string, bs int) {
	t.Helper()
	run(t, "mkfs.ext4", "-q", "-F", "-b", fmt.Sprint(bs), "-E", "lazy_itable_init=0,lazy_journal_init=0", dev)
}

// overwrite rewrites every byte of the files f<from>..f<to-1> in place
// (no truncation, the same blocks), so each block needs a backup.
func overwrite(t testing.TB, dir string, from, to int, seed int64) {
	t.Helper()
	r := rand.New(rand.NewSource(seed))
	for i := from; i < to; i++ {
		p := filepath.Join(dir, fmt.Sprintf("f%02d", i))
		fi, err := os.Stat(p)
		must(t, err)
		b := make([]byte, fi.Size())
		r.Read(b)
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		must(t, err)
		if _, err := f.WriteAt(b, 0); err != nil {
			t.Fatalf("overwrite %s: %v", p, err)
		}
		must(t, f.Close())
	}
	run(t, "sync")
}

// bigFile writes a new file of n MiB and syncs it.
func bigFile(t testing.TB, p string, mib int, seed int64) {
	t.Helper()
	f, err := os.Create(p)
	must(t, err)
	b := make([]byte, 1<<20)
	r := rand.New(rand.NewSource(seed))
	for i := 0; i < mib; i++ {
		r.Read(b)
		if _, err := f.Write(b); err != nil {
			t.Fatalf("write %s: %v", p, err)
		}
	}
	must(t, f.Sync())
	must(t, f.Close())
}

// umountRetry unmounts, waiting out a short busy spell; a failed server
// leaves the filesystem erroring, which umount still handles.
func umountRetry(t testing.TB, dir string) {
	t.Helper()
	var out []byte
	var err error
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err = exec.CommandContext(ctx, "umount", dir).CombinedOutput()
		cancel()
		if err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("umount %s: %v\n%s", dir, err, out)
}

// fstrimBow runs fstrim -v and returns its report.
func fstrimBow(t testing.TB, dir string) string {
	t.Helper()
	out := strings.TrimSpace(run(t, "fstrim", "-v", dir))
	t.Logf("$ fstrim -v %s\n%s", dir, out)
	return out
}

// bowCycle runs the whole bow cycle on a disk with a block size: serve,
// mkfs, files, fstrim, checkpoint, change more than a quarter of the free
// space, unmount, stop (the map is saved), serve again (the checkpoint
// resumes), change more, stop, restore the raw disk: every file is back
// and e2fsck is clean.
func bowCycle(t *testing.T, disk, nbd string, bs int) {
	state := t.TempDir()
	srv := serveBow(t, disk, nbd, state, "--block-size", fmt.Sprint(bs))
	mkfsBow(t, nbd, bs)
	mnt := mountFS(t, nbd)
	populate(t, mnt, 20, int64(bs))
	fstrimBow(t, mnt)
	st := srv.must("status")
	if st.State != "trim" || st.BlockSize != int64(bs) || st.Server.Trims == 0 || st.FreeBytes == 0 {
		t.Fatalf("before checkpoint: state %s block size %d trims %d free %d; want trim, %d, trims, free space",
			st.State, st.BlockSize, st.Server.Trims, st.FreeBytes, bs)
	}
	before := tree(t, mnt)
	st = srv.must("checkpoint")
	if st.State != "checkpoint" || st.LogBlocks != 1 {
		t.Fatalf("after checkpoint: state %s, %d log blocks", st.State, st.LogBlocks)
	}
	free := st.FreeBytes
	// Changes: deletes, partial overwrites, a new file (lifecycle's
	// change), every byte of ten files rewritten in place, and new data
	// of more than a quarter of the free space.
	change(t, mnt)
	overwrite(t, mnt, 10, 20, 5)
	bigFile(t, filepath.Join(mnt, "big"), int(free/4>>20)+8, 6)
	changed := tree(t, mnt)
	umount(t, mnt)
	st = srv.must("status")
	if st.Backups == 0 || st.BackedUpBytes == 0 || st.Server.Errors != 0 {
		t.Fatalf("after changes: %d backups of %d bytes, %d NBD errors; want backups and no errors", st.Backups, st.BackedUpBytes, st.Server.Errors)
	}
	out := srv.stop()
	if !strings.Contains(out, "range map saved") {
		t.Fatalf("stop in checkpoint state does not report the saved map:\n%s", out)
	}

	// Restart: the checkpoint resumes with its counters, the files are the
	// changed ones, and more changes are backed up on top.
	srv = serveBow(t, disk, nbd, state)
	st2 := srv.must("status")
	if st2.State != "checkpoint" || st2.BackedUpBytes != st.BackedUpBytes || st2.BlockSize != int64(bs) {
		t.Fatalf("after restart: state %s backed up %d block size %d; want checkpoint, %d, %d", st2.State, st2.BackedUpBytes, st2.BlockSize, st.BackedUpBytes, bs)
	}
	run(t, "mount", nbd, mnt)
	sameTree(t, tree(t, mnt), changed)
	overwrite(t, mnt, 15, 20, 7)
	must(t, os.Remove(filepath.Join(mnt, "f12")))
	st3 := srv.must("status")
	if st3.BackedUpBytes <= st2.BackedUpBytes {
		t.Fatalf("after more changes: backed up %d, want more than %d", st3.BackedUpBytes, st2.BackedUpBytes)
	}
	umount(t, mnt)
	srv.stop()

	// Restore the raw disk: the checkpoint comes back.
	mustSnapctl(t, "bow", "restore", disk)
	fsck(t, disk)
	run(t, "mount", disk, mnt)
	sameTree(t, tree(t, mnt), before)
	umount(t, mnt)
}

// TestBowRestore: scenario 1 with 4 KiB blocks and scenario 3 (ext4 and
// bow with 1 KiB blocks, which crashed the original prototype).
// Guest disks: /dev/ubda 256 MiB, /dev/ubdb 256 MiB, blank.
func TestBowRestore(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 256 << 20}, {Size: 256 << 20}}, Timeout: 10 * time.Minute}) {
		return
	}
	t.Run("bs=4096", func(t *testing.T) { bowCycle(t, ubd(0), "/dev/nbd0", 4096) })
	t.Run("bs=1024", func(t *testing.T) { bowCycle(t, ubd(1), "/dev/nbd1", 1024) })
}

// TestBowCommit: serve, mkfs, files, fstrim, checkpoint, change, commit with
// the filesystem mounted; the changes stay, the device passes through (more
// writes and a trim), block 0 on the raw disk is the filesystem's own again,
// e2fsck is clean and a restore finds no checkpoint.
// Guest disks: /dev/ubda 128 MiB, blank.
func TestBowCommit(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 128 << 20}}}) {
		return
	}
	disk, nbd := ubd(0), "/dev/nbd0"
	srv := serveBow(t, disk, nbd, t.TempDir())
	mkfsBow(t, nbd, 4096)
	mnt := mountFS(t, nbd)
	populate(t, mnt, 20, 3)
	fstrimBow(t, mnt)
	srv.must("checkpoint")
	raw0 := readAt(t, disk, 0, 4096)
	if !bytes.Equal(raw0[:4], []byte{0x42, 0x4f, 0x57, 0}) {
		t.Fatalf("block 0 of %s in checkpoint state starts % x, want the log magic \"BOW\"", disk, raw0[:4])
	}
	change(t, mnt)
	overwrite(t, mnt, 10, 15, 8)
	if st := srv.must("commit"); st.State != "committed" {
		t.Fatalf("after commit: state %s", st.State)
	}
	if _, errOut, code := srv.ctl("checkpoint"); code != 4 {
		t.Fatalf("checkpoint after commit: exit %d, want 4\n%s", code, errOut)
	}
	bigFile(t, filepath.Join(mnt, "after-commit"), 4, 9)
	must(t, os.Remove(filepath.Join(mnt, "f15")))
	fstrimBow(t, mnt)
	after := tree(t, mnt)
	umount(t, mnt)
	nbd0 := readAt(t, nbd, 0, 4096)
	srv.stop()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	if got := readAt(t, disk, 0, 4096); !bytes.Equal(got, nbd0) {
		t.Fatalf("block 0 of %s after commit differs from block 0 the filesystem saw", disk)
	}
	fsck(t, disk)
	mnt2 := mountFS(t, disk)
	sameTree(t, tree(t, mnt2), after)
	umount(t, mnt2)
	if _, errOut, code := snapctl(t, "bow", "restore", disk); code == 0 {
		t.Fatalf("restore after commit succeeded, want a refusal (no checkpoint)\n%s", errOut)
	}
}

// TestBowKill: scenario 2. Checkpoint an unmounted filesystem and copy the
// device, mount it, storm it with writes from several writers and stop the
// server in the middle: with SIGTERM (a clean stop under load) and with
// SIGKILL. After SIGKILL, serving again is refused (a log without a saved
// map) with exit 6 and a hint naming the restore. Either way the restore
// gives back every block the filesystem used at the checkpoint.
// Guest disks: /dev/ubda and /dev/ubdb, 128 MiB, blank.
func TestBowKill(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 128 << 20}, {Size: 128 << 20}}}) {
		return
	}
	t.Run("SIGTERM", func(t *testing.T) { bowStorm(t, ubd(0), "/dev/nbd0", false) })
	t.Run("SIGKILL", func(t *testing.T) {
		// The server's NBD_DO_IT runs in a helper process: with it in the
		// server's own process a SIGKILL under this storm left the process
		// unkillable (the kernel's teardown waited for a send to the
		// process's own socket, which only its exit would close).
		bowStorm(t, ubd(1), "/dev/nbd1", true)
	})
}

func bowStorm(t *testing.T, disk, nbd string, kill bool) {
	state := t.TempDir()
	srv := serveBow(t, disk, nbd, state)
	mkfsBow(t, nbd, 4096)
	mnt := mountFS(t, nbd)
	populate(t, mnt, 30, 4)
	fstrimBow(t, mnt)
	umount(t, mnt)
	srv.must("checkpoint")
	image := snapshotImage(t, nbd)
	run(t, "mount", nbd, mnt)

	// The storm: writers rewriting parts of files, creating files and
	// syncing, until the server stops under them.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var writes int
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(int64(w)))
			b := make([]byte, 256<<10)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r.Read(b)
				p := filepath.Join(mnt, fmt.Sprintf("f%02d", r.Intn(30)))
				if i%3 == 0 {
					p = filepath.Join(mnt, fmt.Sprintf("storm-%d-%d", w, i))
				}
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
				if err != nil {
					continue
				}
				f.WriteAt(b, int64(r.Intn(4))<<18)
				f.Sync()
				f.Close()
				mu.Lock()
				writes++
				mu.Unlock()
			}
		}(w)
	}
	// Stop once the log has spilled into a second log block.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := srv.must("status")
		if st.LogBlocks >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if kill {
		srv.kill()
	} else {
		srv.cmd.Process.Signal(syscall.SIGTERM)
	}
	close(stop)
	stormDone := make(chan struct{})
	go func() { wg.Wait(); close(stormDone) }()
	select {
	case <-stormDone:
	case <-time.After(60 * time.Second):
		blocked(t, "the writers are stuck 60 s after the server was stopped")
	}
	t.Logf("server stopped after %d file writes", writes)
	umountRetry(t, mnt)
	if !kill {
		srv.stop()
	} else {
		_, errOut, code := snapctl(t, "bow", "serve", disk, "--nbd", "/dev/nbd9", "--state-dir", state, "--control", filepath.Join(state, "again.sock"))
		if code != 6 || !strings.Contains(errOut, "snapctl bow restore "+disk) {
			t.Fatalf("serve after a kill: exit %d, want 6 with a hint naming the restore\n%s", code, errOut)
		}
	}
	mustSnapctl(t, "bow", "restore", disk)
	image.check(t, disk)
	fsck(t, disk)
}

// TestBowFull: scenario 4. A small disk, mostly full: checkpoint with
// --on-full fail and a low-space warning, then overwrite more data in place
// than there is free space. Writes fail (the kernel reports the server's
// ENOSPC to the filesystem as an I/O error), the server warns of low space
// and counts errors, and the checkpoint restores exactly.
// Guest disks: /dev/ubda 64 MiB, blank.
func TestBowFull(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 64 << 20}}}) {
		return
	}
	disk, nbd := ubd(0), "/dev/nbd0"
	srv := serveBow(t, disk, nbd, t.TempDir(), "--on-full", "fail", "--low-space", "10")
	mkfsBow(t, nbd, 4096)
	mnt := mountFS(t, nbd)
	for i := 0; i < 8; i++ {
		bigFile(t, filepath.Join(mnt, fmt.Sprintf("f%02d", i)), 5, int64(i))
	}
	fstrimBow(t, mnt)
	umount(t, mnt)
	st := srv.must("checkpoint")
	image := snapshotImage(t, nbd)
	t.Logf("free space for backups at checkpoint: %d bytes; overwriting 40 MiB", st.FreeBytes)
	if st.FreeBytes >= 40<<20 {
		t.Fatalf("free space %d is not less than the 40 MiB to overwrite", st.FreeBytes)
	}
	run(t, "mount", nbd, mnt)
	var failed error
	r := rand.New(rand.NewSource(1))
	b := make([]byte, 5<<20)
	for i := 0; i < 8 && failed == nil; i++ {
		f, err := os.OpenFile(filepath.Join(mnt, fmt.Sprintf("f%02d", i)), os.O_WRONLY, 0)
		if err != nil {
			failed = err
			break
		}
		r.Read(b)
		if _, err := f.WriteAt(b, 0); err != nil {
			failed = err
		} else if err := f.Sync(); err != nil {
			failed = err
		}
		f.Close()
	}
	if failed == nil {
		t.Fatal("overwriting more than the free space succeeded, want a write error")
	}
	t.Logf("the filesystem got: %v", failed)
	st = srv.must("status")
	if st.State != "checkpoint" || st.Server.Errors == 0 || !strings.Contains(st.Server.LastError, "no space left") {
		t.Fatalf("after running out: state %s, %d NBD errors, last %q; want checkpoint and ENOSPC errors", st.State, st.Server.Errors, st.Server.LastError)
	}
	if !st.LowSpace {
		t.Error("status does not report low space")
	}
	umountRetry(t, mnt)
	out := srv.stop()
	if !strings.Contains(out, "low on free space") {
		t.Errorf("the server did not warn of low space:\n%s", out)
	}
	mustSnapctl(t, "bow", "restore", disk)
	image.check(t, disk)
	fsck(t, disk)
}

// checkpointImage is a copy of an unmounted ext4 device taken right after a
// checkpoint, with the blocks the filesystem had free. A restore must give
// back every block the filesystem used; the free ones (trimmed, so the
// engine's free space) hold backups and new data and come back as anything.
type checkpointImage struct {
	path      string
	blockSize int64
	free      [][2]int64 // filesystem blocks [start, end)
}

// snapshotImage copies dev and reads its free blocks with dumpe2fs.
func snapshotImage(t testing.TB, dev string) checkpointImage {
	t.Helper()
	img := checkpointImage{path: filepath.Join(t.TempDir(), "checkpoint.img")}
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	run(t, "dd", "if="+dev, "of="+img.path, "bs=1M", "status=none")
	for _, l := range strings.Split(run(t, "dumpe2fs", dev), "\n") {
		if v, ok := strings.CutPrefix(l, "Block size:"); ok {
			fmt.Sscan(v, &img.blockSize)
		}
		// The groups' lists are indented; the header's total is not.
		v, ok := strings.CutPrefix(l, "  Free blocks: ")
		if !ok {
			continue
		}
		for _, r := range strings.Split(v, ",") {
			var a, b int64
			r = strings.TrimSpace(r)
			if n, _ := fmt.Sscanf(r, "%d-%d", &a, &b); n == 2 {
				img.free = append(img.free, [2]int64{a, b + 1})
			} else if n, _ := fmt.Sscanf(r, "%d", &a); n == 1 {
				img.free = append(img.free, [2]int64{a, a + 1})
			}
		}
	}
	sort.Slice(img.free, func(i, j int) bool { return img.free[i][0] < img.free[j][0] })
	if img.blockSize == 0 || len(img.free) == 0 {
		t.Fatalf("dumpe2fs %s: no block size or no free blocks found", dev)
	}
	return img
}

// check compares every used block of the image with dev.
func (img checkpointImage) check(t testing.TB, dev string) {
	t.Helper()
	used, bad, first := img.diff(t, dev)
	if bad > 0 {
		t.Fatalf("%d of %d used filesystem blocks of %s differ from the checkpoint image (first: %v)", bad, used, dev, first)
	}
	t.Logf("all %d used %d-byte blocks of %s equal the checkpoint image", used, img.blockSize, dev)
}

// diff counts the used blocks of the image and those of them that differ
// on dev (the first ten of these are listed), after dropping the page
// cache.
func (img checkpointImage) diff(t testing.TB, dev string) (used, bad int64, first []int64) {
	t.Helper()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	a, err := os.Open(img.path)
	must(t, err)
	defer a.Close()
	b, err := os.Open(dev)
	must(t, err)
	defer b.Close()
	isFree := func(blk int64) bool {
		i := sort.Search(len(img.free), func(i int) bool { return img.free[i][1] > blk })
		return i < len(img.free) && img.free[i][0] <= blk
	}
	const chunk = 1 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	for off := int64(0); ; off += chunk {
		n, _ := io.ReadFull(a, ba)
		if n == 0 {
			break
		}
		if m, _ := io.ReadFull(b, bb[:n]); m != n {
			t.Fatalf("%s is shorter than the checkpoint image", dev)
		}
		for o := 0; o < n; o += int(img.blockSize) {
			blk := (off + int64(o)) / img.blockSize
			if isFree(blk) {
				continue
			}
			used++
			if !bytes.Equal(ba[o:o+int(img.blockSize)], bb[o:o+int(img.blockSize)]) {
				bad++
				if len(first) < 10 {
					first = append(first, blk)
				}
			}
		}
	}
	return used, bad, first
}

// TestBowDemo runs demo/bow.sh, the bow part of the README demo, in a
// guest and checks it ends with BOW DEMO OK. Guest disks: /dev/ubda
// 128 MiB, blank.
func TestBowDemo(t *testing.T) {
	parallel(t)
	if guest() {
		t.Fatal("TestBowDemo runs demo/bow.sh, not a Go test body, in the guest")
	}
	root, err := moduleRoot()
	must(t, err)
	m := NewMachine(t, Config{Disks: []Disk{{Size: 128 << 20}}})
	r := m.Run(t, RunOptions{Argv: []string{"/bin/sh", filepath.Join(root, "demo", "bow.sh"), "/dev/ubda"}})
	if testing.Verbose() {
		t.Log(demoSession(r.Output))
	}
	if r.Status != 0 || !strings.Contains(r.Output, "BOW DEMO OK") {
		t.Fatalf("bow demo failed (status %d):\n%s", r.Status, tail(r.Output, 80))
	}
}
