package dmtable

import (
	"testing"
)

func TestParseSnapshotStatus(t *testing.T) {
	tests := []struct {
		in      string
		want    SnapshotStatus
		data    uint64
		merged  bool
		wantErr bool
	}{
		{"16/131072 16", SnapshotStatus{SnapshotActive, 16, 131072, 16}, 0, true, false},
		{"24/131072 16", SnapshotStatus{SnapshotActive, 24, 131072, 16}, 8, false, false},
		{" 2056/32768 24\n", SnapshotStatus{SnapshotActive, 2056, 32768, 24}, 2032, false, false},
		{"Invalid", SnapshotStatus{State: SnapshotInvalid}, 0, false, false},
		{"Merge failed", SnapshotStatus{State: SnapshotMergeFailed}, 0, false, false},
		{"Overflow", SnapshotStatus{State: SnapshotOverflow}, 0, false, false},
		{"Unknown", SnapshotStatus{State: SnapshotUnknown}, 0, false, false},
		{"18446744073709551615/18446744073709551615 0", SnapshotStatus{SnapshotActive, 1<<64 - 1, 1<<64 - 1, 0}, 1<<64 - 1, false, false},
		{"invalid", SnapshotStatus{}, 0, false, true},
		{"Merge  failed", SnapshotStatus{}, 0, false, true},
		{"", SnapshotStatus{}, 0, false, true},
		{"16/131072", SnapshotStatus{}, 0, false, true},
		{"16 131072 16", SnapshotStatus{}, 0, false, true},
		{"16/131072 16 1", SnapshotStatus{}, 0, false, true},
		{"-1/131072 16", SnapshotStatus{}, 0, false, true},
		{"16/x 16", SnapshotStatus{}, 0, false, true},
		{"18446744073709551616/1 1", SnapshotStatus{}, 0, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseSnapshotStatus(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			if d := got.DataSectors(); d != tt.data {
				t.Errorf("DataSectors: got %d, want %d", d, tt.data)
			}
			if m := got.Merged(); m != tt.merged {
				t.Errorf("Merged: got %v, want %v", m, tt.merged)
			}
		})
	}
}

func TestSnapshotStatusHelpers(t *testing.T) {
	s := SnapshotStatus{State: SnapshotActive, Allocated: 24, Total: 100, Metadata: 32}
	if got := s.DataSectors(); got != 0 {
		t.Errorf("DataSectors with allocated < metadata: got %d, want 0", got)
	}
	if got := s.FreeSectors(); got != 76 {
		t.Errorf("FreeSectors: got %d, want 76", got)
	}
	if got := (SnapshotStatus{State: SnapshotActive, Allocated: 200, Total: 100}).FreeSectors(); got != 0 {
		t.Errorf("FreeSectors with allocated > total: got %d, want 0", got)
	}
	var zero SnapshotStatus
	if zero.State != SnapshotUnknown || zero.Merged() {
		t.Errorf("zero status: got state %v merged %v, want unknown and not merged", zero.State, zero.Merged())
	}
	for st, want := range map[SnapshotState]string{
		SnapshotUnknown: "unknown", SnapshotActive: "active", SnapshotInvalid: "invalid",
		SnapshotMergeFailed: "merge failed", SnapshotOverflow: "overflow", SnapshotState(9): "SnapshotState(9)",
	} {
		if got := st.String(); got != want {
			t.Errorf("%d.String(): got %q, want %q", int(st), got, want)
		}
	}
}

func FuzzParseSnapshotStatus(f *testing.F) {
	for _, s := range []string{"16/131072 16", "Invalid", "Merge failed", "Overflow", "Unknown", "0/0 0", "1/2 3 4", "/ ", "99999999999999999999/1 1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st, err := ParseSnapshotStatus(s)
		if err != nil {
			if st != (SnapshotStatus{}) {
				t.Fatalf("error %v came with a non-zero status %+v", err, st)
			}
			return
		}
		again, err := ParseSnapshotStatus(st.String())
		if err != nil || again != st {
			t.Fatalf("round trip of %q via %q: got %+v, %v, want %+v", s, st.String(), again, err, st)
		}
		_ = st.DataSectors()
		_ = st.FreeSectors()
		if st.Merged() && st.DataSectors() != 0 {
			t.Fatalf("merged status %+v has %d data sectors", st, st.DataSectors())
		}
	})
}
