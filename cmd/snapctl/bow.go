package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
)

// bowSubcommands lists the constructors of the `snapctl bow` subcommands.
// A file adds its own from an init function with registerBowSubcommand,
// the way top-level commands use register.
var bowSubcommands []func(*app) *cobra.Command

func registerBowSubcommand(c func(*app) *cobra.Command) {
	bowSubcommands = append(bowSubcommands, c)
}

func init() {
	register(newBowCmd)
	registerBowSubcommand(newBowRestoreCmd)
	registerBowSubcommand(newBowInspectCmd)
}

// newBowCmd is the `snapctl bow` parent command.
func newBowCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "bow",
		Short: "Backup-on-write devices: checkpoint a device using its own free space",
		Long: `bow checkpoints a block device without a preallocated snapshot store: once a
checkpoint is taken, every block about to be overwritten is first backed up
into space the filesystem has discarded (fstrim), and the backup is logged in
block 0. Restore puts the device back exactly as it was at the checkpoint;
commit keeps the changes. The log is the one Android's dm-bow and vold use,
so a device checkpointed by either side restores with the other.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	for _, sub := range bowSubcommands {
		c.AddCommand(sub(a))
	}
	return c
}

func newBowRestoreCmd(a *app) *cobra.Command {
	var dryRun, rollForward bool
	c := &cobra.Command{
		Use:   "restore DEV",
		Short: "Put a device back to its bow checkpoint",
		Long: `restore brings DEV (a block device or image file, not in use) back to its
contents at the checkpoint. It first validates the whole log chain without
writing anything: every log block's magic, block size and sequence number,
and every entry's bounds, size and checksum, reading each backup from where
the restore will find it. A damaged chain is refused and DEV left untouched
(exit code 3), unless --roll-forward-on-corruption asks to keep the current
contents instead, which drops the checkpoint.

The restore copies every backup home, newest first, block 0 last, and marks
its progress in block 0 so that it finishes when run again after being
killed or losing power at any point. Progress goes to stderr; --json prints
a summary on stdout.`,
		Example: `  snapctl bow restore --dry-run /dev/sdb
  snapctl bow restore /dev/sdb
  snapctl bow restore --json disk.img`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dryRun && rollForward {
				return newUsageError(cmd.CommandPath(), errors.New("--dry-run and --roll-forward-on-corruption exclude each other: a dry run writes nothing"))
			}
			return a.bowRestore(args[0], dryRun, rollForward)
		},
	}
	f := c.Flags()
	f.BoolVar(&dryRun, "dry-run", false, "validate the log chain and report what a restore would do; write nothing")
	f.BoolVar(&rollForward, "roll-forward-on-corruption", false, "if the log chain is damaged, keep the current contents and drop the checkpoint instead of refusing")
	return c
}

func (a *app) bowRestore(path string, dryRun, rollForward bool) error {
	dev, err := bow.OpenFile(path)
	if err != nil {
		return err
	}
	defer dev.Close()
	opts := bow.RestoreOptions{DryRun: dryRun, RollForwardOnCorruption: rollForward}
	if !dryRun {
		opts.Progress = a.copyProgress("restore " + path)
	}
	sum, err := bow.Restore(context.Background(), dev, opts)
	if err != nil {
		return err
	}
	if err := dev.Close(); err != nil {
		return fmt.Errorf("restore %s: %w", path, err)
	}
	if a.json {
		return a.printDoc(&bowRestoreDoc{RestoreSummary: sum})
	}
	switch {
	case sum.RolledForward:
		a.printf("%s: the checkpoint log is damaged (%s)\nrolled forward: %s keeps its current contents; the checkpoint is dropped\n", path, sum.Problem, path)
	case sum.DryRun:
		a.printf("%s: the checkpoint log is valid: %s in %s, %s to copy back; nothing was written\n", path, plural(int64(sum.Entries), "entry"), plural(int64(sum.LogBlocks), "log block"), humanBytes(sum.Bytes))
	default:
		resumed := ""
		if sum.Resumed {
			resumed = " (finished an interrupted restore)"
		}
		a.printf("restored %s to its checkpoint%s: %s, %s copied back from %s\n", path, resumed, plural(int64(sum.Entries), "entry"), humanBytes(sum.Bytes), plural(int64(sum.LogBlocks), "log block"))
	}
	return nil
}

func newBowInspectCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect DEV",
		Short: "Show and check the bow checkpoint log of a device",
		Long: `inspect reads the bow checkpoint log in block 0 of DEV: its header (magic,
version, block size, entry count, sequence number, where the live block 0 is
kept) and the chain of log blocks back to the first, with their entries and
the bytes backed up. It validates the chain as restore would, without
writing, and exits with code 3 if it is damaged, after printing what it
could read.`,
		Example: `  snapctl bow inspect /dev/sdb
  snapctl bow inspect --json disk.img`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return a.bowInspect(args[0]) },
	}
}

func (a *app) bowInspect(path string) error {
	dev, err := bow.OpenFile(path)
	if err != nil {
		return err
	}
	defer dev.Close()
	info, err := bow.Inspect(context.Background(), dev)
	var nl bow.NoLogError
	if errors.As(err, &nl) {
		return err
	}
	if a.json {
		if jerr := a.printDoc(&bowInspectDoc{Info: info}); jerr != nil {
			return jerr
		}
		return err
	}
	h := info.Header
	magic := "BOW (checkpoint active)"
	if info.InProgress {
		magic = "WOB (a restore was interrupted: run snapctl bow restore " + path + ")"
	}
	a.printf("device:      %s (%s)\n", path, humanBytes(info.Size))
	a.printf("magic:       %#08x %s\n", h.Magic, magic)
	a.printf("version:     %#04x, header %d bytes\n", h.Version, h.HeaderSize)
	a.printf("block size:  %d\n", h.BlockSize)
	a.printf("block 0:     live contents at sector %d\n", h.Sector0)
	a.printf("newest log:  sequence %d, %d entries\n", h.Sequence, h.Count)
	for _, l := range info.Logs {
		where := "block 0"
		if l.Block != 0 {
			where = fmt.Sprintf("backup at block %d", l.Block)
		}
		a.printf("  log %-6d %4d entries, %10s backed up  (%s)\n", l.Sequence, l.Entries, humanBytes(l.Bytes), where)
	}
	a.printf("total:       %d entries, %s backed up\n", info.Entries, humanBytes(info.Bytes))
	if info.Valid {
		a.printf("valid:       yes: restore would bring back the checkpoint\n")
	} else {
		a.printf("valid:       NO: %s\n", info.Problem)
	}
	return err
}
