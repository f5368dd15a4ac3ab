package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
)

func init() {
	register(newMapFileCmd)
	registerClassifier(classifyFiemap)
}

// mapFileReport is the --json output of map-file: the mapping plus the
// table text it would load.
type mapFileReport struct {
	schema
	*fiemap.Mapping
	Table string `json:"table"` // the linear table, one target per line
}

func newMapFileCmd(a *app) *cobra.Command {
	var chunkFlag string
	cmd := &cobra.Command{
		Use:   "map-file PATH",
		Short: "Show where a file's blocks are and the linear table that maps them",
		Long: `map-file shows how snapctl would use PATH as an exception store: the
filesystem it is on and that filesystem's block device, the file's extents
(FIEMAP, contiguous ones merged), the same bytes resolved down the stack of
device-mapper linear devices beneath the filesystem to raw disks, and the
linear table a store device over the file would load. It loads nothing and
changes nothing.

The file must be on ext4, xfs or f2fs, be fully allocated (no holes, no
inline, encrypted, compressed or shared extents), and its filesystem must sit
on a device-mapper device with only linear targets beneath it: device-mapper
claims the devices it maps exclusively, so a table over a partition that a
filesystem has mounted directly fails with EBUSY. Every extent must be a
multiple of the chunk size and of the devices' logical block size.`,
		Example: `  snapctl map-file /data/.snapctl/store
  snapctl map-file /data/.snapctl/store --chunk-size 64K --json`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			chunk, err := cowsize.ParseBytes(chunkFlag)
			if err == nil {
				err = cowsize.CheckChunk(chunk)
			}
			if err != nil {
				return newUsageError(cmd.CommandPath(), fmt.Errorf("--chunk-size %s: %w", chunkFlag, err))
			}
			m, err := fiemap.Map(args[0], dmtable.TableByDev, fiemap.MapOptions{ChunkSize: chunk})
			if err != nil {
				return err
			}
			table, err := m.Table()
			if err != nil {
				return fmt.Errorf("map %q: %w", args[0], err)
			}
			for _, w := range m.Warnings {
				fmt.Fprintf(a.progressOut(), "warning: %s\n", w)
			}
			if a.json {
				return a.printDoc(&mapFileReport{Mapping: m, Table: table.String()})
			}
			printMapping(a, m, table)
			return nil
		},
	}
	cmd.Flags().StringVar(&chunkFlag, "chunk-size", "4K", "snapshot chunk size every extent must be a multiple of: a power of two from 4K to 512K")
	return cmd
}

func printMapping(a *app, m *fiemap.Mapping, table dmtable.Table) {
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	a.printf("file:        %s (%d bytes, %s)\n", m.Path, m.Size, cowSizeHuman(m.Size))
	a.printf("filesystem:  %s on %s\n", m.FS.Type, m.FS.Dev)
	pinned := "n/a (only f2fs pins)"
	if m.FS.Magic == fiemap.F2FS_SUPER_MAGIC {
		pinned = yes(m.Pinned)
	}
	a.printf("immutable:   %s   pinned: %s\n", yes(m.Immutable), pinned)
	a.printf("block sizes: logical %d, physical %d, io_min %d; chunk %d\n",
		m.Limits.LogicalBlockSize, m.Limits.PhysicalBlockSize, m.Limits.MinIO, m.ChunkSize)
	a.printf("extents:     %d (bytes; physical on %s)\n", len(m.Extents), m.FS.Dev)
	a.printf("  %14s %16s %14s  %s\n", "logical", "physical", "length", "flags")
	for _, e := range m.Extents {
		a.printf("  %14d %16d %14d  %s\n", e.Logical, e.Physical, e.Length, e.Flags)
	}
	a.printf("segments:    %d (sectors on raw devices)\n", len(m.Segments))
	a.printf("  %14s %10s %16s %14s\n", "logical", "device", "offset", "length")
	for _, s := range m.Segments {
		a.printf("  %14d %10s %16d %14d\n", s.Logical, s.Dev, s.DevOffset, s.Length)
	}
	a.printf("linear table (%d sectors; not loaded):\n%s", table.Sectors(), table)
}

// classifyFiemap maps the fiemap package's errors to exit codes and hints.
func classifyFiemap(err error) (int, string, bool) {
	var (
		unsupportedFS fiemap.UnsupportedFSError
		directMount   fiemap.DirectMountError
		target        fiemap.UnsupportedTargetError
		symlink       fiemap.SymlinkError
		flag          fiemap.ExtentFlagError
		hole          fiemap.HoleError
		empty         fiemap.EmptyError
		frag          fiemap.TooFragmentedError
		misaligned    fiemap.MisalignedError
		mismatch      fiemap.MismatchError
		size          fiemap.SizeError
		exists        fiemap.ExistsError
		noSpace       fiemap.NoSpaceError
	)
	switch {
	case errors.As(err, &unsupportedFS):
		return exitUnsupported, "put the store on ext4, xfs or f2fs (on a device-mapper device), or use --backend loop", true
	case errors.As(err, &directMount):
		return exitRefused, "use --backend loop or put the filesystem on a device-mapper device (snapctl attach)", true
	case errors.As(err, &target):
		return exitUnsupported, "put the store on a filesystem with only linear device-mapper devices beneath it, or use --backend loop", true
	case errors.As(err, &symlink):
		return exitRefused, fmt.Sprintf("give the path without symlinks: $(realpath %q)", symlink.Path), true
	case errors.As(err, &flag), errors.As(err, &hole), errors.As(err, &empty):
		return exitInvalidData, "let snapctl create the store (it allocates the whole file with fallocate); for a shared extent copy the file with cp --reflink=never", true
	case errors.As(err, &frag):
		return exitInvalidData, "free space on the filesystem and re-create the store, or use --backend loop", true
	case errors.As(err, &misaligned):
		return exitInvalidData, "re-create the store with snapctl, or use a chunk size that is a multiple of the filesystem block size", true
	case errors.As(err, &mismatch):
		return exitInvalidData, "", true
	case errors.As(err, &size):
		return exitUsage, "give a positive --size that is a multiple of the chunk size, e.g. --size 64M", true
	case errors.As(err, &exists):
		return exitRefused, "choose another --store path, or remove the file if no volume uses it (check with `snapctl status`)", true
	case errors.As(err, &noSpace):
		return exitRefused, "free space on the store's filesystem or choose a smaller store (snapctl cow-size computes the exact size)", true
	}
	return 0, "", false
}
