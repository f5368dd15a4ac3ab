package main

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/dmtable"
)

func init() {
	register(newTargetsCmd)
	registerClassifier(classifyDM)
}

// neededTargets are the target types snapctl loads.
var neededTargets = []string{dmtable.TypeLinear, dmtable.TypeSnapshot, dmtable.TypeSnapshotOrigin, dmtable.TypeSnapshotMerge}

// targetsReport is what `snapctl targets` prints.
type targetsReport struct {
	schema
	Kernel  string                  `json:"kernel"`
	Driver  dmtable.Version         `json:"driver"`
	Targets []dmtable.TargetVersion `json:"targets"`
	// NotLoaded lists the target types snapctl needs that the kernel does
	// not list yet; it loads their module on first use.
	NotLoaded []string `json:"not_loaded,omitempty"`
}

func newTargetsCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "targets",
		Short: "Print the kernel's device-mapper driver version and its target types",
		Long: `Targets prints the kernel release, the device-mapper driver (ioctl interface)
version and every target type the kernel has registered with its version.
snapctl needs linear, snapshot-origin, snapshot and snapshot-merge; a type
whose module is not loaded yet is missing from the list and is loaded by the
kernel when a table first uses it.

Example:
  snapctl targets
  snapctl targets --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			driver, err := dmtable.DriverVersion()
			if err != nil {
				return err
			}
			targets, err := dmtable.TargetVersions()
			if err != nil {
				return err
			}
			slices.SortFunc(targets, func(x, y dmtable.TargetVersion) int { return strings.Compare(x.Name, y.Name) })
			r := targetsReport{Kernel: kernelRelease(), Driver: driver, Targets: targets}
			for _, n := range neededTargets {
				if !slices.ContainsFunc(targets, func(t dmtable.TargetVersion) bool { return t.Name == n }) {
					r.NotLoaded = append(r.NotLoaded, n)
				}
			}
			if a.json {
				return a.printDoc(&r)
			}
			a.printf("kernel:                %s\n", r.Kernel)
			a.printf("device-mapper driver:  %s\n", r.Driver)
			a.printf("targets:\n")
			for _, t := range r.Targets {
				a.printf("  %-20s %s\n", t.Name, t.Version)
			}
			if len(r.NotLoaded) > 0 {
				a.printf("not loaded yet (the kernel loads them on first use, or: modprobe dm-snapshot): %s\n", strings.Join(r.NotLoaded, ", "))
			}
			return nil
		},
	}
}

// kernelRelease is `uname -r`, or "unknown".
func kernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

// classifyDM maps the device-mapper layer's typed errors to exit codes and
// the command that fixes them.
func classifyDM(err error) (int, string, bool) {
	var (
		noDM    dmtable.NoDeviceMapperError
		perm    dmtable.PermissionError
		name    dmtable.InvalidNameError
		unknown dmtable.UnknownTargetError
		table   dmtable.InvalidTableError
	)
	switch {
	case errors.As(err, &noDM):
		return exitUnsupported, "load device-mapper with `modprobe dm-mod`; if there is no such module, the kernel needs CONFIG_BLK_DEV_DM (and CONFIG_DM_SNAPSHOT)", true
	case errors.As(err, &perm):
		return exitUnsupported, "snapctl drives the kernel's device-mapper: run it as root (sudo snapctl ...)", true
	case errors.As(err, &name):
		return exitUsage, "device names are 1 to 127 bytes, without '/', and not \".\", \"..\" or \"control\"", true
	case errors.As(err, &unknown):
		return exitUnsupported, fmt.Sprintf("load the target's module with `modprobe %s` (check with `snapctl targets`)", unknown.Module()), true
	case errors.As(err, &table):
		return exitInvalidData, "", true
	}
	return 0, "", false
}
