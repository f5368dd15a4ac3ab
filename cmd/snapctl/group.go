package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/group"
	"github.com/snapctl/snapctl/snapshot"
)

func init() {
	register(newSealCmd)
	register(newMarkGoodCmd)
	register(newMarkBadCmd)
	registerClassifier(classifyGroupErr)
}

// groups opens the update groups of the state directory; group events
// (a boot try taken, a rollback carried out) go to stderr, which the
// systemd units log in the journal.
func (a *app) groups(m *snapshot.Manager) *group.Manager {
	g := group.Open(m)
	g.Report = func(name, msg string) { fmt.Fprintf(a.errOut, "snapctl: group %s: %s\n", name, msg) }
	return g
}

// groupDoc is `status GROUP --json` and what the group commands print.
type groupDoc struct{ *group.Status }

func (d groupDoc) setSchemaVersion() { d.SchemaVersion = schemaVersion }

// reportGroup prints a group's status after a command, or its JSON.
func (a *app) reportGroup(ctx context.Context, g *group.Manager, name, human string) error {
	if a.json {
		s, err := g.Status(ctx, name)
		if err != nil {
			return err
		}
		return a.printDoc(groupDoc{s})
	}
	a.printf("%s", human)
	return nil
}

const groupHelp = `An update group makes several volumes one update with one decision: commit
all or roll all back, never a mix. Volumes join with 'snapctl prepare NAME
--group GROUP' (either mode: e.g. system in update mode, userdata in
checkpoint mode) until the group is sealed.`

func newSealCmd(a *app) *cobra.Command {
	var tries int
	c := &cobra.Command{
		Use:   "seal GROUP [--tries N]",
		Short: "Record that an update group's writes are complete; boot counting starts",
		Long: groupHelp + `

Seal checks that every member is prepared and that the kernel reports each
member's store usable (not invalid, not overflowed), then records, durably,
that the update's writes are complete. Until a group is sealed, no update-mode
member can be committed (a half-written update is never merged).

From the next boot on, 'snapctl activate' takes one of --tries boot tries
before it assembles the volumes; when a boot finds none left, activate rolls
every member back before anything mounts it. 'snapctl mark-good GROUP' after a
good boot commits the update (see contrib/systemd/snapctl-mark-good@.service).

Example:
  snapctl prepare system --origin /dev/sda3 --mode update --store /data/ota.cow --group ota
  snapctl prepare userdata --store /data/.snapctl-store --group ota
  (write the new system into /dev/mapper/system)
  snapctl seal ota --tries 3`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			g := a.groups(m)
			already, err := g.Seal(cmd.Context(), args[0], tries)
			var ref *group.RefusedError
			if errors.As(err, &ref) && ref.Kind == group.RefusedTries {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("--tries: %w", err))
			}
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("sealed %s: %d boot tries from the next boot; `snapctl mark-good %s` commits\n", args[0], tries, args[0])
			if already {
				msg = fmt.Sprintf("%s was already sealed; nothing changed\n", args[0])
			}
			return a.reportGroup(cmd.Context(), g, args[0], msg)
		},
	}
	c.Flags().IntVar(&tries, "tries", 3, fmt.Sprintf("boots of the new version allowed before it is rolled back (1 to %d)", group.MaxTries))
	return c
}

func newMarkGoodCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-good GROUP",
		Short: "The new version works: commit every volume of the update group",
		Long: groupHelp + `

Mark-good decides "commit" for a sealed group, durably, then commits every
member: update-mode members merge (live: the mounted content does not change),
checkpoint-mode members drop their snapshot. It refuses a group that is not
sealed, or one whose member is not prepared or has an unusable store (use
mark-bad then). After a kill or power cut, the next 'snapctl activate' (or
mark-good again) finishes the commit on every member.

Run it once the boot is known good: contrib/systemd/snapctl-mark-good@.service
runs 'snapctl mark-good GROUP' after systemd's boot-complete.target.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			m.Progress = a.mergeProgress()
			g := a.groups(m)
			if err := g.MarkGood(cmd.Context(), args[0]); err != nil {
				return err
			}
			return a.reportGroup(cmd.Context(), g, args[0], fmt.Sprintf("committed every member of %s\n", args[0]))
		},
	}
}

func newMarkBadCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "mark-bad GROUP",
		Short: "The new version does not work: roll back every volume of the update group",
		Long: groupHelp + `

Mark-bad decides "rollback", durably. If no member is open, it rolls every
member back now: update-mode members are dropped, checkpoint-mode members
merged back. If any member is open (a mounted filesystem, whose content would
jump back), it rolls none back now and the next 'snapctl activate' (at boot,
before anything mounts them) rolls every member back. An unsealed group can be
marked bad too: that abandons the update.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			m.Progress = a.mergeProgress()
			g := a.groups(m)
			deferred, err := g.MarkBad(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			msg := fmt.Sprintf("rolled back every member of %s\n", args[0])
			if deferred {
				msg = fmt.Sprintf("rollback of %s recorded: every member is rolled back at the next `snapctl activate` (at boot, before anything mounts them)\n", args[0])
			}
			return a.reportGroup(cmd.Context(), g, args[0], msg)
		},
	}
}

// printGroupStatus is the human form of `status GROUP`.
func (a *app) printGroupStatus(s *group.Status) {
	a.printf("%s: update group, %s\n", s.Name, s.State)
	switch {
	case s.Decision != "":
		a.printf("  decision: %s (by %s)\n", s.Decision, s.DecidedBy)
	case s.Sealed:
		a.printf("  tries left: %d of %d; no decision yet (`snapctl mark-good %s` commits)\n", s.TriesLeft, s.Tries, s.Name)
	default:
		a.printf("  not sealed: members can join; `snapctl seal %s` when the update's writes are complete\n", s.Name)
	}
	if s.Decision != "" && (s.State == group.StateCommitting || s.State == group.StateRollingBack) {
		a.printf("  not finished: the next `snapctl activate` (or `snapctl %s %s` again) carries it out on every member\n",
			map[bool]string{true: "mark-good", false: "mark-bad"}[s.Decision == snapshot.GroupCommit], s.Name)
	}
	if s.Step != "" {
		a.printf("  operation: at step %s, started by %q\n", s.Step, s.Command)
	}
	for _, m := range s.Members {
		line := fmt.Sprintf("  member %s: %s", m.Name, m.Phase)
		if m.Mode != "" {
			line += " (" + string(m.Mode) + " mode)"
		}
		if m.StoreState != "" && m.StoreState != "active" {
			line += ", store " + strings.ToUpper(m.StoreState)
		}
		if m.Pending {
			line += ", decision pending"
		}
		a.printf("%s\n", line)
	}
}

// classifyGroupErr maps the group package's typed errors to exit codes and
// hints naming the command that fixes or continues the operation.
func classifyGroupErr(err error) (int, string, bool) {
	var (
		busy    *group.BusyError
		corrupt *group.CorruptRecordError
		unknown *group.UnknownGroupError
		ref     *group.RefusedError
		member  *snapshot.GroupMemberError
	)
	switch {
	case errors.As(err, &busy):
		return exitRefused, "wait for it to finish, or check with `snapctl status " + busy.Group + "`", true
	case errors.As(err, &corrupt):
		return exitInvalidData, "inspect or restore the group record from a backup; snapctl does not guess a group's decision", true
	case errors.As(err, &unknown):
		return exitRefused, "start a group with `snapctl prepare NAME ... --group " + unknown.Name + "`", true
	case errors.As(err, &member):
		return exitRefused, "a member commits or rolls back with its group: `snapctl mark-good " + member.Group + "` or `snapctl mark-bad " + member.Group + "` (see `snapctl status " + member.Group + "`)", true
	case errors.As(err, &ref):
		switch ref.Kind {
		case group.RefusedNameTaken:
			return exitRefused, "choose another name: a name is either a volume or a group", true
		case group.RefusedOtherGroup:
			return exitRefused, "finish the other group first (`snapctl mark-good` or `snapctl mark-bad` it)", true
		case group.RefusedSealed:
			return exitRefused, "prepare the volume in a new group once this one is decided, or `snapctl mark-bad " + ref.Group + "` to abandon this update", true
		case group.RefusedUnsealed:
			return exitRefused, "finish writing the update, then `snapctl seal " + ref.Group + "`; or abandon it with `snapctl mark-bad " + ref.Group + "`", true
		case group.RefusedDecided:
			return exitRefused, "see `snapctl status " + ref.Group + "`; the decision is final, and `snapctl activate` finishes carrying it out", true
		case group.RefusedEmpty:
			return exitRefused, "add members first: `snapctl prepare NAME ... --group " + ref.Group + "`", true
		case group.RefusedMember:
			return exitRefused, "see `snapctl status " + ref.Group + "`: prepare (and activate) every member, or abandon the update with `snapctl mark-bad " + ref.Group + "`", true
		case group.RefusedTries:
			return exitUsage, "", true
		}
		return exitRefused, "see `snapctl status " + ref.Group + "`", true
	}
	return 0, "", false
}
