package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCowSize(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs(append([]string{"cow-size"}, args...))
	root.SetIn(strings.NewReader(stdin))
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func cowSizeJSON(t *testing.T, stdout string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(stdout), &m); err != nil {
		t.Fatalf("decode JSON %q: %v", stdout, err)
	}
	return m
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCowSizeHuman(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"design example", []string{"--chunks", "1000"}, `chunk size:       4 KiB (8 sectors)
changed chunks:   1000
metadata chunks:  5 (header + 4 exception areas of 256 entries)
total chunks:     1005
store size:       4116480 bytes (3.93 MiB)
`},
		{"margin", []string{"--chunks", "1000", "--margin", "10%"}, `chunk size:       4 KiB (8 sectors)
changed chunks:   1000
metadata chunks:  5 (header + 4 exception areas of 256 entries)
total chunks:     1005
store size:       4116480 bytes (3.93 MiB)
with 10% margin:  4530176 bytes (4.32 MiB), rounded up to whole chunks; holds 1100 changed chunks
`},
		{"64K chunks, nothing changed", []string{"--chunks", "0", "--chunk-size", "65536"}, `chunk size:       64 KiB (128 sectors)
changed chunks:   0
metadata chunks:  2 (header + 1 exception area of 4096 entries)
total chunks:     2
store size:       131072 bytes (128 KiB)
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := runCowSize(t, "", tt.args...)
			if err != nil {
				t.Fatalf("cow-size %v: %v", tt.args, err)
			}
			if out != tt.want {
				t.Errorf("got\n%s\nwant\n%s", out, tt.want)
			}
			if errOut != "" {
				t.Errorf("got stderr %q, want none", errOut)
			}
		})
	}
}

func TestCowSizeJSON(t *testing.T) {
	dir := t.TempDir()
	oldImg := bytes.Repeat([]byte{1}, 40<<10)
	newImg := append(bytes.Clone(oldImg), make([]byte, 100)...) // one partial tail chunk
	newImg[8192] = 9                                            // chunk 2
	oldPath, newPath := filepath.Join(dir, "old.img"), filepath.Join(dir, "new.img")
	if err := os.WriteFile(oldPath, oldImg, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(newPath, newImg, 0o600); err != nil {
		t.Fatal(err)
	}
	changes := writeTemp(t, "plan.txt", []byte("# plan\n0 1M\n512K 1M # overlaps\n\n10G 0\n"))

	tests := []struct {
		name  string
		stdin string
		args  []string
		want  map[string]float64
	}{
		{"chunks 256", "", []string{"--chunks", "256"}, map[string]float64{
			"chunk_size": 4096, "chunk_sectors": 8, "changed_chunks": 256, "metadata_chunks": 3, "total_chunks": 259, "bytes": 259 * 4096}},
		{"changes", "", []string{"--changes", changes, "--chunk-size", "512K"}, map[string]float64{
			"chunk_size": 512 << 10, "changed_chunks": 3, "metadata_chunks": 2, "total_chunks": 5, "bytes": 5 * 512 << 10}},
		{"changes from stdin", "4095 4098\n", []string{"--changes", "-"}, map[string]float64{
			"changed_chunks": 3, "total_chunks": 5}},
		{"images", "", []string{"--old", oldPath, "--new", newPath}, map[string]float64{
			"changed_chunks": 2, "total_chunks": 4, "bytes": 4 * 4096}},
		{"margin", "", []string{"--chunks", "1000", "--margin", "10"}, map[string]float64{
			"bytes": 4116480, "margin_percent": 10, "bytes_with_margin": 1106 * 4096, "changed_chunks_with_margin": 1100}},
		{"zero margin", "", []string{"--chunks", "1000", "--margin", "0"}, map[string]float64{
			"bytes": 4116480, "margin_percent": 0, "bytes_with_margin": 4116480, "changed_chunks_with_margin": 1000}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCowSize(t, tt.stdin, append(tt.args, "--json")...)
			if err != nil {
				t.Fatalf("cow-size: %v", err)
			}
			got := cowSizeJSON(t, out)
			for k, want := range tt.want {
				if v, ok := got[k].(float64); !ok || v != want {
					t.Errorf("%s: got %v, want %v", k, got[k], want)
				}
			}
			for _, k := range []string{"chunk_size", "changed_chunks", "metadata_chunks", "total_chunks", "bytes"} {
				if _, ok := got[k]; !ok {
					t.Errorf("JSON lacks %q: %s", k, out)
				}
			}
			_, hasMargin := got["bytes_with_margin"]
			if wantMargin := strings.Contains(strings.Join(tt.args, " "), "--margin"); hasMargin != wantMargin {
				t.Errorf("bytes_with_margin present = %v, want %v", hasMargin, wantMargin)
			}
		})
	}
}

func TestCowSizeErrors(t *testing.T) {
	bad := writeTemp(t, "bad.txt", []byte("0 4096\n# fine\n4096 -1\n"))
	big := writeTemp(t, "big.txt", []byte("9223372036854775807 1\n"))
	a := writeTemp(t, "a.img", make([]byte, 8192))
	b := writeTemp(t, "b.img", make([]byte, 4096))
	missing := filepath.Join(t.TempDir(), "missing.txt")
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"no change set", nil, exitUsage, []string{"exactly one"}},
		{"two change sets", []string{"--chunks", "1", "--changes", bad}, exitUsage, []string{"exactly one"}},
		{"old without new", []string{"--old", a}, exitUsage, []string{"--old and --new"}},
		{"chunk size not a power of two", []string{"--chunks", "1", "--chunk-size", "12K"}, exitUsage, []string{"12K", "power of two"}},
		{"chunk size too big", []string{"--chunks", "1", "--chunk-size", "1M"}, exitUsage, []string{"power of two"}},
		{"chunk size too small", []string{"--chunks", "1", "--chunk-size", "512"}, exitUsage, []string{"power of two"}},
		{"chunk size garbage", []string{"--chunks", "1", "--chunk-size", "big"}, exitUsage, []string{"not a number"}},
		{"chunks negative", []string{"--chunks", "-1"}, exitUsage, []string{"-1"}},
		{"chunks too many", []string{"--chunks", "18446744073709551615"}, exitUsage, []string{"exceeds 2^63-1"}},
		{"bad margin", []string{"--chunks", "1", "--margin", "lots"}, exitUsage, []string{"--margin"}},
		{"margin overflow", []string{"--chunks", "2251799813685000", "--margin", "1000"}, exitUsage, []string{"exceeds 2^63-1"}},
		{"positional argument", []string{"--chunks", "1", "extra"}, exitUsage, nil},
		{"malformed line", []string{"--changes", bad}, exitInvalidData, []string{bad, "line 3", "negative"}},
		{"range past 2^63", []string{"--changes", big}, exitInvalidData, []string{big, "line 1", "2^63-1"}},
		{"missing changes file", []string{"--changes", missing}, exitFailure, []string{missing, "no such file"}},
		{"new shorter", []string{"--old", a, "--new", b}, exitInvalidData, []string{a, b, "shorter"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runCowSize(t, "", tt.args...)
			if err == nil {
				t.Fatalf("got success with output %q, want an error", out)
			}
			if code, _ := classify(err); code != tt.code {
				t.Errorf("got exit code %d for %v, want %d", code, err, tt.code)
			}
			for _, s := range tt.contains {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("got %q, want it to contain %q", err, s)
				}
			}
		})
	}
}

func TestCowSizeHints(t *testing.T) {
	bad := writeTemp(t, "bad.txt", []byte("\n\nx y\n"))
	_, _, err := runCowSize(t, "", "--changes", bad)
	if _, hint := classify(err); !strings.Contains(hint, "line 3") {
		t.Errorf("got hint %q, want it to name line 3", hint)
	}
	a := writeTemp(t, "a.img", make([]byte, 8192))
	b := writeTemp(t, "b.img", make([]byte, 4096))
	_, _, err = runCowSize(t, "", "--old", a, "--new", b)
	if _, hint := classify(err); !strings.Contains(hint, "snapctl cow-size --old "+b+" --new "+a) {
		t.Errorf("got hint %q, want the swapped command", hint)
	}
}

// TestCowSizeProgress diffs two sparse 80 MiB images: over the 64 MiB
// threshold, so stderr gets a line per 5% while stdout stays pure JSON.
func TestCowSizeProgress(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"old.img", "new.img"} {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(80 << 20); err != nil {
			t.Fatal(err)
		}
		f.Close()
		paths = append(paths, p)
	}
	out, errOut, err := runCowSize(t, "", "--old", paths[0], "--new", paths[1], "--json")
	if err != nil {
		t.Fatalf("cow-size: %v", err)
	}
	if got := cowSizeJSON(t, out)["changed_chunks"]; got != 0.0 {
		t.Errorf("got changed_chunks %v, want 0", got)
	}
	lines := strings.Split(strings.TrimSpace(errOut), "\n")
	if len(lines) < 20 || len(lines) > 22 || !strings.Contains(lines[len(lines)-1], "100%") {
		t.Errorf("got %d progress lines ending %q, want about 21 ending at 100%%:\n%s", len(lines), lines[len(lines)-1], errOut)
	}

	small := writeTemp(t, "small.img", make([]byte, 1<<20))
	_, errOut, err = runCowSize(t, "", "--old", small, "--new", small)
	if err != nil || errOut != "" {
		t.Errorf("small images: got %v and stderr %q, want no progress", err, errOut)
	}
}
