package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/merge"
)

func init() { register(newMergeCOWCmd) }

// offlineMergeOpts says what runOfflineMerge merges: an origin and a store
// given by path (Store: one segment with Length 0 for a whole device or
// image) or by its extents on raw devices.
type offlineMergeOpts struct {
	Origin       string
	Store        []merge.Segment
	ChunkSize    uint32 // sectors
	ProgressFile string
	Invalidate   bool
}

func newMergeCOWCmd(a *app) *cobra.Command {
	var origin, cow, chunk, progressFile string
	var keepValid bool
	c := &cobra.Command{
		Use:    "merge-cow --origin DEV --cow FILE|DEV --chunk-size SIZE",
		Short:  "Merge a persistent snapshot store into its origin offline, in userspace",
		Hidden: true,
		Long: `merge-cow copies every chunk a dm-snapshot persistent store saved back onto
the origin, without the kernel: the low-level form of 'snapctl merge --offline'
for a store outside snapctl's state. The origin must not be in use (a block
device is opened exclusively). The whole store is checked before anything is
written. With --progress-file a killed or interrupted merge resumes where the
durable copy got to; rerunning from the start is always safe. Once the origin
is flushed, the store is marked invalid (unless --keep-valid) so no kernel
merges it again.`,
		Example: `  snapctl merge-cow --origin /dev/vdb --cow /dev/vdc --chunk-size 4K --progress-file /var/lib/snapctl/vdb.merge.json`,
		Args:    exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if origin == "" || cow == "" || chunk == "" {
				return newUsageError(cmd.CommandPath(), errors.New("--origin, --cow and --chunk-size are required"))
			}
			cb, err := cowsize.ParseBytes(chunk)
			if err == nil && (cb < merge.SectorSize || cb > merge.MaxChunkSize*merge.SectorSize || cb&(cb-1) != 0) {
				err = fmt.Errorf("%d bytes is not a power of two from 512 bytes to 1 GiB", cb)
			}
			if err != nil {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size: %w", err))
			}
			return runOfflineMerge(a, offlineMergeOpts{
				Origin:       origin,
				Store:        []merge.Segment{{Path: cow}},
				ChunkSize:    uint32(cb / merge.SectorSize),
				ProgressFile: progressFile,
				Invalidate:   !keepValid,
			})
		},
	}
	f := c.Flags()
	f.StringVar(&origin, "origin", "", "the origin block device or image to merge into")
	f.StringVar(&cow, "cow", "", "the store: a COW block device or an image of one")
	f.StringVar(&chunk, "chunk-size", "", "the snapshot's chunk size in bytes (e.g. 4K), checked against the store header")
	f.StringVar(&progressFile, "progress-file", "", "record progress here so that a rerun resumes (keep it off the origin)")
	f.BoolVar(&keepValid, "keep-valid", false, "leave the store marked valid after the merge")
	return c
}

// runOfflineMerge runs the offline merge engine with a progress line (MB/s)
// on stderr. SIGINT and SIGTERM stop it cleanly: the progress reached is
// recorded, and a rerun resumes.
func runOfflineMerge(a *app, o offlineMergeOpts) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, err := merge.OfflinePaths(ctx, o.Origin, o.Store, merge.OfflineOptions{
		ChunkSize:    o.ChunkSize,
		ProgressFile: o.ProgressFile,
		Progress:     a.copyProgress("merging"),
		Invalidate:   o.Invalidate,
	})
	if err != nil {
		if errors.Is(err, context.Canceled) && o.ProgressFile != "" {
			return fmt.Errorf("%w (progress is recorded in %s: rerun the same command to resume)", err, o.ProgressFile)
		}
		return err
	}
	el := time.Since(start).Seconds()
	if a.json {
		return a.printJSON(struct {
			Origin      string  `json:"origin"`
			Exceptions  int     `json:"exceptions"`
			Bytes       int64   `json:"bytes"`
			Copied      int64   `json:"copied"`
			Writes      int     `json:"writes"`
			Resumed     int     `json:"resumed"`
			AlreadyDone bool    `json:"already_done"`
			Invalidated bool    `json:"invalidated"`
			Seconds     float64 `json:"seconds"`
		}{o.Origin, len(res.Store.Exceptions), res.Total, res.Copied, res.Writes, res.Resumed, res.AlreadyDone, res.Invalidated, el})
	}
	if res.AlreadyDone {
		a.printf("%s: already merged by an earlier run (the store is invalidated); nothing to do\n", o.Origin)
		return nil
	}
	a.printf("merged %d exceptions into %s: %d bytes copied in %d writes, %.1f MB/s", len(res.Store.Exceptions), o.Origin,
		res.Copied, res.Writes, float64(res.Copied)/max(el, 1e-9)/1e6)
	if res.Resumed > 0 {
		a.printf(", resumed after %d already durable", res.Resumed)
	}
	if res.Invalidated {
		a.printf("; store invalidated")
	}
	a.printf("\n")
	return nil
}
