//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Guest disks of the update-group tests (the same disks across boots):
//   /dev/ubda   32 MiB  "system": ext4 image A, updated to image B in
//                       update mode (the new image written into the
//                       snapshot as a delta, 4 KiB blocks that differ)
//   /dev/ubdb   64 MiB  "userdata": ext4 attached as a volume, checkpoint
//                       mode, its store on its own filesystem
//   /dev/ubdc  128 MiB  "stor": ext4 holding system's store (a device
//                       outside the group)
// The state directory, the images and the test's notes live on the host's
// filesystem (the guest's root over hostfs), so they survive reboots like
// /var/lib/snapctl on a root filesystem.

func grpDisks() []Disk {
	return []Disk{{Size: 32 << 20}, {Size: 64 << 20}, {Size: 128 << 20}}
}

// grp is one boot of a group test: the shared directory and the state.
type grp struct {
	t     *testing.T
	dir   string
	state string
	repo  string
}

func newGrp(t *testing.T) *grp {
	dir := os.Getenv(envBootDir)
	return &grp{t: t, dir: dir, state: filepath.Join(dir, "state"), repo: os.Getenv(envRepo)}
}

func (g *grp) sc(args ...string) string {
	g.t.Helper()
	return mustSnapctl(g.t, append(args, "--state-dir", g.state)...)
}

// scRun runs snapctl and returns stdout, stderr and the exit code.
func (g *grp) scRun(args ...string) (string, string, int) {
	g.t.Helper()
	return snapctl(g.t, append(args, "--state-dir", g.state)...)
}

// refuse runs snapctl and checks its exit code and that stderr holds has.
func (g *grp) refuse(code int, args []string, has ...string) {
	g.t.Helper()
	_, errOut, c := g.scRun(args...)
	if c != code {
		g.t.Errorf("snapctl %s: exit %d, want %d\n%s", strings.Join(args, " "), c, code, errOut)
	}
	for _, h := range has {
		if !strings.Contains(errOut, h) {
			g.t.Errorf("snapctl %s: stderr lacks %q:\n%s", strings.Join(args, " "), h, errOut)
		}
	}
}

func (g *grp) path(name string) string { return filepath.Join(g.dir, name) }

func (g *grp) save(name string, v any) {
	b, err := json.Marshal(v)
	must(g.t, err)
	must(g.t, os.WriteFile(g.path(name), b, 0o644))
}

func (g *grp) load(name string, v any) {
	b, err := os.ReadFile(g.path(name))
	must(g.t, err)
	must(g.t, json.Unmarshal(b, v))
}

// grpStatus is `snapctl status GROUP --json`.
type grpStatus struct {
	SchemaVersion int    `json:"schema_version"`
	Name          string `json:"name"`
	State         string `json:"state"`
	Sealed        bool   `json:"sealed"`
	Tries         int    `json:"tries"`
	TriesLeft     int    `json:"tries_left"`
	Decision      string `json:"decision"`
	DecidedBy     string `json:"decided_by"`
	Step          string `json:"step"`
	Members       []struct {
		Name       string `json:"name"`
		Mode       string `json:"mode"`
		Phase      string `json:"phase"`
		StoreState string `json:"store_state"`
		Pending    bool   `json:"pending"`
	} `json:"members"`
}

func (g *grp) status(name string) grpStatus {
	g.t.Helper()
	out := g.sc("status", name, "--json")
	var s grpStatus
	if err := json.Unmarshal([]byte(out), &s); err != nil || s.SchemaVersion != 1 || s.Name != name {
		g.t.Fatalf("status %s --json: %v\n%s", name, err, out)
	}
	return s
}

// mount mounts /dev/mapper/name at dir/mnt-name.
func (g *grp) mount(name string) string {
	g.t.Helper()
	m := g.path("mnt-" + name)
	must(g.t, os.MkdirAll(m, 0o755))
	run(g.t, "mount", "/dev/mapper/"+name, m)
	return m
}

// shutdown does what systemd does at the end of a boot: unmount, then
// remove every device-mapper device; snapctl is not asked.
func (g *grp) shutdown() {
	g.t.Helper()
	for _, n := range []string{"userdata", "stor", "system"} {
		exec.Command("umount", g.path("mnt-"+n)).Run()
	}
	for _, n := range []string{"userdata", "system", "stor"} {
		removeDevices(g.t, n)
	}
}

// images makes image A on /dev/ubda (ext4 with files) and as a file, and
// image B (A with files changed, deleted and added) as a file, and records
// their checksums.
func (g *grp) images() (sumA, sumB string) {
	t := g.t
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", ubd(0))
	m := g.path("mnt-a")
	must(t, os.MkdirAll(m, 0o755))
	run(t, "mount", ubd(0), m)
	populate(t, m, 12, 21)
	run(t, "umount", m)
	run(t, "dd", "if="+ubd(0), "of="+g.path("A.img"), "bs=1M", "status=none")
	run(t, "cp", g.path("A.img"), g.path("B.img"))
	run(t, "mount", "-o", "loop", g.path("B.img"), m)
	change(t, m)
	run(t, "umount", m)
	sumA, sumB = deviceSum(t, g.path("A.img")), deviceSum(t, g.path("B.img"))
	if sumA == sumB {
		t.Fatal("images A and B are identical")
	}
	return sumA, sumB
}

// setup attaches stor (ext4, mounted) and userdata (ext4 with files,
// mounted) and records userdata's files.
func (g *grp) setup() (userdata map[string]string) {
	t := g.t
	g.sc("attach", "stor", "--origin", ubd(2))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
	g.mount("stor")
	g.sc("attach", "userdata", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/userdata")
	m := g.mount("userdata")
	populate(t, m, 10, 5)
	return tree(t, m)
}

// update prepares system (update mode) and userdata (checkpoint mode) into
// group name, writes the new system image from as a delta over old, and
// changes userdata's files (seed); it returns userdata's files after.
func (g *grp) update(name, old, new string, seed int64) map[string]string {
	t := g.t
	g.sc("prepare", "system", "--origin", ubd(0), "--mode", "update", "--store", filepath.Join(g.path("mnt-stor"), name+".cow"),
		"--size", "auto", "--new-image", new, "--group", name)
	g.sc("prepare", "userdata", "--store", filepath.Join(g.path("mnt-userdata"), ".snapctl-store"), "--size", "24M", "--group", name)
	writeDelta(t, "/dev/mapper/system", old, new, 4096)
	m := g.path("mnt-userdata")
	r := rand.New(rand.NewSource(seed))
	for i := range 4 {
		b := make([]byte, 64<<10+r.Intn(512<<10))
		r.Read(b)
		must(t, os.WriteFile(filepath.Join(m, fmt.Sprintf("new-%d-%d", seed, i)), b, 0o644))
	}
	must(t, os.Remove(filepath.Join(m, fmt.Sprintf("f%02d", seed))))
	run(t, "sync")
	return tree(t, m, ".snapctl-store")
}

// checkLinear checks that no snapshot device is left: only the three
// volumes, each a linear map.
func (g *grp) checkLinear() {
	t := g.t
	for _, n := range []string{"system", "userdata"} {
		if d := devicesOf(t, n); len(d) != 1 {
			t.Errorf("devices of %s: %v, want only %s", n, d, n)
		}
		tab := run(t, "dmsetup", "table", n)
		if !strings.Contains(tab, " linear ") {
			t.Errorf("%s is not linear: %s", n, tab)
		}
	}
}

// activateUnit runs what snapctl-activate.service runs, as systemd does
// before local-fs-pre.target, and returns its output and wall time.
func (g *grp) activateUnit() (string, time.Duration) {
	g.t.Helper()
	u := parseUnit(g.t, filepath.Join(g.repo, "contrib", "systemd", "snapctl-activate.service"))
	start := time.Now()
	var out strings.Builder
	for _, line := range u["Service.ExecStart"] {
		argv := strings.Fields(strings.TrimLeft(line, "-@:+!"))
		argv = append([]string{snapctlBin}, append(argv[1:], "--state-dir", g.state)...)
		b, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		out.Write(b)
		if err != nil {
			g.t.Fatalf("ExecStart=%s: %v\n%s", line, err, b)
		}
	}
	d := time.Since(start)
	g.t.Logf("activate unit (%v):\n%s", d, out.String())
	return out.String(), d
}

// markGoodUnit runs snapctl-mark-good@GROUP.service's ExecStart, with %i
// the group, after checking it is ordered after boot-complete.target.
func (g *grp) markGoodUnit(name string) string {
	t := g.t
	u := parseUnit(t, filepath.Join(g.repo, "contrib", "systemd", "snapctl-mark-good@.service"))
	for _, c := range []struct{ key, want string }{
		{"Unit.Requires", "boot-complete.target"},
		{"Unit.After", "boot-complete.target"},
		{"Unit.After", "snapctl-activate.service"},
		{"Service.Type", "oneshot"},
		{"Install.WantedBy", "multi-user.target"},
	} {
		if !slices.Contains(u.words(c.key), c.want) {
			t.Errorf("snapctl-mark-good@.service: %s has %q, want %q in it", c.key, u[c.key], c.want)
		}
	}
	var out strings.Builder
	for _, line := range u["Service.ExecStart"] {
		argv := strings.Fields(strings.ReplaceAll(line, "%i", name))
		if argv[0] != "/usr/sbin/snapctl" || !slices.Equal(argv[1:], []string{"mark-good", name}) {
			t.Fatalf("snapctl-mark-good@.service: ExecStart=%s, want /usr/sbin/snapctl mark-good %%i", line)
		}
		b, err := exec.Command(snapctlBin, "mark-good", name, "--state-dir", g.state).CombinedOutput()
		out.Write(b)
		if err != nil {
			t.Fatalf("ExecStart=%s: %v\n%s", line, err, b)
		}
	}
	return out.String()
}

// grpBoots boots the machine once per phase with the test's environment;
// in phase cut (0: none) the host cuts the power when the guest prints
// grpCutMarker.
func grpBoots(t *testing.T, phases int, disks []Disk, cut int) {
	repo, err := moduleRoot()
	must(t, err)
	m := NewMachine(t, Config{Disks: disks, Timeout: 10 * time.Minute})
	dir := t.TempDir()
	var total time.Duration
	for p := 1; p <= phases; p++ {
		opts := RunOptions{Env: []string{envPhase + "=" + strconv.Itoa(p), envBootDir + "=" + dir, envRepo + "=" + repo}}
		if p == cut {
			opts.PowerCutOn = grpCutMarker
		}
		r := m.Run(t, opts)
		total += r.Elapsed
		if p == cut {
			if !r.Cut {
				t.Fatalf("boot %d did not reach the power cut (status %d):\n%s", p, r.Status, tail(r.Output, 150))
			}
			t.Logf("boot %d took %v (power cut)", p, r.Elapsed.Round(time.Millisecond))
			continue
		}
		if r.Status != 0 || !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
			t.Fatalf("boot %d failed (status %d):\n%s", p, r.Status, tail(r.Output, 150))
		}
		t.Logf("boot %d took %v", p, r.Elapsed.Round(time.Millisecond))
	}
	t.Logf("%d boots took %v", phases, total.Round(time.Millisecond))
}

func grpPhase(t *testing.T) int {
	p, err := strconv.Atoi(os.Getenv(envPhase))
	if err != nil {
		t.Fatalf("no boot phase: %v", err)
	}
	return p
}

// TestGroupBootCounting: an update of system (update mode) and userdata
// (checkpoint mode) in one group sealed with --tries 2 is never marked
// good. Boot 1 writes the update and seals; boots 2 and 3 run the new
// version (each takes one try, a second activate in the same boot takes
// none) and write to userdata; boot 4's activate finds no tries left and,
// before anything mounts them, rolls both back: the raw system origin is
// byte-identical to image A, userdata holds its pre-update files, both
// filesystems check clean, no snapshot device is left, and the journal
// lines and `status GROUP` say what happened.
func TestGroupBootCounting(t *testing.T) {
	parallel(t)
	if !guest() {
		grpBoots(t, 4, grpDisks(), 0)
		return
	}
	g := newGrp(t)
	t.Cleanup(g.shutdown)
	p := grpPhase(t)
	if p > 1 {
		if left := leakedDevices(); len(left) > 0 {
			t.Fatalf("devices at boot before activate: %v", left)
		}
		out, _ := g.activateUnit()
		g.sc("activate") // as snapctl-monitor.service's ExecStartPre does, later in the boot
		s := g.status("ota")
		if p <= 3 {
			want := fmt.Sprintf("boot try %d of 2 taken (%d left)", p-1, 3-p)
			if !strings.Contains(out, want) || s.TriesLeft != 3-p || s.State != "sealed" {
				t.Fatalf("boot %d: activate said:\n%s\nstatus: %+v; want %q and %d tries left, sealed", p, out, s, want, 3-p)
			}
			var sums map[string]string
			g.load("sums.json", &sums)
			if got := deviceSum(t, "/dev/mapper/system"); got != sums["B"] {
				t.Fatalf("boot %d: /dev/mapper/system is not the new image B", p)
			}
			g.mount("stor")
			m := g.mount("userdata")
			var after map[string]string
			g.load("userdata-after.json", &after)
			sameTree(t, tree(t, m, ".snapctl-store"), after)
			// The new version writes to userdata.
			must(t, os.WriteFile(filepath.Join(m, fmt.Sprintf("boot-%d", p)), pattern(p, 300<<10), 0o644))
			after[fmt.Sprintf("boot-%d", p)] = fileSum(t, filepath.Join(m, fmt.Sprintf("boot-%d", p)))
			g.save("userdata-after.json", after)
			run(t, "sync")
			return
		}
		// Boot 4: rolled back before anything mounted either volume.
		if !strings.Contains(out, "no boot tries left") || !strings.Contains(out, "rolled back system, userdata") {
			t.Errorf("boot 4: activate did not say it rolled the group back:\n%s", out)
		}
		if s.State != "rolled-back" || s.DecidedBy != "boot: no tries left" || s.TriesLeft != 0 {
			t.Errorf("boot 4: status %+v, want rolled-back by the boot", s)
		}
		for _, m := range s.Members {
			if m.Phase != "attached" || m.Pending {
				t.Errorf("boot 4: member %+v, want attached, nothing pending", m)
			}
		}
		var sums map[string]string
		g.load("sums.json", &sums)
		if got := deviceSum(t, ubd(0)); got != sums["A"] {
			t.Error("boot 4: the raw system origin is not image A")
		}
		if got := deviceSum(t, "/dev/mapper/system"); got != sums["A"] {
			t.Error("boot 4: /dev/mapper/system is not image A")
		}
		g.checkLinear()
		fsck(t, "/dev/mapper/system")
		fsck(t, "/dev/mapper/userdata")
		g.mount("stor")
		m := g.mount("userdata")
		var before map[string]string
		g.load("userdata-before.json", &before)
		// The checkpoint store comes back with the rollback (it predates
		// the snapshot); the stores' filesystems were not mounted at the
		// rollback, so snapctl deletes the files once they are: at the next
		// activate (snapctl-monitor.service's ExecStartPre).
		sameTree(t, tree(t, m, ".snapctl-store"), before)
		g.sc("activate", "--wait")
		sameTree(t, tree(t, m), before)
		if _, err := os.Stat(filepath.Join(g.path("mnt-stor"), "ota.cow")); !os.IsNotExist(err) {
			t.Errorf("system's store after the rollback and the next activate: %v, want deleted", err)
		}
		return
	}
	sumA, sumB := g.images()
	g.save("sums.json", map[string]string{"A": sumA, "B": sumB})
	g.save("userdata-before.json", g.setup())
	g.save("userdata-after.json", g.update("ota", g.path("A.img"), g.path("B.img"), 1))
	// Not sealed: neither the member nor the group can be committed.
	g.refuse(4, []string{"commit", "system"}, "never merged", "snapctl mark-good ota")
	g.refuse(4, []string{"mark-good", "ota"}, "not sealed", "snapctl seal ota")
	if out := g.sc("seal", "ota", "--tries", "2"); !strings.Contains(out, "sealed ota") {
		t.Errorf("seal said:\n%s", out)
	}
	if s := g.status("ota"); s.State != "sealed" || s.TriesLeft != 2 || len(s.Members) != 2 {
		t.Fatalf("after seal: %+v", s)
	}
	// Activate in the boot that sealed takes no try.
	g.sc("activate")
	if s := g.status("ota"); s.TriesLeft != 2 {
		t.Fatalf("activate in the sealing boot took a try: %+v", s)
	}
}

// TestGroupUpdate: the other ways a group ends, on one machine. Boot 1: bad
// input (each refused with its exit code, nothing changed), then an update
// sealed with --tries 3. Boot 2: activate takes a try (timed against an
// activate of the same volumes outside any group, same boot), and
// snapctl-mark-good@ota.service's command commits: the raw system origin is
// image B, userdata keeps its new files. Then a second update (B back to A)
// in group ota2 is marked bad while userdata is mounted: the rollback is
// recorded, nothing rolled back yet. Boot 3: activate rolls both members
// back before anything mounts them; then a third update in group ota3 is
// marked bad with nothing mounted and rolled back at once.
func TestGroupUpdate(t *testing.T) {
	parallel(t)
	if !guest() {
		grpBoots(t, 3, grpDisks(), 0)
		return
	}
	g := newGrp(t)
	t.Cleanup(g.shutdown)
	var sums map[string]string
	switch grpPhase(t) {
	case 1:
		sumA, sumB := g.images()
		g.save("sums.json", map[string]string{"A": sumA, "B": sumB})
		g.setup()
		grpBadInput(t, g)
		g.save("userdata-good.json", g.update("ota", g.path("A.img"), g.path("B.img"), 2))
		g.sc("seal", "ota", "--tries", "3")
		// Members join only before the seal.
		g.refuse(4, []string{"prepare", "late", "--origin", ubd(1), "--store", "/x", "--group", "ota"}, "sealed")
	case 2:
		g.load("sums.json", &sums)
		out, withGroup := g.activateUnit()
		if !strings.Contains(out, "boot try 1 of 3 taken") {
			t.Errorf("activate did not take a try:\n%s", out)
		}
		grpTime(t, g, withGroup)
		if got := deviceSum(t, "/dev/mapper/system"); got != sums["B"] {
			t.Fatal("before mark-good: /dev/mapper/system is not image B")
		}
		g.mount("stor")
		m := g.mount("userdata")
		g.markGoodUnit("ota")
		s := g.status("ota")
		if s.State != "committed" || s.DecidedBy != "mark-good" {
			t.Fatalf("after mark-good: %+v", s)
		}
		if got := deviceSum(t, ubd(0)); got != sums["B"] {
			t.Fatal("after mark-good: the raw system origin is not image B")
		}
		var good map[string]string
		g.load("userdata-good.json", &good)
		sameTree(t, tree(t, m), good)
		g.checkLinear()
		g.refuse(4, []string{"mark-bad", "ota"}, "already decided commit")
		// Running the unit again (the next boot) changes nothing.
		g.markGoodUnit("ota")

		// Update 2: B back to A, marked bad while userdata is mounted.
		g.save("userdata-2.json", good)
		g.update("ota2", g.path("B.img"), g.path("A.img"), 3)
		g.sc("seal", "ota2", "--tries", "3")
		_, errOut, code := g.scRun("mark-bad", "ota2")
		out = g.sc("status", "ota2")
		s = g.status("ota2")
		if code != 0 || !strings.Contains(errOut, "userdata in use") || s.State != "rolling-back" || s.Members[0].Phase != "prepared" || s.Members[1].Phase != "prepared" {
			t.Fatalf("mark-bad with userdata mounted: exit %d, %s\nstatus %+v, want the rollback recorded and no member rolled back", code, errOut, s)
		}
		if !strings.Contains(out, "next `snapctl activate`") {
			t.Errorf("status of a recorded rollback does not say when it happens:\n%s", out)
		}
		g.refuse(4, []string{"mark-good", "ota2"}, "already decided rollback")
	case 3:
		g.load("sums.json", &sums)
		out, _ := g.activateUnit()
		if !strings.Contains(out, "carrying out the recorded decision: rollback (by mark-bad)") {
			t.Errorf("activate did not say it carried out the rollback:\n%s", out)
		}
		if s := g.status("ota2"); s.State != "rolled-back" {
			t.Fatalf("after activate: %+v", s)
		}
		if got := deviceSum(t, ubd(0)); got != sums["B"] {
			t.Fatal("after the rollback: the raw system origin is not image B")
		}
		g.checkLinear()
		fsck(t, "/dev/mapper/userdata")
		g.mount("stor")
		m := g.mount("userdata")
		var before map[string]string
		g.load("userdata-2.json", &before)
		sameTree(t, tree(t, m, ".snapctl-store"), before)

		// Update 3, marked bad with nothing mounted: rolled back now.
		g.update("ota3", g.path("B.img"), g.path("A.img"), 4)
		g.sc("seal", "ota3", "--tries", "1")
		run(t, "umount", m)
		if out := g.sc("mark-bad", "ota3"); !strings.Contains(out, "rolled back every member of ota3") {
			t.Errorf("mark-bad said:\n%s", out)
		}
		if s := g.status("ota3"); s.State != "rolled-back" {
			t.Fatalf("after mark-bad: %+v", s)
		}
		if got := deviceSum(t, ubd(0)); got != sums["B"] {
			t.Fatal("after mark-bad: the raw system origin is not image B")
		}
		g.checkLinear()
		fsck(t, "/dev/mapper/userdata")
		m = g.mount("userdata")
		sameTree(t, tree(t, m, ".snapctl-store"), before)
	}
}

// grpBadInput: each bad request is refused with its exit code and changes
// no record. The volumes are attached (stor, userdata); system is not.
func grpBadInput(t *testing.T, g *grp) {
	records := func() map[string]string {
		out := map[string]string{}
		filepath.Walk(g.state, func(p string, fi os.FileInfo, err error) error {
			if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".json") {
				out[p] = fileSum(t, p)
			}
			return nil
		})
		return out
	}
	before := records()
	store := filepath.Join(g.path("mnt-stor"), "bad.cow")
	prep := func(name, group string) []string {
		return []string{"prepare", name, "--origin", ubd(0), "--mode", "update", "--store", store, "--size", "4M", "--group", group}
	}
	g.refuse(4, prep("system", "userdata"), "a volume has that name")
	g.refuse(4, prep("system", "system"), "its own group")
	g.refuse(2, prep("system", "a/b"), "group")
	g.refuse(4, []string{"seal", "nosuch"}, "unknown", "--group nosuch")
	g.refuse(4, []string{"mark-good", "nosuch"}, "unknown")
	g.refuse(4, []string{"mark-bad", "nosuch"}, "unknown")
	if !maps2Equal(before, records()) {
		t.Errorf("a refused request changed a record")
	}
	// A group with one member; the member cannot join a second group, and
	// no volume can take the group's name.
	g.sc(prep("system", "g1")...)
	g.refuse(4, []string{"prepare", "userdata", "--store", filepath.Join(g.path("mnt-userdata"), ".s2"), "--size", "4M", "--group", "system"}, "a volume has that name")
	g.refuse(4, []string{"attach", "g1", "--origin", ubd(1)}, "update group has that name")
	g.refuse(4, prep("system", "g2"), "member of update group \"g1\"")
	g.refuse(2, []string{"seal", "g1", "--tries", "0"}, "--tries")
	g.refuse(2, []string{"seal", "g1", "--tries", "1000000"}, "--tries")
	g.refuse(4, []string{"mark-good", "g1"}, "not sealed")
	g.refuse(4, []string{"commit", "system"}, "never merged")
	g.refuse(4, []string{"rollback", "system"}, "with its whole group")
	g.refuse(4, []string{"drop", "system"}, "with its whole group")
	g.refuse(4, []string{"merge", "system"}, "never merged")
	// Two snapctl runs on one group: the second is refused, naming the
	// first (held here by a lock as snapctl takes it).
	lk, err := os.OpenFile(filepath.Join(g.state, "groups", "g1.lock"), os.O_RDWR, 0)
	must(t, err)
	must(t, syscall.Flock(int(lk.Fd()), syscall.LOCK_EX))
	lk.WriteString("pid 1: snapctl mark-good g1\n")
	g.refuse(4, []string{"seal", "g1"}, "busy", "snapctl mark-good g1")
	lk.Close()
	// A corrupt group record is refused, never guessed at, and does not
	// stop activate from doing the rest.
	rec := filepath.Join(g.state, "groups", "g1.json")
	good, err := os.ReadFile(rec)
	must(t, err)
	must(t, os.WriteFile(rec, good[:len(good)/2], 0o600))
	g.refuse(3, []string{"status", "g1"}, "corrupt")
	g.refuse(3, []string{"seal", "g1"}, "corrupt", "does not guess")
	g.refuse(3, []string{"mark-bad", "g1"}, "corrupt")
	_, errOut, code := g.scRun("activate")
	if code != 3 || !strings.Contains(errOut, "corrupt") {
		t.Errorf("activate with a corrupt group record: exit %d\n%s", code, errOut)
	}
	must(t, os.WriteFile(rec, good, 0o600))
	// An empty group: mark-bad of the open group abandons it and leaves it
	// with no member to seal.
	g.sc("mark-bad", "g1")
	if s := g.status("g1"); s.State != "rolled-back" {
		t.Fatalf("mark-bad of an open group: %+v", s)
	}
	g.refuse(4, []string{"seal", "g1"}, "already decided rollback")
	empty := filepath.Join(g.state, "groups", "empty.json")
	must(t, os.WriteFile(empty, []byte(`{"format":1,"name":"empty","members":[],"sealed":false,"tries_left":0}`), 0o600))
	g.refuse(4, []string{"seal", "empty"}, "no members")
	must(t, os.Remove(empty))
	if d := devicesOf(t, "system"); len(d) != 1 {
		t.Fatalf("after the bad input: devices %v", d)
	}
	g.sc("detach", "system")
}

func maps2Equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// grpTime measures what update groups add to activate: the boot's first
// activate (which took a try) took withGroup; then, in the same boot, the
// stacks are torn down and rebuilt by an activate of the same volumes in a
// copy of the state directory without the group, and by an activate with
// the group (which takes no try a second time), five times each,
// alternating. The figures go to the test log.
func grpTime(t *testing.T, g *grp, withGroup time.Duration) {
	plain := filepath.Join(g.dir, "state-plain")
	os.RemoveAll(plain)
	must(t, os.MkdirAll(plain, 0o700))
	for _, n := range []string{"system", "userdata", "stor"} {
		b, err := os.ReadFile(filepath.Join(g.state, n+".json"))
		must(t, err)
		var rec map[string]any
		must(t, json.Unmarshal(b, &rec))
		delete(rec, "group")
		b, err = json.Marshal(rec)
		must(t, err)
		must(t, os.WriteFile(filepath.Join(plain, n+".json"), b, 0o600))
	}
	timed := func(state string) time.Duration {
		for _, n := range []string{"userdata", "system"} {
			mustSnapctl(t, "deactivate", n, "--state-dir", state)
		}
		start := time.Now()
		mustSnapctl(t, "activate", "--state-dir", state)
		return time.Since(start)
	}
	var with, without []time.Duration
	for range 5 {
		without = append(without, timed(plain))
		with = append(with, timed(g.state))
	}
	med := func(d []time.Duration) time.Duration {
		s := slices.Clone(d)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	t.Logf("GROUP-TIMING: activate of a group of two volumes at boot (taking a try): %v; same volumes, same boot, median of 5: with the group %v, without any group %v; ratio with/without %.2f (boot's first activate / without: %.2f)",
		withGroup.Round(time.Microsecond), med(with).Round(time.Microsecond), med(without).Round(time.Microsecond),
		float64(med(with))/float64(med(without)), float64(withGroup)/float64(med(without)))
	os.RemoveAll(plain)
}
