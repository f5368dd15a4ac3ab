package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/fiemap"
)

func TestClassifyFiemap(t *testing.T) {
	for _, tt := range []struct {
		err  error
		code int
		hint string
	}{
		{fiemap.UnsupportedFSError{Path: "/x", Type: "btrfs"}, exitUnsupported, "ext4, xfs or f2fs"},
		{fmt.Errorf("prepare: %w", fiemap.DirectMountError{Path: "/x", Dev: "8:1"}), exitRefused, "use --backend loop or put the filesystem on a device-mapper device (snapctl attach)"},
		{fiemap.UnsupportedTargetError{Dev: "253:0", Type: "crypt"}, exitUnsupported, "linear"},
		{fiemap.HoleError{Path: "/x", Offset: 0, Length: 4096}, exitInvalidData, "fallocate"},
		{fiemap.ExtentFlagError{Path: "/x", Flag: fiemap.FIEMAP_EXTENT_SHARED}, exitInvalidData, "reflink"},
		{fiemap.TooFragmentedError{Path: "/x", Max: 1}, exitInvalidData, "free space"},
		{fiemap.MisalignedError{Path: "/x", Align: 4096}, exitInvalidData, "chunk size"},
		{fiemap.SymlinkError{Path: "/a/b", Link: "/a"}, exitRefused, "realpath"},
		{fiemap.NoSpaceError{Path: "/x"}, exitRefused, "cow-size"},
	} {
		code, hint := classify(tt.err)
		if code != tt.code || !strings.Contains(hint, tt.hint) {
			t.Errorf("%T: got exit %d hint %q, want exit %d and a hint with %q", tt.err, code, hint, tt.code, tt.hint)
		}
	}
}

// TestMapFileOnHost runs map-file on a file in the test's temporary
// directory. On a filesystem mounted directly on a disk (the usual host) it
// must fail with exit 4 and the loop hint; on tmpfs with exit 5.
func TestMapFileOnHost(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "store")
	if err := os.WriteFile(p, bytes.Repeat([]byte{1}, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs([]string{"map-file", p, "--json"})
	err := root.Execute()
	code, hint := 0, ""
	if err != nil {
		code, hint = classify(err)
	}
	fsys, ferr := fiemap.StatFS(dir)
	var u fiemap.UnsupportedFSError
	switch {
	case errors.As(ferr, &u):
		if code != exitUnsupported {
			t.Fatalf("on %s: got exit %d (%v), want %d", u.Type, code, err, exitUnsupported)
		}
	case ferr != nil:
		t.Fatal(ferr)
	default:
		if _, isDM, _ := dmtable.TableByDev(fsys.Major, fsys.Minor); isDM {
			t.Skipf("%s is on device-mapper device %s: the e2e suite covers this case", dir, fsys.Dev)
		}
		var dm fiemap.DirectMountError
		if !errors.As(err, &dm) || code != exitRefused || !strings.Contains(hint, "--backend loop") {
			t.Fatalf("got exit %d hint %q err %v, want ErrDirectMount, exit %d, the loop hint", code, hint, err, exitRefused)
		}
		if out.Len() != 0 {
			t.Errorf("stdout %q, want nothing on failure", out.String())
		}
	}
}

func TestMapFileBadChunk(t *testing.T) {
	var out, errOut bytes.Buffer
	root := newApp(&out, &errOut).rootCmd()
	root.SetArgs([]string{"map-file", "/nonexistent", "--chunk-size", "3K"})
	err := root.Execute()
	if code, _ := classify(err); code != exitUsage {
		t.Fatalf("got exit %d (%v), want %d", code, err, exitUsage)
	}
}
