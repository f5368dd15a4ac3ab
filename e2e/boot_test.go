//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Guest disks for the boot test:
//   /dev/ubda  128 MiB  the origin: ext4 made through /dev/mapper/data, with
//                       the checkpoint store file on that same filesystem
// The state directory and the test's notes live on the host's filesystem
// (the guest's root over hostfs), so they survive from one boot to the next
// like /var/lib/snapctl on a root filesystem.

// Environment of the boot test's guests.
const (
	envBootDir    = "SNAPCTL_E2E_DIR"       // the host directory shared by both boots
	envRepo       = "SNAPCTL_E2E_REPO"      // the module root: units and golden files
	envGoldenSave = "SNAPCTL_UPDATE_GOLDEN" // "1": rewrite the status goldens
)

// TestBootSequence runs a checkpoint rollback scheduled for the next boot
// the way a system with contrib/systemd installed runs it. Boot 1: attach,
// mkfs, files, prepare, change files, `snapctl rollback data
// --at-next-activate`, write more, then shut down as systemd does: unmount,
// remove every device-mapper device, power off; no snapctl deactivate.
// Boot 2: nothing mounted, no device; run exactly the commands of
// snapctl-activate.service (ExecStartPre, ExecStart, parsed from the unit,
// with $SNAPCTL_BIN for /usr/sbin/snapctl and --state-dir added), as systemd
// does before local-fs-pre.target; check /dev/mapper/data is byte-identical
// to the prepare-time image before anything mounts it; mount it: every file
// is as it was at prepare time; run snapctl-monitor.service's ExecStartPre
// (after local-fs.target): the merge is finished, the stack is linear again
// and the store file is gone. The JSON shape of `status --json` is checked
// against cmd/snapctl/testdata/status-*.golden at each stage.
func TestBootSequence(t *testing.T) {
	parallel(t)
	switch os.Getenv(envPhase) {
	case "1":
		bootPhase1(t, os.Getenv(envBootDir), os.Getenv(envRepo))
		return
	case "2":
		bootPhase2(t, os.Getenv(envBootDir), os.Getenv(envRepo))
		return
	}
	if guest() {
		t.Fatal("no phase given")
	}
	repo, err := moduleRoot()
	must(t, err)
	checkActivateOrdering(t, parseUnit(t, filepath.Join(repo, "contrib", "systemd", "snapctl-activate.service")))
	m := NewMachine(t, Config{Disks: []Disk{{Size: 128 << 20}}})
	dir := t.TempDir()
	env := []string{envBootDir + "=" + dir, envRepo + "=" + repo, envGoldenSave + "=" + os.Getenv(envGoldenSave)}
	for phase := 1; phase <= 2; phase++ {
		r := m.Run(t, RunOptions{Env: append([]string{envPhase + "=" + strconv.Itoa(phase)}, env...)})
		if r.Status != 0 || !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
			t.Fatalf("boot %d failed (status %d):\n%s", phase, r.Status, tail(r.Output, 150))
		}
		t.Logf("boot %d took %v", phase, r.Elapsed.Round(1e6))
	}
}

// checkActivateOrdering checks the directives that make the activate unit
// run before anything mounts a volume and at every boot.
func checkActivateOrdering(t *testing.T, u unitFile) {
	t.Helper()
	for _, c := range []struct{ key, want string }{
		{"Unit.DefaultDependencies", "no"},
		{"Unit.Before", "local-fs-pre.target"},
		{"Unit.Wants", "local-fs-pre.target"},
		{"Unit.After", "systemd-modules-load.service"},
		{"Unit.Conflicts", "shutdown.target"},
		{"Unit.Before", "shutdown.target"},
		{"Service.Type", "oneshot"},
		{"Service.RemainAfterExit", "yes"},
		{"Install.WantedBy", "sysinit.target"},
	} {
		if !slices.Contains(u.words(c.key), c.want) {
			t.Errorf("snapctl-activate.service: %s has %q, want %q in it", c.key, u[c.key], c.want)
		}
	}
}

// unitFile is a systemd unit: "Section.Key" to its values, one per line
// that sets it, in order.
type unitFile map[string][]string

func parseUnit(t testing.TB, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case l == "" || l[0] == '#' || l[0] == ';':
		case l[0] == '[':
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok {
				t.Fatalf("%s: bad line %q", path, l)
			}
			u[section+"."+strings.TrimSpace(k)] = append(u[section+"."+strings.TrimSpace(k)], strings.TrimSpace(v))
		}
	}
	must(t, sc.Err())
	return u
}

// words splits every value of key into words.
func (u unitFile) words(key string) []string {
	var w []string
	for _, v := range u[key] {
		w = append(w, strings.Fields(v)...)
	}
	return w
}

// runUnit runs the unit's command lines of one kind (ExecStartPre,
// ExecStart) in order, as systemd would: the "-" prefix ignores a failure,
// /usr/sbin/snapctl is the snapctl under test, the unit's Environment= is
// set, and --state-dir points at the test's state directory.
func runUnit(t *testing.T, u unitFile, kind, state string) {
	t.Helper()
	env := append(append(os.Environ(), u.words("Service.Environment")...), "SNAPCTL_STATE_DIR="+state)
	for _, line := range u["Service."+kind] {
		ignore := false
		for len(line) > 0 && strings.ContainsRune("-@:+!", rune(line[0])) {
			ignore = ignore || line[0] == '-'
			line = line[1:]
		}
		argv := strings.Fields(line)
		if argv[0] == "/usr/sbin/snapctl" {
			argv = append([]string{snapctlBin}, append(argv[1:], "--state-dir", state)...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		t.Logf("%s=%s\n%s(%v)", kind, line, out, err)
		if err != nil && !ignore {
			t.Fatalf("%s=%s failed: %v\n%s", kind, line, err, out)
		}
	}
}

func bootPhase1(t *testing.T, dir, repo string) {
	state := filepath.Join(dir, "state")
	sc := func(args ...string) string { return mustSnapctl(t, append(args, "--state-dir", state)...) }
	sc("attach", "data", "--origin", ubd(0))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "/dev/mapper/data")
	mnt := filepath.Join(dir, "mnt")
	must(t, os.MkdirAll(mnt, 0o755))
	run(t, "mount", "/dev/mapper/data", mnt)
	populate(t, mnt, 12, 3)
	before, err := json.Marshal(tree(t, mnt))
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "before.json"), before, 0o644))

	sc("prepare", "data", "--store", filepath.Join(mnt, ".snapctl-store"), "--size", "48M")
	// The frozen view is the image a rollback must bring back, but for the
	// store's own blocks: they lie on the origin too, where the kernel
	// writes the saved chunks (the filesystem reads the file as unwritten
	// extents, so its content does not matter to it).
	var st struct {
		Origin struct{ Dev string } `json:"origin"`
		Store  struct {
			Segments []bootSegment `json:"segments"`
		} `json:"store"`
	}
	must(t, json.Unmarshal([]byte(sc("status", "data", "--json")), &st))
	for _, seg := range st.Store.Segments {
		if seg.Dev != st.Origin.Dev {
			t.Fatalf("store segment %+v is not on the origin %s", seg, st.Origin.Dev)
		}
	}
	skip, err := json.Marshal(st.Store.Segments)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "store-segments.json"), skip, 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "want"), []byte(deviceSumExcept(t, "/dev/mapper/data-snap", st.Store.Segments)), 0o644))
	change(t, mnt)
	if out := sc("rollback", "data", "--at-next-activate"); !strings.Contains(out, "scheduled") {
		t.Fatalf("rollback --at-next-activate did not say it scheduled the rollback:\n%s", out)
	}
	s := bootStatus(t, state, repo, "status-prepared-scheduled")
	if s.Phase != "prepared" || s.Scheduled != "rollback" {
		t.Fatalf("after rollback --at-next-activate: phase %q scheduled %q, want prepared and rollback", s.Phase, s.Scheduled)
	}
	// The system goes on writing until it shuts down.
	must(t, os.WriteFile(filepath.Join(mnt, "after-schedule"), pattern(11, 2<<20), 0o644))
	run(t, "sync")

	// Shut down as systemd does: unmount, then (systemd-shutdown) remove
	// every device-mapper device. snapctl is not asked to deactivate.
	run(t, "umount", mnt)
	removeDevices(t, "data")
	if left := leakedDevices(); len(left) > 0 {
		t.Fatalf("device-mapper devices left at shutdown: %v", left)
	}
}

func bootPhase2(t *testing.T, dir, repo string) {
	state := filepath.Join(dir, "state")
	t.Cleanup(func() { removeDevices(t, "data") })
	mnt := filepath.Join(dir, "mnt")
	if left := leakedDevices(); len(left) > 0 {
		t.Fatalf("devices exist at boot before activation: %v", left)
	}
	if out, _ := exec.Command("findmnt", "-n", "-t", "ext4").Output(); len(out) > 0 {
		t.Fatalf("a filesystem is mounted before activation: %s", out)
	}

	// sysinit: snapctl-activate.service, before local-fs-pre.target.
	activate := parseUnit(t, filepath.Join(repo, "contrib", "systemd", "snapctl-activate.service"))
	runUnit(t, activate, "ExecStartPre", state)
	runUnit(t, activate, "ExecStart", state)
	// The scheduled rollback is a userspace merge: it is done when the
	// activate unit ends, before anything mounts. The store file waits for
	// its filesystem to be deleted.
	s := bootStatus(t, state, repo, "status-rolled-back")
	if s.Phase != "attached" || s.Store != nil {
		t.Fatalf("after the activate unit: phase %q store %s, want attached without a store (the userspace merge copied the store back)", s.Phase, s.Store)
	}
	want, err := os.ReadFile(filepath.Join(dir, "want"))
	must(t, err)
	var skip []bootSegment
	b, err := os.ReadFile(filepath.Join(dir, "store-segments.json"))
	must(t, err)
	must(t, json.Unmarshal(b, &skip))
	if got := deviceSumExcept(t, "/dev/mapper/data", skip); got != string(want) {
		t.Fatal("after the activate unit /dev/mapper/data is not the prepare-time image: the rollback did not happen before mounting")
	}

	// local-fs.target: the filesystem mounts, with its prepare-time files.
	run(t, "mount", "/dev/mapper/data", mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	var before map[string]string
	b, err = os.ReadFile(filepath.Join(dir, "before.json"))
	must(t, err)
	must(t, json.Unmarshal(b, &before))
	sameTree(t, tree(t, mnt, ".snapctl-store"), withoutStore(before, ".snapctl-store"))

	// multi-user: snapctl-monitor.service deletes the store file first.
	monitor := parseUnit(t, filepath.Join(repo, "contrib", "systemd", "snapctl-monitor.service"))
	runUnit(t, monitor, "ExecStartPre", state)
	s = bootStatus(t, state, repo, "status-attached")
	if s.Phase != "attached" || s.Store != nil {
		t.Fatalf("after the monitor unit's ExecStartPre: phase %q store %v, want attached without a store", s.Phase, s.Store)
	}
	if d := devicesOf(t, "data"); len(d) != 1 {
		t.Fatalf("after the merge: devices %v, want only data", d)
	}
	if _, err := os.Stat(filepath.Join(mnt, ".snapctl-store")); !os.IsNotExist(err) {
		t.Errorf("store file after the merge finished: %v, want it deleted", err)
	}
	sameTree(t, tree(t, mnt), withoutStore(before, ".snapctl-store"))
	run(t, "umount", mnt)
	fsck(t, "/dev/mapper/data")
	mustSnapctl(t, "detach", "data", "--state-dir", state)
}

// bootSegment is a store segment of `status --json`, in sectors.
type bootSegment struct {
	Dev    string `json:"dev"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
}

// deviceSumExcept is the SHA-256 of a whole device with the bytes of the
// segments zeroed.
func deviceSumExcept(t testing.TB, dev string, skip []bootSegment) string {
	t.Helper()
	run(t, "sync")
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
	f, err := os.Open(dev)
	must(t, err)
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; {
		n, err := f.ReadAt(buf, off)
		for _, s := range skip {
			lo, hi := max(s.Offset*512, off), min((s.Offset+s.Length)*512, off+int64(n))
			if lo < hi {
				clear(buf[lo-off : hi-off])
			}
		}
		h.Write(buf[:n])
		off += int64(n)
		if err == io.EOF {
			break
		}
		must(t, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// bootState is the part of `status --json` the boot test reads.
type bootState struct {
	Phase     string          `json:"phase"`
	Scheduled string          `json:"scheduled"`
	Store     json.RawMessage `json:"store"`
}

// bootStatus runs `snapctl status data --json`, compares the shape of its
// output (field names and types; values masked) with
// cmd/snapctl/testdata/<golden>.golden, or rewrites that file when
// SNAPCTL_UPDATE_GOLDEN=1, and returns the fields the test reads.
func bootStatus(t *testing.T, state, repo, golden string) bootState {
	t.Helper()
	out := mustSnapctl(t, "status", "data", "--json", "--state-dir", state)
	var s bootState
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	got, err := jsonShape([]byte(out))
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	p := filepath.Join(repo, "cmd", "snapctl", "testdata", golden+".golden")
	if os.Getenv(envGoldenSave) == "1" {
		must(t, os.WriteFile(p, []byte(got), 0o644))
		return s
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden: %v (write it with SNAPCTL_UPDATE_GOLDEN=1 go test -tags e2e -run TestBootSequence ./e2e/)", err)
	}
	if got != string(want) {
		t.Errorf("status --json shape differs from %s (if intended, update docs/json.md and rerun with SNAPCTL_UPDATE_GOLDEN=1)\ngot:\n%s\nwant:\n%s\nstatus:\n%s",
			p, got, want, out)
	}
	return s
}

// jsonShape prints a JSON document with every value replaced by its type
// ("<string>", "<number>", "<bool>"; null stays null), keeping the key order,
// and each distinct element shape of an array once: the field names and
// types only, as cmd/snapctl/golden_test.go prints shapes.
func jsonShape(b []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var sb strings.Builder
	if err := shapeNode(dec, &sb, ""); err != nil {
		return "", err
	}
	sb.WriteByte('\n')
	return sb.String(), nil
}

func shapeNode(dec *json.Decoder, b *strings.Builder, indent string) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch v := tok.(type) {
	case json.Delim:
		var parts []string
		for dec.More() {
			var pb strings.Builder
			if v == '{' {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				kb, _ := json.Marshal(k)
				fmt.Fprintf(&pb, "%s: ", kb)
			}
			if err := shapeNode(dec, &pb, indent+"  "); err != nil {
				return err
			}
			if v == '[' && slices.Contains(parts, pb.String()) {
				continue
			}
			parts = append(parts, pb.String())
		}
		if _, err := dec.Token(); err != nil {
			return err
		}
		open, end := "{", "}"
		if v == '[' {
			open, end = "[", "]"
		}
		if len(parts) == 0 {
			b.WriteString(open + end)
			return nil
		}
		b.WriteString(open + "\n")
		for i, p := range parts {
			b.WriteString(indent + "  " + p)
			if i < len(parts)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + end)
	case string:
		b.WriteString(`"<string>"`)
	case json.Number:
		b.WriteString(`"<number>"`)
	case bool:
		b.WriteString(`"<bool>"`)
	case nil:
		b.WriteString("null")
	}
	return nil
}
