//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/dmtable"
)

// The bad-input tests feed snapctl every kind of bad input a user can give and
// check three things for each: the exit code documented in `snapctl --help`
// (1 failure, 2 usage, 3 invalid data, 4 refused, 5 unsupported, 6 needs
// repair), a message that names the object at fault, and that nothing
// changed: the origin's bytes, the set of device-mapper devices and their
// live tables, the state record byte for byte, and the store path (no file
// created).
//
// Guest disks of TestBadInputPrepare:
//
//	/dev/ubda  32 MiB  origin of volume "bad" (a raw pattern, attached)
//	/dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files
//	/dev/ubdc  16 MiB  ext4 mounted directly on the disk (not through attach)
//	/dev/ubdd  32 MiB  origin of "onorig": ext4 with 1 KiB blocks on /dev/mapper/onorig
//	/dev/ubde   1 MiB  beneath "bi-tiny", a 2 KiB linear device (smaller than a chunk)
//	/dev/ubdf 128 MiB  for btrfs, when mkfs.btrfs is installed
//
// Guest disks of TestBadInputState:
//
//	/dev/ubda  32 MiB  origin of volume "vol": ext4 on /dev/mapper/vol, prepared
//	/dev/ubdb 128 MiB  attached as "stor", ext4, holds the store files
//	(loop devices over files in /run back the "device changed" cases)

// biWorld is everything a refused command must leave as it was.
type biWorld struct {
	sums    map[string]string // watched block device or file -> sha256 ("" missing)
	devices map[string]string // every DM device -> its live table
	state   map[string]string // state dir entry -> sha256 of its content (lock files: "")
	exists  map[string]bool   // watched paths that must not appear
	trees   map[string]map[string]string
}

// biWatch says what to capture.
type biWatch struct {
	sums   []string // devices or files whose bytes must not change
	state  string   // the state directory
	absent []string // paths that must not be created
	trees  []string // mounted directories whose files must not change
}

func biCapture(t testing.TB, w biWatch) biWorld {
	t.Helper()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	wd := biWorld{sums: map[string]string{}, devices: map[string]string{}, state: map[string]string{},
		exists: map[string]bool{}, trees: map[string]map[string]string{}}
	for _, p := range w.sums {
		wd.sums[p] = biSum(t, p)
	}
	all, err := dmtable.List()
	must(t, err)
	for _, d := range all {
		tab := "(no live table)"
		if inf, err := dmtable.Info(d.Name); err == nil && inf.LiveTable {
			if tb, err := dmtable.ReadTable(d.Name); err == nil {
				tab = tb.String()
			}
		}
		wd.devices[d.Name] = tab
	}
	if w.state != "" {
		ents, _ := os.ReadDir(w.state)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".lock") {
				wd.state[e.Name()] = "" // its holder line comes and goes
				continue
			}
			wd.state[e.Name()] = biSum(t, filepath.Join(w.state, e.Name()))
		}
	}
	for _, p := range w.absent {
		_, err := os.Lstat(p)
		wd.exists[p] = err == nil
	}
	for _, d := range w.trees {
		wd.trees[d] = tree(t, d)
	}
	return wd
}

func biSum(t testing.TB, p string) string {
	f, err := os.Open(p)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatalf("read %s: %v", p, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// biUnchanged reports every difference between two captures. Lock files
// that appeared are only logged: they carry no state.
func biUnchanged(t testing.TB, what string, before, after biWorld) {
	t.Helper()
	for p, s := range before.sums {
		if after.sums[p] != s {
			t.Errorf("%s: %s changed", what, p)
		}
	}
	for d, tab := range before.devices {
		got, ok := after.devices[d]
		switch {
		case !ok:
			t.Errorf("%s: device-mapper device %s disappeared", what, d)
		case got != tab:
			t.Errorf("%s: the table of %s changed:\n  was %q\n  now %q", what, d, tab, got)
		}
	}
	for d := range after.devices {
		if _, ok := before.devices[d]; !ok {
			t.Errorf("%s: new device-mapper device %s was left behind", what, d)
		}
	}
	for f, s := range before.state {
		got, ok := after.state[f]
		switch {
		case !ok:
			t.Errorf("%s: state file %s disappeared", what, f)
		case got != s:
			t.Errorf("%s: state file %s changed (want it unchanged byte for byte)", what, f)
		}
	}
	for f := range after.state {
		if _, ok := before.state[f]; !ok {
			if strings.HasSuffix(f, ".lock") {
				t.Logf("%s: note: an empty lock file %s was left in the state directory", what, f)
				continue
			}
			t.Errorf("%s: new state file %s was created", what, f)
		}
	}
	for p, was := range before.exists {
		if !was && after.exists[p] {
			t.Errorf("%s: %s was created", what, p)
		}
	}
	for d, want := range before.trees {
		got := after.trees[d]
		for k, w := range want {
			if got[k] != w {
				t.Errorf("%s: file %s under %s changed or vanished", what, k, d)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: file %s appeared under %s", what, k, d)
			}
		}
	}
}

// biExec runs argv (snapctl itself, or a wrapper such as setpriv around
// it) and returns stdout, stderr and the exit code.
func biExec(t testing.TB, env []string, argv ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr strings.Builder
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s: %v", strings.Join(argv, " "), err)
		}
		code = ee.ExitCode()
	}
	t.Logf("$ %s  (exit %d)\n%s%s", strings.Join(argv, " "), code, stdout.String(), stderr.String())
	return stdout.String(), stderr.String(), code
}

// biExpect checks a refusal: the exit code, a "snapctl: " message on
// stderr, no Go panic, and each of has in the message (case-insensitive;
// "a|b" accepts either).
func biExpect(t testing.TB, what, stderr string, code, want int, has ...string) {
	t.Helper()
	if code != want {
		t.Errorf("%s: exit %d, want %d\n%s", what, code, want, stderr)
	}
	if strings.Contains(stderr, "panic:") || strings.Contains(stderr, "goroutine ") {
		t.Errorf("%s: snapctl panicked:\n%s", what, stderr)
	}
	if strings.Contains(stderr, "1 error occurred") {
		t.Errorf("%s: a single error is wrapped in a multierror list (\"1 error occurred: * ...\"), print it as one line:\n%s", what, stderr)
	}
	if !strings.HasPrefix(stderr, "snapctl: ") {
		t.Errorf("%s: stderr does not start with \"snapctl: \":\n%s", what, stderr)
	}
	low := strings.ToLower(stderr)
	for _, h := range has {
		ok := false
		for _, alt := range strings.Split(h, "|") {
			if strings.Contains(low, strings.ToLower(alt)) {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: the message does not mention %q:\n%s", what, h, stderr)
		}
	}
}

// biRefuse runs snapctl with --state-dir, expects a refusal and that
// nothing in w changed.
func biRefuse(t testing.TB, w biWatch, want int, args []string, has ...string) string {
	t.Helper()
	before := biCapture(t, w)
	argv := append([]string{snapctlBin}, args...)
	if w.state != "" {
		argv = append(argv, "--state-dir", w.state)
	}
	_, errOut, code := biExec(t, nil, argv...)
	what := "snapctl " + strings.Join(args, " ")
	biExpect(t, what, errOut, code, want, has...)
	biUnchanged(t, what, before, biCapture(t, w))
	return errOut
}

// biRefuseAll runs each command of cmds as biRefuse does, but reads the
// watched devices and files (slow in the guest) only before the first and
// after the last; the devices, state files and paths after each.
func biRefuseAll(t testing.TB, w biWatch, want int, cmds [][]string, has ...string) {
	t.Helper()
	light := w
	light.sums, light.trees = nil, nil
	before := biCapture(t, w)
	lightBefore := biCapture(t, light)
	for _, args := range cmds {
		argv := append([]string{snapctlBin}, args...)
		if w.state != "" {
			argv = append(argv, "--state-dir", w.state)
		}
		_, errOut, code := biExec(t, nil, argv...)
		what := "snapctl " + strings.Join(args, " ")
		biExpect(t, what, errOut, code, want, has...)
		biUnchanged(t, what, lightBefore, biCapture(t, light))
	}
	biUnchanged(t, fmt.Sprintf("%d refused commands", len(cmds)), before, biCapture(t, w))
}

// biDevice creates a DM device with one linear target and removes it at
// cleanup.
func biDevice(t *testing.T, name string, tab dmtable.Table) {
	t.Helper()
	_, err := dmtable.Create(name, "")
	must(t, err)
	removeAtEnd(t, name)
	must(t, dmtable.Load(name, tab))
	must(t, dmtable.Resume(name))
}

// TestBadInputPrepare: inputs to attach and prepare that must be refused
// before anything changes.
func TestBadInputPrepare(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}, {Size: 16 << 20}, {Size: 32 << 20}, {Size: 1 << 20}, {Size: 128 << 20}}}) {
		return
	}
	smnt := storeFS(t, "ext4")
	v := newVolume(t, "bad")
	v.must("attach", "bad", "--origin", ubd(0))
	fill(t, "/dev/mapper/bad", 11)
	// w is the watch for volume "bad" with the store path p.
	w := func(p ...string) biWatch {
		return biWatch{sums: []string{ubd(0)}, state: v.state, absent: p}
	}

	t.Run("origin mounted directly", func(t *testing.T) {
		run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", ubd(2))
		mountFS(t, ubd(2))
		d := newVolume(t, "direct")
		store := filepath.Join(smnt, "s-direct")
		ww := biWatch{sums: []string{ubd(2)}, state: d.state, absent: []string{store}}
		biRefuse(t, ww, 4, []string{"attach", "direct", "--origin", ubd(2)}, ubd(2), "mounted|in use")
		biRefuse(t, ww, 4, []string{"prepare", "direct", "--origin", ubd(2), "--store", store, "--size", "1M"}, ubd(2), "mounted|in use")
	})

	t.Run("origin smaller than a chunk", func(t *testing.T) {
		biDevice(t, "bi-tiny", dmtable.Table{dmtable.Linear(0, 4, devOf(t, ubd(4)).String(), 0)})
		tiny := "/dev/mapper/bi-tiny"
		store := filepath.Join(smnt, "s-tiny")
		// Never attached: prepare must not attach it on the way to refusing.
		fresh := newVolume(t, "tinyvol")
		ww := biWatch{sums: []string{tiny}, state: fresh.state, absent: []string{store}}
		biRefuse(t, ww, 4, []string{"prepare", "tinyvol", "--origin", tiny, "--store", store, "--size", "1M"}, tiny, "smaller than one chunk|chunk")
		// Attached first: the record must stay as it is.
		a := newVolume(t, "tinyatt")
		a.must("attach", "tinyatt", "--origin", tiny)
		ww.state = a.state
		biRefuse(t, ww, 4, []string{"prepare", "tinyatt", "--store", store, "--size", "1M"}, tiny, "smaller than one chunk|chunk")
		a.must("detach", "tinyatt")
	})

	t.Run("store on tmpfs", func(t *testing.T) {
		dir := t.TempDir()
		run(t, "mount", "-t", "tmpfs", "-o", "size=64M", "bi-tmpfs", dir)
		t.Cleanup(func() { exec.Command("umount", dir).Run() })
		store := filepath.Join(dir, "store")
		biRefuse(t, w(store), 5, []string{"prepare", "bad", "--store", store, "--size", "1M"}, store, "tmpfs")
		biRefuse(t, w(store), 5, []string{"prepare", "bad", "--store", store, "--size", "1M", "--dry-run"}, store, "tmpfs")
		// A volume that was never attached stays unknown.
		fresh := newVolume(t, "tmpvol")
		ww := biWatch{sums: []string{ubd(0)}, state: fresh.state, absent: []string{store}}
		biRefuse(t, ww, 5, []string{"prepare", "tmpvol", "--origin", ubd(0), "--store", store, "--size", "1M"}, store, "tmpfs")
	})

	t.Run("store on btrfs", func(t *testing.T) {
		if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
			t.Logf("NOTE: mkfs.btrfs is not installed (Debian package btrfs-progs), so the btrfs store case did not run; tmpfs covers the refusal path (fiemap.CheckFSType)")
			return
		}
		b := newVolume(t, "btr")
		b.must("attach", "btr", "--origin", ubd(5))
		run(t, "mkfs.btrfs", "-q", "-f", "/dev/mapper/btr")
		dir := mountFS(t, "/dev/mapper/btr")
		store := filepath.Join(dir, "store")
		biRefuse(t, w(store), 5, []string{"prepare", "bad", "--store", store, "--size", "1M"}, store, "btrfs")
		umount(t, dir)
		b.must("detach", "btr")
	})

	// onorig: ext4 with 1 KiB blocks and no reserve on /dev/mapper/onorig,
	// filled up, then every other 1 KiB block of the filler's start punched
	// out: the only free space is single 1 KiB blocks.
	o := newVolume(t, "onorig")
	o.must("attach", "onorig", "--origin", ubd(3))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "1024", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/mapper/onorig")
	omnt := mountFS(t, "/dev/mapper/onorig", "-o", "noatime")
	biFillPunched(t, filepath.Join(omnt, "filler"), 1024, 96)

	t.Run("store on the origin with misaligned extents", func(t *testing.T) {
		store := filepath.Join(omnt, "store")
		ww := biWatch{state: o.state, absent: []string{store}, trees: []string{omnt}}
		before := biCapture(t, ww)
		rec := biReadFile(t, filepath.Join(o.state, "onorig.json"))
		_, errOut, code := o.snapctl("prepare", "onorig", "--store", store, "--size", "16K")
		biExpect(t, "prepare with a store of 1 KiB-aligned extents", errOut, code, 3, store, "chunk size", "multiple of")
		after := biCapture(t, ww)
		// The store had to be allocated to see its extents, so the record
		// may gain a "prepare undone" event; the rest must be as it was.
		delete(before.state, "onorig.json")
		delete(after.state, "onorig.json")
		biUnchanged(t, "prepare with misaligned extents", before, after)
		got := biReadFile(t, filepath.Join(o.state, "onorig.json"))
		if a, b := biRecordWithoutHistory(t, rec), biRecordWithoutHistory(t, got); a != b {
			t.Errorf("after the refused prepare the record differs beyond its history:\n  was %s\n  now %s", a, b)
		}
		if s := o.status(); s.Phase != "attached" {
			t.Errorf("after the refused prepare: phase %s, want attached", s.Phase)
			o.snapctl("drop", "onorig")
		}
	})

	t.Run("state dir on the origin", func(t *testing.T) {
		// onorig's filesystem, mounted through /dev/mapper/onorig, holds a
		// copy of onorig's state directory.
		sd := filepath.Join(omnt, "state")
		must(t, os.Mkdir(sd, 0o700))
		must(t, os.WriteFile(filepath.Join(sd, "onorig.json"), biReadFile(t, filepath.Join(o.state, "onorig.json")), 0o600))
		run(t, "sync")
		for _, store := range []string{filepath.Join(smnt, "s-sdo"), filepath.Join(omnt, "store2")} {
			ww := biWatch{state: sd, absent: []string{store}}
			biRefuse(t, ww, 4, []string{"prepare", "onorig", "--store", store, "--size", "1M"}, sd, "origin")
		}
	})
	umount(t, omnt)
	o.must("detach", "onorig")

	t.Run("not enough free space", func(t *testing.T) {
		store := filepath.Join(smnt, "s-big")
		biRefuse(t, w(store), 4, []string{"prepare", "bad", "--store", store, "--size", "10G"}, store, "free")
		biRefuse(t, w(store), 4, []string{"prepare", "bad", "--store", store, "--size", "10G", "--dry-run"}, store, "free")
	})

	t.Run("unknown volume", func(t *testing.T) {
		cmds := [][]string{
			{"status", "nosuch"}, {"status", "nosuch", "--json"}, {"commit", "nosuch"}, {"rollback", "nosuch"},
			{"merge", "nosuch"}, {"drop", "nosuch"}, {"deactivate", "nosuch"}, {"activate", "nosuch"},
			{"grow", "nosuch", "--by", "1M"}, {"detach", "nosuch"}, {"rollback", "nosuch", "--at-next-activate"},
		}
		biRefuseAll(t, w(), 4, cmds, `"nosuch"`, "unknown")
	})

	t.Run("already prepared", func(t *testing.T) {
		s1, s2 := filepath.Join(smnt, "s1"), filepath.Join(smnt, "s2")
		v.must("prepare", "bad", "--store", s1, "--size", "4M")
		biRefuse(t, w(s2), 4, []string{"prepare", "bad", "--store", s2, "--size", "4M"}, `"bad"`, "already prepared")
		biRefuse(t, w(s2), 4, []string{"prepare", "bad", "--store", s1, "--size", "4M"}, `"bad"`, "already prepared|exists")
		biRefuse(t, w(s2), 4, []string{"attach", "bad", "--origin", ubd(1)}, `"bad"`, ubd(0))
		v.must("drop", "bad")
	})

	t.Run("dry run", func(t *testing.T) {
		store := filepath.Join(smnt, "s-dry")
		before := biCapture(t, w(store))
		out, errOut, code := v.snapctl("prepare", "bad", "--store", store, "--size", "8M", "--dry-run")
		if code != 0 {
			t.Fatalf("prepare --dry-run: exit %d\n%s", code, errOut)
		}
		// The store's blocks are not known before the file is allocated: the
		// dry run names the filesystem, its device and the raw device the
		// segments will be on, and prints no NAME-cow table.
		stor, raw := devOf(t, "/dev/mapper/stor").String(), devOf(t, ubd(1)).String()
		for _, s := range []string{"dry run", store, "not known", "8388608 bytes will be allocated by ext4 on /dev/mapper/stor (" + stor + ")", ubd(1) + " (" + raw + ")",
			"table bad-real", "table bad-snap", "table bad:", "snapshot-origin", "snapshot ", " P 8"} {
			if !strings.Contains(out, s) {
				t.Errorf("prepare --dry-run output lacks %q:\n%s", s, out)
			}
		}
		if strings.Contains(out, "table bad-cow") {
			t.Errorf("prepare --dry-run prints a table for bad-cow, whose segments it cannot know:\n%s", out)
		}
		biUnchanged(t, "prepare --dry-run", before, biCapture(t, w(store)))
		out, _, code = v.snapctl("prepare", "bad", "--store", store, "--size", "8M", "--dry-run", "--json")
		var plan struct {
			DryRun     bool              `json:"dry_run"`
			StoreBytes uint64            `json:"store_bytes"`
			Tables     map[string]string `json:"tables"`
			Placement  *struct {
				Filesystem string   `json:"filesystem"`
				FSDev      string   `json:"fs_dev"`
				FSDevice   string   `json:"fs_device"`
				Devices    []string `json:"devices"`
			} `json:"store_placement"`
		}
		if err := json.Unmarshal([]byte(out), &plan); err != nil || code != 0 {
			t.Fatalf("prepare --dry-run --json: exit %d, %v\n%s", code, err, out)
		}
		if _, ok := plan.Tables["bad-cow"]; !plan.DryRun || plan.StoreBytes != 8<<20 || len(plan.Tables) != 3 || ok {
			t.Errorf("dry-run plan: dry_run %v, store_bytes %d, tables %v; want true, %d, bad, bad-real and bad-snap", plan.DryRun, plan.StoreBytes, plan.Tables, 8<<20)
		}
		if p := plan.Placement; p == nil || p.Filesystem != "ext4" || p.FSDev != stor || p.FSDevice != "/dev/mapper/stor" || len(p.Devices) != 1 || p.Devices[0] != raw {
			t.Errorf("dry-run plan: store_placement %+v, want ext4 on /dev/mapper/stor (%s) over %s", plan.Placement, stor, raw)
		}
		biUnchanged(t, "prepare --dry-run --json", before, biCapture(t, w(store)))
		// A volume never attached: the dry run attaches nothing either.
		fresh := newVolume(t, "dryvol")
		ww := biWatch{sums: []string{ubd(0)}, state: fresh.state, absent: []string{store}}
		before = biCapture(t, ww)
		out, errOut, code = fresh.snapctl("prepare", "dryvol", "--origin", ubd(0), "--store", store, "--size", "8M", "--dry-run")
		if code != 0 || !strings.Contains(out, "table dryvol-snap") {
			t.Errorf("dry run of an unattached volume: exit %d\n%s%s", code, out, errOut)
		}
		biUnchanged(t, "prepare --dry-run (unattached)", before, biCapture(t, ww))
	})

	t.Run("overflow fail in checkpoint mode", func(t *testing.T) {
		// Checkpoint writes go to the origin, and a write that finds the
		// store full invalidates the snapshot whatever the policy: fail
		// would do nothing, so it is refused.
		store := filepath.Join(smnt, "s-po")
		for _, extra := range [][]string{nil, {"--dry-run"}, {"--mode", "checkpoint"}} {
			args := append([]string{"prepare", "bad", "--store", store, "--size", "1M", "--overflow", "fail"}, extra...)
			biRefuse(t, w(store), 4, args, `"bad"`, "overflow policy fail", "update mode")
		}
		fresh := newVolume(t, "povol")
		ww := biWatch{sums: []string{ubd(0)}, state: fresh.state, absent: []string{store}}
		biRefuse(t, ww, 4, []string{"prepare", "povol", "--origin", ubd(0), "--store", store, "--size", "1M", "--overflow", "fail"}, `"povol"`, "overflow policy fail")
	})

	t.Run("store path through a symlink", func(t *testing.T) {
		real := filepath.Join(smnt, "realdir")
		must(t, os.Mkdir(real, 0o755))
		must(t, os.Symlink(real, filepath.Join(smnt, "linkdir")))
		must(t, os.Symlink(filepath.Join(real, "target"), filepath.Join(smnt, "storelink")))
		viaDir := filepath.Join(smnt, "linkdir", "store")
		biRefuse(t, w(filepath.Join(real, "store")), 4, []string{"prepare", "bad", "--store", viaDir, "--size", "1M"}, "linkdir", "symbolic link|symlink")
		biRefuse(t, w(filepath.Join(real, "target")), 4, []string{"prepare", "bad", "--store", filepath.Join(smnt, "storelink"), "--size", "1M"}, "storelink", "symbolic link|symlink|exists")
		if s := v.status(); s.Phase != "attached" {
			t.Errorf("after the refused prepares: phase %s, want attached", s.Phase)
		}
	})

	t.Run("prepare of an unattached volume refused late", func(t *testing.T) {
		// Refusals that come from the plan (no space) must not leave the
		// volume attached: prepare attaches only what it then prepares.
		fresh := newVolume(t, "latevol")
		store := filepath.Join(smnt, "s-late")
		ww := biWatch{sums: []string{ubd(0)}, state: fresh.state, absent: []string{store}}
		biRefuse(t, ww, 4, []string{"prepare", "latevol", "--origin", ubd(0), "--store", store, "--size", "10G"}, store, "free")
	})

	v.must("detach", "bad")
}

// biFillPunched fills the filesystem of path with one fallocated file,
// then punches holes blocks long at every other block of its first 2*holes
// blocks: its free space is then holes separate block-sized pieces.
func biFillPunched(t testing.TB, path string, block int64, holes int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	must(t, err)
	defer f.Close()
	var size int64
	for _, step := range []int64{1 << 20, 64 << 10, block} {
		for {
			err := syscall.Fallocate(int(f.Fd()), 0, size, step)
			if err == syscall.ENOSPC {
				break
			}
			must(t, err)
			size += step
		}
	}
	for i := 0; i < holes; i++ {
		must(t, syscall.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, int64(2*i)*block, block))
	}
	must(t, f.Sync())
	run(t, "sync")
}

// readFile reads a file or fails the test.
func biReadFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	must(t, err)
	return b
}

// recordWithoutHistory is a state record's JSON without its history.
func biRecordWithoutHistory(t testing.TB, b []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("state record: %v\n%s", err, b)
	}
	delete(m, "history")
	out, _ := json.Marshal(m)
	return string(out)
}

// TestBadInputState: a damaged or unsafe state directory, the wrong user, a
// busy volume, a rollback under a mounted filesystem, and an origin whose
// path names another device than the one recorded.
func TestBadInputState(t *testing.T) {
	parallel(t)
	if !InGuest(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}}) {
		return
	}
	smnt := storeFS(t, "ext4")
	v := newVolume(t, "vol")
	v.must("attach", "vol", "--origin", ubd(0))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/mapper/vol")
	mnt := mountFS(t, "/dev/mapper/vol", "-o", "noatime")
	populate(t, mnt, 12, 3)
	store := filepath.Join(smnt, "vol.store")
	v.must("prepare", "vol", "--store", store, "--size", "24M")
	change(t, mnt)
	recPath := filepath.Join(v.state, "vol.json")
	good := biReadFile(t, recPath)
	w := biWatch{sums: []string{ubd(0), "/dev/mapper/vol-snap", store}, state: v.state, trees: []string{mnt}}

	t.Run("corrupt record", func(t *testing.T) {
		half := good[:len(good)/2]
		var m map[string]any
		must(t, json.Unmarshal(good, &m))
		phase := func(k string, val any) []byte {
			c := map[string]any{}
			for a, b := range m {
				c[a] = b
			}
			c[k] = val
			b, _ := json.Marshal(c)
			return b
		}
		cases := []struct {
			name string
			data []byte
			says string
		}{
			{"garbage", []byte("\x00\x01garbage\xff{{{"), "invalid character|corrupt"},
			{"truncated", half, "unexpected eof|corrupt"},
			{"empty", []byte{}, "eof|empty|corrupt"},
			{"unknown phase", phase("phase", "exploding"), "phase"},
			{"other volume's record", phase("name", "other"), "other"},
			{"newer format", phase("format", 2), "format"},
			{"unknown field", phase("surprise", true), "surprise"},
			{"trailing data", append(append([]byte{}, good...), []byte("{}\n")...), "trailing"},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				must(t, os.WriteFile(recPath, c.data, 0o600))
				defer func() { must(t, os.WriteFile(recPath, good, 0o600)) }()
				biRefuseAll(t, w, 3, [][]string{
					{"status", "vol"}, {"status", "vol", "--json"}, {"status"}, {"commit", "vol"}, {"rollback", "vol"},
					{"activate", "vol"}, {"activate"}, {"drop", "vol"}, {"merge", "vol"}, {"grow", "vol", "--by", "1M"},
					{"deactivate", "vol"}, {"attach", "vol", "--origin", ubd(0)},
					{"prepare", "vol", "--store", filepath.Join(smnt, "s2"), "--size", "1M"},
				}, recPath, c.says)
			})
		}
	})

	t.Run("unsafe state dir", func(t *testing.T) {
		for _, mode := range []os.FileMode{0o777, 0o770, 0o702} {
			must(t, os.Chmod(v.state, mode))
			biRefuseAll(t, w, 4, [][]string{{"status", "vol"}, {"commit", "vol"}, {"rollback", "vol"}, {"activate"}}, v.state, "writable", "chmod 700")
			must(t, os.Chmod(v.state, 0o700))
		}
		link := filepath.Join(t.TempDir(), "statelink")
		must(t, os.Symlink(v.state, link))
		ww := w
		ww.state = link
		biRefuse(t, ww, 4, []string{"commit", "vol"}, link, "symlink")
	})

	t.Run("not root", func(t *testing.T) {
		// The test binary's directory is private to root; nobody runs a copy.
		bin := filepath.Join("/run", "snapctl-nobody")
		must(t, os.WriteFile(bin, biReadFile(t, snapctlBin), 0o755))
		defer os.Remove(bin)
		own := filepath.Join("/run", "nobody-state")
		must(t, os.MkdirAll(own, 0o700))
		must(t, os.Chown(own, 65534, 65534))
		defer os.RemoveAll(own)
		before := biCapture(t, w)
		nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin}
		for _, args := range [][]string{
			{"status", "vol", "--state-dir", v.state},
			{"status", "--state-dir", v.state},
			{"commit", "vol", "--state-dir", v.state},
			{"rollback", "vol", "--state-dir", v.state},
			{"attach", "nv", "--origin", ubd(0), "--state-dir", own},
			{"prepare", "nv", "--origin", ubd(0), "--store", filepath.Join(smnt, "nv"), "--size", "1M", "--state-dir", own},
			{"prepare", "nv", "--origin", ubd(0), "--store", filepath.Join(smnt, "nv"), "--size", "1M", "--dry-run", "--state-dir", own},
		} {
			_, errOut, code := biExec(t, nil, append(append([]string{}, nobody...), args...)...)
			biExpect(t, "as nobody: snapctl "+strings.Join(args, " "), errOut, code, 5, "root")
		}
		biUnchanged(t, "snapctl as nobody", before, biCapture(t, w))
	})

	t.Run("volume busy", func(t *testing.T) {
		lk, err := os.OpenFile(filepath.Join(v.state, "vol.lock"), os.O_RDWR|os.O_CREATE, 0o600)
		must(t, err)
		defer lk.Close()
		must(t, syscall.Flock(int(lk.Fd()), syscall.LOCK_EX|syscall.LOCK_NB))
		defer syscall.Flock(int(lk.Fd()), syscall.LOCK_UN)
		must(t, lk.Truncate(0))
		holder := "pid 4242: snapctl merge vol --state-dir " + v.state
		_, err = lk.WriteString(holder + "\n")
		must(t, err)
		biRefuseAll(t, w, 4, [][]string{
			{"commit", "vol"}, {"rollback", "vol"}, {"drop", "vol"}, {"merge", "vol"}, {"grow", "vol", "--by", "1M"},
			{"deactivate", "vol"}, {"activate", "vol"}, {"attach", "vol", "--origin", ubd(0)},
			{"prepare", "vol", "--store", filepath.Join(smnt, "s3"), "--size", "1M"},
			{"rollback", "vol", "--at-next-activate"},
		}, `"vol"`, "busy", holder)
		// status takes no lock: it works while an operation runs.
		if _, errOut, code := v.snapctl("status", "vol"); code != 0 {
			t.Errorf("status while the volume is locked: exit %d\n%s", code, errOut)
		}
	})

	t.Run("rollback while mounted", func(t *testing.T) {
		for _, args := range [][]string{{"rollback", "vol"}, {"merge", "vol"}, {"merge", "vol", "--no-wait"}, {"deactivate", "vol"}} {
			errOut := biRefuse(t, w, 4, args, "/dev/mapper/vol", "open|mounted")
			if args[0] != "deactivate" {
				biExpect(t, strings.Join(args, " ")+" hint", errOut, 4, 4, "umount /dev/mapper/vol", "--at-next-activate")
			}
		}
	})

	// Put the volume back as it was: commit (drop) works mounted.
	v.must("commit", "vol")
	umount(t, mnt)
	fsck(t, "/dev/mapper/vol")
	v.must("detach", "vol")

	t.Run("device changed", func(t *testing.T) { biDeviceChanged(t, smnt) })
}

// biLoop attaches file to a loop device: dev, or the first free one when
// dev is "". It returns the device.
func biLoop(t testing.TB, dev, file string) string {
	t.Helper()
	if dev == "" {
		return strings.TrimSpace(run(t, "losetup", "-f", "--show", file))
	}
	run(t, "losetup", dev, file)
	return dev
}

func biUnloop(t testing.TB, devs ...string) {
	t.Helper()
	for _, d := range devs {
		run(t, "losetup", "-d", d)
	}
}

// biNode makes path a block node for the device number of dev.
func biNode(t testing.TB, path, dev string) {
	t.Helper()
	d := devOf(t, dev)
	os.Remove(path)
	must(t, unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(d.Major, d.Minor))))
}

// biDeviceChanged: volume "lp" has as origin a block node in /run that
// names a loop device over file A. Between deactivate (as at shutdown) and
// the next command, the node or the loop device behind it changes, as
// device numbers do across a reboot. Every command that would map the
// recorded device must refuse with exit 4 and leave every disk as it was.
func biDeviceChanged(t *testing.T, smnt string) {
	dir := "/run/bi-loop"
	must(t, os.MkdirAll(dir, 0o700))
	t.Cleanup(func() { os.RemoveAll(dir) })
	A, B, B2, C := filepath.Join(dir, "A"), filepath.Join(dir, "B"), filepath.Join(dir, "B2"), filepath.Join(dir, "C")
	must(t, os.WriteFile(A, pattern(1, 8<<20), 0o600))
	must(t, os.WriteFile(B, pattern(2, 8<<20), 0o600))
	must(t, os.WriteFile(B2, pattern(3, 8<<20), 0o600))
	must(t, os.WriteFile(C, pattern(4, 16<<20), 0o600))
	l0 := biLoop(t, "", A)
	l1 := biLoop(t, "", B)
	t.Cleanup(func() {
		removeDevices(t, "lp")
		exec.Command("losetup", "-d", l0).Run()
		exec.Command("losetup", "-d", l1).Run()
	})
	node := filepath.Join(dir, "origin")
	biNode(t, node, l0)
	sumA := biSum(t, A)

	v := newVolume(t, "lp")
	v.must("attach", "lp", "--origin", node)
	v.must("prepare", "lp", "--store", filepath.Join(smnt, "lp.store"), "--size", "2M")
	scatter(t, "/dev/mapper/lp", 200, 5)
	v.must("deactivate", "lp")
	w := biWatch{sums: []string{A, B, B2, C}, state: v.state}

	t.Run("node names another device of the same size", func(t *testing.T) {
		biNode(t, node, l1)
		defer biNode(t, node, l0)
		for _, args := range [][]string{{"activate", "lp"}, {"activate"}, {"rollback", "lp"}, {"merge", "lp"}, {"merge", "lp", "--no-wait"}} {
			biRefuse(t, w, 4, args, node, `"lp"`)
			removeDevices(t, "lp")
		}
	})
	t.Run("same device number, another size", func(t *testing.T) {
		biUnloop(t, l0)
		biLoop(t, l0, C)
		defer func() { biUnloop(t, l0); biLoop(t, l0, A) }()
		biRefuse(t, w, 4, []string{"activate", "lp"}, node, "sectors")
		removeDevices(t, "lp")
	})
	t.Run("same device number and size, another disk", func(t *testing.T) {
		// A changed device must be detected "by size and a
		// signature": B2 has A's size and takes A's device number.
		biUnloop(t, l0)
		biLoop(t, l0, B2)
		defer func() { biUnloop(t, l0); biLoop(t, l0, A) }()
		biRefuse(t, w, 4, []string{"activate", "lp"}, node)
		removeDevices(t, "lp")
	})
	t.Run("renumbered mid-merge", func(t *testing.T) {
		// Kill snapctl at the kernel merge's hand-over: the record says
		// merging.
		v.must("activate", "lp")
		out, killed, _ := snapctlEnv(t, []string{"SNAPCTL_TEST_CRASH_AT=merge:handover"}, "rollback", "lp", "--kernel", "--state-dir", v.state)
		if !killed {
			t.Fatalf("rollback was not killed at merge:handover:\n%s", out)
		}
		v.must("deactivate", "lp")
		// The reboot swaps the disks' numbers; the node follows the right disk.
		biUnloop(t, l0, l1)
		biLoop(t, l0, B)
		biLoop(t, l1, A)
		biNode(t, node, l1)
		for _, args := range [][]string{{"merge", "lp"}, {"rollback", "lp"}, {"activate", "lp"}, {"activate", "--wait", "lp"}} {
			biRefuse(t, w, 4, args, node)
			removeDevices(t, "lp")
		}
		// Back to the recorded numbers: the merge finishes onto A.
		biUnloop(t, l0, l1)
		biLoop(t, l0, A)
		biLoop(t, l1, B)
		biNode(t, node, l0)
		v.must("activate", "--wait", "lp")
		if s := v.status(); s.Phase != "attached" {
			t.Errorf("after the resumed rollback: phase %s, want attached", s.Phase)
		}
		if got := biSum(t, A); got != sumA {
			t.Errorf("after the resumed rollback the origin differs from its prepare-time image")
		}
	})
	t.Run("commit and drop of a renumbered volume", func(t *testing.T) {
		if s := v.status(); s.Phase != "attached" {
			t.Fatalf("phase %s, want attached", s.Phase)
		}
		v.must("prepare", "lp", "--store", filepath.Join(smnt, "lp2.store"), "--size", "2M")
		scatter(t, "/dev/mapper/lp", 100, 6)
		v.must("deactivate", "lp")
		biNode(t, node, l1)
		ww := w
		ww.absent = nil
		ww.sums = append(ww.sums, filepath.Join(smnt, "lp2.store"))
		for _, args := range [][]string{{"commit", "lp"}, {"drop", "lp"}} {
			biRefuse(t, ww, 4, args, node)
			removeDevices(t, "lp")
		}
		biNode(t, node, l0)
		v.must("activate", "lp")
		if s := v.status(); s.Phase == "prepared" {
			v.must("drop", "lp")
		}
	})
	removeDevices(t, "lp")
	biNode(t, node, l0)
	if _, _, code := v.snapctl("activate", "--wait", "lp"); code == 0 {
		if s := v.status(); s.Phase == "prepared" {
			v.must("drop", "lp")
		}
		v.snapctl("detach", "lp")
	}
}
