//go:build e2e

package e2e

import (
	"os"
	"strings"
	"testing"
)

// TestHarness boots the guest once and checks what every other test relies
// on: root, the device-mapper control node, the snapshot targets, a disk.
// Guest disks: /dev/ubda = 16 MiB blank.
func TestHarness(t *testing.T) {
	if !InGuest(t, Config{Disks: []Disk{{Size: 16 << 20}}}) {
		return
	}
	if os.Geteuid() != 0 {
		t.Fatalf("guest runs as uid %d, want root", os.Geteuid())
	}
	if _, err := os.Stat("/dev/mapper/control"); err != nil {
		t.Fatalf("device-mapper control node: %v", err)
	}
	if _, err := os.Stat(ubd(0)); err != nil {
		t.Fatalf("disk: %v", err)
	}
	mods, err := os.ReadFile("/proc/modules")
	must(t, err)
	for _, m := range []string{"dm_snapshot", "nbd", "dm_flakey"} {
		if !strings.Contains(string(mods), m+" ") {
			t.Errorf("module %s not loaded", m)
		}
	}
	t.Logf("kernel: %s", strings.TrimSpace(run(t, "uname", "-r")))
}
