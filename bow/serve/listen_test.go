package serve

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestCheckLoopback: only addresses this host alone can reach pass.
func TestCheckLoopback(t *testing.T) {
	names := map[string][]string{
		"loop.test":   {"127.0.0.1", "::1"},
		"mixed.test":  {"127.0.0.1", "192.0.2.1"},
		"remote.test": {"2001:db8::7"},
		"any.test":    {"0.0.0.0"},
	}
	lookup := func(_ context.Context, host string) ([]string, error) {
		if a, ok := names[host]; ok {
			return a, nil
		}
		return nil, errors.New("no such host")
	}
	tests := []struct {
		addr    string
		ok      bool
		untrust bool   // UntrustedNetworkError (else another error)
		reason  string // part of the refusal
	}{
		{addr: "127.0.0.1:10809", ok: true},
		{addr: "127.3.4.5:10809", ok: true},
		{addr: "[::1]:10809", ok: true},
		{addr: "[::ffff:127.0.0.1]:10809", ok: true},
		{addr: "loop.test:10809", ok: true},
		{addr: "0.0.0.0:10809", untrust: true, reason: "wildcard"},
		{addr: "[::]:10809", untrust: true, reason: "wildcard"},
		{addr: ":10809", untrust: true, reason: "wildcard"},
		{addr: "192.0.2.7:10809", untrust: true, reason: "192.0.2.7 is not a loopback address"},
		{addr: "[2001:db8::1]:10809", untrust: true, reason: "not a loopback"},
		{addr: "[fe80::1%lo]:10809", untrust: true, reason: "not a loopback"},
		{addr: "mixed.test:10809", untrust: true, reason: "mixed.test resolves to 192.0.2.1"},
		{addr: "remote.test:10809", untrust: true, reason: "resolves to 2001:db8::7"},
		{addr: "any.test:10809", untrust: true, reason: "wildcard"},
		{addr: "nowhere.test:10809", reason: "resolve nowhere.test"},
		{addr: "10809", reason: "want unix:PATH or tcp:HOST:PORT"},
	}
	for _, tc := range tests {
		err := CheckLoopback(context.Background(), tc.addr, lookup)
		var ue UntrustedNetworkError
		switch {
		case tc.ok && err != nil:
			t.Errorf("%s: got %v, want it allowed", tc.addr, err)
		case tc.ok:
		case err == nil:
			t.Errorf("%s: allowed, want it refused", tc.addr)
		case errors.As(err, &ue) != tc.untrust || !strings.Contains(err.Error(), tc.reason):
			t.Errorf("%s: got %v, want UntrustedNetworkError %v, containing %q", tc.addr, err, tc.untrust, tc.reason)
		case tc.untrust && (ue.Address != tc.addr || !strings.Contains(err.Error(), "tcp:"+tc.addr)):
			t.Errorf("%s: got %v, want the address named", tc.addr, err)
		}
	}
	// The system's resolver: localhost is loopback.
	if err := CheckLoopback(context.Background(), "localhost:10809", nil); err != nil {
		t.Errorf("localhost: got %v, want it allowed", err)
	}
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct{ in, network, addr string }{
		{"unix:/run/x.sock", "unix", "/run/x.sock"},
		{"tcp:127.0.0.1:10809", "tcp", "127.0.0.1:10809"},
		{"tcp:[::1]:10809", "tcp", "[::1]:10809"},
		{"tcp:localhost", "", ""},
		{"udp:1.2.3.4:5", "", ""},
		{"unix:", "", ""},
		{"/run/x.sock", "", ""},
	} {
		n, a, err := ParseAddress(tc.in)
		if n != tc.network || a != tc.addr || (err == nil) != (tc.network != "") {
			t.Errorf("ParseAddress(%q) = %q, %q, %v; want %q, %q", tc.in, n, a, err, tc.network, tc.addr)
		}
	}
}

func TestMountPoint(t *testing.T) {
	table := "/dev/sda1 / ext4 rw 0 0\n/dev/nbd0 /mnt/my\\040disk ext4 rw 0 0\n/dev/nbd1 /srv ext4 rw 0 0\n"
	for dev, want := range map[string]string{"/dev/nbd0": "/mnt/my disk", "/dev/nbd1": "/srv", "/dev/nbd2": ""} {
		if got := mountPoint(table, dev); got != want {
			t.Errorf("mountPoint(%s) = %q, want %q", dev, got, want)
		}
	}
}

func TestStatePath(t *testing.T) {
	if got, want := StatePath("/var/lib/snapctl", "/dev/ubdb"), "/var/lib/snapctl/bow/dev_ubdb.map"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}
