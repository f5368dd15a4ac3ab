package snapshot

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Update groups. A volume prepared into an update group (Record.Group) no
// longer decides its own outcome: the group's record does, once, for every
// member (package group owns that record and its life cycle). The volume
// life cycle obeys it here, from the record on disk, so that no caller of
// this package can commit or roll back one member on its own:
//
//   - a commit, rollback, merge or drop of a prepared member is carried out
//     only when the group's recorded decision is that outcome (a merge is a
//     commit in update mode and a rollback in checkpoint mode; a drop the
//     reverse); anything else is a GroupMemberError;
//   - activate does not assemble a member of a sealed, undecided group whose
//     boot try was not taken in this boot (boot counting would be skipped);
//     a member of a group decided "rollback" is rolled back by activate
//     before anything can mount it, like a scheduled rollback.

// Outcomes a group decides.
const (
	GroupCommit   = "commit"
	GroupRollback = "rollback"
)

// GroupsDir is the directory of the update-group records in state
// directory dir.
func GroupsDir(dir string) string { return filepath.Join(dir, "groups") }

// GroupPath is the record of update group name in state directory dir.
func GroupPath(dir, name string) string { return filepath.Join(GroupsDir(dir), name+".json") }

// GroupGate is the part of an update group's record the volume life cycle
// obeys. Package group writes the whole record; these fields keep their
// names and meaning in every format version.
type GroupGate struct {
	Sealed   bool   `json:"sealed"`
	Decision string `json:"decision"` // "", GroupCommit or GroupRollback
	// TryBoot is the boot (the kernel's boot_id) that took the last boot
	// try, or that sealed the group.
	TryBoot string `json:"try_boot"`
}

// ReadGroupGate reads the gate fields of update group name's record.
func ReadGroupGate(dir, name string) (*GroupGate, error) {
	p := GroupPath(dir, name)
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read update group record %s: %w", p, err)
	}
	var g GroupGate
	if err := json.Unmarshal(b, &g); err != nil {
		return nil, &CorruptRecordError{Path: p, Err: err}
	}
	switch g.Decision {
	case "", GroupCommit, GroupRollback:
	default:
		return nil, &CorruptRecordError{Path: p, Err: fmt.Errorf("unknown decision %q", g.Decision)}
	}
	return &g, nil
}

// GroupMemberError is an operation on a member of an update group that
// the group's decision does not allow.
type GroupMemberError struct {
	Volume string
	Group  string
	Op     string
	Reason string
}

func (e *GroupMemberError) Error() string {
	return fmt.Sprintf("%s %q: the volume belongs to update group %q: %s", e.Op, e.Volume, e.Group, e.Reason)
}

// bootIDPath is where the kernel gives each boot its random identity.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// BootID is the kernel's identity of the running boot.
func BootID() (string, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return "", fmt.Errorf("read boot id %s: %w", bootIDPath, err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("read boot id %s: empty", bootIDPath)
	}
	return id, nil
}

// outcome is what a merge or a drop does to a volume of mode m.
func outcome(kind string, m Mode) string {
	if (kind == "merge") == (m == Update) {
		return GroupCommit
	}
	return GroupRollback
}

// groupAllows checks, for a prepared volume, that its group (if any) has
// decided the outcome a merge or drop (kind) would have.
func (v *volume) groupAllows(op, kind string) error {
	g := v.rec.Group
	if g == "" {
		return nil
	}
	gate, err := ReadGroupGate(v.m.Dir, g)
	if err != nil {
		return err
	}
	want := outcome(kind, v.rec.Mode)
	switch {
	case gate.Decision == want:
		return nil
	case gate.Decision != "":
		return &GroupMemberError{Volume: v.name(), Group: g, Op: op, Reason: fmt.Sprintf("the group decided %s; this would %s", gate.Decision, want)}
	case !gate.Sealed && want == GroupCommit && v.rec.Mode == Update:
		return &GroupMemberError{Volume: v.name(), Group: g, Op: op, Reason: "the group is not sealed: its update may be half written, and a half-written update is never merged"}
	}
	return &GroupMemberError{Volume: v.name(), Group: g, Op: op, Reason: "a member commits or rolls back only with its whole group"}
}

// groupBeforeBuild is what activate checks before it builds a prepared
// member's stack: it refuses a member of a sealed, undecided group whose
// boot try was not taken in this boot, and returns the group's gate (nil
// for a volume in no group).
func (v *volume) groupBeforeBuild() (*GroupGate, error) {
	g := v.rec.Group
	if g == "" {
		return nil, nil
	}
	gate, err := ReadGroupGate(v.m.Dir, g)
	if err != nil {
		return nil, err
	}
	if gate.Sealed && gate.Decision == "" {
		boot, err := BootID()
		if err != nil {
			return nil, err
		}
		if gate.TryBoot != boot {
			return nil, &GroupMemberError{Volume: v.name(), Group: g, Op: "activate",
				Reason: "the group counts boots and took no try in this boot; activate the group first (package group's Activate)"}
		}
	}
	return gate, nil
}

// checkNotGroup refuses a new volume named like an update group.
func (m *Manager) checkNotGroup(name string) error {
	if _, err := os.Stat(GroupPath(m.Dir, name)); err == nil {
		return &RefusedError{Volume: name, Op: "attach", Reason: "an update group has that name; a name is either a volume or a group",
			Hint: "choose another volume name"}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("attach %q: %w", name, err)
	}
	return nil
}
