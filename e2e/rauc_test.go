//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Guest disks for the RAUC tests:
//   /dev/ubda   32 MiB  the system origin: ext4 "v1" (RAUC's slot A); the
//                       update-mode snapshot /dev/mapper/system is slot B
//   /dev/ubdb  128 MiB  userdata: ext4 through /dev/mapper/userdata, mounted
//                       at /run/data; it holds the system's store and its own
//                       checkpoint store, and is checkpointed in the group
// The host builds the "v2" image and a signed bundle (rauc bundle, a
// self-signed certificate), and keeps the state directory, RAUC's data
// directory and the test's notes in a directory that every boot sees (the
// guest's root is the host's, over hostfs). Each boot runs the RAUC service
// on a private system bus (dbus-daemon with contrib/rauc's bus policy), with
// contrib/rauc's backend, hook, system.conf and service command line.
//
// Boot 0 of every scenario installs: userdata is made and filled, then
// `rauc install` runs the bundle's hook (prepare system in update mode and
// userdata in checkpoint mode in group ota, snapctl write) and the backend's
// set-primary B (snapctl seal ota); then userdata changes (the new version's
// data). Every boot starts with `snapctl activate`, as the boot does, and
// ends as systemd's shutdown does: unmount, remove the device-mapper devices.

// Environment of the RAUC guests.
const (
	envRAUCDir      = "SNAPCTL_E2E_RAUC_DIR"      // the shared directory
	envRAUCScenario = "SNAPCTL_E2E_RAUC_SCENARIO" // mark-good, boot-count, mark-bad
)

const raucTries = 2 // seal --tries in the boot-count scenario

// TestRAUCMarkGood: install, reboot, `rauc status mark-good`: the system
// origin is byte-identical to the bundle's image, userdata keeps the new
// version's files, no snapshot device remains.
func TestRAUCMarkGood(t *testing.T) {
	parallel(t)
	raucScenario(t, "mark-good", 2)
}

// TestRAUCBootCount: install with --tries 2, no mark-good: boots 1 and 2 run
// the new version; the activate of boot 3 rolls everything back before
// anything mounts: the system origin is byte-identical to v1 and userdata's
// files are back to their pre-update checksums, e2fsck -fn clean on both.
func TestRAUCBootCount(t *testing.T) {
	parallel(t)
	raucScenario(t, "boot-count", raucTries+2)
}

// TestRAUCMarkBad: install, reboot, `rauc status mark-bad` with userdata
// mounted (the rollback waits for the next boot), reboot: the same rollback.
func TestRAUCMarkBad(t *testing.T) {
	parallel(t)
	raucScenario(t, "mark-bad", 3)
}

func raucScenario(t *testing.T, scenario string, boots int) {
	if p := os.Getenv(envPhase); p != "" {
		boot, err := strconv.Atoi(p)
		must(t, err)
		r := &raucGuest{t: t, dir: os.Getenv(envRAUCDir), scenario: os.Getenv(envRAUCScenario), boot: boot}
		r.run()
		return
	}
	if guest() {
		t.Fatal("no phase given")
	}
	repo, err := moduleRoot()
	must(t, err)
	dir := t.TempDir()
	tries := 3
	if scenario == "boot-count" {
		tries = raucTries
	}
	raucHostSetup(t, dir, repo, tries)
	m := NewMachine(t, Config{Disks: []Disk{{Size: 32 << 20}, {Size: 128 << 20}}, MemMiB: 768})
	v1, err := os.ReadFile(filepath.Join(dir, "v1.img"))
	must(t, err)
	must(t, os.WriteFile(m.DiskPath(0), v1, 0o644))
	for boot := 0; boot < boots; boot++ {
		r := m.Run(t, RunOptions{Env: []string{envPhase + "=" + strconv.Itoa(boot), envRAUCDir + "=" + dir, envRAUCScenario + "=" + scenario, envRepo + "=" + repo}})
		if r.Status != 0 || !strings.Contains(r.Output, "--- PASS: "+t.Name()) {
			t.Fatalf("boot %d failed (status %d):\n%s", boot, r.Status, tail(r.Output, 150))
		}
		t.Logf("boot %d took %v", boot, r.Elapsed.Round(time.Millisecond))
	}
}

// raucHostSetup builds, in dir: the images v1 and v2 (ext4 with a version
// file), a self-signed certificate, the bundle (v2 with contrib/rauc's
// install hook), and the configuration of RAUC, its bus and the hook and
// backend.
func raucHostSetup(t *testing.T, dir, repo string, tries int) {
	t.Helper()
	for _, v := range []string{"v1", "v2"} {
		src := filepath.Join(dir, v+"-root")
		must(t, os.MkdirAll(filepath.Join(src, "lib"), 0o755))
		must(t, os.WriteFile(filepath.Join(src, "version"), []byte(v+"\n"), 0o644))
		must(t, os.WriteFile(filepath.Join(src, "lib", "base"), pattern(1, 3<<20), 0o644))
		seed := 2
		if v == "v2" {
			seed = 3
			must(t, os.WriteFile(filepath.Join(src, "lib", "added"), pattern(4, 1<<20), 0o644))
		}
		must(t, os.WriteFile(filepath.Join(src, "lib", "changed"), pattern(seed, 2<<20), 0o644))
		run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, "-U", "3e7d5c40-6c8e-4c61-9d0e-0f3c6a7f2b11",
			"-E", "hash_seed=6a1f7a0c-5e8f-4b7b-8c35-2d2f3c1e4d55", filepath.Join(dir, v+".img"), "32M")
	}
	run(t, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", filepath.Join(dir, "key.pem"),
		"-out", filepath.Join(dir, "cert.pem"), "-days", "7", "-subj", "/CN=snapctl-rauc-test")
	b := filepath.Join(dir, "bundle")
	must(t, os.MkdirAll(b, 0o755))
	run(t, "cp", filepath.Join(dir, "v2.img"), filepath.Join(b, "system.img"))
	run(t, "cp", filepath.Join(repo, "contrib", "rauc", "snapctl-rauc-hook"), filepath.Join(b, "hook.sh"))
	must(t, os.WriteFile(filepath.Join(b, "manifest.raucm"), []byte(`[update]
compatible=example-snapctl
version=2
[bundle]
format=plain
[hooks]
filename=hook.sh
[image.system]
filename=system.img
hooks=install
`), 0o644))
	run(t, "rauc", "bundle", "--cert="+filepath.Join(dir, "cert.pem"), "--key="+filepath.Join(dir, "key.pem"), b, filepath.Join(dir, "update.raucb"))

	// contrib/rauc's system.conf with this machine's paths.
	sc, err := os.ReadFile(filepath.Join(repo, "contrib", "rauc", "system.conf"))
	must(t, err)
	conf := strings.NewReplacer(
		"/usr/lib/snapctl/rauc/snapctl-rauc-backend", filepath.Join(repo, "contrib", "rauc", "snapctl-rauc-backend"),
		"/etc/rauc/keyring.pem", filepath.Join(dir, "cert.pem"),
		"/var/lib/rauc", filepath.Join(dir, "rauc-data"),
		"/dev/disk/by-partlabel/system", "/dev/ubda",
	).Replace(string(sc))
	must(t, os.WriteFile(filepath.Join(dir, "system.conf"), []byte(conf), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "dbus.conf"), []byte(`<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><include>/usr/share/dbus-1/system.conf</include><include>`+filepath.Join(repo, "contrib", "rauc", "de.pengutronix.rauc.conf")+`</include></busconfig>
`), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "rauc.conf"), []byte(fmt.Sprintf(`SNAPCTL_VOLUME=system
SNAPCTL_ORIGIN=/dev/ubda
SNAPCTL_GROUP=ota
SNAPCTL_STORE=/run/data/ota.cow
SNAPCTL_TRIES=%d
SNAPCTL_CHECKPOINTS="userdata /run/data/.snapctl-checkpoint 32M"
SNAPCTL_STATE_DIR=%s
SNAPCTL=%s
`, tries, filepath.Join(dir, "state"), snapctlBin)), 0o644))
}

// raucGuest is one boot of a RAUC scenario.
type raucGuest struct {
	t        *testing.T
	dir      string
	scenario string
	boot     int
	state    string
	dbus     *exec.Cmd
	service  *exec.Cmd
}

const raucData = "/run/data" // where userdata is mounted

func (r *raucGuest) sc(args ...string) string {
	r.t.Helper()
	return mustSnapctl(r.t, append(args, "--state-dir", r.state)...)
}

func (r *raucGuest) run() {
	t := r.t
	r.state = filepath.Join(r.dir, "state")
	t.Cleanup(func() {
		exec.Command("umount", raucData).Run()
		removeDevices(t, "system")
		removeDevices(t, "userdata")
	})
	must(t, os.MkdirAll(raucData, 0o755))
	// RAUC mounts its bundle (squashfs) through a loop device.
	run(t, "modprobe", "-d", "/run/kmod", "squashfs")
	if r.boot == 0 {
		r.install()
		r.shutdown()
		return
	}
	// sysinit: snapctl-activate.service, before anything mounts a volume.
	if left := leakedDevices(); len(left) > 0 {
		t.Fatalf("devices exist at boot before activation: %v", left)
	}
	r.sc("activate")
	g := r.group()
	last := r.scenario == "boot-count" && r.boot == raucTries+1 || r.scenario == "mark-bad" && r.boot == 2
	if last {
		if g.State != "rolled-back" {
			t.Fatalf("boot %d: group %+v, want rolled-back", r.boot, g)
		}
		r.checkRolledBack()
		r.shutdown()
		return
	}
	// This boot runs the new version, one try less.
	if g.State != "sealed" || g.TriesLeft != g.Tries-r.boot {
		t.Fatalf("boot %d: group %+v, want sealed with %d of %d tries left", r.boot, g, g.Tries-r.boot, g.Tries)
	}
	if got, want := deviceSum(t, "/dev/mapper/system"), r.note("sum-v2"); got != want {
		t.Fatalf("boot %d: /dev/mapper/system is not the bundle's image", r.boot)
	}
	if v := strings.TrimSpace(run(t, "debugfs", "-R", "cat /version", "/dev/mapper/system")); !strings.HasSuffix(v, "v2") {
		t.Fatalf("boot %d: /dev/mapper/system has version %q, want v2", r.boot, v)
	}
	run(t, "mount", "/dev/mapper/userdata", raucData)
	sameTree(t, r.userdata(), r.sums("post"))
	// The new version goes on changing userdata; a rollback undoes this too.
	name := fmt.Sprintf("boot%d", r.boot)
	must(t, os.WriteFile(filepath.Join(raucData, name), pattern(20+r.boot, 1<<20), 0o644))
	run(t, "sync")
	post := r.sums("post")
	post[name] = fileSum(t, filepath.Join(raucData, name))
	r.saveSums("post", post)
	r.startRAUC()
	if st := r.rauc("status"); !strings.Contains(st, "Booted from: system.1 (B)") || !strings.Contains(st, "Activated: system.1 (B)") {
		t.Fatalf("boot %d: rauc status does not show booted and activated B:\n%s", r.boot, st)
	}
	switch r.scenario {
	case "mark-good":
		r.rauc("status", "mark-good")
		if g := r.group(); g.State != "committed" {
			t.Fatalf("after rauc status mark-good: group %+v, want committed", g)
		}
		if got, want := deviceSum(t, ubd(0)), r.note("sum-v2"); got != want {
			t.Fatal("after mark-good the system origin is not byte-identical to the bundle's image")
		}
		for _, v := range []string{"system", "userdata"} {
			if d := devicesOf(t, v); len(d) != 1 || d[0] != v {
				t.Fatalf("after mark-good: devices %v, want only %s", d, v)
			}
		}
		sameTree(t, r.userdata(), r.sums("post"))
		if st := r.rauc("status"); !strings.Contains(st, "Activated: system.0 (A)") {
			t.Errorf("after mark-good rauc status does not show A activated (the origin holds the new version):\n%s", st)
		}
		r.shutdown()
		fsck(t, ubd(0))
		fsck(t, ubd(1))
	case "mark-bad":
		r.rauc("status", "mark-bad")
		if g := r.group(); g.State != "rolling-back" || g.Decision != "rollback" {
			t.Fatalf("after rauc status mark-bad with userdata mounted: group %+v, want rolling-back (at the next activate)", g)
		}
		r.shutdown()
	default:
		r.shutdown()
	}
}

// install is boot 0: userdata, then `rauc install`, then the new version's
// changes to userdata.
func (r *raucGuest) install() {
	t := r.t
	// Provisioning: the system volume is attached once, so that RAUC finds
	// its slot B device, /dev/mapper/system (activate rebuilds it at boot).
	r.sc("attach", "system", "--origin", ubd(0))
	r.sc("attach", "userdata", "--origin", ubd(1))
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0", "/dev/mapper/userdata")
	run(t, "mount", "/dev/mapper/userdata", raucData)
	populate(t, raucData, 10, 5)
	r.saveSums("pre", r.userdata())
	r.setNote("sum-v1", deviceSum(t, ubd(0)))
	r.setNote("sum-v2", deviceSum(t, filepath.Join(r.dir, "v2.img")))

	r.startRAUC()
	if st := r.rauc("status"); !strings.Contains(st, "Booted from: system.0 (A)") {
		t.Fatalf("rauc status before the install does not show booted A:\n%s", st)
	}
	r.rauc("install", filepath.Join(r.dir, "update.raucb"))
	g := r.group()
	if g.State != "sealed" || len(g.Members) != 2 {
		t.Fatalf("after rauc install: group %+v, want sealed with system and userdata", g)
	}
	// The sealed update is what boots: no more writes into it.
	if _, errOut, code := snapctl(t, "write", "system", filepath.Join(r.dir, "v2.img"), "--state-dir", r.state); code != 4 || !strings.Contains(errOut, "sealed") {
		t.Errorf("write into a member of a sealed group: exit %d, want 4 (sealed)\n%s", code, errOut)
	}
	if st := r.rauc("status"); !strings.Contains(st, "Activated: system.1 (B)") {
		t.Fatalf("rauc status after the install does not show B activated:\n%s", st)
	}
	if got := deviceSum(t, "/dev/mapper/system"); got != r.note("sum-v2") {
		t.Fatal("after rauc install /dev/mapper/system is not the bundle's image")
	}
	if got := deviceSum(t, ubd(0)); got != r.note("sum-v1") {
		t.Fatal("rauc install changed the system origin")
	}
	var s status
	must(t, json.Unmarshal([]byte(r.sc("status", "system", "--json")), &s))
	want := chunksDiffering(t, filepath.Join(r.dir, "v1.img"), filepath.Join(r.dir, "v2.img"), 4096)
	if s.Usage == nil || s.Usage.DataChunks != want {
		t.Errorf("system's store after the install: usage %+v, want exactly the %d chunks that differ", s.Usage, want)
	}
	// The new version's data, written after the install.
	change(t, raucData)
	r.saveSums("post", r.userdata())
}

// checkRolledBack checks a boot whose activate rolled the group back,
// before anything mounts a volume: the system origin is v1, userdata's
// files are as before the update, both file systems are clean.
func (r *raucGuest) checkRolledBack() {
	t := r.t
	if out, _ := exec.Command("findmnt", "-n", "-t", "ext4").Output(); len(out) > 0 {
		t.Fatalf("a filesystem is mounted after activate: %s", out)
	}
	if got := deviceSum(t, ubd(0)); got != r.note("sum-v1") {
		t.Fatal("after the rollback the system origin is not byte-identical to v1")
	}
	if got := deviceSum(t, "/dev/mapper/system"); got != r.note("sum-v1") {
		t.Fatal("after the rollback /dev/mapper/system is not v1")
	}
	for _, v := range []string{"system", "userdata"} {
		if d := devicesOf(t, v); len(d) != 1 || d[0] != v {
			t.Fatalf("after the rollback: devices %v, want only %s", d, v)
		}
	}
	fsck(t, "/dev/mapper/system")
	fsck(t, "/dev/mapper/userdata")
	run(t, "mount", "/dev/mapper/userdata", raucData)
	sameTree(t, r.userdata(), r.sums("pre"))
	// The system's store predates userdata's checkpoint, so the rollback
	// brought the file back; the system volume's record still lists it for
	// deletion, which the next snapctl command on the volume does now that
	// its filesystem is mounted (activate again, as a later boot would).
	if _, err := os.Stat(filepath.Join(raucData, "ota.cow")); err != nil {
		t.Logf("the system's store after the rollback: %v", err)
	}
	r.sc("activate", "system")
	if _, err := os.Stat(filepath.Join(raucData, "ota.cow")); !os.IsNotExist(err) {
		t.Errorf("the system's store %s/ota.cow after the rollback and an activate: %v, want it deleted", raucData, err)
	}
	r.startRAUC()
	if st := r.rauc("status"); !strings.Contains(st, "Booted from: system.0 (A)") || !strings.Contains(st, "Activated: system.0 (A)") {
		t.Errorf("after the rollback rauc status does not show booted and activated A:\n%s", st)
	}
}

// userdata is the checksum of every file on userdata but the stores.
func (r *raucGuest) userdata() map[string]string {
	return tree(r.t, raucData, "ota.cow", ".snapctl-checkpoint", "lost+found")
}

func (r *raucGuest) saveSums(name string, m map[string]string) {
	b, err := json.Marshal(m)
	must(r.t, err)
	must(r.t, os.WriteFile(filepath.Join(r.dir, name+".json"), b, 0o644))
}

func (r *raucGuest) sums(name string) map[string]string {
	b, err := os.ReadFile(filepath.Join(r.dir, name+".json"))
	must(r.t, err)
	m := map[string]string{}
	must(r.t, json.Unmarshal(b, &m))
	return m
}

func (r *raucGuest) setNote(name, v string) {
	must(r.t, os.WriteFile(filepath.Join(r.dir, name), []byte(v), 0o644))
}

func (r *raucGuest) note(name string) string {
	b, err := os.ReadFile(filepath.Join(r.dir, name))
	must(r.t, err)
	return string(b)
}

// raucGroup is the subset of `snapctl status GROUP --json` the test reads.
type raucGroup struct {
	State     string `json:"state"`
	Tries     int    `json:"tries"`
	TriesLeft int    `json:"tries_left"`
	Decision  string `json:"decision"`
	Members   []struct {
		Name string `json:"name"`
	} `json:"members"`
}

func (r *raucGuest) group() raucGroup {
	var g raucGroup
	must(r.t, json.Unmarshal([]byte(r.sc("status", "ota", "--json")), &g))
	return g
}

// startRAUC starts a system bus with RAUC's policy and the RAUC service
// told the booted slot by contrib/rauc's backend, as contrib/rauc/rauc.service
// does; shutdown stops them.
func (r *raucGuest) startRAUC() {
	t := r.t
	env := append(os.Environ(), "SNAPCTL_RAUC_CONF="+filepath.Join(r.dir, "rauc.conf"))
	must(t, os.MkdirAll("/run/dbus", 0o755))
	r.dbus = exec.Command("dbus-daemon", "--config-file="+filepath.Join(r.dir, "dbus.conf"), "--nofork", "--nopidfile", "--nosyslog")
	must(t, r.dbus.Start())
	slot, err := r.backend(env, "booted")
	if err != nil {
		t.Fatalf("snapctl-rauc-backend booted: %v", err)
	}
	log, err := os.Create(filepath.Join(r.dir, fmt.Sprintf("service-boot%d.log", r.boot)))
	must(t, err)
	defer log.Close()
	r.service = exec.Command("rauc", "service", "--conf="+filepath.Join(r.dir, "system.conf"), "--override-boot-slot="+slot)
	r.service.Env, r.service.Stdout, r.service.Stderr = env, log, log
	must(t, r.service.Start())
	for i := 0; ; i++ {
		out, _ := exec.Command("dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus", "/",
			"org.freedesktop.DBus.NameHasOwner", "string:de.pengutronix.rauc").Output()
		if strings.Contains(string(out), "boolean true") {
			break
		}
		if i == 300 {
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("the RAUC service did not come up on the bus:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("RAUC service up, booted slot %s (snapctl-rauc-backend booted)", slot)
}

// backend runs contrib/rauc's backend with a call of its own.
func (r *raucGuest) backend(env []string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(os.Getenv(envRepo), "contrib", "rauc", "snapctl-rauc-backend"), args...)
	cmd.Env = env
	out, err := cmd.Output()
	return strings.TrimSpace(string(out)), err
}

// rauc runs a rauc client command against the service; it fails the test
// unless it succeeds.
func (r *raucGuest) rauc(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("rauc", append([]string{"--conf=" + filepath.Join(r.dir, "system.conf")}, args...)...)
	out, err := cmd.CombinedOutput()
	r.t.Logf("$ rauc %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(r.dir, fmt.Sprintf("service-boot%d.log", r.boot)))
		r.t.Fatalf("rauc %s: %v\n%s\nservice log:\n%s", strings.Join(args, " "), err, out, b)
	}
	return string(out)
}

// shutdown stops RAUC and the bus, unmounts userdata and removes every
// device-mapper device, as systemd's shutdown does (snapctl is not asked).
func (r *raucGuest) shutdown() {
	t := r.t
	for _, c := range []*exec.Cmd{r.service, r.dbus} {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		}
	}
	r.service, r.dbus = nil, nil
	if err := exec.Command("mountpoint", "-q", raucData).Run(); err == nil {
		run(t, "umount", raucData)
	}
	removeDevices(t, "system")
	removeDevices(t, "userdata")
	if left := leakedDevices(); len(left) > 0 {
		t.Fatalf("device-mapper devices left at shutdown: %v", left)
	}
}
