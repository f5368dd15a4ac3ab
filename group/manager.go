package group

import (
	"context"
	"errors"
	"fmt"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/internal/crashhook"
	"github.com/snapctl/snapctl/snapshot"
)

// Volumes is the volume life cycle a group drives; *snapshot.Manager is
// one.
type Volumes interface {
	Status(ctx context.Context, name string) (*snapshot.VolumeStatus, error)
	Prepare(ctx context.Context, o snapshot.PrepareOptions) (*snapshot.Plan, error)
	Commit(ctx context.Context, name string) error
	Rollback(ctx context.Context, name string, o snapshot.RollbackOptions) error
	Activate(ctx context.Context, o snapshot.ActivateOptions, names ...string) error
	// Names lists the volumes with a record (no kernel needed).
	Names() ([]string, error)
}

// Manager runs group operations against one state directory.
type Manager struct {
	Dir     string
	Command string // recorded as the holder of a group and the starter of its operations
	Vols    Volumes
	// Report, if set, receives one line per thing a group operation did on
	// its own (a boot try taken, a rollback carried out at boot): the
	// journal's lines.
	Report func(group, message string)
	// BootID is the identity of the running boot (snapshot.BootID).
	BootID func() (string, error)
}

// Open is the group manager over the volumes of m.
func Open(m *snapshot.Manager) *Manager {
	return &Manager{Dir: m.Dir, Command: m.Command, Vols: m, BootID: snapshot.BootID}
}

func (g *Manager) report(name, format string, a ...any) {
	if g.Report != nil {
		g.Report(name, fmt.Sprintf(format, a...))
	}
}

// Names lists the update groups with a record, sorted.
func (g *Manager) Names() ([]string, error) { return names(g.Dir) }

// IsGroup reports whether name is an update group (it has a record).
func (g *Manager) IsGroup(name string) bool {
	if snapshot.CheckName(name) != nil {
		return false
	}
	_, err := readRecord(g.Dir, name)
	var unknown *UnknownGroupError
	return !errors.As(err, &unknown)
}

// open is a locked group with its record, for the operation that runs
// under ctx.
type open struct {
	ctx context.Context
	g   *Manager
	lk  *lock
	rec *Record
	// fresh says the record did not exist before this operation.
	fresh bool
}

// lockOpen locks group name and reads its record; a missing record is an
// UnknownGroupError unless create, which starts an empty one.
func (g *Manager) lockOpen(ctx context.Context, name string, create bool) (*open, error) {
	if err := snapshot.CheckName(name); err != nil {
		return nil, err
	}
	lk, err := lockGroup(g.Dir, name, g.Command)
	if err != nil {
		return nil, err
	}
	rec, err := readRecord(g.Dir, name)
	var unknown *UnknownGroupError
	fresh := false
	switch {
	case errors.As(err, &unknown) && create:
		rec, fresh = &Record{Format: FormatVersion, Name: name, Members: []string{}}, true
	case err != nil:
		lk.unlock()
		return nil, err
	}
	return &open{ctx: ctx, g: g, lk: lk, rec: rec, fresh: fresh}, nil
}

func (o *open) close() { o.lk.unlock() }

func (o *open) save() error { return writeRecord(o.g.Dir, o.rec) }

// step records, before acting, the step about to run (write-ahead), then
// gives the crash-test hook its chance.
func (o *open) step(step string) error {
	o.rec.Step = step
	if o.rec.Command == "" {
		o.rec.Command = o.g.Command
	}
	if err := o.save(); err != nil {
		return err
	}
	crashhook.Point(step)
	return nil
}

// settle records the end of an operation.
func (o *open) settle(event, detail string) error {
	o.rec.Step, o.rec.Command = "", ""
	if event != "" {
		o.rec.event(event, detail)
	}
	return o.save()
}

// member is what the group needs to know about one member now.
type member struct {
	name string
	st   *snapshot.VolumeStatus // nil: the volume has no record
}

// in reports whether the member's volume is prepared (or busy) in this
// group: it still has the group's decision to carry out.
func (m member) in(group string) bool {
	return m.st != nil && m.st.Group == group && m.st.Phase != snapshot.PhaseAttached
}

func (o *open) members() ([]member, error) {
	var out []member
	for _, n := range o.rec.Members {
		st, err := o.g.Vols.Status(o.ctx, n)
		var unknown *snapshot.UnknownVolumeError
		switch {
		case errors.As(err, &unknown):
			out = append(out, member{name: n})
		case err != nil:
			return nil, err
		default:
			out = append(out, member{name: n, st: st})
		}
	}
	return out, nil
}

// fit checks that every member is prepared in the group with a store the
// kernel reports usable: what sealing needs, and what deciding commit needs.
func (o *open) fit(op string) error {
	ms, err := o.members()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range ms {
		refuse := func(format string, a ...any) {
			errs = append(errs, &RefusedError{Group: o.rec.Name, Op: op, Kind: RefusedMember,
				Reason: fmt.Sprintf("member %q ", m.name) + fmt.Sprintf(format, a...)})
		}
		switch {
		case m.st == nil:
			refuse("has no volume record (it was never prepared)")
		case m.st.Group != o.rec.Name:
			refuse("is not prepared in this group (its record names group %q)", m.st.Group)
		case m.st.Phase != snapshot.PhasePrepared:
			refuse("is %s, not prepared", m.st.Phase)
		case m.st.Store != nil && m.st.Store.Unusable != "":
			refuse("has a store that was seen %s: it does not hold the complete change, and will never be merged", m.st.Store.Unusable)
		case m.st.Usage == nil:
			refuse("is not active: its store's state cannot be read")
		case m.st.Usage.State != dmtable.SnapshotActive:
			refuse("has a store the kernel reports %s: it does not hold the complete change", m.st.Usage.State)
		}
	}
	return errors.Join(errs...)
}
