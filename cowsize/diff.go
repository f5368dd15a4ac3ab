package cowsize

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
)

// Image is one side of an image diff: a file or block device opened for
// reading, its size in bytes, and a name for error messages.
type Image struct {
	Name string
	R    io.ReaderAt
	Size int64
}

// Progress is told how many bytes of the new image have been compared so
// far and how many there are in total. It is called from the goroutine
// that called Diff, after every block.
type Progress func(done, total int64)

// NewShorterError reports a new image shorter than the old one: the update
// would have to shrink the device, which a snapshot cannot express.
type NewShorterError struct {
	Old, New         string
	OldSize, NewSize int64
}

func (e NewShorterError) Error() string {
	return fmt.Sprintf("new image %q (%d bytes) is shorter than old image %q (%d bytes)", e.New, e.NewSize, e.Old, e.OldSize)
}

// Reading in large blocks with a few blocks in flight per image keeps both
// reads streaming while the previous block is compared; memory stays at
// 2*diffDepth*diffBlock bytes whatever the image size.
const (
	diffBlock = 1 << 20
	diffDepth = 4
)

// Diff counts the chunks of chunkBytes in which newImg differs from oldImg,
// comparing chunk i of one with chunk i of the other. Chunks of newImg past
// the end of oldImg always count, including a chunk that straddles the old
// end: the origin's bytes there are unknown. A partial last chunk of newImg
// counts like a whole one. Both images are read concurrently and
// sequentially in large blocks with constant memory. A newImg shorter than
// oldImg fails with NewShorterError; a read that comes back short of the size
// given fails with io.ErrUnexpectedEOF. progress may be nil.
func Diff(ctx context.Context, oldImg, newImg Image, chunkBytes uint32, progress Progress) (uint64, error) {
	return diff(ctx, oldImg, newImg, chunkBytes, progress, diffBlock)
}

type block struct {
	buf []byte
	n   int
	err error
}

func diff(ctx context.Context, oldImg, newImg Image, chunkBytes uint32, progress Progress, blockBytes int) (uint64, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return 0, err
	}
	if oldImg.Size < 0 || newImg.Size < 0 {
		return 0, fmt.Errorf("compare %q with %q: negative image size", oldImg.Name, newImg.Name)
	}
	if newImg.Size < oldImg.Size {
		return 0, NewShorterError{Old: oldImg.Name, New: newImg.Name, OldSize: oldImg.Size, NewSize: newImg.Size}
	}
	blockBytes = max(blockBytes, int(chunkBytes)) // a multiple: both are powers of two
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(stop)
	start := func(img Image, side string) (<-chan block, chan<- []byte) {
		out := make(chan block, diffDepth)
		free := make(chan []byte, diffDepth)
		for range diffDepth {
			free <- make([]byte, blockBytes)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(out)
			readBlocks(img, side, blockBytes, out, free, stop)
		}()
		return out, free
	}
	oldCh, oldFree := start(oldImg, "old")
	newCh, newFree := start(newImg, "new")

	c := int(chunkBytes)
	var changed uint64
	for off := int64(0); off < newImg.Size; off += int64(blockBytes) {
		if err := ctx.Err(); err != nil {
			return 0, fmt.Errorf("compare %q with %q: %w", oldImg.Name, newImg.Name, err)
		}
		nb := <-newCh
		if nb.err != nil {
			return 0, nb.err
		}
		var ob block
		if off < oldImg.Size {
			ob = <-oldCh
			if ob.err != nil {
				return 0, ob.err
			}
		}
		for i := 0; i < nb.n; i += c {
			end := min(i+c, nb.n)
			if ob.n < end || !bytes.Equal(ob.buf[i:end], nb.buf[i:end]) {
				changed++
			}
		}
		newFree <- nb.buf
		if ob.buf != nil {
			oldFree <- ob.buf
		}
		if progress != nil {
			progress(off+int64(nb.n), newImg.Size)
		}
	}
	return changed, nil
}

// readBlocks reads img from the start in blocks into buffers taken from
// free and sends them on out, until the end, an error or stop.
func readBlocks(img Image, side string, blockBytes int, out chan<- block, free <-chan []byte, stop <-chan struct{}) {
	for off := int64(0); off < img.Size; off += int64(blockBytes) {
		var buf []byte
		select {
		case buf = <-free:
		case <-stop:
			return
		}
		want := int(min(int64(blockBytes), img.Size-off))
		n, err := img.R.ReadAt(buf[:want], off)
		switch {
		case n == want:
			err = nil
		case err == nil || err == io.EOF:
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			err = fmt.Errorf("read %s image %q at offset %d: %w", side, img.Name, off, err)
		}
		select {
		case out <- block{buf: buf, n: n, err: err}:
		case <-stop:
			return
		}
		if err != nil {
			return
		}
	}
}

// ForImages returns the store for updating the device from the image at
// oldPath to the image at newPath (files or block devices; see Diff).
func ForImages(ctx context.Context, oldPath, newPath string, chunkBytes uint32, progress Progress) (Size, error) {
	if err := CheckChunk(uint64(chunkBytes)); err != nil {
		return Size{}, err
	}
	oldImg, closeOld, err := openImage(oldPath, "old")
	if err != nil {
		return Size{}, err
	}
	defer closeOld()
	newImg, closeNew, err := openImage(newPath, "new")
	if err != nil {
		return Size{}, err
	}
	defer closeNew()
	n, err := Diff(ctx, oldImg, newImg, chunkBytes, progress)
	if err != nil {
		return Size{}, err
	}
	return ForChunks(n, chunkBytes)
}

// openImage opens a regular file or block device and finds its size by
// seeking to the end, which works for both.
func openImage(path, side string) (Image, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return Image{}, nil, fmt.Errorf("open %s image: %w", side, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return Image{}, nil, fmt.Errorf("stat %s image: %w", side, err)
	}
	m := fi.Mode()
	if !m.IsRegular() && (m&os.ModeDevice == 0 || m&os.ModeCharDevice != 0) {
		f.Close()
		return Image{}, nil, fmt.Errorf("open %s image %q: not a regular file or block device (mode %v)", side, path, m)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return Image{}, nil, fmt.Errorf("find size of %s image: %w", side, err)
	}
	return Image{Name: path, R: f, Size: size}, func() { f.Close() }, nil
}
