package group

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/snapctl/snapctl/snapshot"
)

// Join prepares volume o.Name into group name: the membership is recorded
// in the group first, then the volume is prepared with its record naming
// the group. A group is started by its first member. If the prepare
// fails, the volume leaves the group again.
func (g *Manager) Join(ctx context.Context, name string, o snapshot.PrepareOptions) (*snapshot.Plan, error) {
	if err := snapshot.CheckName(name); err != nil {
		return nil, err
	}
	op := "prepare --group"
	if name == o.Name {
		return nil, &RefusedError{Group: name, Op: op, Kind: RefusedNameTaken, Reason: "a volume cannot be its own group; a name is either a volume or a group"}
	}
	vols, err := g.Vols.Names()
	if err != nil {
		return nil, err
	}
	if slices.Contains(vols, name) {
		return nil, &RefusedError{Group: name, Op: op, Kind: RefusedNameTaken, Reason: "a volume has that name; a name is either a volume or a group"}
	}
	if o.DryRun {
		o.Group = name
		return g.Vols.Prepare(ctx, o)
	}
	if err := g.notInOther(name, o.Name); err != nil {
		return nil, err
	}
	gr, err := g.lockOpen(ctx, name, true)
	if err != nil {
		return nil, err
	}
	defer gr.close()
	if gr.rec.Done {
		// A finished group's name starts a new group; its history stays.
		gr.rec = &Record{Format: FormatVersion, Name: name, Members: []string{}, History: gr.rec.History}
	}
	switch {
	case gr.rec.Decision != "":
		return nil, &RefusedError{Group: name, Op: op, Kind: RefusedDecided, Reason: fmt.Sprintf("the group decided %s and has not finished carrying it out", gr.rec.Decision)}
	case gr.rec.Sealed:
		return nil, &RefusedError{Group: name, Op: op, Kind: RefusedSealed, Reason: "the group is sealed; members join only before the seal"}
	}
	if !slices.Contains(gr.rec.Members, o.Name) {
		gr.rec.Members = append(gr.rec.Members, o.Name)
		gr.rec.event("join", o.Name)
		if err := gr.step("join:" + o.Name); err != nil {
			return nil, err
		}
	}
	o.Group = name
	plan, perr := g.Vols.Prepare(ctx, o)
	if perr == nil {
		return plan, gr.settle("", "")
	}
	// Leave the group unless the volume is prepared in it (a repeated
	// prepare of a member that joined before).
	st, err := g.Vols.Status(ctx, o.Name)
	if err == nil && (member{name: o.Name, st: st}).in(name) {
		return nil, errors.Join(perr, gr.settle("", ""))
	}
	gr.rec.Members = slices.DeleteFunc(gr.rec.Members, func(m string) bool { return m == o.Name })
	gr.rec.event("leave", o.Name+": prepare failed")
	if len(gr.rec.Members) == 0 && gr.fresh {
		// A group this prepare started and nothing else uses.
		return nil, errors.Join(perr, g.remove(name))
	}
	return nil, errors.Join(perr, gr.settle("", ""))
}

// remove deletes a group's record (a group started by a prepare that
// failed); the lock file stays with the held lock.
func (g *Manager) remove(name string) error {
	if err := os.Remove(recordPath(g.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove update group record: %w", err)
	}
	return nil
}

// notInOther refuses a volume that is a member of another group that has
// not finished.
func (g *Manager) notInOther(group, vol string) error {
	all, err := names(g.Dir)
	if err != nil {
		return err
	}
	if slices.Contains(all, vol) {
		return &RefusedError{Group: group, Op: "prepare --group", Kind: RefusedNameTaken, Reason: fmt.Sprintf("%q is the name of an update group; a name is either a volume or a group", vol)}
	}
	for _, n := range all {
		if n == group {
			continue
		}
		r, err := readRecord(g.Dir, n)
		if err != nil {
			return err
		}
		if !r.Done && slices.Contains(r.Members, vol) {
			return &RefusedError{Group: group, Op: "prepare --group", Kind: RefusedOtherGroup,
				Reason: fmt.Sprintf("volume %q is a member of update group %q, which has not finished; a volume is in one group at a time", vol, n)}
		}
	}
	return nil
}

// Seal records that the update's writes to every member are complete,
// after checking each member is prepared with a usable store; boot
// counting with tries boot tries starts at the next boot. Sealing a sealed
// group again changes nothing (already is true).
func (g *Manager) Seal(ctx context.Context, name string, tries int) (already bool, err error) {
	if tries < 1 || tries > MaxTries {
		return false, &RefusedError{Group: name, Op: "seal", Kind: RefusedTries, Reason: fmt.Sprintf("%d tries: want 1 to %d", tries, MaxTries)}
	}
	gr, err := g.lockOpen(ctx, name, false)
	if err != nil {
		return false, err
	}
	defer gr.close()
	switch {
	case gr.rec.Decision != "":
		return false, &RefusedError{Group: name, Op: "seal", Kind: RefusedDecided, Reason: fmt.Sprintf("the group already decided %s", gr.rec.Decision)}
	case gr.rec.Sealed:
		return true, nil
	case len(gr.rec.Members) == 0:
		return false, &RefusedError{Group: name, Op: "seal", Kind: RefusedEmpty, Reason: "the group has no members"}
	}
	boot, err := g.BootID()
	if err != nil {
		return false, err
	}
	if err := gr.step("seal:verify"); err != nil {
		return false, err
	}
	if err := gr.fit("seal"); err != nil {
		return false, errors.Join(err, gr.settle("", ""))
	}
	gr.rec.Sealed, gr.rec.Tries, gr.rec.TriesLeft, gr.rec.TryBoot = true, tries, tries, boot
	return false, gr.settle("seal", fmt.Sprintf("%d boot tries from the next boot", tries))
}

// MarkGood decides commit for a sealed group (the new version works) and
// commits every member: update members merge, checkpoint members drop.
// Every member must be prepared with a usable store before the decision
// is taken; once it is, the commit is finished whatever happens.
func (g *Manager) MarkGood(ctx context.Context, name string) error {
	gr, err := g.lockOpen(ctx, name, false)
	if err != nil {
		return err
	}
	defer gr.close()
	switch {
	case gr.rec.Decision == snapshot.GroupRollback:
		return &RefusedError{Group: name, Op: "mark-good", Kind: RefusedDecided, Reason: "the group already decided rollback (by " + gr.rec.DecidedBy + ")"}
	case !gr.rec.Sealed:
		return &RefusedError{Group: name, Op: "mark-good", Kind: RefusedUnsealed, Reason: "the group is not sealed: its update may be half written, and a half-written update is never committed"}
	case gr.rec.Done:
		return nil
	case gr.rec.Decision == "":
		if err := gr.fit("mark-good"); err != nil {
			return err
		}
		gr.rec.Decision, gr.rec.DecidedBy = snapshot.GroupCommit, "mark-good"
		gr.rec.event("decided", "commit, by mark-good")
		if err := gr.step("mark-good:decided"); err != nil {
			return err
		}
	}
	return gr.carryOut(false)
}

// MarkBad decides rollback (the new version does not work). When every
// member can be rolled back now (none is open), it rolls them all back;
// otherwise it records the decision and the next Activate, before
// anything mounts the members, rolls every one back (deferred is then
// true). A group that is not sealed can be rolled back too: that abandons
// the update.
func (g *Manager) MarkBad(ctx context.Context, name string) (deferred bool, err error) {
	gr, err := g.lockOpen(ctx, name, false)
	if err != nil {
		return false, err
	}
	defer gr.close()
	switch {
	case gr.rec.Decision == snapshot.GroupCommit:
		return false, &RefusedError{Group: name, Op: "mark-bad", Kind: RefusedDecided, Reason: "the group already decided commit (by " + gr.rec.DecidedBy + ")"}
	case gr.rec.Done:
		return false, nil
	}
	busy, err := gr.openMembers()
	if err != nil {
		return false, err
	}
	if gr.rec.Decision == "" {
		gr.rec.Decision, gr.rec.DecidedBy = snapshot.GroupRollback, "mark-bad"
		gr.rec.event("decided", "rollback, by mark-bad")
		if err := gr.step("mark-bad:decided"); err != nil {
			return false, err
		}
	}
	if len(busy) > 0 {
		g.report(name, "rollback recorded; %s in use, so every member is rolled back at the next activate, before anything mounts it", strings.Join(busy, ", "))
		return true, gr.settle("", "")
	}
	if err := gr.carryOut(true); err != nil {
		var inUse *snapshot.InUseError
		if errors.As(err, &inUse) {
			g.report(name, "rollback recorded; %s came into use, so the rest is rolled back at the next activate", inUse.Volume)
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// openMembers lists the members still to roll back whose device is open.
func (o *open) openMembers() ([]string, error) {
	ms, err := o.members()
	if err != nil {
		return nil, err
	}
	var busy []string
	for _, m := range ms {
		if !m.in(o.rec.Name) {
			continue
		}
		for _, d := range m.st.Devices {
			if d.Name == m.name && d.OpenCount > 0 {
				busy = append(busy, m.name)
			}
		}
	}
	return busy, nil
}

// carryOut carries the recorded decision out on every member still in the
// group, then records the group done. Each member's step is an ordinary
// commit or rollback (idempotent, finished after a kill), preceded by a
// record of which member is next. The members whose step is a merge (it
// can fail: an I/O error, a store the kernel invalidated) go first, the
// drops (which cannot) last, so that a member that cannot follow the
// decision stops it before any member took an irreversible step.
func (o *open) carryOut(stopOnInUse bool) error {
	dec := o.rec.Decision
	ms, err := o.members()
	if err != nil {
		return err
	}
	merges := func(m member) bool {
		return m.st != nil && (m.st.Mode == snapshot.Update) == (dec == snapshot.GroupCommit)
	}
	slices.SortStableFunc(ms, func(a, b member) int {
		switch {
		case merges(a) && !merges(b):
			return -1
		case merges(b) && !merges(a):
			return 1
		}
		return 0
	})
	for _, m := range ms {
		if !m.in(o.rec.Name) {
			continue
		}
		if err := o.step(dec + ":" + m.name); err != nil {
			return err
		}
		if m.st.Phase.Busy() {
			// An operation the last run was cut short in: finish it first
			// (it was the group's own step).
			if err := o.g.Vols.Activate(o.ctx, snapshot.ActivateOptions{Wait: true}, m.name); err != nil {
				return fmt.Errorf("%s group %q: finish member %q: %w", dec, o.rec.Name, m.name, err)
			}
			st, err := o.g.Vols.Status(o.ctx, m.name)
			if err != nil {
				return err
			}
			if !(member{name: m.name, st: st}).in(o.rec.Name) {
				continue
			}
		}
		if dec == snapshot.GroupCommit {
			err = o.g.Vols.Commit(o.ctx, m.name)
		} else {
			err = o.g.Vols.Rollback(o.ctx, m.name, snapshot.RollbackOptions{Wait: true})
		}
		if err != nil {
			var inUse *snapshot.InUseError
			if stopOnInUse && errors.As(err, &inUse) {
				return errors.Join(err, o.settle("", ""))
			}
			return fmt.Errorf("%s group %q: member %q: %w", dec, o.rec.Name, m.name, err)
		}
	}
	o.rec.Done = true
	verb := map[string]string{snapshot.GroupCommit: "committed", snapshot.GroupRollback: "rolled back"}[dec]
	return o.settle(verb, strings.Join(o.rec.Members, ", "))
}
