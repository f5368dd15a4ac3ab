package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/snapshot"
)

func init() {
	register(newWriteCmd)
	registerClassifier(classifyWriteErr)
}

// writeDoc is `write --json`.
type writeDoc struct {
	schema
	*snapshot.WriteResult
}

func newWriteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "write NAME IMAGE",
		Short: "Write an image into an update-mode volume, only the chunks that differ, and verify it",
		Long: `Write is the updater of an update-mode volume. It reads IMAGE and
/dev/mapper/NAME (the snapshot) chunk by chunk, in the store's chunk size, and
writes only the chunks that differ, with direct I/O. dm-snapshot takes a store
chunk for every chunk written, changed or not, so writing only the differences
keeps the store at exactly the size 'prepare --size auto --new-image IMAGE'
gave it. Then it reads the volume back and checks that it equals IMAGE.

It refuses an image larger than the volume and a volume that is not prepared
in update mode. It keeps no progress of its own: after a kill or a crash, run
it again; it compares again and writes only what still differs.

Example:
  snapctl prepare system --origin /dev/sda3 --mode update --store /data/ota.cow \
      --size auto --new-image system-v2.img
  snapctl write system system-v2.img
  snapctl commit system`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			m, err := a.manager(cmd)
			if err != nil {
				return err
			}
			var bars = map[string]*progress{}
			o := snapshot.WriteOptions{Progress: func(p snapshot.WriteProgress) {
				b := bars[p.Stage]
				if b == nil {
					verb := "writing "
					if p.Stage == "verify" {
						verb = "verifying "
					}
					b = newProgress(a.progressOut(), verb+p.Volume)
					bars[p.Stage] = b
				}
				b.update(p.Done, p.Total)
			}}
			res, err := m.Write(cmd.Context(), args[0], args[1], o)
			if err != nil {
				return err
			}
			if a.json {
				return a.printDoc(&writeDoc{WriteResult: res})
			}
			a.printf("wrote %s to %s: %d of %d chunks differed (%d bytes written); it reads back equal to the image\n",
				res.Image, res.Volume, res.Changed, res.Chunks, res.Written)
			return nil
		},
	}
}

// classifyWriteErr gives write's refusals their exit code and hint.
func classifyWriteErr(err error) (int, string, bool) {
	var (
		mode   *snapshot.WrongModeError
		tooBig *snapshot.ImageTooLargeError
		verify *snapshot.VerifyError
	)
	switch {
	case errors.As(err, &mode):
		if mode.Want == snapshot.Update {
			return exitRefused, fmt.Sprintf("in %s mode writes to /dev/mapper/%s land on the origin; an update goes into a volume prepared with `--mode update`", mode.Mode, mode.Volume), true
		}
		return exitRefused, fmt.Sprintf("see `snapctl status %s`", mode.Volume), true
	case errors.As(err, &tooBig):
		return exitRefused, "the image is for a bigger device: check that it is the right image for this volume", true
	case errors.As(err, &verify):
		return exitFailure, fmt.Sprintf("the device returned other bytes than were written (see the kernel log); run `snapctl write %s %s` again, or roll back with `snapctl rollback %s`", verify.Volume, verify.Image, verify.Volume), true
	}
	return 0, "", false
}
