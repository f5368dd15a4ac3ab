package serve

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapctl/snapctl/bow"
	"github.com/snapctl/snapctl/bow/control"
)

// image makes a 1 MiB image file.
func image(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestStartStop: a server on an image file, served to NBD clients on a
// unix socket, steered over its control socket; its clean stop saves the
// checkpoint's map, and serving again resumes the checkpoint.
func TestStartStop(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{
		Device:    image(t, dir),
		Listen:    "unix:" + filepath.Join(dir, "nbd.sock"),
		Control:   filepath.Join(dir, "ctl.sock"),
		StatePath: filepath.Join(dir, "state", "disk.map"),
	}
	ctx := context.Background()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Engine().Trim(512<<10, 512<<10); err != nil {
		t.Fatal(err)
	}
	c := control.Client{Socket: cfg.Control}
	st, err := c.Checkpoint(ctx)
	if err != nil || st.State != bow.StateCheckpoint || st.Listen != cfg.Listen || st.StatePath != cfg.StatePath {
		t.Fatalf("checkpoint over the control socket: %v, %+v", err, st)
	}
	res, err := s.Stop(ctx)
	if err != nil || res.State != bow.StateCheckpoint || res.StatePath != cfg.StatePath {
		t.Fatalf("stop: %v, %+v; want state checkpoint, map at %s", err, res, cfg.StatePath)
	}
	if _, err := os.Stat(cfg.StatePath); err != nil {
		t.Fatalf("range map after a clean stop: %v", err)
	}
	for _, p := range []string{cfg.Control, filepath.Join(dir, "nbd.sock")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after stop: %v, want it gone", p, err)
		}
	}
	if _, err := c.Status(ctx); !errors.As(err, new(control.NoServerError)) {
		t.Errorf("status after stop: got %v, want NoServerError", err)
	}

	s, err = Start(ctx, cfg)
	if err != nil {
		t.Fatalf("serve again: %v", err)
	}
	if got := s.Status().State; got != bow.StateCheckpoint {
		t.Errorf("served again: state %v, want the checkpoint resumed", got)
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Stop(ctx); err != nil || res.State != bow.StateCommitted {
		t.Fatalf("stop: %v, %+v; want state committed", err, res)
	}
}

// TestStartRefuses: a TCP address others can reach is refused before the
// device is opened; so is a second server on a live control socket.
func TestStartRefuses(t *testing.T) {
	dir := t.TempDir()
	_, err := Start(context.Background(), Config{Device: filepath.Join(dir, "missing"), Listen: "tcp:0.0.0.0:10809"})
	var ue UntrustedNetworkError
	if !errors.As(err, &ue) || ue.Address != "0.0.0.0:10809" {
		t.Fatalf("tcp:0.0.0.0: got %v, want UntrustedNetworkError", err)
	}
	cfg := Config{Device: image(t, dir), Listen: "tcp:127.0.0.1:0", Control: filepath.Join(dir, "ctl.sock")}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	defer s.Stop(context.Background())
	cfg.Listen = "unix:" + filepath.Join(dir, "nbd.sock")
	if _, err := Start(context.Background(), cfg); !errors.As(err, new(control.SocketBusyError)) {
		t.Fatalf("second server on the control socket: got %v, want SocketBusyError", err)
	}
}

// TestRunStops: Run serves until its context ends, then stops cleanly.
func TestRunStops(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{Device: image(t, dir), Listen: "unix:" + filepath.Join(dir, "nbd.sock"), Control: filepath.Join(dir, "ctl.sock")}
	var served bool
	res, err := Run(ctx, cfg, func(s *Server) {
		served = s.Control() == cfg.Control
		cancel()
	})
	if err != nil || !served || res.State != bow.StateTrim {
		t.Fatalf("Run: %v, %+v, served %v; want a clean stop in trim state", err, res, served)
	}
}
