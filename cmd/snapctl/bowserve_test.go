package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spf13/cobra"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/control"
	"github.com/snapctl/snapctl/bow/nbd"
	"github.com/snapctl/snapctl/bow/serve"
)

// engineHandler answers a control socket from an engine, as a bow server
// does.
type engineHandler struct {
	e   *bow.Engine
	srv *nbd.Server
}

func (h engineHandler) Status() *serveStatus {
	return &serveStatus{Status: h.e.Status(), NBD: "/dev/nbd9", PID: os.Getpid(), StatePath: "/x.map", Server: h.srv.Stats()}
}
func (h engineHandler) Checkpoint(ctx context.Context) error { return h.e.Checkpoint(ctx) }
func (h engineHandler) Commit(ctx context.Context) error     { return h.e.Commit(ctx) }

// startControl runs a control socket for an engine on an in-memory device.
func startControl(t *testing.T, size int64) (*bow.Engine, string) {
	t.Helper()
	e, err := bow.Open(bow.NewMem(size), bow.Options{BlockSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ctl, err := control.Listen(sock, engineHandler{e, nbd.NewServer(e, nbd.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ctl.Close() })
	return e, sock
}

// TestBowControlHints: the errors a server reports over its control socket
// reach the CLI's classifier as the engine's typed errors, which gives
// them their exit codes and hints on this side.
func TestBowControlHints(t *testing.T) {
	e, sock := startControl(t, 1<<20)
	c := control.Client{Socket: sock}
	ctx := context.Background()
	// Nothing trimmed: no room for a checkpoint.
	_, err := c.Checkpoint(ctx)
	code, hint := classify(err)
	if err == nil || code != exitRefused || !strings.Contains(hint, "fstrim") {
		t.Fatalf("checkpoint without free space: %v, exit %d, hint %q; want exit 4 naming fstrim", err, code, hint)
	}
	if err := e.Trim(8192, 512<<10); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Checkpoint(ctx); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	_, err = c.Checkpoint(ctx)
	if code, hint := classify(err); code != exitRefused || !strings.Contains(hint, "bow commit") {
		t.Fatalf("second checkpoint: %v, exit %d, hint %q; want exit 4 naming bow commit", err, code, hint)
	}
	if _, err := c.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = c.Commit(ctx)
	if code, hint := classify(err); code != exitRefused || !strings.Contains(hint, "serve the device again") {
		t.Fatalf("second commit: %v, exit %d, hint %q; want exit 4 naming a new serve", err, code, hint)
	}
}

func TestBowNoServer(t *testing.T) {
	_, err := control.Client{Socket: filepath.Join(t.TempDir(), "none.sock")}.Status(context.Background())
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
		{control.RemoteError{Msg: "x", Err: bow.BrokenError{Device: "/dev/ubdb"}}, exitNeedsRepair, "bow restore /dev/ubdb"},
		{control.NoServerError{Socket: "/x.sock"}, exitRefused, "snapctl bow serve"},
		{control.SocketBusyError{Socket: "/x.sock"}, exitRefused, "--control"},
		{serve.StoppedError{NBD: "/dev/nbd0"}, exitFailure, "restore"},
		{fmt.Errorf("serve d: %w", serve.UntrustedNetworkError{Address: "0.0.0.0:1"}), exitRefused, "--trusted-network"},
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

// TestBowServeRefusesNetwork: NBD has no authentication, so serving on an
// address other hosts can reach is refused, naming the address and the
// flag that allows it, before the device is even opened; loopback serves.
func TestBowServeRefusesNetwork(t *testing.T) {
	state := t.TempDir()
	for _, addr := range []string{"tcp:0.0.0.0:10809", "tcp::10809", "tcp:[::]:10809", "tcp:192.0.2.7:10809"} {
		_, _, err := runBow(t, "serve", "/nonexistent", "--listen", addr, "--state-dir", state)
		code, hint := classify(err)
		host := strings.TrimPrefix(addr, "tcp:")
		if err == nil || !strings.Contains(err.Error(), host) || code != exitRefused || !strings.Contains(hint, "--trusted-network") {
			t.Errorf("serve --listen %s: %v, exit %d, hint %q; want exit %d naming %s and --trusted-network", addr, err, code, hint, exitRefused, host)
		}
	}
	// Loopback and trusted networks pass the check: the device is opened
	// (and is missing).
	for _, args := range [][]string{{"--listen", "tcp:127.0.0.1:10809"}, {"--listen", "tcp:[::1]:10809"}, {"--listen", "tcp:0.0.0.0:10809", "--trusted-network"}} {
		_, _, err := runBow(t, append([]string{"serve", "/nonexistent", "--state-dir", state, "--control", filepath.Join(state, "c.sock")}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "/nonexistent") {
			t.Errorf("serve %v: %v, want the missing device reported", args, err)
		}
	}
}
