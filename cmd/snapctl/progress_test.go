package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestProgressLines checks the plain (non-terminal) progress lines: one at
// 0 %, one per further 10 % step reached, sizes in a unit that shows them.
func TestProgressLines(t *testing.T) {
	speed := regexp.MustCompile(`, [0-9.]+ MB/s\)$`)
	for _, tc := range []struct {
		name   string
		total  int64
		doneAt []int64
		want   []string
	}{
		{
			name: "MiB, a line per step reached", total: 100 << 20,
			doneAt: []int64{0, 5 << 20, 10 << 20, 55 << 20, 100 << 20},
			want:   []string{"m: 0% (0 of 100 MiB)", "m: 10% (10 of 100 MiB)", "m: 55% (55 of 100 MiB)", "m: 100% (100 of 100 MiB)"},
		},
		{
			name: "400 KiB merge", total: 400 << 10,
			doneAt: []int64{0, 400 << 10},
			want:   []string{"m: 0% (0 of 400 KiB)", "m: 100% (400 of 400 KiB)"},
		},
		{
			name: "just under 10 MiB", total: 10<<20 - 1,
			doneAt: []int64{10<<20 - 1},
			want:   []string{"m: 100% (10239 of 10239 KiB)"},
		},
		{
			name: "bytes", total: 4096,
			doneAt: []int64{4096},
			want:   []string{"m: 100% (4096 of 4096 bytes)"},
		},
		{
			name: "out of range and backwards", total: 1000,
			doneAt: []int64{-5, 600, 300, 2000, 1000},
			want:   []string{"m: 0% (0 of 1000 bytes)", "m: 60% (600 of 1000 bytes)", "m: 100% (1000 of 1000 bytes)"},
		},
		{name: "no total", total: 0, doneAt: []int64{0, 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			p := newProgress(&b, "m")
			for _, d := range tc.doneAt {
				p.update(d, tc.total)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
				if l == "" {
					continue
				}
				if !speed.MatchString(l) {
					t.Errorf("line %q: want it to end with the speed in MB/s", l)
				}
				got = append(got, speed.ReplaceAllString(l, ")"))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("lines (-want +got):\n%s", diff)
			}
		})
	}
}
