package main

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/cowsize"
	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
	"github.com/snapctl/snapctl/group"
	"github.com/snapctl/snapctl/merge"
	"github.com/snapctl/snapctl/snapshot"
)

// The -update flag rewrites the golden files under testdata/. It is
// registered here only if no other test file of the package registers one.
func init() {
	if flag.Lookup("update") == nil {
		flag.Bool("update", false, "rewrite the golden files under testdata/")
	}
}

func goldenUpdate() bool {
	f := flag.Lookup("update")
	return f != nil && f.Value.String() == "true"
}

// goldenRun runs the CLI in-process with args and returns stdout, stderr and
// the error main would classify.
func goldenRun(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs(args)
	root.SetIn(strings.NewReader(""))
	root.SetOut(&out) // what cobra prints itself: help, completions
	root.SetErr(&errOut)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

// jsonNode is a decoded JSON value that keeps the order of object keys, so
// a golden file shows fields in the order snapctl prints them.
type jsonNode struct {
	kind byte // 'o' object, 'a' array, 's' string, 'n' number, 'b' bool, 'z' null
	keys []string
	vals []*jsonNode // object values (parallel to keys) or array elements
	text string      // a scalar's JSON text
}

func parseOrdered(b []byte) (*jsonNode, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	n, err := parseNode(dec)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("more than one JSON document")
	}
	return n, nil
}

func parseNode(dec *json.Decoder) (*jsonNode, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch v := tok.(type) {
	case json.Delim:
		n := &jsonNode{kind: 'a'}
		if v == '{' {
			n.kind = 'o'
		}
		for dec.More() {
			if n.kind == 'o' {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				n.keys = append(n.keys, k.(string))
			}
			c, err := parseNode(dec)
			if err != nil {
				return nil, err
			}
			n.vals = append(n.vals, c)
		}
		if _, err := dec.Token(); err != nil { // the closing delimiter
			return nil, err
		}
		return n, nil
	case string:
		b, _ := json.Marshal(v)
		return &jsonNode{kind: 's', text: string(b)}, nil
	case json.Number:
		return &jsonNode{kind: 'n', text: v.String()}, nil
	case bool:
		return &jsonNode{kind: 'b', text: strconv.FormatBool(v)}, nil
	case nil:
		return &jsonNode{kind: 'z', text: "null"}, nil
	}
	return nil, fmt.Errorf("unexpected JSON token %v", tok)
}

// goldenRender prints n as indented JSON. A scalar whose path is in mask
// (paths like "store.segments[].dev"; "*" masks every value) prints as its
// type, "<string>", "<number>" or "<bool>", so values that depend on the
// machine do not make the file differ. With shape, every value is masked
// and an array shows each distinct element shape once: the golden then
// holds the field names and types only.
func goldenRender(n *jsonNode, mask []string, shape bool) string {
	var b strings.Builder
	renderNode(&b, n, "", "", mask, shape)
	b.WriteByte('\n')
	return b.String()
}

func renderNode(b *strings.Builder, n *jsonNode, path, indent string, mask []string, shape bool) {
	switch n.kind {
	case 'o':
		if len(n.keys) == 0 {
			b.WriteString("{}")
			return
		}
		b.WriteString("{\n")
		for i, k := range n.keys {
			kb, _ := json.Marshal(k)
			fmt.Fprintf(b, "%s  %s: ", indent, kb)
			p := k
			if path != "" {
				p = path + "." + k
			}
			renderNode(b, n.vals[i], p, indent+"  ", mask, shape)
			if i < len(n.keys)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
	case 'a':
		var elems []string
		for _, v := range n.vals {
			var eb strings.Builder
			renderNode(&eb, v, path+"[]", indent+"  ", mask, shape)
			if shape && slices.Contains(elems, eb.String()) {
				continue
			}
			elems = append(elems, eb.String())
		}
		if len(elems) == 0 {
			b.WriteString("[]")
			return
		}
		b.WriteString("[\n")
		for i, e := range elems {
			b.WriteString(indent + "  " + e)
			if i < len(elems)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
	default:
		if n.kind != 'z' && (shape || slices.Contains(mask, "*") || slices.Contains(mask, path)) {
			b.WriteString(map[byte]string{'s': `"<string>"`, 'n': `"<number>"`, 'b': `"<bool>"`}[n.kind])
			return
		}
		b.WriteString(n.text)
	}
}

// jsonPaths lists every field path of n ("store.segments[].dev").
func jsonPaths(n *jsonNode, path string, into map[string]bool) {
	switch n.kind {
	case 'o':
		for i, k := range n.keys {
			p := k
			if path != "" {
				p = path + "." + k
			}
			into[p] = true
			jsonPaths(n.vals[i], p, into)
		}
	case 'a':
		for _, v := range n.vals {
			jsonPaths(v, path+"[]", into)
		}
	}
}

// goldenCompare compares got with testdata/name.golden, or rewrites the
// file with -update.
func goldenCompare(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name+".golden")
	if goldenUpdate() {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file: %v (create it with: go test ./cmd/snapctl/ -run %s -update)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (if the change is intended, update docs/json.md and run: go test ./cmd/snapctl/ -run '%s' -update)\ngot:\n%s\nwant:\n%s",
			p, strings.SplitN(t.Name(), "/", 2)[0], got, want)
	}
}

// goldenStore writes a persistent store image with 4 KiB chunks and n
// exceptions (origin chunk 3i+1, data chunks in kernel order) and returns
// its path and the exceptions.
func goldenStore(t *testing.T, dir string, n int, valid bool) (string, []merge.Exception) {
	t.Helper()
	l := merge.Layout{ChunkSize: 8}
	ex := make([]merge.Exception, n)
	size, err := cowsize.ForChunks(uint64(n), 4096)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size.Bytes)
	for i := range ex {
		ex[i] = merge.Exception{Old: uint64(3*i + 1), New: l.DataChunk(uint64(i))}
		copy(b[int64(ex[i].New)*4096:], bytes.Repeat([]byte{byte(0x40 + i)}, 4096))
	}
	h := merge.Header{Magic: merge.Magic, Valid: valid, Version: merge.Version, ChunkSize: 8}
	if err := merge.WriteStore(goldenWriter(b), h, ex); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, fmt.Sprintf("cow-%d.img", n))
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, ex
}

type goldenWriter []byte

func (w goldenWriter) WriteAt(p []byte, off int64) (int, error) { return copy(w[off:], p), nil }

// TestGoldenJSON compares the --json output of the commands that run
// without root or device-mapper with golden files: cow-size and version
// fully (values included, but the Go release), inspect-cow, the offline
// merge and the bow commands with the temporary paths (and the server's
// pid) masked. Each document's fields must also
// be listed in its section of docs/json.md.
func TestGoldenJSON(t *testing.T) {
	dir := t.TempDir()
	changes := filepath.Join(dir, "changes.txt")
	if err := os.WriteFile(changes, []byte("# an update plan\n0 4K\n1M 64K\n1032K 1\n10M 3M\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Images 1 MiB and 1 MiB + 12 KiB that differ in chunks 3, 7 and 200;
	// the new image's three extra chunks count too.
	oldImg, newImg := filepath.Join(dir, "old.img"), filepath.Join(dir, "new.img")
	a := bytes.Repeat([]byte{0x11}, 1<<20)
	bimg := append(bytes.Clone(a), bytes.Repeat([]byte{0x22}, 12<<10)...)
	for _, c := range []int{3, 7, 200} {
		bimg[c*4096+100] = 0x99
	}
	if err := os.WriteFile(oldImg, a, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(newImg, bimg, 0o600); err != nil {
		t.Fatal(err)
	}
	store, _ := goldenStore(t, dir, 300, true)
	fresh := filepath.Join(dir, "fresh.img")
	if err := os.WriteFile(fresh, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.img")
	if err := os.WriteFile(bad, bytes.Repeat([]byte("not a store "), 2000), 0o600); err != nil {
		t.Fatal(err)
	}
	offStore, _ := goldenStore(t, t.TempDir(), 5, true)
	origin := filepath.Join(dir, "origin.img")
	if err := os.WriteFile(origin, bytes.Repeat([]byte{0xee}, 64*4096), 0o600); err != nil {
		t.Fatal(err)
	}
	// Images with a bow checkpoint (restore and commit change them, so
	// each gets its own) and a bow server on an in-memory device whose
	// upper half was trimmed, so that a checkpoint has room.
	bowInspected, _ := bowImage(t, 512)
	bowRestored, _ := bowImage(t, 512)
	bowCommitted, _ := bowImage(t, 512)
	engine, sock := startControl(t, 1<<20)
	if err := engine.Trim(512<<10, 512<<10); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		args    []string
		mask    []string
		section string // heading of its section in docs/json.md
		code    int    // the exit code (inspect-cow prints a report, then fails)
	}{
		{"cow-size-chunks", []string{"cow-size", "--chunks", "1000"}, nil, "cow-size", 0},
		{"cow-size-boundary", []string{"cow-size", "--chunks", "256", "--chunk-size", "4K"}, nil, "cow-size", 0},
		{"cow-size-zero-64k", []string{"cow-size", "--chunks", "0", "--chunk-size", "64K"}, nil, "cow-size", 0},
		{"cow-size-changes-margin", []string{"cow-size", "--changes", changes, "--margin", "10"}, nil, "cow-size", 0},
		{"cow-size-images", []string{"cow-size", "--old", oldImg, "--new", newImg, "--chunk-size", "8K"}, nil, "cow-size", 0},
		{"version", []string{"version"}, []string{"go"}, "version", 0},
		{"inspect-cow", []string{"inspect-cow", "--entries", "2", store}, []string{"path"}, "inspect-cow", 0},
		{"inspect-cow-invalid", []string{"inspect-cow", "--entries", "1", goldenInvalidate(t, store)}, []string{"path"}, "inspect-cow", 0},
		{"inspect-cow-fresh", []string{"inspect-cow", fresh}, []string{"path"}, "inspect-cow", 0},
		{"inspect-cow-bad-magic", []string{"inspect-cow", bad}, []string{"path"}, "inspect-cow", exitInvalidData},
		{"merge-offline", []string{"merge", "--offline", "--origin", origin, "--cow", offStore, "--chunk-size", "4K"}, []string{"target", "seconds"}, "merge --offline", 0},
		{"bow-inspect", []string{"bow", "inspect", bowInspected}, []string{"device"}, "bow inspect", 0},
		{"bow-restore-dry-run", []string{"bow", "restore", "--dry-run", bowInspected}, []string{"device"}, "bow restore", 0},
		{"bow-restore", []string{"bow", "restore", bowRestored}, []string{"device"}, "bow restore", 0},
		{"bow-commit-offline", []string{"bow", "commit", "--offline", bowCommitted}, []string{"device"}, "bow commit --offline", 0},
		// In this order: status, then a checkpoint, then its commit.
		{"bow-status", []string{"bow", "status", "--control", sock}, []string{"pid"}, "bow status", 0},
		{"bow-checkpoint", []string{"bow", "checkpoint", "--control", sock}, []string{"pid"}, "bow status", 0},
		{"bow-commit", []string{"bow", "commit", "--control", sock}, []string{"pid"}, "bow status", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := goldenRun(t, append(tc.args, "--json")...)
			code := 0
			if err != nil {
				code, _ = classify(err)
			}
			if code != tc.code {
				t.Fatalf("got exit code %d (%v), want %d\nstderr: %s", code, err, tc.code, errOut)
			}
			n, err := parseOrdered([]byte(out))
			if err != nil {
				t.Fatalf("stdout is not one JSON document: %v\n%s", err, out)
			}
			goldenCompare(t, tc.name, goldenRender(n, tc.mask, false))
			paths := map[string]bool{}
			jsonPaths(n, "", paths)
			documented := docFields(t, tc.section)
			for p := range paths {
				if !documented[p] {
					t.Errorf("field %q of %s --json is not documented in the %q section of docs/json.md", p, tc.name, tc.section)
				}
			}
		})
	}
}

// goldenInvalidate copies a store with its valid flag cleared.
func goldenInvalidate(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	clear(b[4:8])
	q := p + ".invalid"
	if err := os.WriteFile(q, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return q
}

// docFields returns the field paths listed in the tables of the section of
// docs/json.md whose heading contains "snapctl "+section.
func docFields(t *testing.T, section string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "json.md"))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]bool{}
	in, found := false, false
	row := regexp.MustCompile("^\\| `([^`]+)` \\|")
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "## ") {
			in = headingIs(l, section)
			found = found || in
			continue
		}
		if m := row.FindStringSubmatch(l); in && m != nil {
			fields[m[1]] = true
		}
	}
	if !found {
		t.Fatalf("docs/json.md has no section for `snapctl %s`", section)
	}
	return fields
}

// headingIs reports whether the docs/json.md heading l ("## `snapctl
// bow commit --offline DEV --json`") is the section of command section
// ("bow commit --offline"): the command line in the heading is section
// followed by arguments, --json or nothing, but no other flag, so "bow
// commit" does not match the heading of "bow commit --offline".
func headingIs(l, section string) bool {
	cmdline, ok := strings.CutPrefix(l, "## `snapctl ")
	if !ok {
		return false
	}
	cmdline, _, _ = strings.Cut(cmdline, "`")
	rest, ok := strings.CutPrefix(cmdline, section)
	if !ok {
		return false
	}
	rest, spaced := strings.CutPrefix(rest, " ")
	if spaced && (rest == "GROUP" || strings.HasPrefix(rest, "GROUP ")) {
		// The form of the command for an update group has its own
		// section ("status GROUP").
		return false
	}
	return rest == "" || spaced && (!strings.HasPrefix(rest, "--") || strings.HasPrefix(rest, "--json"))
}

// typeFields lists the JSON field paths a Go type can print, as
// encoding/json would name them.
func typeFields(t reflect.Type, path string, into map[string]bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tm := reflect.TypeFor[encoding.TextMarshaler]()
	if t.Implements(tm) || reflect.PointerTo(t).Implements(tm) || t == reflect.TypeFor[time.Time]() {
		return
	}
	switch t.Kind() {
	case reflect.Slice, reflect.Array:
		typeFields(t.Elem(), path+"[]", into)
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			// encoding/json prints the exported fields of an embedded
			// struct, or pointer to one, even when its type is unexported
			// (schema, *serveStatus).
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if !f.IsExported() && !(f.Anonymous && ft.Kind() == reflect.Struct) {
				continue
			}
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag == "-" {
				continue
			}
			if f.Anonymous && tag == "" {
				typeFields(f.Type, path, into)
				continue
			}
			name := f.Name
			if tag != "" {
				name = tag
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			into[p] = true
			typeFields(f.Type, p, into)
		}
	}
}

// TestJSONDocumented checks docs/json.md against the Go types behind each
// command's --json output, both ways: every field a type can print is
// documented, and every documented field exists. It also checks that the
// status goldens that e2e/boot_test.go wrote from a real kernel hold only
// documented fields.
func TestJSONDocumented(t *testing.T) {
	for _, tc := range jsonDocuments() {
		t.Run(tc.section, func(t *testing.T) {
			have := map[string]bool{}
			ty := reflect.TypeOf(tc.v)
			if ty.Kind() == reflect.Slice { // an array documents its elements
				ty = ty.Elem()
			}
			typeFields(ty, "", have)
			doc := docFields(t, tc.section)
			for p := range have {
				if !doc[p] {
					t.Errorf("field %q (%T) is not documented in the %q section of docs/json.md", p, tc.v, tc.section)
				}
			}
			for p := range doc {
				if !have[p] {
					t.Errorf("docs/json.md documents %q in the %q section, but %T has no such field", p, tc.section, tc.v)
				}
			}
		})
	}
	goldens, _ := filepath.Glob(filepath.Join("testdata", "status-*.golden"))
	if len(goldens) == 0 {
		t.Errorf("no testdata/status-*.golden: run the e2e test TestBootSequence with SNAPCTL_UPDATE_GOLDEN=1 to write them")
	}
	doc := docFields(t, "status")
	for _, g := range goldens {
		b, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		n, err := parseOrdered(b)
		if err != nil {
			t.Fatalf("%s: %v", g, err)
		}
		paths := map[string]bool{}
		jsonPaths(n, "", paths)
		for p := range paths {
			if !doc[p] {
				t.Errorf("%s: field %q is not documented in docs/json.md", g, p)
			}
		}
	}
}

// exitRecord writes a state record for volume name in dir.
func exitRecord(t *testing.T, dir, name string, phase snapshot.Phase) {
	t.Helper()
	r := snapshot.Record{Format: snapshot.FormatVersion, Name: name, Phase: phase,
		Origin: snapshot.Device{Path: "/dev/vdb", Dev: "254:16", Sectors: 1 << 21}}
	if phase != snapshot.PhaseAttached {
		r.Mode, r.Step, r.Command = snapshot.Checkpoint, "merge:wait", "snapctl rollback "+name
		r.Store = &snapshot.Store{Path: "/data/.snapctl-store", FSDev: "254:0", Inode: 12, Bytes: 1 << 20, ChunkSectors: 8,
			Backend: "fiemap", Overflow: "invalidate", Segments: []snapshot.Segment{{Dev: "254:16", Offset: 2048, Length: 2048}}}
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// hasDeviceMapper is whether this host has device-mapper at all.
func hasDeviceMapper() bool {
	_, err := os.Stat("/dev/mapper/control")
	misc, _ := os.ReadFile("/proc/misc")
	return err == nil || strings.Contains(string(misc), " device-mapper\n")
}

// TestExitCodes walks the exit-code table: for each code, failures that
// produce it on any host (no root, no device-mapper needed), run in-process
// and classified as main classifies them. With --json a failure must leave
// stdout empty. Cases marked known are bugs not fixed yet: they are skipped
// with the fix to make while they fail, and fail once they pass, so the mark
// gets removed.
func TestExitCodes(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	exitRecord(t, state, "plain", snapshot.PhaseAttached)
	exitRecord(t, state, "cut", snapshot.PhaseMerging)
	exitRecord(t, state, "held", snapshot.PhaseAttached)
	if err := os.WriteFile(filepath.Join(state, "broken.json"), []byte(`{"format": 1, "name": "broken", "phase": "prepa`), 0o600); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(state, "held.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(lock, "pid 1: snapctl commit held\n")
	open := filepath.Join(dir, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	badChanges := filepath.Join(dir, "changes.txt")
	if err := os.WriteFile(badChanges, []byte("0 4K\n4K lots\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badStore := filepath.Join(dir, "bad.img")
	if err := os.WriteFile(badStore, bytes.Repeat([]byte{0xab}, 16<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	sd := []string{"--state-dir", state}

	type tc struct {
		name  string
		args  []string
		code  int
		hint  string // a substring the hint must have
		known string // a bug not fixed yet: the fix
	}
	cases := []tc{
		{"no change set", []string{"cow-size"}, exitUsage, "", ""},
		{"missing NAME", []string{"prepare"}, exitUsage, "", ""},
		{"unknown flag", []string{"status", "--no-such-flag"}, exitUsage, "", ""},
		{"bad chunk size", []string{"cow-size", "--chunks", "1", "--chunk-size", "3K"}, exitUsage, "", ""},
		{"bad grow size", append([]string{"grow", "plain", "--by", "lots"}, sd...), exitUsage, "", ""},
		{"bad monitor threshold", append([]string{"monitor", "--autoextend-threshold", "0"}, sd...), exitUsage, "", ""},
		{"unknown command", []string{"frobnicate"}, exitUsage, "", ""},
		{"status with two names", append([]string{"status", "a", "b"}, sd...), exitUsage, "", ""},
		{"merge with two names", append([]string{"merge", "a", "b"}, sd...), exitUsage, "", ""},
		{"malformed changes file", []string{"cow-size", "--changes", badChanges}, exitInvalidData, "fix line 2", ""},
		{"corrupt state record", append([]string{"status", "broken"}, sd...), exitInvalidData, "", ""},
		{"not a store", []string{"inspect-cow", badStore}, exitInvalidData, "inspect-cow", ""},
		{"unknown volume", append([]string{"status", "nosuch"}, sd...), exitRefused, "snapctl attach nosuch", ""},
		{"world-writable state dir", []string{"prepare", "v", "--store", "/x", "--state-dir", open}, exitRefused, "--state-dir", ""},
		{"relative state dir", []string{"status", "--state-dir", "rel/state"}, exitRefused, "--state-dir", ""},
		{"drop without a snapshot", append([]string{"drop", "plain"}, sd...), exitRefused, "snapctl prepare plain", ""},
		{"commit without a snapshot", append([]string{"commit", "plain"}, sd...), exitRefused, "snapctl prepare plain", ""},
		{"rollback scheduled without a snapshot", append([]string{"rollback", "plain", "--at-next-activate"}, sd...), exitRefused, "snapctl prepare plain", ""},
		{"volume busy", append([]string{"drop", "held"}, sd...), exitRefused, "snapctl status held", ""},
		{"interrupted merge: commit", append([]string{"commit", "cut"}, sd...), exitNeedsRepair, "snapctl activate cut", ""},
		{"interrupted merge: drop", append([]string{"drop", "cut"}, sd...), exitNeedsRepair, "snapctl activate cut", ""},
		{"missing changes file", []string{"cow-size", "--changes", filepath.Join(dir, "nosuch")}, exitFailure, "", ""},
	}
	switch {
	case !hasDeviceMapper():
		cases = append(cases, tc{"no device-mapper", []string{"targets"}, exitUnsupported, "modprobe dm-mod", ""})
	case os.Geteuid() != 0:
		cases = append(cases, tc{"device-mapper as non-root", []string{"targets"}, exitUnsupported, "root", ""})
	default:
		t.Log("this host has device-mapper and runs as root: exit code 5 is covered by TestTypedErrorHints only")
	}
	seen := map[int]bool{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := goldenRun(t, append(c.args, "--json")...)
			code, hint := 0, ""
			if err != nil {
				code, hint = classify(err)
			}
			ok := code == c.code && strings.Contains(hint, c.hint)
			if c.known != "" {
				if ok {
					t.Fatalf("known bug fixed (exit %d): remove its known mark", code)
				}
				t.Skipf("known bug: exit %d (%v), want %d; fix: %s", code, err, c.code, c.known)
			}
			if !ok {
				t.Fatalf("got exit %d hint %q (err %v), want exit %d with a hint containing %q", code, hint, err, c.code, c.hint)
			}
			if c.code >= exitRefused && hint == "" {
				t.Errorf("exit %d without a hint (err %v)", code, err)
			}
			if c.args[0] != "inspect-cow" && out != "" {
				t.Errorf("a failure printed on stdout: %q", out)
			}
			seen[code] = true
			t.Logf("exit %d: %v; hint: %s", code, err, hint)
		})
	}
	for code := exitFailure; code <= exitNeedsRepair; code++ {
		if !seen[code] && (code != exitUnsupported || !hasDeviceMapper() || os.Geteuid() != 0) {
			t.Errorf("no case produced exit code %d", code)
		}
	}
}

// TestExitCodeTable checks that `snapctl --help` and the README list the
// same exit codes, 0 to 6, with the same meaning (the words before the
// first ':' or ';'), and that they match the constants main uses.
func TestExitCodeTable(t *testing.T) {
	help := map[int]string{}
	for _, m := range regexp.MustCompile(`(?m)^  (\d)  (.+)$`).FindAllStringSubmatch(exitCodeHelp, -1) {
		n, _ := strconv.Atoi(m[1])
		help[n] = m[2]
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rd := map[int]string{}
	for _, m := range regexp.MustCompile(`(?m)^\| (\d) \| (.+) \|$`).FindAllStringSubmatch(string(readme), -1) {
		n, _ := strconv.Atoi(m[1])
		rd[n] = m[2]
	}
	gist := func(s string) string {
		if i := strings.IndexAny(s, ":;"); i >= 0 {
			s = s[:i]
		}
		return strings.TrimSpace(s)
	}
	consts := []int{0, exitFailure, exitUsage, exitInvalidData, exitRefused, exitUnsupported, exitNeedsRepair}
	for want, c := range consts {
		if c != want {
			t.Errorf("exit code constant %d is %d: the codes are a stable interface", want, c)
		}
	}
	for code := 0; code <= exitNeedsRepair; code++ {
		h, r := help[code], rd[code]
		if h == "" || r == "" {
			t.Errorf("exit code %d: --help has %q, README has %q; want both", code, h, r)
			continue
		}
		if gist(h) != gist(r) {
			t.Errorf("exit code %d: --help says %q, README says %q", code, gist(h), gist(r))
		}
	}
	if len(help) != len(consts) || len(rd) != len(consts) {
		t.Errorf("--help lists %d codes, README %d; want %d", len(help), len(rd), len(consts))
	}
}

// TestTypedErrorHints constructs every typed error the packages return for
// something a user can act on, wrapped as a command would wrap it, and
// checks that classify gives it a specific exit code and a hint (with the
// command to run, where there is one). Errors marked internal report a bug
// or a state no command fixes: they need a code, not a hint. Errors marked
// pending have no hint yet: skipped with what to add while they have none,
// failing once they have one so the mark gets removed.
func TestTypedErrorHints(t *testing.T) {
	type tc struct {
		err      error
		code     int
		hint     string // a substring the hint must have
		internal bool
		pending  string // where the missing hint belongs
	}
	wrap := func(e error) error { return fmt.Errorf("do something with %q: %w", "vol", e) }
	cases := []tc{
		// snapshot
		{err: &snapshot.BusyError{Volume: "vol", Holder: "pid 7: snapctl commit vol"}, code: exitRefused, hint: "snapctl status vol"},
		{err: &snapshot.InterruptedError{Volume: "vol", Phase: snapshot.PhaseMerging, Step: "merge:wait", Command: "snapctl rollback vol"}, code: exitNeedsRepair, hint: "snapctl activate vol"},
		{err: &snapshot.WrongPhaseError{Volume: "vol", Op: "commit", Phase: snapshot.PhaseAttached}, code: exitRefused, hint: "snapctl prepare vol"},
		{err: &snapshot.WrongPhaseError{Volume: "vol", Op: "prepare", Phase: snapshot.PhasePrepared, Mode: snapshot.Update}, code: exitRefused, hint: "snapctl status vol"},
		{err: &snapshot.WrongPhaseError{Volume: "vol", Op: "merge --offline", Phase: snapshot.PhaseMerging}, code: exitRefused, hint: "snapctl status vol"},
		{err: &snapshot.InUseError{Volume: "vol", Device: "/dev/mapper/vol", OpenCount: 1, Op: "rollback"}, code: exitRefused, hint: "snapctl rollback vol --at-next-activate"},
		{err: &snapshot.StoreUnusableError{Volume: "vol", State: dmtable.SnapshotInvalid}, code: exitRefused, hint: "snapctl drop vol"},
		{err: &snapshot.StoreUnusableError{Volume: "vol", State: dmtable.SnapshotOverflow}, code: exitRefused, hint: "snapctl drop vol"},
		{err: &snapshot.StoreUnusableError{Volume: "vol", State: dmtable.SnapshotMergeFailed}, code: exitFailure, hint: "snapctl activate --wait vol"},
		{err: &snapshot.StoreSeenUnusableError{Volume: "vol", Mode: snapshot.Update, State: "overflow", Op: "commit"}, code: exitRefused, hint: "snapctl rollback vol"},
		{err: &snapshot.StoreChangedError{Volume: "vol", Path: "/s/ota.cow", Changes: []string{"its blocks moved"}}, code: exitInvalidData, hint: "snapctl drop vol"},
		{err: &snapshot.DeviceChangedError{Volume: "vol", Path: "/dev/sdb1", Recorded: "8:17", Now: "8:33"}, code: exitRefused, hint: "re-attach"},
		{err: &snapshot.CorruptRecordError{Path: "/var/lib/snapctl/vol.json", Err: errors.New("unexpected EOF")}, code: exitInvalidData, hint: "record"},
		{err: &snapshot.UnknownVolumeError{Name: "vol", Dir: "/var/lib/snapctl"}, code: exitRefused, hint: "snapctl attach vol"},
		{err: &snapshot.NoSpaceError{Path: "/data/store", Need: 1 << 30, Free: 1 << 20}, code: exitRefused, hint: "--size"},
		{err: &snapshot.StoreOnOriginError{Path: "/data/store", Reason: "extents not chunk-aligned"}, code: exitRefused, hint: "filesystem"},
		{err: &snapshot.UnsafeStateDirError{Dir: "/tmp/s", Reason: "is writable by group or others"}, code: exitRefused, hint: "--state-dir"},
		{err: &snapshot.ActiveError{Volume: "vol", Device: "vol-cow"}, code: exitRefused, hint: "snapctl deactivate vol"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Reason: "store exists", Hint: "choose a new --store path"}, code: exitRefused, hint: "--store"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "attach", Kind: snapshot.RefusedOtherOrigin, Device: "/dev/sdc"}, code: exitRefused, hint: "use another volume name for /dev/sdc, or `snapctl detach vol` first"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedOtherOrigin, Device: "/dev/sdc"}, code: exitRefused, hint: "leave out --origin, or use another volume name for /dev/sdc"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedNoOrigin}, code: exitRefused, hint: "give --origin DEV, or `snapctl attach vol --origin DEV` first"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedOriginTooSmall}, code: exitRefused, hint: "--chunk-size"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedNoStorePath}, code: exitRefused, hint: "give --store PATH"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedStoreExists}, code: exitRefused, hint: "choose a new --store path"},
		{err: &snapshot.RefusedError{Volume: "vol", Op: "prepare", Kind: snapshot.RefusedStoreDirShared}, code: exitRefused, hint: "mkdir -m 700"},
		{err: snapshot.ErrNoStoreSize, code: exitFailure, hint: "--size auto with --changes or --new-image"},
		{err: snapshot.ErrLoopFixedSize, code: exitFailure, hint: "larger --size"},
		{err: &snapshot.OriginBusyError{Volume: "vol", Path: "/dev/sdb1", Err: unix.EBUSY}, code: exitRefused, hint: "snapctl attach vol --origin /dev/sdb1"},
		{err: &snapshot.NotActiveError{Volume: "vol"}, code: exitRefused, hint: "snapctl activate vol"},
		{err: &snapshot.WrongModeError{Volume: "vol", Op: "write", Mode: snapshot.Checkpoint, Want: snapshot.Update}, code: exitRefused, hint: "--mode update"},
		{err: &snapshot.ImageTooLargeError{Volume: "vol", Image: "v2.img", ImageBytes: 2 << 20, VolumeBytes: 1 << 20}, code: exitRefused, hint: "right image"},
		{err: &snapshot.VerifyError{Volume: "vol", Image: "v2.img", Offset: 4096}, code: exitFailure, hint: "snapctl write vol v2.img"},
		{err: &snapshot.GroupMemberError{Volume: "vol", Group: "ota", Op: "commit", Reason: "not sealed"}, code: exitRefused, hint: "snapctl mark-good ota"},
		// group
		{err: &group.BusyError{Group: "ota", Holder: "pid 7: snapctl mark-good ota"}, code: exitRefused, hint: "snapctl status ota"},
		{err: &group.CorruptRecordError{Path: "/var/lib/snapctl/groups/ota.json", Err: errors.New("unexpected EOF")}, code: exitInvalidData, hint: "group record"},
		{err: &group.UnknownGroupError{Name: "ota", Dir: "/var/lib/snapctl/groups"}, code: exitRefused, hint: "--group ota"},
		{err: &group.RefusedError{Group: "ota", Op: "mark-good", Kind: group.RefusedUnsealed, Reason: "not sealed"}, code: exitRefused, hint: "snapctl seal ota"},
		// fiemap
		{err: fiemap.UnsupportedFSError{Path: "/mnt/s", Type: "btrfs", Reason: "logical addresses"}, code: exitUnsupported, hint: "--backend loop"},
		{err: fiemap.DirectMountError{Path: "/mnt/s", Dev: "8:1"}, code: exitRefused, hint: "--backend loop"},
		{err: fiemap.UnsupportedTargetError{}, code: exitUnsupported, hint: "--backend loop"},
		{err: fiemap.SymlinkError{Path: "/mnt/link/s", Link: "/mnt/link"}, code: exitRefused, hint: "realpath"},
		{err: fiemap.ExtentFlagError{}, code: exitInvalidData, hint: "snapctl"},
		{err: fiemap.HoleError{}, code: exitInvalidData, hint: "snapctl"},
		{err: fiemap.EmptyError{Path: "/mnt/s"}, code: exitInvalidData, hint: "snapctl"},
		{err: fiemap.TooFragmentedError{}, code: exitInvalidData, hint: "--backend loop"},
		{err: fiemap.MisalignedError{}, code: exitInvalidData, hint: "chunk size"},
		{err: fiemap.MismatchError{}, code: exitInvalidData, internal: true},
		{err: fiemap.SizeError{}, code: exitUsage, hint: "--size"},
		{err: fiemap.ExistsError{Path: "/mnt/s"}, code: exitRefused, hint: "--store"},
		{err: fiemap.NoSpaceError{}, code: exitRefused, hint: "snapctl cow-size"},
		// dmtable
		{err: dmtable.NoDeviceMapperError{Control: "/dev/mapper/control"}, code: exitUnsupported, hint: "modprobe dm-mod"},
		{err: dmtable.PermissionError{Err: unix.EACCES}, code: exitUnsupported, hint: "root"},
		{err: dmtable.InvalidNameError{Name: "a/b", Reason: "contains '/'"}, code: exitUsage, hint: "127"},
		{err: dmtable.UnknownTargetError{Type: "snapshot", Err: unix.EINVAL}, code: exitUnsupported, hint: "modprobe dm-snapshot"},
		{err: dmtable.InvalidTableError{Reason: "gap at sector 8"}, code: exitInvalidData, internal: true},
		// cowsize
		{err: cowsize.RangeLineError{Line: 3, Err: errors.New("bad length")}, code: exitInvalidData, hint: "line 3"},
		{err: cowsize.NewShorterError{Old: "a.img", New: "b.img", OldSize: 2, NewSize: 1}, code: exitInvalidData, hint: "snapctl cow-size --old b.img --new a.img"},
		{err: cowsize.ChunkBelowBlockError{Device: "/dev/sdb", ChunkBytes: 4096, BlockBytes: 8192}, code: exitRefused, hint: "--chunk-size 8192"},
		{err: cowsize.ChunkSizeError{Bytes: 3000}, code: exitUsage, hint: "--chunk-size"},
		{err: cowsize.TooLargeError{What: "store for 2^62 chunks"}, code: exitInvalidData, internal: true},
		{err: cowsize.StoreTooSmallError{Bytes: 4096, MinBytes: 8192}, code: exitRefused, hint: "--size"},
		// merge
		{err: &merge.ChunkSizeError{Header: 8, Expected: 16}, code: exitInvalidData, hint: "--chunk-size 4096"},
		{err: &merge.CorruptError{Kind: merge.ErrPastStore, Area: 0, Entry: 3, Detail: "new chunk 900 past the end"}, code: exitInvalidData, hint: "snapctl inspect-cow"},
		{err: &merge.OverlapError{}, code: exitInvalidData, hint: "nothing was written"},
		{err: merge.ErrInvalidStore, code: exitRefused, hint: "drop"},
		{err: merge.ErrFreshStore, code: exitRefused, hint: "--cow"},
		// bow
		{err: bow.TransitionError{From: 2, To: 1}, code: exitRefused, hint: "snapctl bow checkpoint"},
		{err: bow.NoSpaceError{Device: "/dev/sdb", Needed: 8192, Free: 0}, code: exitRefused, hint: "snapctl bow commit"},
		{err: bow.BlockSizeError{Size: 1000}, code: exitUsage, hint: "--block-size"},
		{err: bow.DeviceTooSmallError{Device: "/dev/sdb", Size: 512, BlockSize: 4096}, code: exitRefused, hint: "two"},
		{err: bow.NeedsRestoreError{Device: "/dev/sdb", Reason: "no saved range map"}, code: exitNeedsRepair, hint: "snapctl bow restore /dev/sdb"},
		{err: bow.RestoreInProgressError{Device: "/dev/sdb"}, code: exitNeedsRepair, hint: "snapctl bow restore /dev/sdb"},
		{err: bow.NoLogError{Device: "/dev/sdb"}, code: exitRefused, hint: "snapctl bow checkpoint"},
		{err: bow.CorruptLogError{Device: "/dev/sdb", Sequence: 2, Entry: 5, Reason: "checksum"}, code: exitInvalidData, hint: "snapctl bow restore /dev/sdb --roll-forward-on-corruption"},
		{err: bow.BrokenError{Device: "/dev/sdb", Cause: unix.EIO}, code: exitNeedsRepair, hint: "snapctl bow restore /dev/sdb"},
	}
	for _, c := range cases {
		name := strings.TrimPrefix(fmt.Sprintf("%T", c.err), "*")
		if e, ok := c.err.(*snapshot.WrongPhaseError); ok {
			name += "/" + string(e.Phase)
		}
		if e, ok := c.err.(*group.RefusedError); ok {
			name += fmt.Sprintf("/%d", e.Kind)
		}
		if e, ok := c.err.(*snapshot.StoreUnusableError); ok {
			name += "/" + e.State.String()
		}
		switch c.err {
		case merge.ErrInvalidStore:
			name = "merge.ErrInvalidStore"
		case merge.ErrFreshStore:
			name = "merge.ErrFreshStore"
		case snapshot.ErrNoStoreSize:
			name = "snapshot.ErrNoStoreSize"
		case snapshot.ErrLoopFixedSize:
			name = "snapshot.ErrLoopFixedSize"
		}
		t.Run(name, func(t *testing.T) {
			code, hint := classify(wrap(c.err))
			ok := code == c.code && (c.internal || hint != "" && strings.Contains(hint, c.hint))
			if c.pending != "" {
				if ok {
					t.Fatalf("hint added (exit %d, %q): remove the pending mark", code, hint)
				}
				t.Skipf("no hint yet (exit %d, hint %q); add: %s", code, hint, c.pending)
			}
			if !ok {
				t.Fatalf("got exit %d hint %q, want exit %d and a hint containing %q", code, hint, c.code, c.hint)
			}
		})
	}
	// Every typed error in the packages is in the table above.
	have := map[string]bool{}
	for _, c := range cases {
		have[strings.TrimPrefix(fmt.Sprintf("%T", c.err), "*")] = true
	}
	var missing []string
	for _, pkg := range []string{"snapshot", "group", "fiemap", "dmtable", "cowsize", "merge", "bow"} {
		for _, n := range typedErrors(t, filepath.Join("..", "..", pkg)) {
			if !have[pkg+"."+n] {
				missing = append(missing, pkg+"."+n)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("typed errors not in this test's table (add them, with their hint): %s", strings.Join(missing, ", "))
	}
}

// typedErrors lists the error types declared in a package's non-test Go
// files: types named Err* or *Error with an Error method.
func typedErrors(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	decl := regexp.MustCompile(`(?m)^func \(\w+ \*?(\w+)\) Error\(\) string`)
	var names []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range decl.FindAllStringSubmatch(string(b), -1) {
			names = append(names, m[1])
		}
	}
	return names
}
