package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestGroupGate: a member of an update group is committed or rolled back
// only as its group's record decided, whoever calls; an update-mode member
// of an unsealed group is never merged.
func TestGroupGate(t *testing.T) {
	m, _, dir := newModelManager(t)
	gate := func(body string) {
		t.Helper()
		if err := os.MkdirAll(GroupsDir(m.Dir), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(GroupPath(m.Dir, "ota"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(what string, err error) {
		t.Helper()
		var g *GroupMemberError
		if !errors.As(err, &g) || g.Group != "ota" {
			t.Fatalf("%s: %v, want a GroupMemberError naming group ota", what, err)
		}
	}
	gate(`{"sealed": false, "decision": ""}`)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "system", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "ota.cow"),
		Mode: Update, Bytes: 1 << 20, Group: "ota"}); err != nil {
		t.Fatal(err)
	}
	refused("commit of an unsealed member", m.Commit(t.Context(), "system"))
	refused("merge of an unsealed member", m.Merge(t.Context(), "system", true))
	refused("drop of a member", m.Drop(t.Context(), "system"))
	refused("rollback of a member", m.Rollback(t.Context(), "system", RollbackOptions{Wait: true}))
	refused("rollback --at-next-activate of a member", m.Rollback(t.Context(), "system", RollbackOptions{AtNextActivate: true}))
	// Sealed, undecided: still the group's to decide; and activate does
	// not assemble the member in a boot that took no try.
	gate(`{"sealed": true, "decision": "", "try_boot": "another boot"}`)
	refused("commit of a sealed, undecided member", m.Commit(t.Context(), "system"))
	if err := m.Deactivate(t.Context(), "system"); err != nil {
		t.Fatal(err)
	}
	refused("activate of a member whose group took no try this boot", m.Activate(t.Context(), ActivateOptions{}, "system"))
	boot, err := BootID()
	if err != nil {
		t.Fatal(err)
	}
	gate(`{"sealed": true, "decision": "", "try_boot": "` + boot + `"}`)
	if err := m.Activate(t.Context(), ActivateOptions{}, "system"); err != nil {
		t.Fatalf("activate after the group took this boot's try: %v", err)
	}
	// Decided rollback: a commit is refused, and activate rolls back.
	gate(`{"sealed": true, "decision": "rollback", "try_boot": "x"}`)
	refused("commit of a member of a group decided rollback", m.Commit(t.Context(), "system"))
	if err := m.Activate(t.Context(), ActivateOptions{Wait: true}, "system"); err != nil {
		t.Fatal(err)
	}
	if s, err := m.Status(t.Context(), "system"); err != nil || s.Phase != PhaseAttached || s.Group != "ota" {
		t.Fatalf("after activate of a member of a group decided rollback: %+v, %v; want attached", s, err)
	}
	// A corrupt group record is refused, not guessed at.
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "system", StorePath: filepath.Join(dir, "ota2.cow"), Mode: Update, Bytes: 1 << 20, Group: "ota"}); err != nil {
		t.Fatal(err)
	}
	gate(`{"sealed": tr`)
	var c *CorruptRecordError
	if err := m.Commit(t.Context(), "system"); !errors.As(err, &c) {
		t.Fatalf("commit with a corrupt group record: %v", err)
	}
	gate(`{"sealed": true, "decision": "commit", "try_boot": "x"}`)
	if err := m.Commit(t.Context(), "system"); err != nil {
		t.Fatalf("commit of a member of a group decided commit: %v", err)
	}
	// A volume cannot take a group's name.
	var r *RefusedError
	if err := m.Attach(t.Context(), "ota", modelOrigin.Path); !errors.As(err, &r) {
		t.Fatalf("attach of a volume named like a group: %v", err)
	}
}
