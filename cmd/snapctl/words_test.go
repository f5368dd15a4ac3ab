package main

import (
	"strings"
	"testing"
)

func TestPlural(t *testing.T) {
	tests := []struct {
		n    int64
		noun string
		want string
	}{
		{0, "log block", "0 log blocks"},
		{1, "log block", "1 log block"},
		{2, "log block", "2 log blocks"},
		{1, "entry", "1 entry"},
		{15, "entry", "15 entries"},
		{3, "key", "3 keys"},
		{1, "backup", "1 backup"},
		{39, "backup", "39 backups"},
	}
	for _, tt := range tests {
		if got := plural(tt.n, tt.noun); got != tt.want {
			t.Errorf("plural(%d, %q) = %q, want %q", tt.n, tt.noun, got, tt.want)
		}
	}
}

func TestFragmentationWarning(t *testing.T) {
	if w := fragmentationWarning("data", fragmentedExtents); w != "" {
		t.Errorf("%d extents: got warning %q, want none", fragmentedExtents, w)
	}
	w := fragmentationWarning("data", 49981)
	for _, want := range []string{"49981 extents", "data-cow", "snapctl merge data --offline"} {
		if !strings.Contains(w, want) {
			t.Errorf("warning %q does not contain %q", w, want)
		}
	}
}
