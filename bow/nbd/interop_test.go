package nbd

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestInteropLibnbd serves an export over a unix socket to libnbd's tools
// (Debian's libnbd-bin: nbdinfo, nbdcopy), an independent client of the
// newstyle handshake and the transmission phase. Skipped where they are not
// installed.
func TestInteropLibnbd(t *testing.T) {
	if _, err := exec.LookPath("nbdinfo"); err != nil {
		t.Skip("nbdinfo not installed (apt-get install libnbd-bin)")
	}
	if _, err := exec.LookPath("nbdcopy"); err != nil {
		t.Skip("nbdcopy not installed (apt-get install libnbd-bin)")
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	m := newMem(8 << 20)
	s := NewServer(m, Options{BlockSize: 4096})
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go s.ServeClient(conn, "bow")
		}
	}()
	uri := "nbd+unix:///bow?socket=" + sock

	out, err := exec.Command("nbdinfo", "--json", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name     string `json:"export-name"`
			Size     int64  `json:"export-size"`
			Flush    bool   `json:"can_flush"`
			FUA      bool   `json:"can_fua"`
			Trim     bool   `json:"can_trim"`
			ReadOnly bool   `json:"is_read_only"`
			Pref     int    `json:"block_size_preferred"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: protocol %q, %d exports; want newstyle-fixed, 1", info.Protocol, len(info.Exports))
	}
	if e := info.Exports[0]; e.Name != "bow" || e.Size != 8<<20 || !e.Flush || !e.FUA || !e.Trim || e.ReadOnly || e.Pref != 4096 {
		t.Fatalf("nbdinfo export: %+v", e)
	}

	src := filepath.Join(dir, "src")
	data := pat(5, 8<<20)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nbdcopy", "--flush", src, uri).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy to the server: %v\n%s", err, out)
	}
	if !bytes.Equal(m.bytes(0, 8<<20), data) {
		t.Fatal("the backend does not hold what nbdcopy wrote")
	}
	if m.flushes.Load() == 0 {
		t.Error("nbdcopy --flush sent no flush")
	}
	dst := filepath.Join(dir, "dst")
	if out, err := exec.Command("nbdcopy", uri, dst).CombinedOutput(); err != nil {
		t.Fatalf("nbdcopy from the server: %v\n%s", err, out)
	}
	got, err := os.ReadFile(dst)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("nbdcopy read back %d bytes (%v), not what was written", len(got), err)
	}
}
