package snapshot

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/freespace"
	"github.com/snapctl/snapctl/merge"
)

// A seeded store's NAME-cow: the header and each seeded area's metadata
// chunk from the file, each area's data slots as zeros, then the rest of
// the file; a file in two extents is cut where the layout needs it.
func TestCowTableSeeded(t *testing.T) {
	s := &Store{ChunkSectors: 8, Seeded: &SeedInfo{Mountpoint: "/m", Areas: 2, Seeds: 512},
		Segments: []Segment{{Dev: "8:1", Offset: 1000, Length: 16}, {Dev: "8:2", Offset: 0, Length: 80}}}
	tb, err := cowTable(s)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"0 16 linear 8:1 1000", // header and area 0's metadata, adjacent in the file
		"16 2048 zero",         // area 0's slots
		"2064 8 linear 8:2 0",  // area 1's metadata
		"2072 2048 zero",       // area 1's slots
		"4120 72 linear 8:2 8", // the ordinary store from area 2 on
	}, "\n") + "\n"
	if got := tb.String(); got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}
	if tb.Sectors() != s.Sectors()+512*8 {
		t.Fatalf("NAME-cow is %d sectors, want the file's %d plus the seeds' %d", tb.Sectors(), s.Sectors(), 512*8)
	}
	// The same record gives the same table, every time.
	again, _ := cowTable(s)
	if again.String() != want {
		t.Fatal("a second build differs")
	}
	// A file too short for its seeded areas is refused.
	s.Segments = []Segment{{Dev: "8:1", Offset: 0, Length: 16}}
	if _, err := cowTable(s); err == nil {
		t.Fatal("a file of 2 chunks for 2 seeded areas was accepted")
	}
}

// The kernel counts the seeds' slots as allocated; status leaves them out.
func TestRealUsage(t *testing.T) {
	s := &Store{ChunkSectors: 8, Seeded: &SeedInfo{Mountpoint: "/m", Areas: 2, Seeds: 512}}
	// File of 100 chunks; the kernel sees 612; it allocated the header, 3
	// metadata areas, the 512 seeds and 10 real chunks.
	u := &Usage{AllocatedSectors: (1 + 3 + 512 + 10) * 8, TotalSectors: 612 * 8, MetadataSectors: 4 * 8, DataChunks: 522}
	realUsage(u, s)
	if u.SeededChunks != 512 || u.DataChunks != 10 || u.TotalSectors != 800 || u.AllocatedSectors != 14*8 {
		t.Fatalf("usage %+v", *u)
	}
	if u.PercentFull != 14.0 {
		t.Fatalf("percent %v, want 14", u.PercentFull)
	}
	// 98 chunks of an ordinary store (header, one area) hold 96 data
	// chunks; 10 are used.
	if u.ChunksLeft != 86 {
		t.Fatalf("chunks left %d, want 86", u.ChunksLeft)
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := unescapeMount(`/mnt/a\040b\134c`); got != `/mnt/a b\c` {
		t.Fatalf("got %q", got)
	}
}

// fakeFreezer is the filesystem side of seeding in the model: free maps
// handed out in turn (the last one repeats), and a log of what was done.
type fakeFreezer struct {
	maps     [][]freespace.Extent
	frozen   bool
	calls    []string
	writeErr error
	plan     merge.SeedPlan
}

func (f *fakeFreezer) mountOf(dev string) (string, string, error) { return "/mnt", "ext4", nil }
func (f *fakeFreezer) free(string) ([]freespace.Extent, error) {
	m := f.maps[0]
	if len(f.maps) > 1 {
		f.maps = f.maps[1:]
	}
	f.calls = append(f.calls, fmt.Sprintf("free (frozen %v)", f.frozen))
	return m, nil
}
func (f *fakeFreezer) freeze(string) error {
	if f.frozen {
		return syscall.EBUSY
	}
	f.frozen = true
	f.calls = append(f.calls, "freeze")
	return nil
}
func (f *fakeFreezer) thaw(string) error {
	if !f.frozen {
		return syscall.EINVAL
	}
	f.frozen = false
	f.calls = append(f.calls, "thaw")
	return nil
}
func (f *fakeFreezer) writeSeeded(_ context.Context, _ []Segment, p merge.SeedPlan) error {
	f.calls = append(f.calls, fmt.Sprintf("write %d areas (frozen %v)", p.Areas, f.frozen))
	f.plan = p
	return f.writeErr
}

func freeChunks(n int64) []freespace.Extent {
	return []freespace.Extent{{Offset: 1 << 20, Length: n * 4096}}
}

// Under the freeze the filesystem has fewer free chunks than when the
// store was sized: prepare thaws, grows the store to the exact need and
// tries once more; the snapshot is taken frozen (NAME suspended without
// lockfs) and the filesystem thawed after it.
func TestPrepareSkipFreeRegrow(t *testing.T) {
	m, k, dir := newModelManager(t)
	fz := &fakeFreezer{maps: [][]freespace.Extent{freeChunks(8192), freeChunks(4096)}}
	m.fz = fz
	if err := m.Attach(t.Context(), "vol", modelOrigin.Path); err != nil {
		t.Fatal(err)
	}
	plan, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", StorePath: filepath.Join(dir, "store"), SkipFree: true})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"free (frozen false)", "freeze", "free (frozen true)", "thaw", "freeze", "free (frozen true)", "write 16 areas (frozen true)", "thaw"}
	if !slices.Equal(fz.calls, want) {
		t.Fatalf("freezer calls %q, want %q", fz.calls, want)
	}
	rec, err := readRecord(m.Dir, "vol")
	if err != nil {
		t.Fatal(err)
	}
	// 16384 origin chunks, 4096 seeded: room for 12288 more, plus the
	// margin of one area.
	need, _ := cowsize.Seeded(16, 16384-4096, 4096)
	if rec.Phase != PhasePrepared || rec.Store.Seeded.Areas != 16 || rec.Store.Seeded.Seeds != 4096 || rec.Store.Bytes != need.Bytes+256*4096 || plan.StoreBytes != rec.Store.Bytes {
		t.Fatalf("record %+v seeded %+v, plan %d bytes; want prepared, 16 areas, %d bytes", rec, rec.Store.Seeded, plan.StoreBytes, need.Bytes+256*4096)
	}
	if !slices.Contains(k.calls, "suspend vol (skip lockfs)") {
		t.Fatalf("NAME not suspended without lockfs: %q", k.calls)
	}
}

// A failure under the freeze thaws the filesystem and undoes the prepare.
func TestPrepareSkipFreeThawsOnError(t *testing.T) {
	m, _, dir := newModelManager(t)
	fz := &fakeFreezer{maps: [][]freespace.Extent{freeChunks(8192)}, writeErr: errors.New("write failed")}
	m.fz = fz
	if err := m.Attach(t.Context(), "vol", modelOrigin.Path); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", StorePath: filepath.Join(dir, "store"), SkipFree: true}); err == nil || !strings.Contains(err.Error(), "write failed") {
		t.Fatalf("prepare: %v, want the write's error", err)
	}
	if fz.frozen {
		t.Fatalf("left frozen: %q", fz.calls)
	}
	if rec, _ := readRecord(m.Dir, "vol"); rec.Phase != PhaseAttached || rec.Store != nil {
		t.Fatalf("after the failure: %+v", rec)
	}
}

// Update mode is refused before anything is touched.
func TestPrepareSkipFreeUpdateRefused(t *testing.T) {
	m, _, dir := newModelManager(t)
	m.fz = &fakeFreezer{maps: [][]freespace.Extent{freeChunks(8192)}}
	if err := m.Attach(t.Context(), "vol", modelOrigin.Path); err != nil {
		t.Fatal(err)
	}
	_, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", StorePath: filepath.Join(dir, "store"), Mode: Update, Bytes: 1 << 20, SkipFree: true})
	var r *RefusedError
	if !errors.As(err, &r) || r.Kind != RefusedSkipFreeUpdate {
		t.Fatalf("prepare --skip-free in update mode: %v, want RefusedSkipFreeUpdate", err)
	}
}

// orderFreezer is a fakeFreezer whose thaw is logged in the kernel
// model's call list, to check its place among the device-mapper calls.
type orderFreezer struct {
	*fakeFreezer
	k *modelKernel
}

func (f orderFreezer) thaw(mnt string) error {
	err := f.fakeFreezer.thaw(mnt)
	if err == nil {
		f.k.calls = append(f.k.calls, "thaw")
	}
	return err
}

// A prepare killed while it held the filesystem frozen: activate thaws it
// before anything could wait on it. With NAME running (killed before the
// suspend, or after the resume), the thaw comes before NAME is suspended
// again (a plain suspend of a frozen filesystem's device fails); with NAME
// suspended (killed between the suspend and the resume), after NAME is
// resumed (the thaw writes through NAME).
func TestActivateThawsKilledSkipFree(t *testing.T) {
	for _, suspended := range []bool{false, true} {
		t.Run(fmt.Sprintf("suspended=%v", suspended), func(t *testing.T) {
			m, k, dir := newModelManager(t)
			fz := &fakeFreezer{maps: [][]freespace.Extent{freeChunks(8192)}}
			m.fz = orderFreezer{fz, k}
			if err := m.Attach(t.Context(), "vol", modelOrigin.Path); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Prepare(t.Context(), PrepareOptions{Name: "vol", StorePath: filepath.Join(dir, "store"), SkipFree: true}); err != nil {
				t.Fatal(err)
			}
			// The state a kill under the freeze leaves.
			rec, err := readRecord(m.Dir, "vol")
			if err != nil {
				t.Fatal(err)
			}
			rec.Phase, rec.Step, rec.Command = PhasePreparing, "prepare:thaw", "snapctl prepare"
			if err := writeRecord(m.Dir, rec); err != nil {
				t.Fatal(err)
			}
			fz.frozen = true
			if suspended {
				if err := k.suspend("vol"); err != nil {
					t.Fatal(err)
				}
			}
			k.calls = nil
			if err := m.Activate(t.Context(), ActivateOptions{}, "vol"); err != nil {
				t.Fatal(err)
			}
			if fz.frozen {
				t.Fatalf("still frozen after activate; calls %q", k.calls)
			}
			thaw := slices.Index(k.calls, "thaw")
			if suspended {
				if r := slices.Index(k.calls, "resume vol"); r < 0 || thaw < r {
					t.Fatalf("thawed before NAME was resumed: %q", k.calls)
				}
			} else if s := slices.Index(k.calls, "suspend vol"); thaw < 0 || (s >= 0 && s < thaw) {
				t.Fatalf("NAME suspended before the thaw: %q", k.calls)
			}
			if rec, _ := readRecord(m.Dir, "vol"); rec.Phase != PhaseAttached {
				t.Fatalf("after activate: phase %s", rec.Phase)
			}
		})
	}
}
