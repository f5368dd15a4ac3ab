package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/snapshot"
)

func init() {
	register(newCowSizeCmd)
	registerClassifier(classifyCowSize)
}

// cowSizeProgressMin is the input size from which an image diff reports
// progress on stderr.
const cowSizeProgressMin = 64 << 20

// cowSizeResult is the --json output of cow-size.
type cowSizeResult struct {
	schema
	ChunkSize      uint32 `json:"chunk_size"`
	ChunkSectors   uint32 `json:"chunk_sectors"`
	ChangedChunks  uint64 `json:"changed_chunks"`
	MetadataChunks uint64 `json:"metadata_chunks"`
	TotalChunks    uint64 `json:"total_chunks"`
	Bytes          uint64 `json:"bytes"`
	// Only with --margin: the store with headroom, in bytes (whole chunks),
	// and how many changed chunks that store holds.
	MarginPercent    *uint64 `json:"margin_percent,omitempty"`
	BytesWithMargin  *uint64 `json:"bytes_with_margin,omitempty"`
	ChunksWithMargin *uint64 `json:"changed_chunks_with_margin,omitempty"`
	// Only with --skip-free: the seeds the filesystem's free map gives.
	Seeds *snapshot.SeedReport `json:"seeds,omitempty"`
}

func newCowSizeCmd(a *app) *cobra.Command {
	var (
		chunkFlag, changes, oldImg, newImg, marginFlag string
		skipFree, seedMemory                           string
		chunks                                         uint64
	)
	cmd := &cobra.Command{
		Use:   "cow-size (--chunks N | --changes FILE | --old A --new B | --skip-free MOUNTPOINT)",
		Short: "Compute the exact exception-store size for a change set",
		Long: `cow-size computes the exact size of the persistent exception store (COW)
a snapshot needs to hold a change set, so an update never overflows it.

A change set is given in one of three ways:
  --chunks N         N distinct chunks will be written
  --changes FILE     byte ranges the update writes, one "OFFSET LENGTH" per
                     line, bytes with an optional K/M/G/T suffix (1K = 1024);
                     '#' starts a comment; overlaps and any order are fine;
                     zero lengths touch nothing; FILE "-" reads stdin
  --old A --new B    the device's current image A and the new image B (files
                     or block devices) compared chunk by chunk; B may be
                     longer than A (every chunk past A's end counts), not
                     shorter
  --skip-free MNT    a checkpoint seeded with the free chunks of the
                     filesystem mounted at MNT (prepare --skip-free): its
                     free map is read without freezing it, and the store
                     holds the seeds' metadata and room for every chunk not
                     seeded, so it cannot fill; it reports the seeds and the
                     kernel memory they take (--seed-memory caps it)

A store for N changed chunks of C bytes takes N + 2 + floor(N/E) chunks:
a header, one exception area per E = C/16 exceptions (plus the next area
the kernel prepares as soon as one fills), and the data. --margin adds
headroom, rounded up to whole chunks.`,
		Example: `  snapctl cow-size --chunks 1000
  snapctl cow-size --changes plan.txt --chunk-size 64K --margin 10
  snapctl cow-size --old /dev/vg/system --new system-v2.img --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			usage := func(err error) error { return newUsageError(cmd.CommandPath(), err) }
			chunk, err := cowSizeParseChunk(chunkFlag)
			if err != nil {
				return usage(err)
			}
			fl := cmd.Flags()
			modes := 0
			for _, name := range []string{"chunks", "changes", "old", "skip-free"} {
				if fl.Changed(name) {
					modes++
				}
			}
			if fl.Changed("old") != fl.Changed("new") {
				return usage(errors.New("--old and --new go together: give both images"))
			}
			if modes != 1 {
				return usage(errors.New("give exactly one change set: --chunks N, --changes FILE, --old A --new B, or --skip-free MOUNTPOINT"))
			}
			var seedMem uint64
			if fl.Changed("seed-memory") {
				if !fl.Changed("skip-free") {
					return usage(errors.New("--seed-memory goes with --skip-free"))
				}
				if seedMem, err = cowsize.ParseBytes(seedMemory); err != nil || seedMem == 0 {
					return usage(fmt.Errorf("--seed-memory %q: want a size like 8M", seedMemory))
				}
			}
			var margin uint64
			if fl.Changed("margin") {
				if margin, err = cowSizeParseMargin(marginFlag); err != nil {
					return usage(err)
				}
			}

			var (
				size  cowsize.Size
				seeds *snapshot.SeedReport
			)
			switch {
			case fl.Changed("skip-free"):
				if seeds, size, err = snapshot.SeedEstimate(skipFree, chunk/512, seedMem); err != nil {
					return err
				}
			case fl.Changed("chunks"):
				if size, err = cowsize.ForChunks(chunks, chunk); err != nil {
					return usage(fmt.Errorf("--chunks %d: %w", chunks, err))
				}
			case fl.Changed("changes"):
				if size, err = cowSizeFromChanges(cmd, changes, chunk); err != nil {
					return err
				}
			default:
				p := &cowSizeProgress{w: a.progressOut()}
				p.tty = cowSizeIsTerminal(p.w)
				size, err = cowsize.ForImages(cmd.Context(), oldImg, newImg, chunk, p.update)
				p.finish()
				if err != nil {
					return err
				}
			}

			res := cowSizeResult{
				ChunkSize: size.ChunkSize, ChunkSectors: size.ChunkSectors(),
				ChangedChunks: size.ChangedChunks, MetadataChunks: size.MetadataChunks,
				TotalChunks: size.TotalChunks, Bytes: size.Bytes, Seeds: seeds,
			}
			if fl.Changed("margin") {
				withMargin, err := size.WithMargin(margin)
				if err != nil {
					return usage(fmt.Errorf("--margin %d: %w", margin, err))
				}
				holds, err := cowsize.Capacity(withMargin, chunk)
				if err != nil {
					return fmt.Errorf("compute capacity of %d bytes: %w", withMargin, err)
				}
				res.MarginPercent, res.BytesWithMargin, res.ChunksWithMargin = &margin, &withMargin, &holds
			}
			if a.json {
				return a.printDoc(&res)
			}
			a.printf("chunk size:       %s (%d sectors)\n", cowSizeHuman(uint64(res.ChunkSize)), res.ChunkSectors)
			if sd := res.Seeds; sd != nil {
				a.printf("seeds:            %d of %d free chunks of %s (%s), in %d exception areas\n", sd.Seeds, sd.FreeChunks, sd.Mountpoint, sd.FSType, sd.Areas)
				a.printf("kernel memory:    %d bytes (%d exceptions)\n", sd.KernelBytes, sd.Objects)
				a.printf("origin chunks:    %d, %d not seeded\n", sd.OriginChunks, sd.UnseededRoom)
			}
			a.printf("changed chunks:   %d\n", res.ChangedChunks)
			a.printf("metadata chunks:  %d (header + %s of %d entries)\n",
				res.MetadataChunks, plural(int64(size.Areas()), "exception area"), cowsize.ExceptionsPerArea(chunk))
			a.printf("total chunks:     %d\n", res.TotalChunks)
			a.printf("store size:       %d bytes (%s)\n", res.Bytes, cowSizeHuman(res.Bytes))
			if res.MarginPercent != nil {
				a.printf("with %d%% margin:  %d bytes (%s), rounded up to whole chunks; holds %d changed chunks\n",
					margin, *res.BytesWithMargin, cowSizeHuman(*res.BytesWithMargin), *res.ChunksWithMargin)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&chunkFlag, "chunk-size", "4K", "chunk size: a power of two from 4K to 512K, or bytes")
	f.Uint64Var(&chunks, "chunks", 0, "number of distinct chunks the update writes")
	f.StringVar(&changes, "changes", "", `file of "OFFSET LENGTH" byte ranges the update writes ("-" for stdin)`)
	f.StringVar(&oldImg, "old", "", "current image of the device (file or block device)")
	f.StringVar(&newImg, "new", "", "new image (file or block device), at least as long as --old")
	f.StringVar(&marginFlag, "margin", "", "add PCT percent headroom (whole number, e.g. 10 or 10%)")
	f.StringVar(&skipFree, "skip-free", "", "size a checkpoint seeded with the free chunks of the filesystem mounted here")
	f.StringVar(&seedMemory, "seed-memory", "", "with --skip-free: the kernel memory the seeds may take, e.g. 8M")
	return cmd
}

func cowSizeParseChunk(s string) (uint32, error) {
	v, err := cowsize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("--chunk-size: %w", err)
	}
	if err := cowsize.CheckChunk(v); err != nil {
		return 0, fmt.Errorf("--chunk-size %s: %w", s, err)
	}
	return uint32(v), nil
}

func cowSizeParseMargin(s string) (uint64, error) {
	v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(s), "%"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("--margin %q: want a whole percentage such as 10", s)
	}
	return v, nil
}

func cowSizeFromChanges(cmd *cobra.Command, path string, chunk uint32) (cowsize.Size, error) {
	var r io.Reader = cmd.InOrStdin()
	name := "stdin"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return cowsize.Size{}, fmt.Errorf("open changes file: %w", err)
		}
		defer f.Close()
		r, name = f, path
	}
	size, err := cowsize.ForRanges(r, chunk)
	if err != nil {
		return cowsize.Size{}, fmt.Errorf("read changes %q: %w", name, err)
	}
	return size, nil
}

// cowSizeProgress draws image-diff progress: on a terminal one line
// rewritten in place, elsewhere a plain line every 5%.
type cowSizeProgress struct {
	w     io.Writer
	tty   bool
	shown int // last percentage shown, -1 before the first
	drawn bool
}

func (p *cowSizeProgress) update(done, total int64) {
	if total <= cowSizeProgressMin {
		return
	}
	pct := int(done / (total / 100))
	pct = min(pct, 100)
	step := 5
	if p.tty {
		step = 1
	}
	if p.drawn && pct/step == p.shown/step {
		return
	}
	p.shown, p.drawn = pct, true
	line := fmt.Sprintf("comparing images: %3d%% (%s of %s)", pct, cowSizeHuman(uint64(done)), cowSizeHuman(uint64(total)))
	if p.tty {
		fmt.Fprintf(p.w, "\r%s\x1b[K", line)
		return
	}
	fmt.Fprintln(p.w, line)
}

func (p *cowSizeProgress) finish() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func cowSizeIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// cowSizeHuman formats a byte count with a binary unit.
func cowSizeHuman(b uint64) string {
	const units = "KMGTPE"
	if b < 1024 {
		return fmt.Sprintf("%d B", b)
	}
	v, i := float64(b)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v == float64(uint64(v)) {
		return fmt.Sprintf("%d %ciB", uint64(v), units[i])
	}
	return fmt.Sprintf("%.2f %ciB", v, units[i])
}

// classifyCowSize maps cowsize errors to exit codes and hints.
func classifyCowSize(err error) (int, string, bool) {
	var line cowsize.RangeLineError
	var shorter cowsize.NewShorterError
	var below cowsize.ChunkBelowBlockError
	switch {
	case errors.As(err, &line):
		return exitInvalidData, fmt.Sprintf(`fix line %d of the changes file: each line is "OFFSET LENGTH" in bytes, `+
			`with an optional K, M, G or T suffix (1K = 1024); '#' starts a comment`, line.Line), true
	case errors.As(err, &shorter):
		return exitInvalidData, fmt.Sprintf("if the images are swapped, run: snapctl cow-size --old %s --new %s",
			shorter.New, shorter.Old), true
	case errors.As(err, &below):
		return exitRefused, fmt.Sprintf("use --chunk-size %d or larger for %s", below.BlockBytes, below.Device), true
	case errors.As(err, new(cowsize.ChunkSizeError)):
		return exitUsage, "use --chunk-size 4K (the default) or another power of two up to 512K", true
	case errors.As(err, new(cowsize.TooLargeError)):
		return exitInvalidData, "", true
	case errors.As(err, new(cowsize.StoreTooSmallError)):
		return exitRefused, "give a larger --size: `snapctl cow-size --chunks N` computes the size that holds N chunks", true
	}
	return 0, "", false
}
