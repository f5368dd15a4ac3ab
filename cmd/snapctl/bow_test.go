package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
)

// bowImage makes an image file with an active bow checkpoint: the top half
// free, a checkpoint, then overwrites. It returns the path and the
// checkpoint-time contents of the bottom half.
func bowImage(t *testing.T, bs int64) (string, []byte) {
	t.Helper()
	const blocks = 64
	path := filepath.Join(t.TempDir(), "disk.img")
	img := make([]byte, blocks*bs)
	for i := range img {
		img[i] = byte(i*7 + i/int(bs))
	}
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := bow.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	e, err := bow.Open(f, bow.Options{BlockSize: bs})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Discard(blocks/2*bs, blocks/2*bs); err != nil {
		t.Fatal(err)
	}
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	ck := make([]byte, blocks/2*bs)
	if _, err := e.ReadAt(ck, 0); err != nil {
		t.Fatal(err)
	}
	for i := int64(0); i < 24; i++ {
		if _, err := e.WriteAt(bytes.Repeat([]byte{byte(i)}, int(bs)+10), i*bs+5); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	return path, ck
}

func runBow(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs(append([]string{"bow"}, args...))
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestBowInspect(t *testing.T) {
	path, _ := bowImage(t, 512)
	before := fileSum(t, path)
	out, _, err := runBow(t, "inspect", "--json", path)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	var info bow.Info
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	// 24 overwrites of 512-byte blocks, unaligned: 25 blocks backed up
	// plus block 0, in log blocks of 20 entries.
	if !info.Valid || len(info.Logs) < 2 || info.Entries < 26 || info.Header.BlockSize != 512 {
		t.Errorf("inspect: got valid %v, %d logs, %d entries, block size %d; want valid, >= 2 logs, >= 26 entries, 512",
			info.Valid, len(info.Logs), info.Entries, info.Header.BlockSize)
	}
	out, _, err = runBow(t, "inspect", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"magic:       0x00574f42 BOW", "block size:  512", "valid:       yes", "backup at block"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if fileSum(t, path) != before {
		t.Error("inspect changed the image")
	}
}

func TestBowRestore(t *testing.T) {
	for _, bs := range []int64{512, 4096} {
		path, ck := bowImage(t, bs)
		before := fileSum(t, path)
		out, _, err := runBow(t, "restore", "--dry-run", "--json", path)
		if err != nil {
			t.Fatalf("dry run: %v", err)
		}
		var sum bow.RestoreSummary
		if err := json.Unmarshal([]byte(out), &sum); err != nil || !sum.DryRun || sum.Entries == 0 {
			t.Fatalf("dry run summary: %v %+v", err, sum)
		}
		if fileSum(t, path) != before {
			t.Fatal("dry run changed the image")
		}
		out, errOut, err := runBow(t, "restore", path)
		if err != nil {
			t.Fatalf("restore: %v", err)
		}
		if !strings.Contains(out, "restored "+path+" to its checkpoint") || !strings.Contains(errOut, "restore") {
			t.Errorf("restore output: stdout %q stderr %q", out, errOut)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got[:len(ck)], ck) {
			t.Fatalf("block size %d: restored image differs from the checkpoint", bs)
		}
		// Nothing left to restore.
		_, _, err = runBow(t, "restore", path)
		if code, _ := classify(err); code != exitRefused {
			t.Errorf("second restore: got exit %d (%v), want %d", code, err, exitRefused)
		}
	}
}

func TestBowRestoreCorrupt(t *testing.T) {
	path, _ := bowImage(t, 4096)
	b, _ := os.ReadFile(path)
	binary.LittleEndian.PutUint32(b[16:], 7) // sequence gap
	os.WriteFile(path, b, 0o600)
	before := fileSum(t, path)
	for _, args := range [][]string{{"restore", path}, {"restore", "--dry-run", path}, {"inspect", path}} {
		_, _, err := runBow(t, args...)
		code, hint := classify(err)
		if code != exitInvalidData || !strings.Contains(hint, "--roll-forward-on-corruption") {
			t.Errorf("%v: got exit %d hint %q (%v), want %d and the roll-forward hint", args, code, hint, err, exitInvalidData)
		}
		if fileSum(t, path) != before {
			t.Fatalf("%v changed a corrupt image", args)
		}
	}
	live := make([]byte, 4096)
	sector0 := binary.LittleEndian.Uint64(b[20:])
	copy(live, b[sector0*512:])
	out, _, err := runBow(t, "restore", "--roll-forward-on-corruption", "--json", path)
	if err != nil {
		t.Fatalf("roll forward: %v", err)
	}
	var sum bow.RestoreSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil || !sum.RolledForward || !strings.Contains(sum.Problem, "log block 6") {
		t.Fatalf("roll forward summary: %v %+v", err, sum)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got[:4096], live) {
		t.Error("roll forward did not bring the live block 0 home")
	}
}

func TestBowUsage(t *testing.T) {
	path, _ := bowImage(t, 4096)
	tests := [][]string{
		{"restore"},
		{"restore", path, path},
		{"restore", "--dry-run", "--roll-forward-on-corruption", path},
		{"inspect"},
		{"restore", "--bogus", path},
	}
	for _, args := range tests {
		_, _, err := runBow(t, args...)
		if code, _ := classify(err); code != exitUsage {
			t.Errorf("%v: got exit %d (%v), want %d", args, code, err, exitUsage)
		}
	}
	_, _, err := runBow(t, "inspect", filepath.Join(t.TempDir(), "missing"))
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("inspect of a missing file: got %v, want an error naming it", err)
	}
}

// TestBowSubcommands: subcommands registered by other files appear under
// `snapctl bow`.
func TestBowSubcommands(t *testing.T) {
	saved := bowSubcommands
	defer func() { bowSubcommands = saved }()
	registerBowSubcommand(func(*app) *cobra.Command { return &cobra.Command{Use: "probe", Run: func(*cobra.Command, []string) {}} })
	var out bytes.Buffer
	bowCmd := newBowCmd(newApp(&out, &out))
	var names []string
	for _, c := range bowCmd.Commands() {
		names = append(names, c.Name())
	}
	for _, want := range []string{"restore", "inspect", "probe"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("bow subcommands %v lack %q", names, want)
		}
	}
}
