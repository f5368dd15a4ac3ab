package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
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
	f.StringVar(&o.origin, "origin", "", "with --offline and no NAME: the origin device or image")
	f.StringVar(&o.cow, "cow", "", "with --offline and no NAME: the COW device or image")
	f.StringVar(&o.chunk, "chunk-size", "", "with --offline and no NAME: the expected chunk size (checked against the header)")
	f.StringVar(&o.progressFile, "progress-file", "", "with --offline and no NAME: where to record progress so a rerun resumes")
	f.BoolVar(&o.keepValid, "keep-valid", false, "with --offline and no NAME: leave the store valid after the merge")
}

// runOfflineMergeCmd runs `snapctl merge --offline`, for a volume (its
// store's raw extents from the state record) or for an origin and a COW
// given by path.
func runOfflineMergeCmd(cmd *cobra.Command, a *app, args []string, o offlineFlags) error {
	opts := merge.OfflineOptions{Progress: a.copyProgress("merging")}
	if len(args) == 1 {
		if o.origin != "" || o.cow != "" || o.chunk != "" || o.progressFile != "" {
			return newUsageError(cmd.CommandPath(), errors.New("with NAME, --origin, --cow, --chunk-size and --progress-file come from the state record"))
		}
		m, err := a.manager(cmd)
		if err != nil {
			return err
		}
		res, err := m.MergeOffline(cmd.Context(), args[0], opts)
		if err != nil {
			return err
		}
		return a.offlineReport(args[0], res)
	}
	if o.origin == "" || o.cow == "" {
		return newUsageError(cmd.CommandPath(), errors.New("merge --offline needs NAME, or --origin DEV and --cow DEV|FILE"))
	}
	if o.chunk != "" {
		cb, err := cowsize.ParseBytes(o.chunk)
		if err == nil {
			err = cowsize.CheckChunk(cb)
		}
		if err != nil {
			return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size: %w", err))
		}
		opts.ChunkSize = uint32(cb / 512)
	}
	opts.ProgressFile, opts.Invalidate = o.progressFile, !o.keepValid
	res, err := merge.OfflinePaths(cmd.Context(), o.origin, []merge.Segment{{Path: o.cow}}, opts)
	if err != nil {
		return err
	}
	return a.offlineReport(o.cow, res)
}

func (a *app) offlineReport(what string, res *merge.OfflineResult) error {
	if a.json {
		return a.printJSON(struct {
			Exceptions  int   `json:"exceptions"`
			Bytes       int64 `json:"bytes"`
			Copied      int64 `json:"copied"`
			Resumed     int   `json:"resumed"`
			AlreadyDone bool  `json:"already_done"`
			Invalidated bool  `json:"invalidated"`
		}{len(res.Store.Exceptions), res.Total, res.Copied, res.Resumed, res.AlreadyDone, res.Invalidated})
	}
	if res.AlreadyDone {
		a.printf("%s: already merged by an earlier run; nothing to do\n", what)
		return nil
	}
	a.printf("merged %s offline: %d exceptions, %d bytes copied", what, len(res.Store.Exceptions), res.Copied)
	if res.Resumed > 0 {
		a.printf(" (resumed: %d exceptions were already durable)", res.Resumed)
	}
	a.printf("\n")
	return nil
}
