package dmtable

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

func TestSnapshotParamsRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		params string
		want   SnapshotParams
		merge  bool
	}{
		{"persistent", "/dev/mapper/v-real /dev/mapper/v-cow P 8", SnapshotParams{Origin: "/dev/mapper/v-real", COW: "/dev/mapper/v-cow", Store: Persistent, Chunk: 8}, false},
		{"overflow", "254:1 254:2 PO 16", SnapshotParams{Origin: "254:1", COW: "254:2", Store: PersistentOverflow, Chunk: 16}, false},
		{"transient", "254:1 254:2 N 1", SnapshotParams{Origin: "254:1", COW: "254:2", Store: Transient, Chunk: 1}, false},
		{"features", "254:1 254:2 P 8 2 discard_zeroes_cow discard_passdown_origin", SnapshotParams{Origin: "254:1", COW: "254:2", Store: Persistent, Chunk: 8, Features: []string{"discard_zeroes_cow", "discard_passdown_origin"}}, false},
		{"merge", "254:1 254:2 P 8", SnapshotParams{Origin: "254:1", COW: "254:2", Store: Persistent, Chunk: 8}, true},
		{"merge overflow", "254:1 254:2 PO 8", SnapshotParams{Origin: "254:1", COW: "254:2", Store: PersistentOverflow, Chunk: 8}, true},
		{"max chunk", "8:0 8:16 P 2097152", SnapshotParams{Origin: "8:0", COW: "8:16", Store: Persistent, Chunk: MaxChunkSectors}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parse, build := ParseSnapshot, Snapshot
			if tt.merge {
				parse, build = ParseSnapshotMerge, SnapshotMerge
			}
			got, err := parse(tt.params)
			if err != nil {
				t.Fatalf("parse %q: %v", tt.params, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
			tg := build(0, 100, got)
			if tg.Params != tt.params {
				t.Fatalf("rendered %q, want %q", tg.Params, tt.params)
			}
			if err := (Table{tg}).Validate(); err != nil {
				t.Fatalf("built target does not validate: %v", err)
			}
		})
	}
}

func TestParseSnapshotErrors(t *testing.T) {
	tests := []struct {
		name, params string
		merge        bool
		want         string
	}{
		{"too few", "8:0 8:16 P", false, "want"},
		{"bad store", "8:0 8:16 X 8", false, "want P, PO or N"},
		{"chunk not number", "8:0 8:16 P x", false, "chunk size"},
		{"chunk zero", "8:0 8:16 P 0", false, "power of two"},
		{"chunk not power", "8:0 8:16 P 12", false, "power of two"},
		{"chunk too big", "8:0 8:16 P 4194304", false, "power of two"},
		{"same device", "8:0 8:0 P 8", false, "same device"},
		{"relative origin", "sda 8:16 P 8", false, "origin"},
		{"relative cow", "8:0 sdb P 8", false, "COW"},
		{"feature count short", "8:0 8:16 P 8 2 discard_zeroes_cow", false, "feature count 2"},
		{"feature count bad", "8:0 8:16 P 8 x", false, "feature count"},
		{"merge transient", "8:0 8:16 N 8", true, "persistent"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parse := ParseSnapshot
			if tt.merge {
				parse = ParseSnapshotMerge
			}
			_, err := parse(tt.params)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestParseStore(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want Store
	}{{"P", Persistent}, {"p", Persistent}, {"PO", PersistentOverflow}, {"po", PersistentOverflow}, {"N", Transient}, {"n", Transient}} {
		got, err := ParseStore(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseStore(%q): got %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "PN", "O", "NP", "persistent"} {
		if _, err := ParseStore(in); err == nil {
			t.Errorf("ParseStore(%q): got no error, want one", in)
		}
	}
	if got := Store(7).String(); got != "Store(7)" {
		t.Errorf("got %q, want Store(7)", got)
	}
}

func TestParseSnapshotOrigin(t *testing.T) {
	p, err := ParseSnapshotOrigin("254:3")
	if err != nil || p.Origin != "254:3" {
		t.Fatalf("got %v, %v, want 254:3", p, err)
	}
	for _, bad := range []string{"", "a b", "sda", "8:x"} {
		if _, err := ParseSnapshotOrigin(bad); err == nil {
			t.Errorf("ParseSnapshotOrigin(%q): got no error, want one", bad)
		}
	}
}

// goldenTables are the tables snapctl's device stacks are made of, in the
// forms snapctl loads (paths) and the kernel reports (major:minor).
func goldenTables() map[string]Table {
	const size = 2097152 // 1 GiB
	p := SnapshotParams{Origin: "/dev/mapper/data-real", COW: "/dev/mapper/data-cow", Store: Persistent, Chunk: 8}
	po := SnapshotParams{Origin: "/dev/mapper/data-base", COW: "/dev/mapper/data-cow", Store: PersistentOverflow, Chunk: 8}
	return map[string]Table{
		"checkpoint-origin":  {SnapshotOrigin(0, size, "/dev/mapper/data-real")},
		"checkpoint-real":    {Linear(0, size, "/dev/vdb", 0)},
		"checkpoint-snap":    {Snapshot(0, size, p)},
		"checkpoint-merge":   {SnapshotMerge(0, size, p)},
		"update-snap":        {Snapshot(0, size, po)},
		"update-merge":       {SnapshotMerge(0, size, po)},
		"cow-segments":       {Linear(0, 2048, "/dev/vda", 1050624), Linear(2048, 8, "/dev/vda", 77824), Linear(2056, 65536, "/dev/vdc", 8)},
		"kernel-snap":        {Snapshot(0, size, SnapshotParams{Origin: "254:1", COW: "254:2", Store: PersistentOverflow, Chunk: 16})},
		"kernel-features":    {Snapshot(0, size, SnapshotParams{Origin: "254:1", COW: "254:2", Store: Persistent, Chunk: 8, Features: []string{"discard_zeroes_cow", "discard_passdown_origin"}})},
		"kernel-transient":   {Snapshot(0, size, SnapshotParams{Origin: "254:1", COW: "254:2", Store: Transient, Chunk: 32})},
		"kernel-mixed-types": {Linear(0, 8, "8:0", 0), {Start: 8, Length: 8, Type: "zero"}, {Start: 16, Length: 8, Type: "error"}},
	}
}

func TestGoldenTables(t *testing.T) {
	for name, tbl := range goldenTables() {
		t.Run(name, func(t *testing.T) {
			if err := tbl.Validate(); err != nil {
				t.Fatalf("golden table does not validate: %v", err)
			}
			path := filepath.Join("testdata", name+".table")
			got := tbl.String()
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./dmtable/ -run TestGoldenTables -update to create it)", err)
			}
			if got != string(want) {
				t.Fatalf("rendered table differs from %s:\ngot:\n%s\nwant:\n%s", path, got, want)
			}
			back, err := ParseTable(string(want))
			if err != nil {
				t.Fatalf("parse %s: %v", path, err)
			}
			if !reflect.DeepEqual(back, tbl) {
				t.Fatalf("parse %s: got %#v, want %#v", path, back, tbl)
			}
			// Each target's params survive their typed parser unchanged.
			for _, tg := range back {
				var s string
				switch tg.Type {
				case TypeLinear:
					p, err := ParseLinear(tg.Params)
					if err != nil {
						t.Fatal(err)
					}
					s = Linear(tg.Start, tg.Length, p.Dev, p.Offset).Params
				case TypeSnapshotOrigin:
					p, err := ParseSnapshotOrigin(tg.Params)
					if err != nil {
						t.Fatal(err)
					}
					s = p.String()
				case TypeSnapshot, TypeSnapshotMerge:
					p, err := ParseSnapshot(tg.Params)
					if err != nil {
						t.Fatal(err)
					}
					s = p.String()
				default:
					s = tg.Params
				}
				if s != tg.Params {
					t.Errorf("params %q re-rendered as %q", tg.Params, s)
				}
			}
		})
	}
}

func FuzzParseSnapshot(f *testing.F) {
	for _, s := range []string{"254:1 254:2 P 8", "/dev/a /dev/b PO 16", "8:0 8:16 N 1 1 discard_zeroes_cow", "8:0 8:16 P 8 0", "a b c d e f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseSnapshot(s)
		if err != nil {
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("parsed params do not validate: %v", err)
		}
		again, err := ParseSnapshot(p.String())
		if err != nil || !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip of %q: got %#v, %v, want %#v", p.String(), again, err, p)
		}
	})
}
