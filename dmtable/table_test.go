package dmtable

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	lin := func(start, length uint64) Target { return Linear(start, length, "/dev/sda", 0) }
	tests := []struct {
		name    string
		table   Table
		wantErr string // substring; "" means valid
	}{
		{"one linear", Table{lin(0, 8)}, ""},
		{"contiguous", Table{lin(0, 8), lin(8, 16), lin(24, 1)}, ""},
		{"empty", Table{}, "empty"},
		{"zero length", Table{lin(0, 0)}, "length 0"},
		{"not from 0", Table{lin(8, 8)}, "gap in table: sectors 0-7"},
		{"gap", Table{lin(0, 8), lin(16, 8)}, "gap in table: sectors 8-15"},
		{"overlap", Table{lin(0, 8), lin(4, 8)}, "overlap"},
		{"overflow", Table{lin(0, 8), {Start: 8, Length: ^uint64(0), Type: "zero"}}, "overflows"},
		{"no type", Table{{Start: 0, Length: 8}}, "invalid type"},
		{"space in type", Table{{Start: 0, Length: 8, Type: "a b"}}, "invalid type"},
		{"long type", Table{{Start: 0, Length: 8, Type: "abcdefghijklmnop"}}, "longer than 15"},
		{"15-byte type", Table{{Start: 0, Length: 8, Type: "abcdefghijklmno"}}, ""},
		{"newline in params", Table{{Start: 0, Length: 8, Type: "zero", Params: "a\nb"}}, "newline"},
		{"linear bad params", Table{{Start: 0, Length: 8, Type: TypeLinear, Params: "/dev/sda"}}, "want \"device offset\""},
		{"linear relative dev", Table{{Start: 0, Length: 8, Type: TypeLinear, Params: "sda 0"}}, "not a path or major:minor"},
		{"linear devnum", Table{{Start: 0, Length: 8, Type: TypeLinear, Params: "8:0 2048"}}, ""},
		{"origin", Table{SnapshotOrigin(0, 8, "/dev/mapper/v-real")}, ""},
		{"origin two args", Table{{Start: 0, Length: 8, Type: TypeSnapshotOrigin, Params: "a b"}}, "want \"origin\""},
		{"snapshot", Table{Snapshot(0, 8, SnapshotParams{Origin: "8:0", COW: "8:16", Store: Persistent, Chunk: 8})}, ""},
		{"snapshot chunk 3", Table{Snapshot(0, 8, SnapshotParams{Origin: "8:0", COW: "8:16", Store: Persistent, Chunk: 3})}, "power of two"},
		{"merge transient", Table{SnapshotMerge(0, 8, SnapshotParams{Origin: "8:0", COW: "8:16", Store: Transient, Chunk: 8})}, "persistent"},
		{"zero", Table{lin(0, 8), Zero(8, 2048), lin(2056, 8)}, ""},
		{"zero with params", Table{{Start: 0, Length: 8, Type: TypeZero, Params: "x"}}, "no parameters"},
		{"unknown type passes", Table{{Start: 0, Length: 8, Type: "flakey", Params: "anything at all"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.table.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
			var it InvalidTableError
			if !errors.As(err, &it) {
				t.Fatalf("got %T, want InvalidTableError", err)
			}
		})
	}
}

func TestParseTable(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Table
		wantErr bool
	}{
		{"empty", "", nil, false},
		{"blank lines", "\n  \n0 8 linear 8:0 0\n\n", Table{{0, 8, "linear", "8:0 0"}}, false},
		{"no params", "0 8 zero", Table{{0, 8, "zero", ""}}, false},
		{"collapses spaces", "0  8\tlinear   /dev/sda    2048", Table{{0, 8, "linear", "/dev/sda 2048"}}, false},
		{"two lines", "0 8 linear 8:0 0\n8 8 linear 8:0 100\n", Table{{0, 8, "linear", "8:0 0"}, {8, 8, "linear", "8:0 100"}}, false},
		{"short", "0 8", nil, true},
		{"bad start", "x 8 linear 8:0 0", nil, true},
		{"negative length", "0 -8 linear 8:0 0", nil, true},
		{"length too big", "0 18446744073709551616 linear 8:0 0", nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTable(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestParseDevNum(t *testing.T) {
	tests := []struct {
		in           string
		major, minor uint32
		wantErr      bool
	}{
		{"8:0", 8, 0, false},
		{"254:1048575", 254, 1048575, false},
		{"8", 0, 0, true},
		{"8:x", 0, 0, true},
		{":1", 0, 0, true},
		{"4294967296:0", 0, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ma, mi, err := ParseDevNum(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if ma != tt.major || mi != tt.minor {
				t.Fatalf("got %d:%d, want %d:%d", ma, mi, tt.major, tt.minor)
			}
		})
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"data", true},
		{"data-cow", true},
		{strings.Repeat("n", 127), true},
		{strings.Repeat("n", 128), false},
		{"", false},
		{"a/b", false},
		{"a\x00b", false},
		{".", false},
		{"..", false},
		{"...", true},
		{"control", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateName(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("got %v, want ok=%v", err, tt.ok)
			}
			var e InvalidNameError
			if err != nil && !errors.As(err, &e) {
				t.Fatalf("got %T, want InvalidNameError", err)
			}
		})
	}
}

func FuzzParseTable(f *testing.F) {
	for _, s := range []string{
		"0 8 linear 8:0 0\n8 16 linear /dev/sdb 2048\n",
		"0 2097152 snapshot-origin 254:1\n",
		"0 2097152 snapshot 254:1 254:2 PO 8\n",
		"0 2097152 snapshot 254:1 254:2 P 8 2 discard_zeroes_cow discard_passdown_origin\n",
		"0 2097152 snapshot-merge 254:1 254:2 P 8",
		"\n\n 0  1 zero \n",
		"18446744073709551615 1 error",
		"0 8",
		"0 8 \u00a0x y",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tbl, err := ParseTable(s)
		if err != nil {
			return
		}
		// The rendered form parses back to the same table.
		again, err := ParseTable(tbl.String())
		if err != nil {
			t.Fatalf("re-parse of %q: %v", tbl.String(), err)
		}
		if len(tbl) == 0 && len(again) == 0 {
			return
		}
		if !reflect.DeepEqual(again, tbl) {
			t.Fatalf("round trip: got %#v, want %#v", again, tbl)
		}
		// Validate never panics and the typed params parsers agree with it.
		_ = tbl.Validate()
		for _, tg := range tbl {
			_ = checkParams(tg)
		}
	})
}
