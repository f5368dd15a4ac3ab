package snapshot

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// modelStore is what the model's store reads as, for the store checks: a
// test sets it and resets it at cleanup.
var modelStore struct {
	fresh   bool     // the header reads as zeroed
	invalid bool     // the header is marked invalid
	changes []string // what revalidate reports
}

func setModelStore(t *testing.T, fresh, invalid bool, changes ...string) {
	modelStore.fresh, modelStore.invalid, modelStore.changes = fresh, invalid, changes
	t.Cleanup(func() { modelStore.fresh, modelStore.invalid, modelStore.changes = false, false, nil })
}

func (k *modelKernel) readStore(name string, want merge.Expect) (*merge.Store, error) {
	if _, err := k.get(name); err != nil {
		return nil, err
	}
	if modelStore.fresh {
		return &merge.Store{}, nil
	}
	return &merge.Store{Header: merge.Header{Magic: merge.Magic, Valid: !modelStore.invalid, Version: merge.Version, ChunkSize: want.ChunkSize}}, nil
}

func (modelFS) revalidate(Store) ([]string, error) { return modelStore.changes, nil }

// stateKernel is the model with the snapshot status of some devices
// replaced, as the kernel reports a full or dropped store.
type stateKernel struct {
	*modelKernel
	state map[string]string
}

func (k stateKernel) status(name string) (dmtable.SnapshotStatus, error) {
	st, err := k.modelKernel.status(name)
	if s, ok := k.state[name]; ok && err == nil {
		st = dmtable.SnapshotStatus{}
		if err := st.State.UnmarshalText([]byte(s)); err != nil {
			return st, err
		}
	}
	return st, err
}

// TestOverflowRemembered: an Overflow seen by status is recorded; after
// the kernel forgot it (deactivate, activate), commit, merge, rollback at
// the next activate and the offline merge all refuse the store, and
// change nothing.
func TestOverflowRemembered(t *testing.T) {
	m, k, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 417792, Overflow: "fail"}); err != nil {
		t.Fatal(err)
	}
	sk := stateKernel{modelKernel: k, state: map[string]string{"vol": "overflow"}}
	m.k = loggedKernel{kernel: sk, m: m}
	st, err := m.Status(t.Context(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if st.Store.Unusable != "overflow" {
		t.Fatalf("got store.unusable %q after status saw Overflow, want overflow", st.Store.Unusable)
	}
	rec, err := readRecord(m.Dir, "vol")
	if err != nil || rec.Store.Unusable != "overflow" {
		t.Fatalf("got record %+v, %v; want the Overflow recorded", rec.Store, err)
	}
	if err := m.Deactivate(t.Context(), "vol"); err != nil {
		t.Fatal(err)
	}
	delete(sk.state, "vol") // the kernel forgot
	if err := m.Activate(t.Context(), ActivateOptions{}, "vol"); err != nil {
		t.Fatal(err)
	}
	from := len(k.calls)
	for _, op := range []struct {
		name string
		run  func() error
	}{
		{"commit", func() error { return m.Commit(t.Context(), "vol") }},
		{"merge", func() error { return m.Merge(t.Context(), "vol", true) }},
	} {
		err := op.run()
		var seen *StoreSeenUnusableError
		if !errors.As(err, &seen) || seen.State != "overflow" {
			t.Errorf("%s: got %v, want StoreSeenUnusableError(overflow)", op.name, err)
		}
	}
	if calls := k.callsSince(from); calls != "" {
		t.Errorf("the refused merges changed the kernel: %s", calls)
	}
	if err := m.Deactivate(t.Context(), "vol"); err != nil {
		t.Fatal(err)
	}
	from = len(k.calls)
	_, err = m.MergeOffline(t.Context(), "vol", merge.OfflineOptions{})
	var seen *StoreSeenUnusableError
	if !errors.As(err, &seen) {
		t.Errorf("merge --offline: got %v, want StoreSeenUnusableError", err)
	}
	if calls := k.callsSince(from); calls != "" {
		t.Errorf("the refused merges changed the kernel: %s", calls)
	}
	if st, _ := m.Status(t.Context(), "vol"); st.Phase != PhasePrepared {
		t.Errorf("got phase %s after the refusals, want prepared", st.Phase)
	}
	// Dropping the update is what the user does next.
	if err := m.Rollback(t.Context(), "vol", RollbackOptions{}); err != nil {
		t.Fatalf("rollback (drop) of the overflowed update: %v", err)
	}
}

// TestDeactivateRecordsOverflow: deactivate reads the kernel's state before
// it unloads the snapshot, and a checkpoint volume seen invalid refuses its
// rollback (a merge).
func TestDeactivateRecordsOverflow(t *testing.T) {
	for _, tc := range []struct {
		mode  Mode
		dev   string
		state string
		op    func(m *Manager) error
	}{
		{Update, "vol", "overflow", func(m *Manager) error { return m.Commit(t.Context(), "vol") }},
		{Checkpoint, "vol-snap", "invalid", func(m *Manager) error { return m.Rollback(t.Context(), "vol", RollbackOptions{Wait: true}) }},
	} {
		t.Run(string(tc.mode), func(t *testing.T) {
			m, k, dir := newModelManager(t)
			if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: tc.mode, Bytes: 417792}); err != nil {
				t.Fatal(err)
			}
			sk := stateKernel{modelKernel: k, state: map[string]string{tc.dev: tc.state}}
			m.k = loggedKernel{kernel: sk, m: m}
			if err := m.Deactivate(t.Context(), "vol"); err != nil {
				t.Fatal(err)
			}
			delete(sk.state, tc.dev)
			var seen *StoreSeenUnusableError
			if err := tc.op(m); !errors.As(err, &seen) || seen.State != tc.state {
				t.Fatalf("got %v, want StoreSeenUnusableError(%s)", err, tc.state)
			}
		})
	}
}

// TestRecordWithoutUnusable: a record written before the field existed
// loads, and its store counts as usable.
func TestRecordWithoutUnusable(t *testing.T) {
	b := `{"format":1,"name":"vol","mode":"update","phase":"prepared","origin":{"path":"/dev/x","dev":"8:0","sectors":2048},
"store":{"path":"/s/ota.cow","fs_dev":"8:16","inode":12,"bytes":417792,"chunk_sectors":8,"backend":"fiemap","overflow":"fail","segments":[{"dev":"8:16","offset":2048,"length":816}]}}`
	rec, err := parseRecord("vol.json", "vol", []byte(b))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Store.Unusable != "" {
		t.Errorf("got unusable %q, want empty", rec.Store.Unusable)
	}
}

// TestPrepareRefusesOverflowFailInCheckpoint: PO means nothing in
// checkpoint mode (origin writes that find the store full invalidate it
// whatever the policy), so prepare refuses it before touching anything.
func TestPrepareRefusesOverflowFailInCheckpoint(t *testing.T) {
	m, k, dir := newModelManager(t)
	store := filepath.Join(dir, "store")
	_, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: store, Mode: Checkpoint, Bytes: 417792, Overflow: "fail"})
	var refused *RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "checkpoint") {
		t.Fatalf("got %v, want a RefusedError about checkpoint mode", err)
	}
	if len(k.calls) != 0 {
		t.Errorf("the refused prepare changed the kernel: %s", k.callsSince(0))
	}
	if _, err := readRecord(m.Dir, "vol"); err == nil {
		t.Errorf("the refused prepare left a record")
	}
}

// TestActivateRefusesChangedStore: a store whose file changed (FIEMAP) or
// whose blocks no longer hold a store header is refused before any
// snapshot table is loaded, and no helper device is left behind.
func TestActivateRefusesChangedStore(t *testing.T) {
	for _, tc := range []struct {
		name    string
		fresh   bool
		changes []string
		want    string
	}{
		{name: "moved", changes: []string{"its blocks moved (FIEMAP)"}, want: "moved"},
		{name: "zeroed header", fresh: true, want: "zeroed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, dir := newModelManager(t)
			if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 417792}); err != nil {
				t.Fatal(err)
			}
			if err := m.Deactivate(t.Context(), "vol"); err != nil {
				t.Fatal(err)
			}
			setModelStore(t, tc.fresh, false, tc.changes...)
			from := len(k.calls)
			for _, op := range []func() error{
				func() error { return m.Activate(t.Context(), ActivateOptions{}, "vol") },
				func() error { return m.Commit(t.Context(), "vol") },
			} {
				err := op()
				var changed *StoreChangedError
				if !errors.As(err, &changed) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("got %v, want StoreChangedError naming %q", err, tc.want)
				}
			}
			calls := k.callsSince(from)
			if strings.Contains(calls, "snapshot") {
				t.Errorf("a snapshot table was loaded over the changed store: %s", calls)
			}
			if len(k.devs) != 0 {
				t.Errorf("devices left after the refusal: %v", k.devs)
			}
			if st, _ := m.Status(t.Context(), "vol"); st.Phase != PhasePrepared {
				t.Errorf("got phase %s after the refusal, want prepared", st.Phase)
			}
		})
	}
}

// TestActivateRecordsInvalidHeader: a store whose header the kernel marked
// invalid activates (the kernel loads it as Invalid) and is recorded so.
func TestActivateRecordsInvalidHeader(t *testing.T) {
	m, _, dir := newModelManager(t)
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 417792}); err != nil {
		t.Fatal(err)
	}
	if err := m.Deactivate(t.Context(), "vol"); err != nil {
		t.Fatal(err)
	}
	setModelStore(t, false, true)
	if err := m.Activate(t.Context(), ActivateOptions{}, "vol"); err != nil {
		t.Fatal(err)
	}
	rec, err := readRecord(m.Dir, "vol")
	if err != nil || rec.Store.Unusable != "invalid" {
		t.Fatalf("got %+v, %v; want the store recorded invalid", rec.Store, err)
	}
}

func (modelFS) placement(path string, backend Backend) (*Placement, error) {
	return &Placement{Filesystem: "ext4", FSDev: "98:16", Backend: backend, Devices: []string{"98:16"}}, nil
}

// TestDryRunPlacement: a dry run has no NAME-cow table (its segments are
// known only once the file is allocated) and says where the store would be.
func TestDryRunPlacement(t *testing.T) {
	m, _, dir := newModelManager(t)
	plan, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", Origin: modelOrigin.Path, StorePath: filepath.Join(dir, "store"), Mode: Checkpoint, Bytes: 417792, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := plan.Tables["vol-cow"]; ok {
		t.Errorf("got a vol-cow table in a dry run: %q", plan.Tables["vol-cow"])
	}
	if len(plan.Tables) != 3 {
		t.Errorf("got tables %v, want vol, vol-real and vol-snap", plan.Tables)
	}
	if p := plan.Placement; p == nil || p.Filesystem != "ext4" || p.FSDev != "98:16" || len(p.Devices) != 1 {
		t.Errorf("got placement %+v, want ext4 on 98:16 with its device", plan.Placement)
	}
}

func (k *modelKernel) syncRaw(dev string) error { return nil }

func (k *modelKernel) syncDevice(name string) error {
	_, err := k.get(name)
	return err
}
