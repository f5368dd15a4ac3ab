//go:build e2e

package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapctl/snapctl/dmtable"
)

// Guest disks of TestGroupCrash (the same disks across its three boots):
//   /dev/ubda  192 MiB  carved into "disk-*" device-mapper linear slices,
//                       created in the same order at every boot (so they
//                       keep their device numbers, as disks do): the
//                       members' origins, raw patterns, no filesystem
//   /dev/ubdb  256 MiB  attached as "stor", ext4, holds every store file
//
// Boot 1 kills seal, mark-good and mark-bad at every step boundary
// (SNAPCTL_TEST_CRASH_AFTER=k) on a pair of volumes and recovers each, then
// sets up one group per kill point of the boot-time rollback (gK: sysK in
// update mode, udK in checkpoint mode, sealed --tries 1) and a larger group
// P (sealed --tries 3). Boot 2's activate takes one try of each group
// (none is left to the gK); then P is marked good and the guest's power is
// cut while sysP's live userspace merge copies. Boot 3: `snapctl activate sysP udP`
// finishes P's commit; then for each k, `snapctl activate sysK udK` (which
// finds gK with no tries left and rolls it back; activate names only gK's
// volumes, so the other groups wait their turn) is killed at its k-th step
// and recovered by running it again. Every case ends with both members
// committed or both rolled back, their data matching.

const grpCutMarker = "E2E-GROUP-POWER-CUT-NOW"

// grpSlice is one origin carved out of /dev/ubda.
type grpSlice struct {
	name     string
	off, len uint64 // sectors
}

// grpKillGroups is how many groups boot 1 prepares for the boot-time
// rollback matrix: more than its steps.
const grpKillGroups = 13

func grpSlices() []grpSlice {
	var s []grpSlice
	var at uint64
	add := func(name string, mib uint64) {
		s = append(s, grpSlice{name: "disk-" + name, off: at, len: mib << 11})
		at += mib << 11
	}
	for k := 1; k <= grpKillGroups; k++ {
		add(fmt.Sprintf("sys%d", k), 4)
		add(fmt.Sprintf("ud%d", k), 4)
	}
	add("sysM", 4)
	add("udM", 4)
	add("sysP", 32)
	add("udP", 32)
	return s
}

// makeSlices creates the slices, in order.
func makeSlices(t *testing.T) {
	for _, s := range grpSlices() {
		_, err := dmtable.Create(s.name, "")
		must(t, err)
		must(t, dmtable.Load(s.name, dmtable.Table{dmtable.Linear(0, s.len, ubd(0), s.off)}))
		must(t, dmtable.Resume(s.name))
	}
}

func removeSlices(t *testing.T) {
	sl := grpSlices()
	for i := len(sl) - 1; i >= 0; i-- {
		if ok, _ := dmtable.Exists(sl[i].name); ok {
			if err := dmtable.Remove(sl[i].name); err != nil {
				t.Logf("cleanup: remove %s: %v", sl[i].name, err)
			}
		}
	}
}

// grpPair is a group of two members: sys (update mode) and ud (checkpoint).
type grpPair struct {
	Group, Sys, Ud                 string
	OrigSys, OrigUd, NewSys, NewUd string
}

// prepare prepares both members into the group, writes n chunks into each
// (through /dev/mapper/NAME) and records the images.
func (g *grp) prepare(p *grpPair, n int, seed int64) {
	t := g.t
	dev := func(v string) string {
		if _, err := os.Stat("/dev/mapper/" + v); err == nil {
			return "/dev/mapper/" + v
		}
		return "/dev/mapper/disk-" + v
	}
	p.OrigSys, p.OrigUd = deviceSum(t, dev(p.Sys)), deviceSum(t, dev(p.Ud))
	stor := g.path("mnt-stor")
	size := "2M"
	if n > 1000 {
		size = "24M"
	}
	g.sc("prepare", p.Sys, "--origin", "/dev/mapper/disk-"+p.Sys, "--mode", "update", "--store", filepath.Join(stor, p.Group+"-"+p.Sys), "--size", size, "--group", p.Group)
	g.sc("prepare", p.Ud, "--origin", "/dev/mapper/disk-"+p.Ud, "--store", filepath.Join(stor, p.Group+"-"+p.Ud), "--size", size, "--group", p.Group)
	scatter(t, "/dev/mapper/"+p.Sys, n, seed)
	scatter(t, "/dev/mapper/"+p.Ud, n, seed+1)
	p.NewSys, p.NewUd = deviceSum(t, "/dev/mapper/"+p.Sys), deviceSum(t, "/dev/mapper/"+p.Ud)
}

// check checks that the group ended in state want ("committed" or
// "rolled-back") with both members attached and holding that outcome's
// data, and no snapshot device left; it returns what it found, for the
// log, and false on a defect.
func (g *grp) check(p *grpPair, want string) (string, bool) {
	t := g.t
	s := g.status(p.Group)
	ok := true
	var found []string
	if s.State != want {
		t.Errorf("group %s: state %s, want %s (%+v)", p.Group, s.State, want, s)
		ok = false
	}
	for _, m := range s.Members {
		if m.Phase != "attached" || m.Pending {
			t.Errorf("group %s: member %+v, want attached with nothing pending", p.Group, m)
			ok = false
		}
	}
	wantSys, wantUd := p.NewSys, p.NewUd
	if want == "rolled-back" {
		wantSys, wantUd = p.OrigSys, p.OrigUd
	}
	for _, c := range []struct{ v, got, want, orig, changed string }{
		{p.Sys, deviceSum(t, "/dev/mapper/"+p.Sys), wantSys, p.OrigSys, p.NewSys},
		{p.Ud, deviceSum(t, "/dev/mapper/"+p.Ud), wantUd, p.OrigUd, p.NewUd},
	} {
		found = append(found, c.v+": "+relData(c.got, c.orig, c.changed))
		if c.got != c.want {
			t.Errorf("group %s: DEFECT: %s holds the %s, want the %s", p.Group, c.v, relData(c.got, c.orig, c.changed), relData(c.want, c.orig, c.changed))
			ok = false
		}
		if d := devicesOf(t, c.v); len(d) != 1 {
			t.Errorf("group %s: devices %v left, want only %s", p.Group, d, c.v)
			ok = false
		}
	}
	return s.State + "; " + strings.Join(found, ", "), ok
}

// crashRun runs snapctl with SNAPCTL_TEST_CRASH_AFTER=k and reports the
// step it was killed at ("" when it finished).
func (g *grp) crashRun(k int, args ...string) (step string, code int, out string) {
	g.t.Helper()
	out, step, code = relRun(g.t, []string{"SNAPCTL_TEST_CRASH_AFTER=" + strconv.Itoa(k)}, append(args, "--state-dir", g.state)...)
	return step, code, out
}

// groupRecord is the group record's step and decision as the kill left them.
func (g *grp) groupRecord(name string) string {
	b, err := os.ReadFile(filepath.Join(g.state, "groups", name+".json"))
	must(g.t, err)
	s := string(b)
	var parts []string
	for _, key := range []string{`"decision": "`, `"step": "`} {
		if i := strings.Index(s, key); i >= 0 {
			v := s[i+len(key):]
			parts = append(parts, strings.TrimSuffix(key[1:], `": "`)+" "+v[:strings.IndexByte(v, '"')])
		}
	}
	if len(parts) == 0 {
		return "no decision, no step"
	}
	return strings.Join(parts, ", ")
}

func TestGroupCrash(t *testing.T) {
	parallel(t)
	if !guest() {
		grpBoots(t, 3, []Disk{{Size: 192 << 20}, {Size: 256 << 20}}, 2)
		return
	}
	g := newGrp(t)
	p := grpPhase(t)
	if p > 1 {
		if left := leakedDevices(); len(left) > 0 {
			t.Fatalf("devices at boot: %v", left)
		}
	}
	makeSlices(t)
	t.Cleanup(func() {
		exec.Command("umount", g.path("mnt-stor")).Run()
		all, _ := dmtable.List()
		for _, d := range all {
			if !strings.HasPrefix(d.Name, "disk-") && d.Name != "stor" {
				removeDevices(t, strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(d.Name, "-cow"), "-real"), "-snap"), "-base"))
			}
		}
		removeDevices(t, "stor")
		removeSlices(t)
	})
	var pairs []*grpPair
	switch p {
	case 1:
		g.sc("attach", "stor", "--origin", ubd(1))
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/stor")
		g.mount("stor")
		grpOpMatrix(t, g)
		for k := 1; k <= grpKillGroups; k++ {
			pr := &grpPair{Group: fmt.Sprintf("g%d", k), Sys: fmt.Sprintf("sys%d", k), Ud: fmt.Sprintf("ud%d", k)}
			g.prepare(pr, 60, int64(k))
			g.sc("seal", pr.Group, "--tries", "1")
			pairs = append(pairs, pr)
		}
		pr := &grpPair{Group: "P", Sys: "sysP", Ud: "udP"}
		g.prepare(pr, 6000, 99)
		g.sc("seal", "P", "--tries", "3")
		pairs = append(pairs, pr)
		g.save("pairs.json", pairs)
	case 2:
		g.sc("activate")
		g.load("pairs.json", &pairs)
		for _, pr := range pairs {
			if s := g.status(pr.Group); s.TriesLeft != s.Tries-1 || s.State != "sealed" {
				t.Fatalf("boot 2: group %s: %+v, want sealed with one try taken", pr.Group, s)
			}
		}
		grpPowerCut(t, g, pairs[grpKillGroups])
	case 3:
		g.load("pairs.json", &pairs)
		pr := pairs[grpKillGroups]
		rec := relRecord(t, &volume{t: t, name: pr.Sys, state: g.state})
		before := g.groupRecord(pr.Group)
		out := g.sc("activate", "stor", pr.Sys, pr.Ud)
		g.mount("stor")
		res, _ := g.check(pr, "committed")
		t.Logf("GROUP-CRASH-ROW | power cut during mark-good's live userspace merge of %s | record at boot: group %s; %s %s | recovered by `snapctl activate` at the next boot | %s |",
			pr.Sys, before, pr.Sys, rec.record(), res)
		if rec.Phase != "merging" {
			t.Errorf("the power cut did not land in the merge: %s was %s at boot", pr.Sys, rec.record())
		}
		_ = out
		grpBootRollbackMatrix(t, g, pairs[:grpKillGroups])
	}
}

// grpOpMatrix kills seal, mark-good and mark-bad at every step boundary
// on the pair sysM/udM (a fresh group each time) and recovers: a seal by
// running it again, a mark-good or mark-bad by `snapctl activate` (what
// the next boot runs). Each case ends committed (seal, then mark-good; or
// mark-good) or rolled back (mark-bad).
func grpOpMatrix(t *testing.T, g *grp) {
	for _, op := range []string{"seal", "mark-good", "mark-bad"} {
		for k := 1; ; k++ {
			if k > 25 {
				t.Fatalf("%s: still killed at step 25", op)
			}
			pr := &grpPair{Group: fmt.Sprintf("%s-%d", op, k), Sys: "sysM", Ud: "udM"}
			g.prepare(pr, 200, int64(1000+k))
			if op != "seal" {
				g.sc("seal", pr.Group, "--tries", "3")
			}
			args := []string{op, pr.Group}
			if op == "seal" {
				args = append(args, "--tries", "3")
			}
			step, code, out := g.crashRun(k, args...)
			if step == "" && code != 0 {
				t.Fatalf("%s, k=%d: exit %d\n%s", op, k, code, out)
			}
			after := g.groupRecord(pr.Group)
			recovery := "none needed"
			if step != "" {
				switch op {
				case "seal":
					g.sc("activate")
					g.sc("seal", pr.Group, "--tries", "3")
					recovery = "`snapctl activate`, then `snapctl seal` again"
				default:
					g.sc("activate")
					recovery = "`snapctl activate`"
				}
			}
			want := "committed"
			switch op {
			case "seal":
				g.sc("mark-good", pr.Group)
			case "mark-bad":
				want = "rolled-back"
			}
			res, _ := g.check(pr, want)
			at := fmt.Sprintf("%d (%s)", k, step)
			if step == "" {
				at = fmt.Sprintf("%d (never reached)", k)
			}
			t.Logf("GROUP-CRASH-ROW | %s | killed at %s | group record: %s | recovered by %s | %s |", op, at, after, recovery, res)
			if step == "" {
				break
			}
		}
	}
}

// grpBootRollbackMatrix: group gk has no tries left; `snapctl activate
// sysk udk` (activate names only that group's volumes, so the other groups
// wait for their turn) rolls it back and is killed at its k-th step, then
// run again.
func grpBootRollbackMatrix(t *testing.T, g *grp, pairs []*grpPair) {
	for i, pr := range pairs {
		k := i + 1
		step, code, out := g.crashRun(k, "activate", pr.Sys, pr.Ud)
		if step == "" && code != 0 {
			t.Fatalf("boot-time rollback, k=%d: exit %d\n%s", k, code, out)
		}
		after := g.groupRecord(pr.Group)
		recovery := "none needed"
		if step != "" {
			g.sc("activate", pr.Sys, pr.Ud)
			recovery = "`snapctl activate` again"
		} else if !strings.Contains(out, "no boot tries left") {
			t.Errorf("activate did not say why it rolled %s back:\n%s", pr.Group, out)
		}
		res, _ := g.check(pr, "rolled-back")
		at := fmt.Sprintf("%d (%s)", k, step)
		if step == "" {
			at = fmt.Sprintf("%d (never reached)", k)
		}
		t.Logf("GROUP-CRASH-ROW | boot-time rollback (no tries left) | killed at %s | group record: %s | recovered by %s | %s |", at, after, recovery, res)
		if step == "" {
			return
		}
	}
	t.Fatalf("the boot-time rollback was still killed at step %d: prepare more groups (grpKillGroups)", len(pairs))
}

// grpPowerCut starts mark-good of group P and, once sysP's live userspace
// merge copies, has the host cut the power.
func grpPowerCut(t *testing.T, g *grp, pr *grpPair) {
	cmd := exec.Command(snapctlBin, "mark-good", pr.Group, "--state-dir", g.state)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	must(t, cmd.Start())
	rec := filepath.Join(g.state, pr.Sys+".json")
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(rec); err == nil && bytes.Contains(b, []byte(`"step": "merge:live-copy"`)) {
			fmt.Println(grpCutMarker)
			time.Sleep(time.Minute)
			t.Fatal("the power was not cut")
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Wait()
	t.Fatalf("the merge of %s never started:\n%s", pr.Sys, out.String())
}
