package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/dmtable"
)

// TestTargetsOnHost runs `snapctl targets` on the machine running the tests.
// Without device-mapper (the usual CI host) it must fail with exit 5 and the
// modprobe hint; as non-root with device-mapper, exit 5 and the root hint;
// as root with device-mapper, it lists the targets.
func TestTargetsOnHost(t *testing.T) {
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs([]string{"targets", "--json"})
	err := root.Execute()
	code, hint := 0, ""
	if err != nil {
		code, hint = classify(err)
	}
	_, ctlErr := os.Stat("/dev/mapper/control")
	misc, _ := os.ReadFile("/proc/misc")
	hasDM := ctlErr == nil || strings.Contains(string(misc), " device-mapper\n")
	t.Logf("device-mapper on this host: %v, uid %d: exit %d, err %v", hasDM, os.Geteuid(), code, err)
	switch {
	case !hasDM:
		var e dmtable.NoDeviceMapperError
		if !errors.As(err, &e) {
			t.Fatalf("got error %v, want ErrNoDeviceMapper", err)
		}
		if code != exitUnsupported || !strings.Contains(hint, "modprobe dm-mod") || !strings.Contains(hint, "CONFIG_BLK_DEV_DM") {
			t.Fatalf("got exit %d hint %q, want exit %d and the modprobe/CONFIG_BLK_DEV_DM hint", code, hint, exitUnsupported)
		}
		if out.Len() != 0 {
			t.Fatalf("stdout %q, want nothing on failure", out.String())
		}
	case os.Geteuid() != 0:
		if code != exitUnsupported || !strings.Contains(hint, "root") {
			t.Fatalf("got exit %d hint %q (err %v), want exit %d and a root hint", code, hint, err, exitUnsupported)
		}
	default:
		if err != nil {
			t.Fatalf("targets as root with device-mapper: %v", err)
		}
		var r targetsReport
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatalf("decode %q: %v", out.String(), err)
		}
		if r.Driver[0] != 4 || len(r.Targets) == 0 {
			t.Fatalf("got driver %v and %d targets, want 4.x and some", r.Driver, len(r.Targets))
		}
	}
}

func TestClassifyDM(t *testing.T) {
	tests := []struct {
		err      error
		code     int
		hintPart string
	}{
		{fmt.Errorf("get device-mapper version: %w", dmtable.NoDeviceMapperError{Control: "/dev/mapper/control"}), exitUnsupported, "modprobe dm-mod"},
		{fmt.Errorf("create device %q: %w", "d", dmtable.PermissionError{Err: unix.EACCES}), exitUnsupported, "run it as root"},
		{fmt.Errorf("create device: %w", dmtable.InvalidNameError{Name: "a/b", Reason: "contains '/'"}), exitUsage, "127 bytes"},
		{fmt.Errorf("load table for %q: %w", "d", dmtable.UnknownTargetError{Type: "snapshot", Err: unix.EINVAL}), exitUnsupported, "modprobe dm-snapshot"},
		{fmt.Errorf("load table for %q: %w", "d", dmtable.InvalidTableError{Reason: "gap"}), exitInvalidData, ""},
		{fmt.Errorf("remove device %q: %w", "d", unix.EBUSY), exitRefused, ""},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			code, hint := classify(tt.err)
			if code != tt.code || !strings.Contains(hint, tt.hintPart) {
				t.Fatalf("got exit %d hint %q, want exit %d and a hint containing %q", code, hint, tt.code, tt.hintPart)
			}
		})
	}
}
