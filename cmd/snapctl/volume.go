package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
	"github.com/snapctl/snapctl/snapshot"
)

func init() {
	register(newAttachCmd)
	register(newDetachCmd)
	register(newPrepareCmd)
	register(newActivateCmd)
	register(newStatusCmd)
	register(newCommitCmd)
	register(newRollbackCmd)
	register(newMergeCmd)
	register(newDropCmd)
	register(newDeactivateCmd)
	register(newGrowCmd)
	register(newMonitorCmd)
	registerClassifier(classifyVolumeErr)
	registerClassifier(classifyStoreErr)
}

// manager opens the state directory for a volume command.
func (a *app) manager(cmd *cobra.Command) (*snapshot.Manager, error) {
	m, err := snapshot.Open(a.stateDir, !a.dryRun)
	if err != nil {
		return nil, err
	}
	m.Command = "snapctl " + strings.Join(os.Args[1:], " ")
	m.Log = a.log
	return m, nil
}

func newAttachCmd(a *app) *cobra.Command {
	var origin string
	c := &cobra.Command{
		Use:   "attach NAME --origin DEV",
		Short: "Create /dev/mapper/NAME over DEV so its filesystem can be snapshotted live later",
		Long: `Attach creates /dev/mapper/NAME as a linear map of the whole origin device.
Mount the filesystem on /dev/mapper/NAME (not on DEV): snapctl can then swap the
table underneath for a snapshot while it stays mounted. Attaching again is a
no-op.

Example:
  snapctl attach data --origin /dev/sdb1
  mount /dev/mapper/data /data`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if origin == "" {
				return newUsageError(cmd.CommandPath(), errors.New("--origin DEV is required"))
			}
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			if err := m.Attach(cmd.Context(), args[0], origin); err != nil {
				return err
			}
			return a.report(cmd.Context(), m, args[0], fmt.Sprintf("attached %s as /dev/mapper/%s\n", origin, args[0]))
		},
	}
	c.Flags().StringVar(&origin, "origin", "", "the origin block device")
	return c
}

func newDetachCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "detach NAME",
		Short: "Remove /dev/mapper/NAME of an attached volume and forget it",
		Args:  exactArgs(1),
		RunE:  a.volumeOp((*snapshot.Manager).Detach, "detached %s"),
	}
}

func newPrepareCmd(a *app) *cobra.Command {
	var (
		o                          snapshot.PrepareOptions
		mode, size, chunk, maxSize string
		overflow, backend          string
		changes, newImage          string
		groupName                  string
		seedMemory                 string
	)
	c := &cobra.Command{
		Use:   "prepare NAME --origin DEV --store PATH",
		Short: "Snapshot a volume before it changes, with a store file on an existing filesystem",
		Long: `Prepare allocates the store file, maps its extents (FIEMAP) into NAME-cow and
builds the snapshot over the volume, live.

  checkpoint mode (default): writes keep landing on the origin and the snapshot
    keeps the old data. commit = drop (cheap), rollback = merge.
  update mode: the updater writes the new version into /dev/mapper/NAME, which
    is the snapshot; the origin is untouched until the merge.
    commit = merge, rollback = drop.

--group GROUP makes the volume a member of an update group: the group, not
the volume, is then committed or rolled back ('snapctl seal', 'mark-good',
'mark-bad').

--size auto sizes the store exactly (dm-snapshot's exception-store formula) for
the change set given by --changes or --new-image; in checkpoint mode without a
change set it takes the store filesystem's free space less a reserve (5 % or
256 MiB, whichever is smaller), capped by --max-size.

--overflow fail (update mode only) makes writes to a full store fail instead of
invalidating the snapshot, so a too-small store costs the update, not the
snapshot; snapctl records a store it ever sees full and never merges it. In
checkpoint mode it is refused: writes go to the origin there, and a write that
finds the store full invalidates the snapshot whatever the policy.

--skip-free (checkpoint mode, a filesystem mounted on /dev/mapper/NAME that
reports its free space: ext4 or xfs) seeds the store with every wholly free
chunk of that filesystem, so the kernel copies nothing when the filesystem
later writes into its free space: new files, and the blocks of files written
anew, cost no store space; only overwritten and freed data is copied. Prepare
allocates the store first (it may live on that very filesystem), then freezes
the filesystem, reads its free map (GETFSMAP), writes the seeds, takes the
snapshot and thaws: the freeze is the point in time, and writers wait for
about a second. The seeds cost no store space (their slots read as zeros) but
kernel memory: --seed-memory caps it (the largest free stretches are seeded
first). The promise changes slightly, as with Android's dm-bow: a rollback
brings back every file and all metadata, but not the old content of blocks
that were free at prepare time (the kernel merge writes zeros there). With
--size auto the store holds room for every chunk that is not seeded, so it
cannot fill. Refused in update mode (the snapshot is written there, and a
write to a seeded chunk would land on the shared zeros), for an unmounted
volume, and for filesystems without GETFSMAP (f2fs, btrfs). After a crash
while the filesystem was frozen, 'snapctl activate NAME' thaws it and undoes
the prepare.

--dry-run changes nothing: it prints the size, the filesystem and the devices
the store's blocks will be on, and every table but NAME-cow's, which exists only
once the filesystem has allocated the file.

Examples:
  snapctl prepare data --origin /dev/sdb1 --store /data/.snapctl-store --size auto
  snapctl prepare system --origin /dev/sda3 --mode update --store /data/ota.cow \
      --size auto --new-image system-v2.img`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Name, o.Mode, o.DryRun = args[0], snapshot.Mode(mode), a.dryRun
			o.Overflow, o.Backend = snapshot.Overflow(overflow), snapshot.Backend(backend)
			cb, err := cowsize.ParseBytes(chunk)
			if err == nil {
				err = cowsize.CheckChunk(cb)
			}
			if err != nil {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size: %w", err))
			}
			o.ChunkSectors = uint32(cb / 512)
			if maxSize != "" {
				if o.MaxBytes, err = cowsize.ParseBytes(maxSize); err != nil {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--max-size: %w", err))
				}
			}
			if seedMemory != "" {
				if !o.SkipFree {
					return newUsageError(cmd.CommandPath(), errors.New("--seed-memory goes with --skip-free"))
				}
				if o.SeedMemory, err = cowsize.ParseBytes(seedMemory); err != nil || o.SeedMemory == 0 {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--seed-memory %q: want a size like 8M", seedMemory))
				}
			}
			if changes != "" && newImage != "" {
				return newUsageError(cmd.CommandPath(), errors.New("give --changes or --new-image, not both"))
			}
			switch {
			case size == "auto":
				if changes != "" || newImage != "" {
					o.AutoBytes = func(ctx context.Context, origin string, cs uint32) (uint64, error) {
						return autoSize(ctx, a, origin, changes, newImage, cs)
					}
				}
			default:
				if o.Bytes, err = cowsize.ParseBytes(size); err != nil || o.Bytes == 0 {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--size %q: want auto or a size like 512M", size))
				}
				if changes != "" || newImage != "" {
					return newUsageError(cmd.CommandPath(), errors.New("--changes and --new-image go with --size auto"))
				}
			}
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			var plan *snapshot.Plan
			if groupName != "" {
				if err := snapshot.CheckName(groupName); err != nil {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--group: %w", err))
				}
				plan, err = a.groups(m).Join(cmd.Context(), groupName, o)
			} else {
				plan, err = m.Prepare(cmd.Context(), o)
			}
			if err != nil {
				return err
			}
			if w := fragmentationWarning(plan.Name, plan.Extents); w != "" {
				fmt.Fprintln(a.errOut, w)
			}
			if a.json {
				return a.printDoc(&prepareDoc{Plan: plan})
			}
			verb := "prepared"
			if plan.DryRun {
				verb = "would prepare (dry run, nothing changed)"
			}
			a.printf("%s %s in %s mode\n", verb, plan.Name, plan.Mode)
			a.printf("store: %s, %d bytes (%s), chunk %d bytes", plan.StorePath, plan.StoreBytes, plan.SizeReason, plan.ChunkBytes)
			if plan.Extents > 0 {
				a.printf(", %d extents", plan.Extents)
			}
			a.printf("\n")
			if sd := plan.Seeds; sd != nil {
				est := ""
				if sd.Estimate {
					est = " (estimate: free map read without freezing)"
				}
				a.printf("seeds%s: %d of %d free chunks of %s (%s on %s), in %d areas; kernel memory %d bytes (%d exceptions); room for %d unseeded chunks\n",
					est, sd.Seeds, sd.FreeChunks, sd.Mountpoint, sd.FSType, "/dev/mapper/"+plan.Name, sd.Areas, sd.KernelBytes, sd.Objects, sd.UnseededRoom)
			}
			if pl := plan.Placement; pl != nil {
				a.printf("store blocks: not known in a dry run: %s chooses them when it allocates the file, and %s-cow maps them then.\n", pl.Filesystem, plan.Name)
				a.printf("  the %d bytes will be allocated by %s on %s, %s\n", plan.StoreBytes, pl.Filesystem, describeNode(pl.FSDevice, pl.FSDev), placementDevices(pl))
			}
			for _, d := range []string{plan.Name + "-cow", plan.Name + "-real", plan.Name + "-base", plan.Name + "-snap", plan.Name} {
				if t, ok := plan.Tables[d]; ok {
					a.printf("table %s:\n  %s\n", d, strings.ReplaceAll(shortTable(t, d), "\n", "\n  "))
				}
			}
			return nil
		},
	}
	f := c.Flags()
	f.StringVar(&o.Origin, "origin", "", "the origin block device (needed unless NAME is attached)")
	f.StringVar(&o.StorePath, "store", "", "path of the store file to create (on ext4, xfs or f2fs)")
	f.StringVar(&mode, "mode", "checkpoint", "checkpoint or update")
	f.StringVar(&size, "size", "auto", "store size: auto, or bytes with K/M/G suffix")
	f.StringVar(&maxSize, "max-size", "", "cap for the checkpoint-mode auto size")
	f.StringVar(&chunk, "chunk-size", "4K", "exception chunk size, a power of two from 4K to 512K")
	f.StringVar(&changes, "changes", "", "file of byte ranges the update writes (offset length per line), for --size auto")
	f.StringVar(&newImage, "new-image", "", "the new image, diffed against the origin, for --size auto")
	f.StringVar(&overflow, "overflow", "invalidate", "a full store: invalidate the snapshot, or fail writes to it (PO; update mode only, refused in checkpoint mode)")
	f.StringVar(&backend, "backend", "fiemap", "fiemap (map the file's blocks on the raw device) or loop (a loop device over the file, for a filesystem mounted directly on a partition)")
	f.BoolVar(&a.dryRun, "dry-run", false, "print what would be done; change nothing")
	f.StringVar(&groupName, "group", "", "join (or start) this update group: one commit-or-rollback decision for all its volumes (see 'snapctl seal --help')")
	f.BoolVar(&o.SkipFree, "skip-free", false, "seed the store with the free chunks of the filesystem mounted on NAME: writes into free space cost no store space (checkpoint mode; old contents of free blocks are not restored)")
	f.StringVar(&seedMemory, "seed-memory", "", fmt.Sprintf("kernel memory the seeds may take, e.g. 8M (default %d MiB; with --skip-free)", merge.DefaultSeedKernelBytes>>20))
	return c
}

// shortTable is a table's text for prepare's report: a fragmented store's
// table (up to 50,000 lines) is shown by its first and last targets; --json
// and 'dmsetup table' give all of it.
func shortTable(t, device string) string {
	const head, tail = 4, 2
	lines := strings.Split(strings.TrimSpace(t), "\n")
	if len(lines) <= head+tail+1 {
		return strings.Join(lines, "\n")
	}
	skip := fmt.Sprintf("... %d more targets ('dmsetup table %s' or --json lists them all)", len(lines)-head-tail, device)
	return strings.Join(append(append(lines[:head:head], skip), lines[len(lines)-tail:]...), "\n")
}

// autoSize is --size auto in update mode: the exact store size for the
// change set.
func autoSize(ctx context.Context, a *app, origin, changes, newImage string, chunkSectors uint32) (uint64, error) {
	var (
		s   cowsize.Size
		err error
	)
	if changes != "" {
		f, err := os.Open(changes)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		s, err = cowsize.ForRanges(f, chunkSectors*512)
		if err != nil {
			return 0, err
		}
	} else {
		s, err = cowsize.ForImages(ctx, origin, newImage, chunkSectors*512, nil)
		if err != nil {
			return 0, err
		}
	}
	fmt.Fprintf(a.errOut, "size auto: %d changed chunks + %d metadata chunks = %d bytes\n", s.ChangedChunks, s.MetadataChunks, s.Bytes)
	return s.Bytes, nil
}

func newActivateCmd(a *app) *cobra.Command {
	var o snapshot.ActivateOptions
	c := &cobra.Command{
		Use:   "activate [NAME...]",
		Short: "Rebuild volumes from their state records; finish or undo interrupted operations",
		Long: `Activate is what runs at boot, before anything mounts /dev/mapper/NAME (see
contrib/systemd/snapctl-activate.service). For each volume (all without NAME)
it rebuilds the device stack from the state record, resumes a merge the kernel
was doing, runs a rollback scheduled with --at-next-activate (a checkpoint is
merged back in userspace, with its stack left unbuilt), undoes a prepare
that was cut short and finishes a commit, rollback, drop or grow that was cut
short. It is also the recovery command after a crash or a killed snapctl: a
prepare --skip-free killed while it held the filesystem frozen leaves it frozen
(writers on it wait), and activate thaws it first, then undoes the prepare.

Update groups come first, before any volume is assembled: a decision recorded
by mark-good or mark-bad and not yet carried out is carried out on every
member; a sealed group whose decision is open takes one boot try (once per
boot); a group with no tries left is rolled back, every member, before
anything can mount it. What it did goes to stderr (the journal).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			m.Progress = a.mergeProgress()
			if err := a.groups(m).Activate(cmd.Context(), o, args...); err != nil {
				return err
			}
			if len(args) == 0 {
				args, _ = m.Names()
			}
			for _, n := range args {
				if s, err := m.Status(cmd.Context(), n); err == nil && !a.json {
					a.printf("%s: %s%s\n", n, s.Phase, modeSuffix(s))
				}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&o.Wait, "wait", false, "wait for merges to finish and clean the volumes up")
	return c
}

func modeSuffix(s *snapshot.VolumeStatus) string {
	if s.Mode == "" {
		return ""
	}
	return " (" + string(s.Mode) + " mode)"
}

func newStatusCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "status [NAME|GROUP]",
		Short: "Show volumes (mode, phase, devices, store usage, merge progress) or an update group",
		Long: `Status shows, per volume: mode, phase, the devices of its stack and their
tables, the store (path, size, extent count), its usage from the kernel (data
chunks used, percent full, chunks left, Invalid/Overflow) and merge progress.
The kernel forgets an Overflow once the snapshot is unloaded (deactivate,
reboot): status records whatever it sees in the volume's state, and shows a
store that was ever seen full or invalid, which snapctl will never merge.
A store seeded with the filesystem's free chunks (prepare --skip-free) shows
its seeds apart: the usage figures count only the store file's real capacity
(the kernel counts the seeds' slots as allocated), and so do monitor and grow.
--json prints a stable object per volume (schema_version 1, see docs/json.md).

With the name of an update group it shows the group: its state, tries left,
the decision and who took it, and each member's mode and phase.`,
		Args: maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			if g := a.groups(m); len(args) == 1 && g.IsGroup(args[0]) {
				s, err := g.Status(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				if a.json {
					return a.printDoc(groupDoc{s})
				}
				a.printGroupStatus(s)
				return nil
			}
			names := args
			if len(names) == 0 {
				if names, err = m.Names(); err != nil {
					return err
				}
			}
			all := []*snapshot.VolumeStatus{}
			for _, n := range names {
				s, err := m.Status(cmd.Context(), n)
				if err != nil {
					return err
				}
				all = append(all, s)
			}
			if a.json {
				if len(args) == 1 {
					return a.printDoc(statusDoc{all[0]})
				}
				return a.printDoc(statusListDoc(all))
			}
			if len(all) == 0 {
				a.printf("no volumes in %s\n", a.stateDir)
			}
			for _, s := range all {
				a.printStatus(s)
			}
			return nil
		},
	}
}

func (a *app) printStatus(s *snapshot.VolumeStatus) {
	a.printf("%s: %s%s\n", s.Name, s.Phase, modeSuffix(s))
	if s.Group != "" {
		a.printf("  group: %s (`snapctl status %s`)\n", s.Group, s.Group)
	}
	if s.Step != "" {
		a.printf("  operation: %s, at step %s, started by %q; if no snapctl is running it, `snapctl activate %s` finishes it\n", s.Phase, s.Step, s.Command, s.Name)
	}
	if s.Scheduled != "" {
		a.printf("  scheduled: %s at the next `snapctl activate`\n", s.Scheduled)
	}
	a.printf("  origin: %s (%s, %d bytes)\n", s.Origin.Path, s.Origin.Dev, s.Origin.Sectors*512)
	if s.Store != nil {
		a.printf("  store:  %s (%d bytes, chunk %d bytes, %d extents, overflow=%s)\n", s.Store.Path, s.Store.Bytes, s.Store.ChunkSectors*512, s.Extents, s.Store.Overflow)
		if sd := s.Store.Seeded; sd != nil {
			a.printf("  seeds:  %d free chunks of %s (%s) seeded in %d areas, %d bytes of kernel memory; the figures below leave them out\n", sd.Seeds, sd.Mountpoint, sd.FSType, sd.Areas, sd.KernelBytes)
		}
		if s.Store.Unusable != "" {
			a.printf("  store was seen %s: it will never be merged; %s\n", strings.ToUpper(s.Store.Unusable), unusableAdvice(s.Name, s.Mode))
		}
	}
	if u := s.Usage; u != nil {
		if u.State != dmtable.SnapshotActive {
			a.printf("  usage:  %s\n", strings.ToUpper(u.State.String()))
		} else {
			a.printf("  usage:  %d data chunks, %.1f%% full, %d chunks left\n", u.DataChunks, u.PercentFull, u.ChunksLeft)
		}
	}
	if s.MergeChunksLeft != nil {
		a.printf("  merge:  %d chunks left to merge\n", *s.MergeChunksLeft)
	}
	for _, d := range s.Devices {
		state := ""
		if d.Suspended {
			state = " SUSPENDED"
		}
		a.printf("  device %s (%s, open %d%s):\n    %s\n", d.Name, d.Dev, d.OpenCount, state, strings.ReplaceAll(strings.TrimSpace(d.Table), "\n", "\n    "))
	}
	for _, c := range s.Cleanup {
		a.printf("  store file %s is left for deletion: it is deleted by the next snapctl command on %s once its filesystem is mounted\n", c, s.Name)
	}
}

// volumeOp is the RunE of a command that runs one operation on the volume
// its argument names, with merge progress on stderr, and reports the
// outcome: done (a format with the volume's name) or, with --json, the
// volume's status.
func (a *app) volumeOp(op func(m *snapshot.Manager, ctx context.Context, name string) error, done string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		m, err := a.manager(cmd)
		if err != nil {
			return err
		}
		m.Progress = a.mergeProgress()
		if err := op(m, cmd.Context(), args[0]); err != nil {
			return err
		}
		return a.report(cmd.Context(), m, args[0], fmt.Sprintf(done+"\n", args[0]))
	}
}

// report prints a volume's status after a command, or its JSON; for a
// volume that no longer has a record (detach), the JSON says so.
func (a *app) report(ctx context.Context, m *snapshot.Manager, name, human string) error {
	if a.json {
		s, err := m.Status(ctx, name)
		var unknown *snapshot.UnknownVolumeError
		if errors.As(err, &unknown) {
			return a.printDoc(&detachedDoc{Name: name, Phase: "detached"})
		}
		if err != nil {
			return err
		}
		return a.printDoc(statusDoc{s})
	}
	a.printf("%s", human)
	return nil
}

func newCommitCmd(a *app) *cobra.Command {
	var o snapshot.CommitOptions
	c := &cobra.Command{
		Use:   "commit NAME",
		Short: "Keep the change: drop the snapshot (checkpoint) or merge it (update)",
		Long: `Commit keeps the new content. In checkpoint mode it drops the snapshot (cheap;
the filesystem may stay mounted). In update mode it merges the store into the
origin, live (the content of /dev/mapper/NAME does not change), and collapses
the stack back to linear. Either way the store file is deleted.

Which merge runs in update mode:
  - /dev/mapper/NAME unused, or mounted read-only only: the userspace merge, at
    the speed of the disk. NAME is made read-only for the duration, the store's
    chunks are copied into the origin beneath the live snapshot (which already
    serves that content), then NAME is switched to linear while suspended; a
    read-only mount goes on unaffected.
  - mounted read-write, or open by anything else, or written during the copy:
    the kernel's snapshot-merge, which merges under a writing filesystem.
  - --kernel: the kernel's snapshot-merge always.
The command's output and 'snapctl status NAME' (history) say which one ran.
A kill or power cut is finished by 'snapctl activate' or by running commit
again (a userspace merge cut short before the switch copies again).`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			m.Progress = a.mergeProgress()
			if err := m.CommitWith(cmd.Context(), args[0], o); err != nil {
				return err
			}
			return a.report(cmd.Context(), m, args[0], "committed "+args[0]+a.howDone(cmd.Context(), m, args[0], "commit")+"\n")
		},
	}
	c.Flags().BoolVar(&o.Kernel, "kernel", false, "update mode: merge with the kernel's snapshot-merge, not the userspace merge")
	return c
}

// howDone is " (<which merge ran>)" from the volume's last history events
// of op, or "" when they say nothing of a merge (a drop).
func (a *app) howDone(ctx context.Context, m *snapshot.Manager, name, op string) string {
	s, err := m.Status(ctx, name)
	if err != nil || len(s.History) == 0 {
		return ""
	}
	h := s.History
	last := h[len(h)-1]
	switch {
	case last.Event != op:
		return ""
	case last.Detail == "merge":
		// The kernel merge; a commit that could not merge live said why
		// just before.
		if len(h) > 1 && h[len(h)-2].Event == op && strings.HasPrefix(h[len(h)-2].Detail, "kernel merge") {
			return " (" + h[len(h)-2].Detail + ")"
		}
		return " (kernel merge)"
	case strings.Contains(last.Detail, "merge"):
		return " (" + last.Detail + ")"
	}
	return ""
}

func newRollbackCmd(a *app) *cobra.Command {
	var o snapshot.RollbackOptions
	c := &cobra.Command{
		Use:   "rollback NAME",
		Short: "Return to the earlier content: merge (checkpoint) or drop (update)",
		Long: `Rollback returns /dev/mapper/NAME to its content at prepare time. In
checkpoint mode it merges the snapshot back into the origin; in update mode it
drops the snapshot. The content jumps back, so the filesystem must be unmounted;
rollback refuses while /dev/mapper/NAME is open. --at-next-activate records the
rollback instead, for the next 'snapctl activate' (at boot, before anything
mounts the volume).

In checkpoint mode the merge runs in userspace, at the speed of the disk:
/dev/mapper/NAME and its stack are removed (so nothing can open the volume
while its content is rewritten), the store's chunks are copied into the origin
through the raw devices, with progress on stderr, and /dev/mapper/NAME comes
back as a plain linear map of the origin. The boot-time rollback of
'snapctl activate' (scheduled, or decided by an update group) does the same
without building the stack first. --kernel uses the kernel's snapshot-merge
instead (as does a store with the loop backend). A kill or power cut at any
point is finished by 'snapctl activate' or by running rollback again.`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			if o.AtNextActivate && o.Kernel {
				return newUsageError(cmd.CommandPath(), errors.New("--kernel applies to a rollback now; the boot-time rollback uses the userspace merge"))
			}
			m.Progress = a.mergeProgress()
			o.Wait = true
			if err := m.Rollback(cmd.Context(), args[0], o); err != nil {
				return err
			}
			msg := fmt.Sprintf("rolled back %s%s\n", args[0], a.howDone(cmd.Context(), m, args[0], "rollback"))
			if o.AtNextActivate {
				msg = fmt.Sprintf("rollback of %s scheduled for the next `snapctl activate`\n", args[0])
			}
			return a.report(cmd.Context(), m, args[0], msg)
		},
	}
	c.Flags().BoolVar(&o.AtNextActivate, "at-next-activate", false, "schedule the rollback for the next activate instead of doing it now")
	c.Flags().BoolVar(&o.Kernel, "kernel", false, "checkpoint mode: merge with the kernel's snapshot-merge, not the userspace merge")
	return c
}

func newMergeCmd(a *app) *cobra.Command {
	var (
		noWait  bool
		offline offlineFlags
	)
	c := &cobra.Command{
		Use:   "merge NAME",
		Short: "Merge the store into the origin (kernel snapshot-merge, or --offline in userspace)",
		Long: `Merge is the low-level verb: the kernel's merge, which 'rollback' (checkpoint)
and 'commit' (update) run with --kernel, or where their userspace merge cannot
run (see their --help). It hands the snapshot over to the kernel's
snapshot-merge target and waits, with progress, until every chunk is back on
the origin; then it collapses the stack to linear and deletes the store. --no-wait returns after the hand-over (the
kernel goes on merging; 'snapctl merge NAME' again, or 'snapctl activate
--wait', finishes). After a reboot mid-merge, 'snapctl activate' resumes it.

--offline merges in userspace instead, with the volume deactivated: see
'snapctl merge --offline --help'.`,
		Args: maxArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if offline.enabled {
				return runOfflineMergeCmd(cmd, a, args, offline)
			}
			if len(args) != 1 {
				return newUsageError(cmd.CommandPath(), errors.New("merge needs NAME (or --offline with --origin and --cow)"))
			}
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			m.Progress = a.mergeProgress()
			if err := m.Merge(cmd.Context(), args[0], !noWait); err != nil {
				return err
			}
			msg := fmt.Sprintf("merged %s\n", args[0])
			if noWait {
				msg = fmt.Sprintf("merge of %s handed over to the kernel\n", args[0])
			}
			return a.report(cmd.Context(), m, args[0], msg)
		},
	}
	c.Flags().BoolVar(&noWait, "no-wait", false, "return once the kernel has taken the merge over")
	offline.register(c)
	return c
}

func newDropCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "drop NAME",
		Short: "Drop the snapshot and delete the store (commit in checkpoint mode, rollback in update mode)",
		Args:  exactArgs(1),
		RunE:  a.volumeOp((*snapshot.Manager).Drop, "dropped the snapshot of %s"),
	}
}

func newDeactivateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "deactivate NAME",
		Short: "Remove the volume's devices without changing its data or state",
		Long: `Deactivate tears down /dev/mapper/NAME and its helper devices, keeping the state
record and the store: before shutdown, or before an offline merge. A kernel merge
under way stops and resumes at the next 'snapctl activate'.`,
		Args: exactArgs(1),
		RunE: a.volumeOp((*snapshot.Manager).Deactivate, "deactivated %s"),
	}
}

func newGrowCmd(a *app) *cobra.Command {
	var by string
	c := &cobra.Command{
		Use:   "grow NAME --by BYTES",
		Short: "Extend the store online",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := cowsize.ParseBytes(by)
			if err != nil || n == 0 {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("--by %q: want a size like 256M", by))
			}
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			if err := m.Grow(cmd.Context(), args[0], n); err != nil {
				return err
			}
			return a.report(cmd.Context(), m, args[0], fmt.Sprintf("grew the store of %s by %s\n", args[0], by))
		},
	}
	c.Flags().StringVar(&by, "by", "", "how much to add, e.g. 256M")
	return c
}

func newMonitorCmd(a *app) *cobra.Command {
	var o snapshot.MonitorOptions
	c := &cobra.Command{
		Use:   "monitor [NAME...]",
		Short: "Watch stores and grow them before they fill (like LVM autoextend)",
		Long: `Monitor polls every prepared volume's store (or the named ones) and grows it by
--autoextend-percent of its size when it is --autoextend-threshold percent full.
It warns loudly on stderr when a store cannot grow or was invalidated. It runs
until interrupted (see contrib/systemd/snapctl-monitor.service).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.Threshold <= 0 || o.Threshold > 100 || o.Percent <= 0 || o.Interval <= 0 {
				return newUsageError(cmd.CommandPath(), errors.New("want 0 < threshold <= 100, percent > 0, interval > 0"))
			}
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			o.Names = args
			o.Report = func(v, msg string, warning bool) {
				if warning {
					fmt.Fprintf(a.errOut, "snapctl monitor: WARNING: %s: %s\n", v, msg)
					return
				}
				fmt.Fprintf(a.errOut, "snapctl monitor: %s: %s\n", v, msg)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return m.Monitor(ctx, o)
		},
	}
	c.Flags().Float64Var(&o.Threshold, "autoextend-threshold", 70, "grow when the store is this percent full")
	c.Flags().Float64Var(&o.Percent, "autoextend-percent", 20, "grow by this percent of the store's size")
	c.Flags().DurationVar(&o.Interval, "interval", 2*time.Second, "how often to look")
	return c
}

// describeNode is "node (major:minor)", or the number alone.
func describeNode(node, dev string) string {
	if node == "" {
		return dev
	}
	return node + " (" + dev + ")"
}

// placementDevices says where a dry run's store segments will be.
func placementDevices(p *snapshot.Placement) string {
	if p.Backend == "loop" {
		return "and mapped whole through a loop device over the file (--backend loop)"
	}
	var ds []string
	for _, d := range p.Devices {
		node := ""
		if maj, min, err := dmtable.ParseDevNum(d); err == nil {
			node, _ = dmtable.PathByDev(maj, min)
		}
		ds = append(ds, describeNode(node, d))
	}
	return "in segments on " + strings.Join(ds, ", ")
}

// unusableAdvice is what to do with a store seen full or invalid.
func unusableAdvice(name string, mode snapshot.Mode) string {
	if mode == snapshot.Update {
		return "the update in it is incomplete: drop it with `snapctl rollback " + name + "` (the origin keeps the old version), then prepare a larger store and write the update again"
	}
	return "the checkpoint is lost: drop it with `snapctl commit " + name + "` (the current content stays)"
}

// classifyStoreErr maps the store checks' errors: a store seen full or
// invalid (refused, 4) and a store whose file or blocks changed (invalid
// data, 3).
func classifyStoreErr(err error) (int, string, bool) {
	var (
		seen    *snapshot.StoreSeenUnusableError
		changed *snapshot.StoreChangedError
	)
	switch {
	case errors.As(err, &seen):
		return exitRefused, unusableAdvice(seen.Volume, seen.Mode), true
	case errors.As(err, &changed):
		return exitInvalidData, "nothing was mapped or written. If the file was only moved or copied, the blocks the snapshot used are gone: give the snapshot up with `snapctl drop " + changed.Volume +
			"` (update mode: the origin keeps the old version; checkpoint mode: the current content stays)", true
	}
	return 0, "", false
}

// classifyVolumeErr maps the lifecycle's typed errors to exit codes and
// hints naming the command that fixes or continues the operation.
func classifyVolumeErr(err error) (int, string, bool) {
	var (
		busy      *snapshot.BusyError
		intr      *snapshot.InterruptedError
		wrong     *snapshot.WrongPhaseError
		inUse     *snapshot.InUseError
		unusable  *snapshot.StoreUnusableError
		changed   *snapshot.DeviceChangedError
		corrupt   *snapshot.CorruptRecordError
		unknown   *snapshot.UnknownVolumeError
		noSpace   *snapshot.NoSpaceError
		onOrigin  *snapshot.StoreOnOriginError
		unsafeDir *snapshot.UnsafeStateDirError
		active    *snapshot.ActiveError
		refused   *snapshot.RefusedError
		busyDev   *snapshot.OriginBusyError
		inactive  *snapshot.NotActiveError
	)
	switch {
	case errors.As(err, &busy):
		return exitRefused, "wait for it to finish, or check with `snapctl status " + busy.Volume + "`", true
	case errors.As(err, &intr):
		return exitNeedsRepair, "run `snapctl activate " + intr.Volume + "` to finish or undo it", true
	case errors.As(err, &wrong):
		switch wrong.Phase {
		case snapshot.PhaseAttached:
			return exitRefused, "prepare a snapshot first: `snapctl prepare " + wrong.Volume + " --store PATH`", true
		case snapshot.PhasePrepared:
			return exitRefused, "see `snapctl status " + wrong.Volume + "`; commit or rollback it first", true
		}
		return exitRefused, "see `snapctl status " + wrong.Volume + "`", true
	case errors.As(err, &inUse):
		return exitRefused, fmt.Sprintf("unmount it (`umount %s`), or schedule it for boot: `snapctl rollback %s --at-next-activate`", inUse.Device, inUse.Volume), true
	case errors.As(err, &unusable):
		if unusable.State == dmtable.SnapshotMergeFailed {
			return exitFailure, "fix the I/O error (see the kernel log), then `snapctl activate --wait " + unusable.Volume + "` restarts the merge where it stopped; do not drop a half-merged store", true
		}
		return exitRefused, "the snapshot cannot be merged; drop it with `snapctl drop " + unusable.Volume + "`", true
	case errors.As(err, &changed):
		return exitRefused, "find the origin's new path, check it is the same disk, and re-attach it; snapctl will not guess", true
	case errors.As(err, &corrupt):
		return exitInvalidData, "inspect or restore the record from a backup; snapctl does not guess a volume's state", true
	case errors.As(err, &unknown):
		return exitRefused, "list volumes with `snapctl status`, or attach one with `snapctl attach " + unknown.Name + " --origin DEV`", true
	case errors.As(err, &noSpace):
		return exitRefused, "give a smaller --size, free space, or put the store on another filesystem", true
	case errors.As(err, &onOrigin):
		return exitRefused, "put the store on a filesystem on another device", true
	case errors.As(err, &refused):
		return exitRefused, refusalHint(refused), true
	case errors.Is(err, snapshot.ErrNoStoreSize):
		return exitFailure, "give --size BYTES, or --size auto with --changes or --new-image", true
	case errors.Is(err, snapshot.ErrLoopFixedSize):
		return exitFailure, "prepare with a larger --size", true
	case errors.As(err, &busyDev):
		return exitRefused, fmt.Sprintf("unmount what uses %s, then `snapctl attach %s --origin %s` and mount /dev/mapper/%s instead", busyDev.Path, busyDev.Volume, busyDev.Path, busyDev.Volume), true
	case errors.As(err, &inactive):
		return exitRefused, "`snapctl activate " + inactive.Volume + "` first", true
	case errors.As(err, &active):
		return exitRefused, "tear its devices down first: `snapctl deactivate " + active.Volume + "`", true
	case errors.As(err, &unsafeDir):
		return exitRefused, "use --state-dir (or SNAPCTL_STATE_DIR) with a root-owned 0700 directory on a device that is not snapshotted", true
	}
	return 0, "", false
}

// refusalHint is what to do instead of a refused request.
func refusalHint(e *snapshot.RefusedError) string {
	switch e.Kind {
	case snapshot.RefusedOtherOrigin:
		if e.Op == "attach" {
			return "use another volume name for " + e.Device + ", or `snapctl detach " + e.Volume + "` first"
		}
		return "leave out --origin, or use another volume name for " + e.Device
	case snapshot.RefusedNoOrigin:
		return "give --origin DEV, or `snapctl attach " + e.Volume + " --origin DEV` first"
	case snapshot.RefusedOriginTooSmall:
		return "snapshot a larger device, or choose a smaller --chunk-size"
	case snapshot.RefusedNoStorePath:
		return "give --store PATH on an ext4, xfs or f2fs filesystem"
	case snapshot.RefusedStoreExists:
		return "choose a new --store path; remove the old file only if no volume uses it (`snapctl status`)"
	case snapshot.RefusedStoreDirShared:
		return "put the store in a directory only root can write, e.g. mkdir -m 700 DIR"
	case snapshot.RefusedSkipFreeUpdate:
		return "leave out --skip-free in update mode, or prepare a checkpoint (--mode checkpoint)"
	case snapshot.RefusedSkipFreeUnmounted:
		return "mount the filesystem on " + e.Device + " first, or prepare without --skip-free"
	case snapshot.RefusedSkipFreeUnsupported:
		return "prepare without --skip-free: the store then needs room for every chunk written"
	}
	return e.Hint
}

// mergeProgress draws a merge's progress on stderr (see copyProgress).
func (a *app) mergeProgress() func(snapshot.MergeProgress) {
	var p *progress
	return func(mp snapshot.MergeProgress) {
		if p == nil {
			p = newProgress(a.errOut, "merging "+mp.Volume)
		}
		p.update(int64(mp.Total-mp.Remaining)*512, int64(mp.Total)*512)
	}
}

// fragmentedExtents is the extent count above which prepare warns. A flush
// of a multi-segment linear device is sent to every segment, and the
// kernel's merge flushes once per run of consecutive chunks: measured on
// 6.1, one flush costs 0.1-0.3 ms with 1 segment, 1.4-5.5 ms with 1,000 and
// 35-108 ms with 50,000 (TestBenchMerge).
const fragmentedExtents = 1000

// fragmentationWarning is what prepare prints on stderr for a store of n
// extents, or "" when n is small enough not to matter.
func fragmentationWarning(name string, n int) string {
	if n <= fragmentedExtents {
		return ""
	}
	return fmt.Sprintf("warning: the store of %s is in %d extents: the free space of its filesystem is fragmented. "+
		"Every flush of %s-cow goes to each extent, so a kernel merge (which flushes once per run of chunks) is slow; 'snapctl merge %s --offline' avoids that. "+
		"To get a store in fewer extents: 'snapctl commit %s', free space on the store's filesystem (or defragment its files, which gathers free space: e4defrag on ext4, xfs_fsr on xfs), "+
		"then prepare again; or put the store on a filesystem with contiguous free space.", name, n, name, name, name)
}
