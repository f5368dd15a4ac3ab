package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/merge"
)

func init() {
	register(newInspectCOWCmd)
	registerClassifier(classifyMergeStore)
}

// inspectCOWReport is the JSON form of `snapctl inspect-cow`.
type inspectCOWReport struct {
	schema
	Path       string            `json:"path"`
	Size       int64             `json:"size"`
	Magic      string            `json:"magic"`
	Fresh      bool              `json:"fresh"`
	Valid      bool              `json:"valid"`
	Version    uint32            `json:"version"`
	ChunkSize  uint32            `json:"chunk_size"` // sectors
	ChunkBytes int64             `json:"chunk_bytes"`
	Exceptions int               `json:"exceptions"`
	PerArea    uint64            `json:"per_area"`
	Areas      uint64            `json:"areas"`
	Chunks     uint64            `json:"chunks"`
	UsedChunks uint64            `json:"used_chunks"`
	UsedBytes  int64             `json:"used_bytes"`
	First      []merge.Exception `json:"first"`
	Last       []merge.Exception `json:"last"`
	Error      string            `json:"error,omitempty"`
}

func newInspectCOWCmd(a *app) *cobra.Command {
	var chunk, originSize string
	var entries int
	c := &cobra.Command{
		Use:   "inspect-cow PATH",
		Short: "Show and check a persistent snapshot store (COW device or image)",
		Long: `inspect-cow reads a dm-snapshot persistent exception store: a COW device, or
an image copied from one. It shows the header (magic, valid flag, version,
chunk size), the number of exceptions and metadata areas, how much of the
store is in use, and the first and last exceptions (origin chunk -> store
chunk). It checks every entry as an offline merge would and exits with code 3
if the store is damaged, after printing what it could read.

It only reads, with O_DIRECT where the file allows, so it shows what is on the
disk rather than a stale page cache.`,
		Example: `  snapctl inspect-cow /dev/mapper/data-cow
  snapctl inspect-cow --chunk-size 4K --origin-size 8G --json cow.img`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var want merge.Expect
			if chunk != "" {
				cs, err := storeChunkSectors(chunk)
				if err != nil {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size: %w", err))
				}
				want.ChunkSize = cs
			}
			if originSize != "" {
				n, err := cowsize.ParseBytes(originSize)
				if err == nil && n == 0 {
					err = errors.New("must be positive")
				}
				if err != nil {
					return newUsageError(cmd.CommandPath(), fmt.Errorf("--origin-size: %w", err))
				}
				want.OriginSize = int64(n)
			}
			if entries < 0 {
				return newUsageError(cmd.CommandPath(), errors.New("--entries must not be negative"))
			}
			return inspectCOW(a, args[0], want, entries)
		},
	}
	f := c.Flags()
	f.StringVar(&chunk, "chunk-size", "", "expected chunk size in bytes (K, M suffixes; e.g. 4K); checked against the header")
	f.StringVar(&originSize, "origin-size", "", "origin size in bytes (K, M, G, T suffixes); every old chunk must lie inside it")
	f.IntVar(&entries, "entries", 3, "how many of the first and last exceptions to show")
	return c
}

func inspectCOW(a *app, path string, want merge.Expect, entries int) error {
	r, err := merge.OpenRaw(path, merge.OpenDirect)
	if err != nil {
		return fmt.Errorf("inspect %s: %w", path, err)
	}
	defer r.Close()
	rep := inspectCOWReport{Path: path, Size: r.Size(), First: []merge.Exception{}, Last: []merge.Exception{}}
	h, herr := merge.ReadHeader(r, r.Size())
	var st *merge.Store
	if herr == nil {
		st, herr = merge.ReadStore(r, r.Size(), want)
	}
	rep.Magic = fmt.Sprintf("%#08x", h.Magic)
	rep.Fresh, rep.Valid, rep.Version, rep.ChunkSize = h.Fresh(), h.Valid, h.Version, h.ChunkSize
	rep.ChunkBytes = int64(h.ChunkSize) * merge.SectorSize
	if st != nil {
		rep.Exceptions = len(st.Exceptions)
		rep.Areas, rep.Chunks, rep.UsedChunks = st.Areas, st.Chunks(), st.UsedChunks()
		if !st.Header.Fresh() {
			rep.PerArea = st.Layout().PerArea()
		}
		rep.UsedBytes = int64(rep.UsedChunks) * rep.ChunkBytes
		n := min(entries, len(st.Exceptions))
		rep.First = st.Exceptions[:n]
		rep.Last = st.Exceptions[len(st.Exceptions)-min(n, len(st.Exceptions)-n):]
	}
	var err2 error
	if herr != nil {
		err2 = fmt.Errorf("inspect %s: %w", path, herr)
		rep.Error = herr.Error()
	}
	if a.json {
		if err := a.printDoc(&rep); err != nil {
			return err
		}
		return err2
	}
	printInspectCOW(a, rep, h, herr == nil || st != nil)
	return err2
}

func printInspectCOW(a *app, rep inspectCOWReport, h merge.Header, complete bool) {
	a.printf("store:       %s (%d bytes)\n", rep.Path, rep.Size)
	switch {
	case rep.Fresh:
		a.printf("header:      zeroed: a new store the kernel has not used yet\n")
		if complete {
			a.printf("exceptions:  0\n")
		}
		return
	case h.Magic != merge.Magic:
		a.printf("header:      magic %s, not a persistent snapshot store (want %#08x)\n", rep.Magic, merge.Magic)
		return
	}
	a.printf("header:      magic %s (SnAp), version %d\n", rep.Magic, rep.Version)
	valid := "yes"
	if !rep.Valid {
		valid = "NO: the kernel dropped this snapshot (overflow or I/O error); it cannot be merged"
	}
	a.printf("valid:       %s\n", valid)
	if rep.ChunkSize != 0 {
		a.printf("chunk size:  %d sectors (%s)\n", rep.ChunkSize, inspectCOWBytes(rep.ChunkBytes))
	}
	if !complete {
		return
	}
	a.printf("exceptions:  %d in %d metadata area(s) of %d entries\n", rep.Exceptions, rep.Areas, rep.PerArea)
	a.printf("used:        %d of %d chunks (%s of %s)\n", rep.UsedChunks, rep.Chunks,
		inspectCOWBytes(rep.UsedBytes), inspectCOWBytes(int64(rep.Chunks)*rep.ChunkBytes))
	list := func(ex []merge.Exception) string {
		var s []string
		for _, e := range ex {
			s = append(s, fmt.Sprintf("%d->%d", e.Old, e.New))
		}
		return strings.Join(s, " ")
	}
	if len(rep.First) > 0 {
		a.printf("first:       %s (origin chunk -> store chunk)\n", list(rep.First))
	}
	if len(rep.Last) > 0 {
		a.printf("last:        %s\n", list(rep.Last))
	}
}

// inspectCOWBytes prints a byte count exactly, with a binary unit when one
// divides it.
func inspectCOWBytes(n int64) string {
	for _, u := range []struct {
		s string
		v int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return fmt.Sprintf("%d %s", n/u.v, u.s)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// classifyMergeStore maps the merge package's errors about a store to exit
// codes and hints.
func classifyMergeStore(err error) (int, string, bool) {
	var cs *merge.ChunkSizeError
	var ce *merge.CorruptError
	var oe *merge.OverlapError
	switch {
	case errors.As(err, &cs):
		return exitInvalidData, fmt.Sprintf("the store header records %d-byte chunks: if that is right, pass --chunk-size %d; "+
			"otherwise this is not the store you meant", int64(cs.Header)*merge.SectorSize, int64(cs.Header)*merge.SectorSize), true
	case errors.As(err, &ce):
		return exitInvalidData, "the store is damaged and nothing was written; run 'snapctl inspect-cow STORE' to see what is readable", true
	case errors.As(err, &oe):
		return exitInvalidData, "an exception points into the store's own extents on the origin: the store or its extent list is wrong; nothing was written", true
	case errors.Is(err, merge.ErrInvalidStore):
		return exitRefused, "this snapshot is lost and cannot be merged: drop it instead; nothing was written", true
	case errors.Is(err, merge.ErrFreshStore):
		return exitRefused, "the kernel never activated this store, so there is nothing to merge: check that --cow names the right device or file", true
	}
	return 0, "", false
}
