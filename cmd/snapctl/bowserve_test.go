package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/nbd"
)

// startControl runs the control socket of an engine on an in-memory device.
func startControl(t *testing.T, size int64) (*bow.Engine, string) {
	t.Helper()
	e, err := bow.Open(bow.NewMem(size), bow.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	st := &serveState{e: e, srv: nbd.NewServer(engineBackend{e}, nbd.Options{}), nbd: "/dev/nbd9", statePath: "/x.map"}
	ctl, err := listenControl(sock, st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	return e, sock
}

func TestBowControl(t *testing.T) {
	e, sock := startControl(t, 1<<20)
	s, err := callControl(sock, "status")
	if err != nil {
		t.Fatal(err)
	}
	if s.State != bow.StateTrim || s.NBD != "/dev/nbd9" || s.PID != os.Getpid() || s.Size != 1<<20 {
		t.Fatalf("status: state %v nbd %q pid %d size %d", s.State, s.NBD, s.PID, s.Size)
	}
	// Nothing trimmed: no room for a checkpoint.
	_, err = callControl(sock, "checkpoint")
	code, hint := classify(err)
	if err == nil || code != exitRefused || !strings.Contains(hint, "fstrim") {
		t.Fatalf("checkpoint without free space: %v, exit %d, hint %q; want exit 4 naming fstrim", err, code, hint)
	}
	// The trim goes through the NBD backend adapter.
	if err := (engineBackend{e}).Trim(8192, 512<<10); err != nil {
		t.Fatal(err)
	}
	s, err = callControl(sock, "checkpoint")
	if err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if s.State != bow.StateCheckpoint || s.FreeBytes == 0 || s.LogBlocks != 1 {
		t.Fatalf("after checkpoint: state %v free %d log blocks %d", s.State, s.FreeBytes, s.LogBlocks)
	}
	_, err = callControl(sock, "checkpoint")
	if code, hint := classify(err); code != exitRefused || !strings.Contains(hint, "bow commit") {
		t.Fatalf("second checkpoint: %v, exit %d, hint %q; want exit 4 naming bow commit", err, code, hint)
	}
	if s, err = callControl(sock, "commit"); err != nil || s.State != bow.StateCommitted {
		t.Fatalf("commit: %v, state %v", err, s.State)
	}
	_, err = callControl(sock, "frobnicate")
	var ce controlError
	if !errors.As(err, &ce) || !strings.Contains(ce.Msg, "frobnicate") {
		t.Fatalf("unknown op: %v, want a control error naming it", err)
	}
}

func TestBowControlBadRequest(t *testing.T) {
	_, sock := startControl(t, 1<<20)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("{not json\n"))
	b := make([]byte, 4096)
	n, _ := conn.Read(b)
	if !bytes.Contains(b[:n], []byte(`"ok":false`)) || !bytes.Contains(b[:n], []byte("parse request")) {
		t.Fatalf("answer to a bad request: %s", b[:n])
	}
}

func TestBowControlSocketBusy(t *testing.T) {
	_, sock := startControl(t, 1<<20)
	e, err := bow.Open(bow.NewMem(1<<20), bow.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = listenControl(sock, &serveState{e: e})
	var cb errControlBusy
	if !errors.As(err, &cb) {
		t.Fatalf("second listener on a live socket: %v, want errControlBusy", err)
	}
	// A stale socket file (nobody listening) is replaced.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ctl, err := listenControl(stale, &serveState{e: e, srv: nbd.NewServer(engineBackend{e}, nbd.Options{})})
	if err != nil {
		t.Fatalf("listener over a stale socket: %v", err)
	}
	ctl.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("socket after Close: %v, want it removed", err)
	}
}

func TestBowNoServer(t *testing.T) {
	_, err := callControl(filepath.Join(t.TempDir(), "none.sock"), "status")
	code, hint := classify(err)
	if code != exitRefused || !strings.Contains(hint, "bow serve") {
		t.Fatalf("no server: %v, exit %d, hint %q; want exit 4 naming bow serve", err, code, hint)
	}
}

func TestControlFor(t *testing.T) {
	cmd := &cobra.Command{Use: "status"}
	tests := []struct {
		control string
		args    []string
		want    string
		usage   bool
	}{
		{control: "/tmp/x.sock", want: "/tmp/x.sock"},
		{args: []string{"/dev/ubdb"}, want: "/run/snapctl/bow-ubdb.sock"},
		{args: []string{"disk.img"}, want: "/run/snapctl/bow-disk.img.sock"},
		{control: "/tmp/x.sock", args: []string{"/dev/ubdb"}, usage: true},
	}
	for _, tc := range tests {
		got, err := controlFor(cmd, tc.control, tc.args)
		var u usageError
		if tc.usage != errors.As(err, &u) || got != tc.want {
			t.Errorf("controlFor(%q, %q) = %q, %v; want %q, usage error %v", tc.control, tc.args, got, err, tc.want, tc.usage)
		}
	}
}

func TestBowStatePath(t *testing.T) {
	if got, want := bowStatePath("/var/lib/snapctl", "/dev/ubdb"), "/var/lib/snapctl/bow/dev_ubdb.map"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestClassifyBowServe(t *testing.T) {
	tests := []struct {
		err      error
		code     int
		hintPart string
	}{
		{bow.NeedsRestoreError{Device: "/dev/ubdb", Reason: "no map"}, exitNeedsRepair, "snapctl bow restore /dev/ubdb"},
		{fmt.Errorf("serve: %w", bow.NeedsRestoreError{Device: "/dev/ubdb"}), exitNeedsRepair, "bow commit --offline /dev/ubdb"},
		{bow.RestoreInProgressError{Device: "/dev/ubdb"}, exitNeedsRepair, "snapctl bow restore /dev/ubdb"},
		{bow.TransitionError{From: bow.StateTrim, To: bow.StateCommitted}, exitRefused, "bow checkpoint"},
		{bow.NoSpaceError{Device: "d"}, exitRefused, "fstrim"},
		{bow.BlockSizeError{Size: 1024, Log: 4096}, exitUsage, "--block-size 4096"},
		{bow.BlockSizeError{Size: 1000}, exitUsage, "--block-size"},
		{bow.NoLogError{Device: "d"}, exitRefused, "snapctl bow"},
		{bow.DeviceTooSmallError{Device: "d", BlockSize: 4096}, exitRefused, "two 4096-byte blocks"},
		{bow.BrokenError{Device: "/dev/ubdb", Cause: syscall.EIO}, exitNeedsRepair, "bow restore /dev/ubdb"},
		{bow.CorruptLogError{Device: "d"}, exitInvalidData, "--roll-forward-on-corruption"},
		{nbd.BusyError{Path: "/dev/nbd0"}, exitRefused, "another --nbd"},
		{nbd.NotNBDError{Path: "/dev/sda", Reason: "x"}, exitUnsupported, "modprobe nbd"},
		{controlError{Msg: "x", Code: 6, Hint: "do y"}, 6, "do y"},
		{errStoppedEarly{NBD: "/dev/nbd0"}, exitFailure, "restore"},
	}
	for _, tc := range tests {
		code, hint, ok := classifyBowServe(tc.err)
		if !ok || code != tc.code || !strings.Contains(hint, tc.hintPart) {
			t.Errorf("classify(%v) = %d, %q, %v; want %d with hint containing %q", tc.err, code, hint, ok, tc.code, tc.hintPart)
		}
	}
	if _, _, ok := classifyBowServe(errors.New("other")); ok {
		t.Error("an unrelated error was classified")
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestBowServeUsage: bad flag combinations are usage errors before any
// device is opened.
func TestBowServeUsage(t *testing.T) {
	a := newApp(&bytes.Buffer{}, &bytes.Buffer{})
	a.stateDir = t.TempDir()
	cmd := newBowServeCmd(a)
	tests := []serveFlags{
		{},
		{nbdPath: "/dev/nbd0", listen: "unix:/x"},
		{nbdPath: "/dev/nbd0", onFull: "explode"},
		{nbdPath: "/dev/nbd0", onFull: "fail", blockSize: 3000},
		{nbdPath: "/dev/nbd0", onFull: "fail", lowSpace: 101},
		{listen: "udp:1.2.3.4:5", onFull: "fail"},
	}
	for _, f := range tests {
		err := a.bowServe(cmd, "/nonexistent", f)
		var u usageError
		if !errors.As(err, &u) {
			t.Errorf("serve with %+v: %v, want a usage error", f, err)
		}
	}
}
