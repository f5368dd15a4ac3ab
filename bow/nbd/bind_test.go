package nbd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// The kernel side of Bind is proven in e2e (TestBow*); here only what
// fails before the kernel is involved.
func TestBindRefuses(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "img")
	if err := os.WriteFile(file, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	s := NewServer(newMem(1<<20), Options{})
	tests := []struct {
		name    string
		path    string
		opts    BindOptions
		s       *Server
		wantNot bool // NotNBDError
		wantErr error
	}{
		{name: "missing device", path: filepath.Join(dir, "nbd0"), wantNot: true},
		{name: "regular file", path: file, wantNot: true},
		{name: "character device", path: "/dev/null", wantNot: true},
		{name: "block size 3000", path: "/dev/nbd0", opts: BindOptions{BlockSize: 3000}, wantErr: syscall.EINVAL},
		{name: "block size 8192", path: "/dev/nbd0", opts: BindOptions{BlockSize: 8192}, wantErr: syscall.EINVAL},
		{name: "export smaller than a block", path: "/dev/nbd0", s: NewServer(newMem(100), Options{}), wantErr: syscall.EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := s
			if tc.s != nil {
				srv = tc.s
			}
			b, err := Bind(context.Background(), tc.path, srv, tc.opts)
			if err == nil {
				b.Disconnect(context.Background())
				t.Fatal("Bind succeeded, want an error")
			}
			var nn NotNBDError
			if tc.wantNot && !errors.As(err, &nn) {
				t.Fatalf("got %v, want NotNBDError", err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestErrBusy(t *testing.T) {
	err := error(BusyError{Path: "/dev/nbd3", PID: 42})
	if !errors.Is(err, syscall.EBUSY) {
		t.Fatal("BusyError does not match EBUSY")
	}
	if got, want := err.Error(), "bind /dev/nbd3: already connected (served by process 42)"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
