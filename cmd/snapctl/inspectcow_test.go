package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/merge"
)

func runInspectCOW(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// inspectCOWStore writes a store with 4 KiB chunks and n exceptions (origin
// chunk 2i, store chunks in kernel order; data chunk i filled with byte i+1)
// in the smallest file that holds them.
func inspectCOWStore(t *testing.T, n int) (string, []merge.Exception, []byte) {
	t.Helper()
	l := merge.Layout{ChunkSize: 8}
	ex := make([]merge.Exception, n)
	size, err := cowsize.ForChunks(uint64(n), 4096)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size.Bytes)
	for i := range ex {
		ex[i] = merge.Exception{Old: uint64(2 * i), New: l.DataChunk(uint64(i))}
		copy(b[int64(ex[i].New)*4096:], bytes.Repeat([]byte{byte(i + 1)}, 4096))
	}
	w := inspectCOWWriter(b)
	if err := merge.WriteStore(w, merge.Header{Magic: merge.Magic, Valid: true, Version: merge.Version, ChunkSize: 8}, ex); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "cow.img")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, ex, b
}

type inspectCOWWriter []byte

func (w inspectCOWWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w[off:], p), nil }

func TestInspectCOWHuman(t *testing.T) {
	p, _, _ := inspectCOWStore(t, 300)
	out, _, err := runInspectCOW(t, "inspect-cow", p)
	if err != nil {
		t.Fatal(err)
	}
	want := "store:       " + p + ` (1241088 bytes)
header:      magic 0x70416e53 (SnAp), version 1
valid:       yes
chunk size:  8 sectors (4 KiB)
exceptions:  300 in 2 metadata area(s) of 256 entries
used:        303 of 303 chunks (1212 KiB of 1212 KiB)
first:       0->2 2->3 4->4 (origin chunk -> store chunk)
last:        594->300 596->301 598->302
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

func TestInspectCOWJSON(t *testing.T) {
	p, ex, _ := inspectCOWStore(t, 256) // exactly one full area
	out, _, err := runInspectCOW(t, "inspect-cow", "--json", "--entries", "2", "--chunk-size", "4K", "--origin-size", "2M", p)
	if err != nil {
		t.Fatal(err)
	}
	var rep inspectCOWReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	want := inspectCOWReport{
		schema: schema{SchemaVersion: schemaVersion}, Path: p, Size: 259 * 4096, Magic: "0x70416e53", Valid: true, Version: 1, ChunkSize: 8, ChunkBytes: 4096,
		Exceptions: 256, PerArea: 256, Areas: 2, Chunks: 259, UsedChunks: 259, UsedBytes: 259 * 4096,
		First: ex[:2], Last: ex[254:],
	}
	if !reflect.DeepEqual(rep, want) {
		t.Errorf("got %+v, want %+v", rep, want)
	}
}

func TestInspectCOWProblems(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mutate   func(b []byte) []byte
		args     []string
		code     int
		stdout   string // substring
		errMatch string // substring of the error
	}{
		{"invalid store is shown, not an error", func(b []byte) []byte { binary.LittleEndian.PutUint32(b[4:], 0); return b }, nil, 0, "valid:       NO", ""},
		{"fresh", func(b []byte) []byte { clear(b[:16]); return b }, nil, 0, "zeroed", ""},
		{"bad magic", func(b []byte) []byte { b[0] = 'X'; return b }, nil, exitInvalidData, "not a persistent snapshot store", "magic 0x70416e58, want 0x70416e53"},
		{"entry into metadata", func(b []byte) []byte { binary.LittleEndian.PutUint64(b[4096+8:], 258); return b }, nil, exitInvalidData,
			"chunk size:  8 sectors", "area 0 entry 0: exception 0->258: new chunk 258 holds metadata area 1"},
		{"truncated", func(b []byte) []byte { return b[:200*4096] }, nil, exitInvalidData, "valid:       yes", "past the end of the store"},
		{"wrong chunk size", func(b []byte) []byte { return b }, []string{"--chunk-size", "16K"}, exitInvalidData, "", "differs from the expected 32 sectors"},
		{"old chunk past the origin", func(b []byte) []byte { return b }, []string{"--origin-size", "100K"}, exitInvalidData, "", "old chunk 26 starts past the end of the origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, b := inspectCOWStore(t, 300)
			if err := os.WriteFile(p, tc.mutate(b), 0o600); err != nil {
				t.Fatal(err)
			}
			out, _, err := runInspectCOW(t, append(append([]string{"inspect-cow"}, tc.args...), p)...)
			code := 0
			if err != nil {
				code, _ = classify(err)
			}
			if code != tc.code {
				t.Fatalf("got exit code %d (%v), want %d", code, err, tc.code)
			}
			if !strings.Contains(out, tc.stdout) {
				t.Errorf("stdout %q does not contain %q", out, tc.stdout)
			}
			if tc.errMatch != "" && !strings.Contains(err.Error(), tc.errMatch) {
				t.Errorf("error %q does not contain %q", err, tc.errMatch)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}

func TestInspectCOWUsage(t *testing.T) {
	p, _, _ := inspectCOWStore(t, 1)
	for _, args := range [][]string{
		{"inspect-cow"},
		{"inspect-cow", "--chunk-size", "3K", p},
		{"inspect-cow", "--origin-size", "-5", p},
		{"inspect-cow", "--entries", "-1", p},
		{"merge", "--offline", "--origin", p},
		{"merge", "--offline", "--origin", p, "--cow", p, "--chunk-size", "1000"},
	} {
		_, _, err := runInspectCOW(t, args...)
		if code, _ := classify(err); code != exitUsage {
			t.Errorf("%v: got exit code %d (%v), want %d", args, code, err, exitUsage)
		}
	}
}

func TestMergeCOW(t *testing.T) {
	p, ex, _ := inspectCOWStore(t, 300)
	dir := t.TempDir()
	origin := filepath.Join(dir, "origin.img")
	img := bytes.Repeat([]byte{0xee}, 700*4096)
	if err := os.WriteFile(origin, img, 0o600); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join(dir, "progress.json")
	out, stderr, err := runInspectCOW(t, "merge", "--offline", "--json", "--origin", origin, "--cow", p, "--chunk-size", "4K", "--progress-file", rec)
	if err != nil {
		t.Fatalf("%v (stderr %q)", err, stderr)
	}
	var res struct {
		Exceptions  int   `json:"exceptions"`
		Bytes       int64 `json:"bytes"`
		Invalidated bool  `json:"invalidated"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("decode %q: %v", out, err)
	}
	if res.Exceptions != 300 || res.Bytes != 300*4096 || !res.Invalidated {
		t.Errorf("got %+v, want 300 exceptions, %d bytes, invalidated", res, 300*4096)
	}
	got, err := os.ReadFile(origin)
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Clone(img)
	for i, e := range ex {
		copy(want[e.Old*4096:], bytes.Repeat([]byte{byte(i + 1)}, 4096))
	}
	if !bytes.Equal(got, want) {
		t.Error("origin is not the expected merged image")
	}

	// The store is now invalid: inspect says so, a rerun with the record is
	// a no-op, and one without it is refused (exit 4) with the origin
	// untouched.
	out, _, err = runInspectCOW(t, "inspect-cow", p)
	if err != nil || !strings.Contains(out, "valid:       NO") {
		t.Errorf("inspect after merge: got %q, %v", out, err)
	}
	out, _, err = runInspectCOW(t, "merge", "--offline", "--origin", origin, "--cow", p, "--chunk-size", "4K", "--progress-file", rec)
	if err != nil || !strings.Contains(out, "already merged") {
		t.Errorf("rerun: got %q, %v", out, err)
	}
	_, _, err = runInspectCOW(t, "merge", "--offline", "--origin", origin, "--cow", p, "--chunk-size", "4K")
	code, hint := classify(err)
	if code != exitRefused || !strings.Contains(err.Error(), "valid=0") || !strings.Contains(hint, "drop") {
		t.Errorf("invalid store: got code %d, %v, hint %q; want %d", code, err, hint, exitRefused)
	}
	if again, _ := os.ReadFile(origin); !bytes.Equal(again, want) {
		t.Error("origin changed by a refused merge")
	}
}
