package bow

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
)

// crashDev records every write and flush so that the device can be
// "crashed" after any write: what survives is everything flushed before it
// plus, depending on the crash model, none or some of the writes since.
type crashDev struct {
	mu     sync.Mutex
	cur    []byte
	events []crashEvent
}

type crashEvent struct {
	off   int64
	data  []byte
	flush bool
}

func newCrashDev(img []byte) *crashDev { return &crashDev{cur: append([]byte(nil), img...)} }

func (d *crashDev) Name() string { return "crashdev" }
func (d *crashDev) Size() int64  { return int64(len(d.cur)) }

func (d *crashDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.cur[off:off+int64(len(p))]), nil
}

func (d *crashDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.cur[off:], p)
	d.events = append(d.events, crashEvent{off: off, data: append([]byte(nil), p...)})
	return len(p), nil
}

func (d *crashDev) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(d.events, crashEvent{flush: true})
	return nil
}

func (d *crashDev) Discard(off, n int64) error {
	_, err := d.WriteAt(make([]byte, n), off)
	return err
}

func (d *crashDev) mark() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.events)
}

// Crash models: everything not flushed is lost, or each block of each
// unflushed write independently survives or not.
const (
	dropAll = "drop-all"
	subset  = "random-subset"
)

// crashPoints replays events over base and calls fn with the image a crash
// would leave right after write event i, for each write event in [from, to)
// that is a multiple of step away from from, under both crash models.
func crashPoints(base []byte, events []crashEvent, bs int64, from, to, step int, rng *rand.Rand, fn func(i int, model string, img []byte)) {
	durable := append([]byte(nil), base...)
	var pending []crashEvent
	img := make([]byte, len(base))
	for i, ev := range events {
		if i >= to {
			break
		}
		if ev.flush {
			for _, p := range pending {
				copy(durable[p.off:], p.data)
			}
			pending = pending[:0]
			continue
		}
		pending = append(pending, ev)
		if i < from || (i-from)%step != 0 {
			continue
		}
		copy(img, durable)
		fn(i, dropAll, img)
		copy(img, durable)
		for _, p := range pending {
			for o := int64(0); o < int64(len(p.data)); o += bs {
				if rng.IntN(2) == 0 {
					copy(img[p.off+o:], p.data[o:min(o+bs, int64(len(p.data)))])
				}
			}
		}
		fn(i, subset, img)
	}
}

// durableImage is what survives a crash at the end of events with nothing
// unflushed kept.
func durableImage(base []byte, events []crashEvent) []byte {
	durable := append([]byte(nil), base...)
	var pending []crashEvent
	for _, ev := range events {
		if !ev.flush {
			pending = append(pending, ev)
			continue
		}
		for _, p := range pending {
			copy(durable[p.off:], p.data)
		}
		pending = pending[:0]
	}
	return durable
}

// crashWorkload runs a checkpoint and writes over a crashDev and returns
// what the crash checks need.
type crashRun struct {
	bs                   int64
	base, ckpt, final    []byte
	ckFree               []bool
	events               []crashEvent
	ckStart, commitStart int
	commitEnd            int
	writes, enospc       int
}

func runCrashWorkload(t *testing.T, bs, blocks int64, writers, writesEach int, seed uint64, writeBack int64) *crashRun {
	t.Helper()
	size := bs * blocks
	base := pattern(size, seed)
	dev := newCrashDev(base)
	e, err := Open(dev, Options{BlockSize: bs, WriteBack: writeBack})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	// Free the top half and a few holes below.
	if err := e.Discard(size/2, size/2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 8; i++ {
		b := 1 + rng.Int64N(blocks/2-4)
		if err := e.Discard(b*bs, 2*bs); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.WriteAt(pattern(3*bs, seed+1), size/2); err != nil {
		t.Fatal(err)
	}
	r := &crashRun{bs: bs, base: base}
	e.mu.Lock()
	r.ckFree = make([]bool, blocks)
	e.rm.each(0, uint64(blocks), func(s, en uint64, k kind) {
		for b := s; b < en; b++ {
			r.ckFree[b] = k == kindFree
		}
	})
	e.mu.Unlock()
	r.ckStart = dev.mark()
	if err := e.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.ckpt = readAll(t, e, size)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)+100))
			for i := 0; i < writesEach; i++ {
				var off, n int64
				if rng.IntN(10) < 7 {
					off = rng.Int64N(blocks/4) * bs // hot region, block 0 included
				} else {
					off = rng.Int64N(blocks) * bs
				}
				n = (1 + rng.Int64N(3)) * bs
				if rng.IntN(3) == 0 {
					off += rng.Int64N(bs)
					n -= rng.Int64N(bs)
				}
				n = min(n, size-off)
				_, err := e.WriteAt(pattern(n, rng.Uint64()), off)
				mu.Lock()
				switch {
				case errors.Is(err, syscall.ENOSPC):
					r.enospc++
				case err != nil:
					t.Errorf("write %d+%d: %v", off, n, err)
				default:
					r.writes++
				}
				mu.Unlock()
				switch rng.IntN(20) {
				case 0, 1:
					e.Flush()
				case 2:
					e.Discard(rng.Int64N(blocks)*bs, bs*(1+rng.Int64N(4)))
				}
			}
		}(w)
	}
	wg.Wait()
	checkMap(t, e)
	r.final = readAll(t, e, size)
	r.commitStart = dev.mark()
	if err := e.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.commitEnd = dev.mark()
	r.events = dev.events
	t.Logf("bs %d: %d writes, %d refused for space, %d device events, status %+v", bs, r.writes, r.enospc, len(r.events), e.Status())
	return r
}

// checkRestored restores img in place and checks it against the checkpoint.
// An image without a log must already be the checkpoint's: a restore that
// wrote its last block has nothing left to do.
func (r *crashRun) checkRestored(t *testing.T, what string, img []byte) {
	t.Helper()
	mem := NewMemFrom(img)
	_, err := Restore(context.Background(), mem, RestoreOptions{})
	var nl NoLogError
	if err != nil && !errors.As(err, &nl) {
		t.Fatalf("%s: restore: %v", what, err)
	}
	if b := diffBlocks(mem.Bytes(), r.ckpt, r.bs, func(b int64) bool { return !r.ckFree[b] }); b >= 0 {
		t.Fatalf("%s: restored image differs from the checkpoint at block %d (restore said %v)", what, b, err)
	}
}

func TestCrashPoints(t *testing.T) {
	tests := []struct {
		name          string
		bs, blocks    int64
		writers, each int
		step          int
		writeBack     int64
	}{
		{"sequential 512 write-through", 512, 256, 1, 1200, 1, -1},
		{"sequential 512 write-back", 512, 256, 1, 1200, 1, 0},
		{"concurrent 4096 write-back", 4096, 128, 4, 300, 2, 0},
		{"concurrent 1024 write-through", 1024, 128, 3, 350, 1, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runCrashWorkload(t, tt.bs, tt.blocks, tt.writers, tt.each, 42, tt.writeBack)
			if r.writes+r.enospc < 1000 {
				t.Fatalf("got %d writes, want at least 1000", r.writes+r.enospc)
			}
			rng := rand.New(rand.NewPCG(7, 7))
			points := 0
			crashPoints(r.base, r.events, r.bs, r.ckStart, r.commitEnd, tt.step, rng, func(i int, model string, img []byte) {
				points++
				inCommit := i >= r.commitStart
				mem := NewMemFrom(img)
				_, err := Restore(context.Background(), mem, RestoreOptions{})
				var nl NoLogError
				if errors.As(err, &nl) && (i < r.ckStart+8 || inCommit) {
					if !inCommit {
						if b := diffBlocks(img, r.ckpt, r.bs, func(b int64) bool { return !r.ckFree[b] }); b >= 0 {
							t.Fatalf("crash after event %d (%s) before the log: block %d already changed", i, model, b)
						}
					}
					return
				}
				if err != nil {
					t.Fatalf("crash after event %d (%s): restore: %v", i, model, err)
				}
				if b := diffBlocks(mem.Bytes(), r.ckpt, r.bs, func(b int64) bool { return !r.ckFree[b] }); b >= 0 {
					t.Fatalf("crash after event %d (%s): restored image differs from the checkpoint at block %d", i, model, b)
				}
			})
			if points < 1000 {
				t.Errorf("checked %d crash points, want at least 1000", points)
			}
			if got := durableImage(r.base, r.events); diffBlocks(got, r.final, r.bs, nil) >= 0 {
				t.Errorf("after commit the durable image is not the last written content")
			}
			t.Logf("%d crash images restored", points)
		})
	}
}

// TestRestoreCrash crashes restores at their writes and runs them again.
func TestRestoreCrash(t *testing.T) {
	for _, bs := range []int64{512, 4096} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			r := runCrashWorkload(t, bs, 128, 1, 1000, 9, 0)
			rng := rand.New(rand.NewPCG(9, 9))
			images, points := 0, 0
			// Crash images from throughout the checkpoint, each crashed
			// again during its restore.
			crashPoints(r.base, r.events, r.bs, r.ckStart+20, r.commitStart, (r.commitStart-r.ckStart)/12, rng, func(i int, model string, img []byte) {
				images++
				dev := newCrashDev(img)
				if _, err := Restore(context.Background(), dev, RestoreOptions{}); err != nil {
					t.Fatalf("image %d (%s): restore: %v", i, model, err)
				}
				step := max(1, len(dev.events)/150)
				crashPoints(img, dev.events, r.bs, 0, len(dev.events), step, rng, func(j int, model2 string, img2 []byte) {
					points++
					what := fmt.Sprintf("image %d (%s), restore crashed after write %d (%s)", i, model, j, model2)
					if rng.IntN(4) > 0 {
						r.checkRestored(t, what, img2)
						return
					}
					// Crash the second restore too, then finish.
					dev2 := newCrashDev(img2)
					_, err := Restore(context.Background(), dev2, RestoreOptions{})
					var nl NoLogError
					if errors.As(err, &nl) {
						r.checkRestored(t, what, img2)
						return
					}
					if err != nil {
						t.Fatalf("%s: second restore: %v", what, err)
					}
					if len(dev2.events) == 0 {
						return
					}
					k := rng.IntN(len(dev2.events))
					crashPoints(img2, dev2.events, r.bs, k, k+1, 1, rng, func(_ int, model3 string, img3 []byte) {
						r.checkRestored(t, what+fmt.Sprintf(", again after write %d (%s)", k, model3), img3)
					})
				})
			})
			t.Logf("%d crash images, %d crashed restores rerun", images, points)
			if points < 200 {
				t.Errorf("got %d crashed restores, want at least 200", points)
			}
		})
	}
}

// TestRestoreMarksBegunFirst: once a restore has written anything, block 0
// says a restore is under way (WOB) until the restore is done. A device
// whose log still said BOW over replayed blocks would be resumed by a
// server, or kept by a roll forward, with a mix of both images.
func TestRestoreMarksBegunFirst(t *testing.T) {
	for _, bs := range []int64{512, 4096} {
		t.Run(fmt.Sprint(bs), func(t *testing.T) {
			r := runCrashWorkload(t, bs, 128, 1, 600, 11, 0)
			img := durableImage(r.base, r.events[:r.commitStart])
			if h, err := ParseHeader(img[:bs]); err != nil || h.Magic != Magic {
				t.Fatalf("before the restore: block 0 header %+v, %v; want a checkpoint log", h, err)
			}
			dev := newCrashDev(img)
			if _, err := Restore(context.Background(), dev, RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			final := dev.cur
			cur := append([]byte(nil), img...)
			writes := 0
			for i, ev := range dev.events {
				if ev.flush {
					continue
				}
				copy(cur[ev.off:], ev.data)
				writes++
				if i == len(dev.events)-1 || string(cur) == string(final) {
					continue
				}
				h, err := ParseHeader(cur[:bs])
				if err != nil || h.Magic != PartialMagic {
					t.Fatalf("killed after restore write %d (offset %d): block 0 magic %#x (%v), want the restore's mark %#x", writes, ev.off, h.Magic, err, PartialMagic)
				}
			}
			if writes < 10 {
				t.Fatalf("the restore wrote %d times, want a real replay", writes)
			}
		})
	}
}

// TestRollForwardRefusesHalfRestore: a device whose restore has begun can
// only be restored; rolling it forward would keep a mix of both images.
func TestRollForwardRefusesHalfRestore(t *testing.T) {
	img := make([]byte, 8*512)
	lb := LogBlock{Header: Header{Magic: PartialMagic, Version: Version, BlockSize: 512, Sector0: 1},
		Entries: []Entry{{Source: 0, Dest: 2, Size: 512}}}
	b, err := lb.Encode()
	if err != nil {
		t.Fatal(err)
	}
	copy(img, b)
	err = RollForward(context.Background(), NewMemFrom(img))
	if !errors.As(err, new(RestoreInProgressError)) {
		t.Fatalf("roll forward of a half-restored device: got %v, want RestoreInProgressError", err)
	}
}
