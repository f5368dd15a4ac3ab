package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"testing"
)

// memDevice is a device in memory that records its writes.
type memDevice struct {
	b      []byte
	writes [][2]int64 // offset, length
	// failAfter makes the write with this index (from 1) fail, as a kill
	// would stop the writer; 0 never fails.
	failAfter int
}

func (d *memDevice) ReadAt(p []byte, off int64) (int, error) { return copy(p, d.b[off:]), nil }

func (d *memDevice) WriteAt(p []byte, off int64) (int, error) {
	if d.failAfter > 0 && len(d.writes)+1 == d.failAfter {
		return 0, errors.New("killed")
	}
	d.writes = append(d.writes, [2]int64{off, int64(len(p))})
	return copy(d.b[off:], p), nil
}

func newWriter(dev *memDevice, img []byte, chunk int64, block int) *imageWriter {
	return &imageWriter{dev: dev, img: bytes.NewReader(img), imgBytes: int64(len(img)), devBytes: int64(len(dev.b)),
		chunk: chunk, devBuf: make([]byte, block), imgBuf: make([]byte, block)}
}

func TestImageWriter(t *testing.T) {
	const chunk = 4096
	rng := rand.New(rand.NewSource(1))
	tests := []struct {
		name      string
		devBytes  int
		imgBytes  int
		changes   []int // byte offsets changed in the image
		wantChunk uint64
		wantRuns  int
	}{
		{name: "equal", devBytes: 64 << 10, imgBytes: 64 << 10, wantChunk: 0},
		{name: "one byte", devBytes: 64 << 10, imgBytes: 64 << 10, changes: []int{5000}, wantChunk: 1, wantRuns: 1},
		{name: "a run of three", devBytes: 64 << 10, imgBytes: 64 << 10, changes: []int{4096, 8192, 12289}, wantChunk: 3, wantRuns: 1},
		{name: "two runs", devBytes: 64 << 10, imgBytes: 64 << 10, changes: []int{0, 16384}, wantChunk: 2, wantRuns: 2},
		{name: "run across blocks", devBytes: 64 << 10, imgBytes: 64 << 10, changes: []int{16383, 16384}, wantChunk: 2, wantRuns: 2},
		{name: "image shorter, tail mid-chunk", devBytes: 64 << 10, imgBytes: 40<<10 + 100, changes: []int{40<<10 + 99}, wantChunk: 1, wantRuns: 1},
		{name: "device ends mid-chunk", devBytes: 64<<10 + 512, imgBytes: 64<<10 + 512, changes: []int{64<<10 + 1}, wantChunk: 1, wantRuns: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dev := &memDevice{b: make([]byte, tt.devBytes)}
			rng.Read(dev.b)
			orig := bytes.Clone(dev.b)
			img := bytes.Clone(dev.b[:tt.imgBytes])
			for _, o := range tt.changes {
				img[o] ^= 0xff
			}
			w := newWriter(dev, img, chunk, 16<<10)
			chunks, changed, written, err := w.write(context.Background(), func(int64) {}, func() {})
			if err != nil {
				t.Fatal(err)
			}
			if want := uint64((tt.imgBytes + chunk - 1) / chunk); chunks != want {
				t.Errorf("chunks: got %d, want %d", chunks, want)
			}
			if changed != tt.wantChunk || len(dev.writes) != tt.wantRuns {
				t.Errorf("got %d changed chunks in %d writes %v, want %d in %d", changed, len(dev.writes), dev.writes, tt.wantChunk, tt.wantRuns)
			}
			var sum int64
			for _, wr := range dev.writes {
				sum += wr[1]
				if wr[0]%chunk != 0 || (wr[1]%chunk != 0 && wr[0]+wr[1] != int64(tt.devBytes)) {
					t.Errorf("write %v is not whole chunks", wr)
				}
			}
			if sum != written {
				t.Errorf("written: got %d, want %d", written, sum)
			}
			if !bytes.Equal(dev.b[:tt.imgBytes], img) {
				t.Error("the device does not hold the image")
			}
			if !bytes.Equal(dev.b[tt.imgBytes:], orig[tt.imgBytes:]) {
				t.Error("the device changed past the image's end")
			}
			if off, ok, err := w.verify(context.Background(), func(int64) {}); err != nil || !ok {
				t.Errorf("verify: differs at %d, err %v", off, err)
			}
		})
	}
}

// TestImageWriterRestart kills the writer at every write and runs it again:
// the second run finishes, writes only what still differs, and the device
// ends equal to the image.
func TestImageWriterRestart(t *testing.T) {
	const chunk, size = 4096, 256 << 10
	rng := rand.New(rand.NewSource(2))
	base := make([]byte, size)
	rng.Read(base)
	img := bytes.Clone(base)
	for i := 0; i < 20; i++ {
		img[rng.Intn(size)] ^= 0x5a
	}
	full := &memDevice{b: bytes.Clone(base)}
	_, wantChanged, _, err := newWriter(full, img, chunk, 32<<10).write(context.Background(), func(int64) {}, func() {})
	if err != nil {
		t.Fatal(err)
	}
	for k := 1; k <= len(full.writes); k++ {
		t.Run(fmt.Sprint("kill at write ", k), func(t *testing.T) {
			dev := &memDevice{b: bytes.Clone(base), failAfter: k}
			if _, _, _, err := newWriter(dev, img, chunk, 32<<10).write(context.Background(), func(int64) {}, func() {}); err == nil {
				t.Fatal("the first run did not stop")
			}
			done := len(dev.writes)
			dev.failAfter, dev.writes = 0, nil
			w := newWriter(dev, img, chunk, 32<<10)
			_, changed, _, err := w.write(context.Background(), func(int64) {}, func() {})
			if err != nil {
				t.Fatal(err)
			}
			if changed > wantChanged || len(dev.writes) != len(full.writes)-done {
				t.Errorf("re-run wrote %d chunks in %d writes; %d of %d writes were done before", changed, len(dev.writes), done, len(full.writes))
			}
			if !bytes.Equal(dev.b, img) {
				t.Error("the device does not hold the image after the re-run")
			}
		})
	}
}

func TestImageWriterVerifyMismatch(t *testing.T) {
	dev := &memDevice{b: make([]byte, 64<<10)}
	img := make([]byte, 64<<10)
	img[33333] = 1
	off, ok, err := newWriter(dev, img, 4096, 16<<10).verify(context.Background(), func(int64) {})
	if err != nil || ok || off != 33333 {
		t.Errorf("got offset %d, equal %v, err %v; want 33333, false, nil", off, ok, err)
	}
}
