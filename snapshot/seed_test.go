package snapshot

import (
	"strings"
	"testing"
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
