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
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/merge"
)

// offlineFlags are the flags of `snapctl merge --offline`.
type offlineFlags struct {
	enabled      bool
	origin, cow  string
	chunk        string
	progressFile string
	keepValid    bool
}

func (o *offlineFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.BoolVar(&o.enabled, "offline", false, "merge in userspace with the volume deactivated (no kernel dm-snapshot needed)")
	f.StringVar(&o.origin, "origin", "", "with --offline and no NAME: the origin block device or image to merge into")
	f.StringVar(&o.cow, "cow", "", "with --offline and no NAME: the store, a COW block device or an image of one")
	f.StringVar(&o.chunk, "chunk-size", "", "with --offline and no NAME: the snapshot's chunk size (e.g. 4K), checked against the store header")
	f.StringVar(&o.progressFile, "progress-file", "", "with --offline and no NAME: record progress here so that a rerun resumes (keep it off the origin)")
	f.BoolVar(&o.keepValid, "keep-valid", false, "with --offline and no NAME: leave the store marked valid after the merge")
	c.Example = `  snapctl merge data                      # kernel snapshot-merge, waits with progress
  snapctl deactivate data && snapctl merge data --offline
  snapctl merge --offline --origin /dev/vdb --cow /dev/vdc --chunk-size 4K \
      --progress-file /var/lib/snapctl/vdb.merge.json`
}

// runOfflineMergeCmd runs `snapctl merge --offline`: for a volume (its
// store's raw extents come from the state record; the volume ends attached,
// as after a kernel merge) or for an origin and a COW given by path. The
// whole store is checked before anything is written; SIGINT and SIGTERM stop
// it with the progress recorded, and a rerun resumes.
func runOfflineMergeCmd(cmd *cobra.Command, a *app, args []string, o offlineFlags) error {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := merge.OfflineOptions{Progress: a.copyProgress("merging")}
	start := time.Now()
	if len(args) == 1 {
		if o.origin != "" || o.cow != "" || o.chunk != "" || o.progressFile != "" || o.keepValid {
			return newUsageError(cmd.CommandPath(), errors.New("with NAME, the origin, store, chunk size and progress file come from the state record"))
		}
		m, err := a.manager(cmd)
		if err != nil {
			return err
		}
		res, err := m.MergeOffline(ctx, args[0], opts)
		if err != nil {
			return interrupted(err, "rerun `snapctl merge "+args[0]+" --offline` to resume")
		}
		return a.offlineReport(args[0], res, time.Since(start))
	}
	if o.origin == "" || o.cow == "" || o.chunk == "" {
		return newUsageError(cmd.CommandPath(), errors.New("merge --offline needs NAME, or --origin, --cow and --chunk-size"))
	}
	cs, err := storeChunkSectors(o.chunk)
	if err != nil {
		return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size: %w", err))
	}
	opts.ChunkSize = cs
	opts.ProgressFile, opts.Invalidate = o.progressFile, !o.keepValid
	res, err := merge.OfflinePaths(ctx, o.origin, []merge.Segment{{Path: o.cow}}, opts)
	if err != nil {
		if o.progressFile != "" {
			return interrupted(err, "progress is recorded in "+o.progressFile+": rerun the same command to resume")
		}
		return err
	}
	return a.offlineReport(o.origin, res, time.Since(start))
}

func interrupted(err error, how string) error {
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w (%s)", err, how)
	}
	return err
}

func (a *app) offlineReport(what string, res *merge.OfflineResult, el time.Duration) error {
	if a.json {
		return a.printDoc(&offlineMergeDoc{Target: what, Exceptions: len(res.Store.Exceptions), Bytes: res.Total, Copied: res.Copied,
			Writes: res.Writes, Filled: res.Filled, Resumed: res.Resumed, AlreadyDone: res.AlreadyDone, Invalidated: res.Invalidated, Seconds: el.Seconds()})
	}
	if res.AlreadyDone {
		a.printf("%s: already merged by an earlier run (the store is invalidated); nothing to do\n", what)
		return nil
	}
	a.printf("merged %d exceptions into %s offline: %d bytes copied in %d writes, %.1f MB/s", len(res.Store.Exceptions), what,
		res.Copied, res.Writes, float64(res.Copied)/max(el.Seconds(), 1e-9)/1e6)
	if res.Resumed > 0 {
		a.printf(", resumed after %d already durable", res.Resumed)
	}
	if res.Invalidated {
		a.printf("; store invalidated")
	}
	a.printf("\n")
	return nil
}

// offlineMergeDoc is `snapctl merge --offline --json`.
type offlineMergeDoc struct {
	schema
	Target      string  `json:"target"`
	Exceptions  int     `json:"exceptions"`
	Bytes       int64   `json:"bytes"`
	Copied      int64   `json:"copied"`
	Writes      int     `json:"writes"`
	Filled      int64   `json:"filled"`
	Resumed     int     `json:"resumed"`
	AlreadyDone bool    `json:"already_done"`
	Invalidated bool    `json:"invalidated"`
	Seconds     float64 `json:"seconds"`
}

// storeChunkSectors parses the chunk size of an existing store: any size
// the kernel takes, in sectors.
func storeChunkSectors(s string) (uint32, error) {
	cb, err := cowsize.ParseBytes(s)
	if err == nil && (cb%merge.SectorSize != 0 || !dmtable.ValidChunkSectors(cb/merge.SectorSize)) {
		err = fmt.Errorf("%d bytes is not a power of two from 512 bytes to 1 GiB", cb)
	}
	return uint32(cb / merge.SectorSize), err
}
