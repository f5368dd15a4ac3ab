package snapshot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/snapctl/snapctl/dmtable"
	"github.com/snapctl/snapctl/internal/crashhook"
	"github.com/snapctl/snapctl/merge"
)

// WriteOptions configure Write.
type WriteOptions struct {
	// Progress, if set, is called after every block compared, written or
	// read back.
	Progress func(WriteProgress)
}

// WriteProgress is one reading of a write under way.
type WriteProgress struct {
	Volume string
	// Stage is "write" while the image is compared with the volume and the
	// chunks that differ are written, "verify" while the volume is read
	// back.
	Stage string
	Done  int64 // image bytes handled so far in this stage
	Total int64 // image bytes
}

// WriteResult is what Write did.
type WriteResult struct {
	Volume      string  `json:"volume"`
	Image       string  `json:"image"`
	ImageBytes  int64   `json:"image_bytes"`
	VolumeBytes int64   `json:"volume_bytes"`
	ChunkBytes  int64   `json:"chunk_bytes"`
	Chunks      uint64  `json:"chunks"`         // image chunks compared
	Changed     uint64  `json:"changed_chunks"` // chunks that differed, written by this run
	Written     int64   `json:"written_bytes"`  // bytes this run wrote
	Verified    bool    `json:"verified"`       // the volume read back equal to the image
	Seconds     float64 `json:"seconds"`
}

// WrongModeError is an operation that needs the other mode.
type WrongModeError struct {
	Volume string
	Op     string
	Mode   Mode // the volume's mode
	Want   Mode
}

func (e *WrongModeError) Error() string {
	return fmt.Sprintf("%s %q: the volume is in %s mode, this needs %s mode", e.Op, e.Volume, e.Mode, e.Want)
}

// ImageTooLargeError is an image that does not fit its volume. Nothing was
// written.
type ImageTooLargeError struct {
	Volume      string
	Image       string
	ImageBytes  int64
	VolumeBytes int64
}

func (e *ImageTooLargeError) Error() string {
	return fmt.Sprintf("write %q: image %s is %d bytes, the volume only %d", e.Volume, e.Image, e.ImageBytes, e.VolumeBytes)
}

// VerifyError is a volume that did not read back equal to the image after
// it was written.
type VerifyError struct {
	Volume string
	Image  string
	Offset int64 // the first byte offset that differs
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("write %q: the volume does not read back equal to image %s: they differ at byte %d", e.Volume, e.Image, e.Offset)
}

// writeBlock is how much of the image and the volume is read at a time.
const writeBlock = 1 << 20

// Write writes image into an update-mode volume through /dev/mapper/NAME
// (the snapshot), writing only the chunks of the store's chunk size that
// differ, so the store holds exactly the changed chunks and a store sized
// for the image diff is always big enough (dm-snapshot allocates an
// exception for every chunk written, changed or not). Then it reads the
// volume back and checks that it equals the image.
//
// A member of a sealed update group is refused: the group's update is
// complete.
//
// Write records no phase: it only ever writes image bytes into the
// snapshot, so after a kill at any point running it again compares again,
// writes what still differs, and finishes.
func (m *Manager) Write(ctx context.Context, name, image string, o WriteOptions) (*WriteResult, error) {
	start := time.Now()
	v, err := m.open(ctx, name)
	if err != nil {
		return nil, err
	}
	defer v.close()
	rec := v.rec
	switch {
	case rec.Phase.Busy():
		return nil, &InterruptedError{Volume: name, Phase: rec.Phase, Step: rec.Step, Command: rec.Command}
	case rec.Phase != PhasePrepared:
		return nil, &WrongPhaseError{Volume: name, Op: "write", Phase: rec.Phase, Mode: rec.Mode}
	case rec.Mode != Update:
		return nil, &WrongModeError{Volume: name, Op: "write", Mode: rec.Mode, Want: Update}
	}
	if rec.Group != "" {
		// A sealed group's update is complete and its boots are counted:
		// what was sealed must stay what boots.
		g, err := ReadGroupGate(m.Dir, rec.Group)
		if err != nil {
			return nil, err
		}
		if g.Sealed || g.Decision != "" {
			return nil, &GroupMemberError{Volume: name, Group: rec.Group, Op: "write",
				Reason: "the group is sealed: the update it holds is complete and its boots are counted; a new image needs a new update"}
		}
	}
	if err := v.checkOrigin(); err != nil {
		return nil, err
	}
	inf, err := m.k.info(name)
	if err != nil {
		return nil, err
	}
	if !inf.Exists || !inf.Live {
		return nil, &NotActiveError{Volume: name}
	}
	if err := v.checkUsable("write"); err != nil {
		return nil, err
	}
	if err := v.checkLive(); err != nil {
		return nil, err
	}

	img, err := os.Open(image)
	if err != nil {
		return nil, fmt.Errorf("write %q: %w", name, err)
	}
	defer img.Close()
	imgBytes, err := img.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("write %q: find size of %s: %w", name, image, err)
	}
	dev, err := merge.OpenRaw(mapperPath(name), merge.OpenWrite)
	if err != nil {
		return nil, fmt.Errorf("write %q: %w", name, err)
	}
	defer dev.Close()
	res := &WriteResult{Volume: name, Image: image, ImageBytes: imgBytes, VolumeBytes: dev.Size(),
		ChunkBytes: int64(rec.Store.ChunkSectors) * 512}
	if imgBytes > dev.Size() {
		return nil, &ImageTooLargeError{Volume: name, Image: image, ImageBytes: imgBytes, VolumeBytes: dev.Size()}
	}

	buf := merge.DirectBuffer(2 * writeBlock)
	w := imageWriter{dev: dev, img: img, imgBytes: imgBytes, devBytes: dev.Size(), chunk: res.ChunkBytes,
		devBuf: buf[:writeBlock], imgBuf: buf[writeBlock:]}
	progress := func(stage string) func(done int64) {
		return func(done int64) {
			if o.Progress != nil {
				o.Progress(WriteProgress{Volume: name, Stage: stage, Done: done, Total: imgBytes})
			}
		}
	}
	wrote := func() { crashhook.Point("write:run") }
	res.Chunks, res.Changed, res.Written, err = w.write(ctx, progress("write"), wrote)
	if err == nil {
		err = dev.Sync()
	}
	if err != nil {
		// A full or invalidated store fails the writes with EIO: say that.
		if serr := v.checkLive(); serr != nil {
			err = errors.Join(serr, err)
		}
		return nil, fmt.Errorf("write %q: %w", name, err)
	}
	if err := v.checkLive(); err != nil {
		return nil, err
	}
	off, equal, err := w.verify(ctx, progress("verify"))
	if err != nil {
		return nil, fmt.Errorf("write %q: read back: %w", name, err)
	}
	if !equal {
		return nil, &VerifyError{Volume: name, Image: image, Offset: off}
	}
	res.Verified = true
	res.Seconds = time.Since(start).Seconds()
	rec.event("write", fmt.Sprintf("%s (%d bytes): %d of %d chunks written, read back equal", image, imgBytes, res.Changed, res.Chunks))
	if err := v.save(); err != nil {
		return nil, err
	}
	return res, nil
}

// checkLive refuses a snapshot whose store the kernel invalidated or found
// full (writes into it are lost), and records what it saw: such a store is
// never merged.
func (v *volume) checkLive() error {
	st, err := v.m.k.status(v.name())
	if err != nil {
		return err
	}
	if st.State != dmtable.SnapshotActive {
		return joinErr(&StoreUnusableError{Volume: v.name(), State: st.State}, v.noteUnusable(st.State))
	}
	return nil
}

// blockDevice is the volume as the writer uses it.
type blockDevice interface {
	io.ReaderAt
	io.WriterAt
}

// imageWriter compares an image with a device chunk by chunk and writes the
// chunks that differ. devBuf and imgBuf hold writeBlock bytes each (devBuf
// aligned for direct I/O).
type imageWriter struct {
	dev            blockDevice
	img            io.ReaderAt
	imgBytes       int64
	devBytes       int64
	chunk          int64
	devBuf, imgBuf []byte
}

// read reads the block at off of the image and of the device: the image's
// bytes, and the device's whole chunks that hold them (cut at the device's
// end). It returns both lengths.
func (w *imageWriter) read(off int64) (ilen, dlen int64, err error) {
	block := int64(len(w.devBuf))
	ilen = min(block, w.imgBytes-off)
	dlen = min((ilen+w.chunk-1)/w.chunk*w.chunk, w.devBytes-off)
	if _, err := readFull(w.img, w.imgBuf[:ilen], off); err != nil {
		return 0, 0, fmt.Errorf("read image at %d: %w", off, err)
	}
	if _, err := readFull(w.dev, w.devBuf[:dlen], off); err != nil {
		return 0, 0, fmt.Errorf("read volume at %d: %w", off, err)
	}
	return ilen, dlen, nil
}

func readFull(r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// write compares every chunk of the image with the device's and writes each
// run of consecutive chunks that differ in one request. A chunk the image
// ends inside is written whole: the device's own bytes after the image's
// end, the image's before. Before each write it calls wrote (the crash
// hook's step boundary).
func (w *imageWriter) write(ctx context.Context, progress func(int64), wrote func()) (chunks, changed uint64, written int64, err error) {
	c := w.chunk
	progress(0)
	for off := int64(0); off < w.imgBytes; off += int64(len(w.devBuf)) {
		if err := ctx.Err(); err != nil {
			return 0, 0, 0, err
		}
		ilen, dlen, err := w.read(off)
		if err != nil {
			return 0, 0, 0, err
		}
		runStart := int64(-1)
		flush := func(end int64) error {
			if runStart < 0 {
				return nil
			}
			end = min(end, dlen)
			wrote()
			if _, err := w.dev.WriteAt(w.devBuf[runStart:end], off+runStart); err != nil {
				return fmt.Errorf("write volume at %d: %w", off+runStart, err)
			}
			written += end - runStart
			runStart = -1
			return nil
		}
		for i := int64(0); i < ilen; i += c {
			chunks++
			iend := min(i+c, ilen)
			if bytes.Equal(w.devBuf[i:iend], w.imgBuf[i:iend]) {
				if err := flush(i); err != nil {
					return 0, 0, 0, err
				}
				continue
			}
			copy(w.devBuf[i:iend], w.imgBuf[i:iend])
			changed++
			if runStart < 0 {
				runStart = i
			}
		}
		if err := flush(dlen); err != nil {
			return 0, 0, 0, err
		}
		progress(off + ilen)
	}
	return chunks, changed, written, nil
}

// verify reads the device back and compares it with the image; it returns
// the first offset where they differ.
func (w *imageWriter) verify(ctx context.Context, progress func(int64)) (int64, bool, error) {
	progress(0)
	for off := int64(0); off < w.imgBytes; off += int64(len(w.devBuf)) {
		if err := ctx.Err(); err != nil {
			return 0, false, err
		}
		ilen, _, err := w.read(off)
		if err != nil {
			return 0, false, err
		}
		if !bytes.Equal(w.devBuf[:ilen], w.imgBuf[:ilen]) {
			for i := range ilen {
				if w.devBuf[i] != w.imgBuf[i] {
					return off + i, false, nil
				}
			}
		}
		progress(off + ilen)
	}
	return 0, true, nil
}
