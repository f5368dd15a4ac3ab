package main

import (
	"github.com/snapctl/snapctl/bow/nbd"
	"github.com/spf13/cobra"
)

func init() { registerBowSubcommand(newBowNBDRunCmd) }

// nbdRunArgv is how bow serve starts the helper that holds the kernel's
// NBD_DO_IT: this same binary (/proc/self/exe stays valid even if the file
// was replaced since), hidden subcommand.
var nbdRunArgv = []string{"/proc/self/exe", "bow", "nbd-run"}

// newBowNBDRunCmd is the helper process of bow serve --nbd: it runs the
// kernel side of the device (NBD_DO_IT) on the descriptor it inherits, in a
// process apart from the server, so that a server killed with SIGKILL dies
// at once and the device lets go (see package nbd, RunDevice).
func newBowNBDRunCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:    "nbd-run",
		Short:  "Run the kernel side of an NBD device for bow serve (internal)",
		Hidden: true,
		Args:   exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			return nbd.RunDevice()
		},
	}
}
