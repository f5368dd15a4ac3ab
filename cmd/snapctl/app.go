package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"
)

// app carries the global flags and output streams to every command.
type app struct {
	out, errOut io.Writer
	stateDir    string
	json        bool
	verbose     int
	dryRun      bool
	log         *slog.Logger
}

// commands lists the constructors of the subcommands. Each command lives in
// its own file and adds itself here from an init function, so commands can be
// added without touching a shared list.
var commands []func(*app) *cobra.Command

func register(c func(*app) *cobra.Command) { commands = append(commands, c) }

func newApp(out, errOut io.Writer) *app {
	return &app{out: out, errOut: errOut, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

const exitCodeHelp = `Exit codes:
  0  success
  1  the operation failed (kernel or I/O error); see the message
  2  usage error: bad command line
  3  invalid data: a corrupt store, log, state record or input file; nothing was changed
  4  refused: a precondition does not hold (device busy or mounted, wrong phase,
     another snapctl operation on the volume); nothing was changed
  5  unsupported system: no device-mapper, unsupported filesystem, not root
  6  an interrupted operation needs recovery: run the command named in the hint`

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "snapctl",
		Short: "Make block-device updates revertible: commit cheaply or roll back exactly",
		Long: `snapctl makes a change to a block device revertible.

It snapshots a device with the kernel's dm-snapshot over an exception store
carved out of a file on an existing filesystem (no spare partition needed),
then commits the change cheaply or rolls it back to the exact earlier bytes,
even after a crash. For devices without room for a preallocated store it
offers bow, a userspace backup-on-write device served to the kernel over NBD.

` + exitCodeHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			level := slog.LevelWarn
			if a.verbose > 0 {
				level = slog.LevelDebug
			}
			a.log = slog.New(slog.NewTextHandler(a.errOut, &slog.HandlerOptions{Level: level}))
			if a.verbose == 0 {
				a.log = slog.New(slog.NewTextHandler(io.Discard, nil))
			}
			return nil
		},
	}
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError{cmd: c.CommandPath(), err: err}
	})
	defDir := os.Getenv("SNAPCTL_STATE_DIR")
	if defDir == "" {
		defDir = "/var/lib/snapctl"
	}
	root.PersistentFlags().StringVar(&a.stateDir, "state-dir", defDir, "directory for volume state records (env SNAPCTL_STATE_DIR); must not be on a snapshotted origin")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print machine-readable JSON on stdout")
	root.PersistentFlags().CountVarP(&a.verbose, "verbose", "v", "log every ioctl and state transition to stderr")
	for _, c := range commands {
		root.AddCommand(c(a))
	}
	return root
}

// printJSON writes v as indented JSON to stdout.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printf writes human output to stdout.
func (a *app) printf(format string, args ...any) { fmt.Fprintf(a.out, format, args...) }

// progressOut is where progress for long work goes: stderr, never stdout.
func (a *app) progressOut() io.Writer { return a.errOut }

// maxArgs is cobra.MaximumNArgs whose error counts as a usage error.
func maxArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.MaximumNArgs(n)(cmd, args); err != nil {
			return usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}

// exactArgs is cobra.ExactArgs whose error counts as a usage error.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := cobra.ExactArgs(n)(cmd, args); err != nil {
			return usageError{cmd: cmd.CommandPath(), err: err}
		}
		return nil
	}
}
