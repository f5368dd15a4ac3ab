package group

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/snapctl/snapctl/snapshot"
)

// Activate is the boot-time activate with update groups: before any volume
// is assembled, every group (or every group with a member among names)
// has its recorded decision carried out, and every sealed group whose
// decision is open takes one boot try, durably, once per boot; a group with
// no tries left is decided "rollback" and every member rolled back
// (checkpoint members merge back, update members are dropped) before
// anything can mount it. Then the volumes are activated as
// snapshot.Manager.Activate does. One group's failure does not stop the
// others; all errors are returned together.
func (g *Manager) Activate(ctx context.Context, o snapshot.ActivateOptions, vols ...string) error {
	all, err := names(g.Dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range all {
		if err := g.activateGroup(ctx, n, vols); err != nil {
			errs = append(errs, fmt.Errorf("activate update group %q: %w", n, err))
		}
	}
	if err := g.Vols.Activate(ctx, o, vols...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (g *Manager) activateGroup(ctx context.Context, name string, vols []string) error {
	gr, err := g.lockOpen(ctx, name, false)
	if err != nil {
		return err
	}
	defer gr.close()
	r := gr.rec
	if len(vols) > 0 && !slices.ContainsFunc(r.Members, func(m string) bool { return slices.Contains(vols, m) }) {
		return nil
	}
	switch {
	case r.Done, !r.Sealed && r.Decision == "":
		return nil
	case r.Decision != "":
		g.report(name, "carrying out the recorded decision: %s (by %s)", r.Decision, r.DecidedBy)
		return g.carryOutReported(gr)
	}
	boot, err := g.BootID()
	if err != nil {
		return err
	}
	if r.TryBoot == boot {
		return nil // this boot's try is taken (or this boot sealed it)
	}
	r.TryBoot = boot
	if r.TriesLeft > 0 {
		r.TriesLeft--
		r.event("boot try", fmt.Sprintf("%d of %d, %d left", r.Tries-r.TriesLeft, r.Tries, r.TriesLeft))
		if err := gr.step("activate:try"); err != nil {
			return err
		}
		g.report(name, "boot try %d of %d taken (%d left); `snapctl mark-good %s` after a good boot commits the update", r.Tries-r.TriesLeft, r.Tries, r.TriesLeft, name)
		return gr.settle("", "")
	}
	r.Decision, r.DecidedBy = snapshot.GroupRollback, "boot: no tries left"
	r.event("decided", "rollback: no boot tries left")
	if err := gr.step("activate:decided"); err != nil {
		return err
	}
	g.report(name, "no boot tries left (%d used without mark-good): rolling back %s before anything mounts them", r.Tries, strings.Join(r.Members, ", "))
	return g.carryOutReported(gr)
}

func (g *Manager) carryOutReported(gr *open) error {
	if gr.rec.Decision == snapshot.GroupRollback {
		// At boot nothing is open. Later in a boot (activate run again),
		// a rollback waits until it can be done on every member at once.
		busy, err := gr.openMembers()
		if err != nil {
			return err
		}
		if len(busy) > 0 {
			g.report(gr.rec.Name, "rollback pending: %s in use; it is carried out on every member at the next activate before anything mounts them", strings.Join(busy, ", "))
			return gr.settle("", "")
		}
	}
	if err := gr.carryOut(false); err != nil {
		return err
	}
	verb := "committed"
	if gr.rec.Decision == snapshot.GroupRollback {
		verb = "rolled back"
	}
	g.report(gr.rec.Name, "%s %s", verb, strings.Join(gr.rec.Members, ", "))
	return nil
}
