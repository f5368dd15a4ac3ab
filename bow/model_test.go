package bow

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"pgregory.net/rapid"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// Thousands of sequences by default: 600 per block size.
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.checks" })
	if !set {
		flag.Set("rapid.checks", "600")
	}
	set = false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == "rapid.steps" })
	if !set {
		flag.Set("rapid.steps", "100")
	}
	os.Exit(m.Run())
}

// model is what a block device should return: the bytes last written,
// where anything is known about them.
type model struct {
	bs, size int64
	data     []byte
	known    []bool // per byte: data is what the device must return
	free     []bool // per block: may be used for backups (trim state)
	state    State
	ckpt     []byte // the device contents when the checkpoint was taken
	ckFree   []bool // blocks free at the checkpoint: their contents don't matter
}

func (m *model) write(p []byte, off int64) {
	copy(m.data[off:], p)
	for i := range p {
		m.known[off+int64(i)] = true
	}
	if m.state == StateTrim {
		for b := off / m.bs; b*m.bs < off+int64(len(p)); b++ {
			m.free[b] = false
		}
	}
}

func (m *model) discard(off, n int64) {
	lo, hi := (off+m.bs-1)/m.bs, (off+n)/m.bs
	for b := lo; b < hi; b++ {
		if m.state == StateTrim {
			m.free[b] = true
		}
		for i := b * m.bs; i < (b+1)*m.bs; i++ {
			m.known[i] = false
		}
	}
}

// compare fails if got differs from the model at a known byte of [off, off+len(got)).
func (m *model) compare(t *rapid.T, what string, got []byte, off int64) {
	t.Helper()
	for i := range got {
		if j := off + int64(i); m.known[j] && got[i] != m.data[j] {
			t.Fatalf("%s: byte %d (block %d): got %#02x, want %#02x", what, j, j/m.bs, got[i], m.data[j])
		}
	}
}

// fastTempDir is a temporary directory on tmpfs when there is one: the
// model restarts the engine thousands of times and each restart fsyncs the
// state file and its directory.
func fastTempDir(t *testing.T) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "bow-model-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

// modelStats counts what the sequences covered, to see they are not trivial.
var modelStats struct{ seqs, restores, commits, enospc, writes, restarts int }

func TestModel(t *testing.T) {
	dir := fastTempDir(t)
	defer func() { t.Logf("model coverage: %+v", modelStats) }()
	for _, bs := range []int64{512, 1024, 2048, 4096} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			n := 0
			rapid.Check(t, func(rt *rapid.T) {
				n++
				runModel(rt, bs, filepath.Join(dir, fmt.Sprintf("m%d-%d", bs, n)))
			})
		})
	}
}

func runModel(t *rapid.T, bs int64, path string) {
	blocks := rapid.Int64Range(4, 128).Draw(t, "blocks")
	size := blocks * bs
	img := pattern(size, uint64(blocks))
	if err := os.WriteFile(path+".img", img, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path + ".img")
	defer os.Remove(path + ".state")
	f, err := OpenFile(path + ".img")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev := noSync{f}
	opts := Options{
		BlockSize: bs,
		OnFull:    FullPolicy(rapid.IntRange(0, 1).Draw(t, "onFull")),
		StatePath: path + ".state",
		WriteBack: []int64{-1, 0, 3000}[rapid.IntRange(0, 2).Draw(t, "writeBack")],
	}
	e, err := Open(dev, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { e.Close() }()
	m := &model{bs: bs, size: size, data: img, known: make([]bool, size), free: make([]bool, blocks)}
	for i := range m.known {
		m.known[i] = true
	}
	span := func(t *rapid.T, maxBlocks int64) (int64, int64) {
		if rapid.Bool().Draw(t, "aligned") {
			b := rapid.Int64Range(0, blocks-1).Draw(t, "block")
			n := rapid.Int64Range(1, min(maxBlocks, blocks-b)).Draw(t, "nblocks")
			return b * bs, n * bs
		}
		off := rapid.Int64Range(0, size-1).Draw(t, "off")
		n := rapid.Int64Range(1, min(maxBlocks*bs, size-off)).Draw(t, "len")
		return off, n
	}
	actions := map[string]func(*rapid.T){
		"write": func(t *rapid.T) {
			off, n := span(t, 4)
			p := pattern(n+8, rapid.Uint64().Draw(t, "seed"))[:n]
			_, err := e.WriteAt(p, off)
			if errors.Is(err, syscall.ENOSPC) {
				modelStats.enospc++
				if opts.OnFull != FullFail || e.State() != StateCheckpoint {
					t.Fatalf("ENOSPC with policy %v in %v", opts.OnFull, e.State())
				}
				return
			}
			if err != nil {
				t.Fatalf("write %d+%d: %v", off, n, err)
			}
			if e.State() != m.state {
				if m.state != StateCheckpoint || e.State() != StateCommitted || opts.OnFull != FullCommit {
					t.Fatalf("state went from %v to %v on a write", m.state, e.State())
				}
				m.state = StateCommitted
			}
			m.write(p, off)
			modelStats.writes++
		},
		"trim": func(t *rapid.T) {
			off, n := span(t, blocks)
			if err := e.Discard(off, n); err != nil {
				t.Fatalf("discard %d+%d: %v", off, n, err)
			}
			m.discard(off, n)
		},
		"read": func(t *rapid.T) {
			off, n := span(t, 8)
			got := make([]byte, n)
			if _, err := e.ReadAt(got, off); err != nil {
				t.Fatalf("read %d+%d: %v", off, n, err)
			}
			m.compare(t, fmt.Sprintf("read %d+%d", off, n), got, off)
		},
		"flush": func(t *rapid.T) {
			if err := e.Flush(); err != nil {
				t.Fatal(err)
			}
		},
		"checkpoint": func(t *rapid.T) {
			err := e.Checkpoint(context.Background())
			if m.state != StateTrim {
				var te TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("checkpoint in %v: got %v, want TransitionError", m.state, err)
				}
				return
			}
			if errors.Is(err, syscall.ENOSPC) {
				return
			}
			if err != nil {
				t.Fatalf("checkpoint: %v", err)
			}
			m.state = StateCheckpoint
			m.ckpt = readAll(t, e, size)
			m.ckFree = append([]bool(nil), m.free...)
			m.compare(t, "image at checkpoint", m.ckpt, 0)
		},
		"commit": func(t *rapid.T) {
			err := e.Commit(context.Background())
			if m.state != StateCheckpoint {
				var te TransitionError
				if !errors.As(err, &te) {
					t.Fatalf("commit in %v: got %v, want TransitionError", m.state, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("commit: %v", err)
			}
			m.state = StateCommitted
		},
		"restart": func(t *rapid.T) {
			if err := e.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			modelStats.restarts++
			if e, err = Open(dev, opts); err != nil {
				t.Fatalf("reopen in %v: %v", m.state, err)
			}
			if m.state == StateTrim {
				// Trims are not kept across a restart.
				clear(m.free)
			}
			if m.state == StateCommitted {
				// Without a log a device opens in trim state again.
				m.state = StateTrim
			}
			if e.State() != m.state {
				t.Fatalf("reopened in %v, want %v", e.State(), m.state)
			}
		},
		"": func(t *rapid.T) { checkMap(t, e) },
	}
	// rapid picks actions uniformly: repeat the common ones.
	for i := 2; i <= 6; i++ {
		actions[fmt.Sprint("write", i)] = actions["write"]
	}
	actions["trim2"] = actions["trim"]
	actions["read2"] = actions["read"]
	actions["checkpoint2"] = actions["checkpoint"]
	t.Repeat(actions)
	if err := e.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	final := readAll(t, f, size)
	modelStats.seqs++
	switch m.state {
	case StateCheckpoint:
		modelStats.restores++
		if _, err := Restore(context.Background(), f, RestoreOptions{}); err != nil {
			t.Fatalf("restore: %v", err)
		}
		got := readAll(t, f, size)
		if b := diffBlocks(got, m.ckpt, bs, func(b int64) bool { return !m.ckFree[b] }); b >= 0 {
			t.Fatalf("restored image differs from the checkpoint at block %d", b)
		}
	default:
		if m.state == StateCommitted {
			modelStats.commits++
		}
		m.compare(t, "final image", final, 0)
	}
}
